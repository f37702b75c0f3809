"""No script writes over what it reads, over another output, or over the files of a run or a
release it does not own, and each refuses before any work (roilib/writeplan.py)."""
import json
import os
import shutil

import pytest

from AttentionNet import AttentionNet
from helpers import ROOT, run_in_process
from roilib.checkpoint import load_model_state
from roilib.errors import UserError
from roilib.export import write_release
from roilib.writeplan import check_writes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def place(tmp_path_factory, data):
    """A workspace: a Train.py-like run folder with its checkpoint, a released model, a copy
    of the demo validation set, and an instances file named eval.json in a results folder."""
    from roilib.demo import CLASS_NAMES
    root = tmp_path_factory.mktemp("place")
    run = root / "run"
    run.mkdir()
    AttentionNet(len(CLASS_NAMES), arch="resnet18", class_names=CLASS_NAMES).save(run / "best.pt", window=[64, 64])
    (run / "config.json").write_text('{"params": {}}')
    (run / "train_log.csv").write_text("step,loss\n")
    write_release(load_model_state(str(run / "best.pt")), str(root / "release"))
    shutil.copytree(data / "val", root / "val")
    (root / "results").mkdir()
    shutil.copy(root / "val" / "instances.json", root / "results" / "eval.json")
    shutil.copy(first_image(root), root / "val" / "images" / "eval_confusion.png")
    (root / "data").mkdir()
    shutil.copy(root / "val" / "instances.json", root / "data" / "config.json")
    (root / "a_folder").mkdir()
    (root / "a_file").write_text("keep")
    return root


def first_image(place):
    return place / "val" / "images" / sorted(os.listdir(place / "val" / "images"))[0]


# (script, arguments, the file that must survive, words of the refusal); {p}: the workspace.
EVAL = ["--DATASET=demo", "--IMAGES={p}/val/images", "--ANNOTATIONS={p}/val/instances.json", "--WORKERS=0"]
LABEL = ["--CHECKPOINT={p}/run/best.pt", "--IMAGES={p}/val/images", "--MASKS={p}/val/instances.json",
         "--WORKERS=0", "--DEVICE=cpu"]
PREDICT = ["--CHECKPOINT={p}/run/best.pt", "--IMAGE={image}", "--DEVICE=cpu", f"--MASKS={ROOT}/Test/example_mask1.png"]
TRAIN = ["--DATASET=demo", "--TRAIN_IMAGES={p}/val/images", "--TRAIN_ANNOTATIONS={p}/val/instances.json",
         "--VAL_IMAGES={p}/val/images", "--VAL_ANNOTATIONS={p}/val/instances.json", "--DEVICE=cpu"]
CASES = [
    ("Export.py", ["--CHECKPOINT={p}/run/best.pt", "--OUT={p}/run/best.pt"], "run/best.pt", "is the input"),
    ("Export.py", ["--CHECKPOINT={p}/run/best.pt", "--OUT={p}/a_folder"], None, "is an existing folder"),
    ("Export.py", ["--CHECKPOINT={p}/run/best.pt", "--FORMAT=safetensors", "--OUT={p}/run"], "run/config.json",
     "would replace the run's own file"),
    ("Export.py", ["--CHECKPOINT={p}/run/best.pt", "--FORMAT=safetensors", "--OUT={p}/release"],
     "release/config.json", "would replace the release's own file"),
    ("Export.py", ["--CHECKPOINT={p}/release", "--FORMAT=safetensors", "--OUT={p}/release"],
     "release/model.safetensors", "is the input"),
    ("Export.py", ["--CHECKPOINT={p}/run/best.pt", "--FORMAT=safetensors", "--OUT={p}/run/best.pt"],
     "run/best.pt", "is an existing file, not a folder"),
    ("EvaluateAccuracy.py", ["--CHECKPOINT={p}/run/best.pt", "--DATASET=demo", "--IMAGES={p}/val/images",
                             "--ANNOTATIONS={p}/results/eval.json", "--OUT={p}/results"],
     "results/eval.json", "is the input"),
    ("EvaluateAccuracy.py", ["--CHECKPOINT={p}/run/best.pt", *EVAL, "--OUT={p}/a_file"], "a_file",
     "is an existing file, not a folder"),
    ("EvaluateAccuracy.py", ["--CHECKPOINT={p}/run/best.pt", *EVAL, "--OUT={p}/val/images"],
     "val/images/eval_confusion.png", "would replace a file in the input folder"),
    ("LabelMasks.py", [*LABEL, "--OUT={image}"], "{image}", "would replace a file in the input folder"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/run/config.json"], "run/config.json", "run's own file"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/release/config.json"], "release/config.json", "release's own file"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/link.json"], "val/instances.json", "is the input"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/hard.json"], "val/instances.json", "is the input"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/a_folder"], None, "is an existing folder"),
    ("LabelMasks.py", [*LABEL, "--OUT={p}/results/x.json", "--GT={p}/results/x_eval.json"],
     "results/x_eval.json", "is the input"),
    ("RunPrediction.py", [*PREDICT, "--OVERLAY={image}"], "{image}", "is the input"),
    ("RunPrediction.py", [*PREDICT, "--OVERLAY={p}/a_folder"], None, "is an existing folder"),
    ("Train.py", [*TRAIN[:2], "--TRAIN_ANNOTATIONS={p}/data/config.json", *TRAIN[3:], "--LOG_DIR={p}",
                  "--RUN=data"], "data/config.json", "is the input"),
    ("Train.py", [*TRAIN, "--LOG_DIR={p}", "--RUN=a_file"], "a_file", "is an existing file, not a folder"),
    ("Train.py", [*TRAIN, "--LOG_DIR={p}", "--RUN=val", "--RESUME=False"], "val/instances.json",
     "would be moved aside, and it holds the input"),
    ("Train.py", [*TRAIN, "--WEIGHTS={p}/run/best.pt", "--LOG_DIR={p}", "--RUN=run", "--RESUME=False"],
     "run/best.pt", "would be moved aside, and it holds the input"),
    ("Ablation.py", [*TRAIN[:5], "--LOG_DIR={p}", "--NAME=a_file", "--DEVICE=cpu"], "a_file", "not a folder"),
    ("Benchmark.py", ["--OUT={p}/bench", "--DEVICE=cpu"], None, "is an existing folder"),
]


@pytest.mark.parametrize("script,args,victim,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_output_is_refused_before_the_work_where_it_would_destroy(
        place, script, args, victim, words, capsys, monkeypatch):
    image = os.path.relpath(first_image(place), place)
    for name, make in {"link.json": os.symlink, "hard.json": os.link}.items():
        if not os.path.lexists(place / name):
            make(place / "val" / "instances.json", place / name)
    (place / "bench" / "cpu.md").mkdir(parents=True, exist_ok=True)
    shutil.copy(place / "val" / "instances.json", place / "results" / "x_eval.json")
    victim = victim and place / victim.format(image=image)
    before = victim.read_bytes() if victim else None
    argv = [a.format(p=place, image=place / image) for a in args]
    code, printed = run_in_process(script, argv, capsys, monkeypatch)
    assert code == 2, printed.out + printed.err
    assert printed.err.count("\n") == 1 and words in printed.err, printed.err
    if "input" in words or "own file" in words:   # one line naming both paths
        assert printed.err.count(str(place)) >= 2, printed.err
    if victim:
        assert victim.read_bytes() == before


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "same", "copy"])
def test_a_link_to_an_input_is_the_input(tmp_path, kind):
    source = tmp_path / "in.json"
    source.write_text("{}")
    out = tmp_path / "out.json"
    {"symlink": lambda: os.symlink(source, out), "hardlink": lambda: os.link(source, out),
     "same": lambda: None, "copy": lambda: shutil.copy(source, out)}[kind]()
    target = source if kind == "same" else out
    if kind == "copy":   # another file of the same content is no input
        check_writes([("--OUT", str(target))], [str(source)])
        return
    with pytest.raises(UserError, match=f"--OUT={target}: is the input {source}"):
        check_writes([("--OUT", str(target))], [str(source)])


def test_two_outputs_on_one_file_are_refused(tmp_path):
    with pytest.raises(UserError, match="also --A's output"):
        check_writes([("--A", str(tmp_path / "x")), ("--B", str(tmp_path / "sub" / ".." / "x"))])


def test_results_may_go_next_to_a_released_model_but_not_over_it(place):
    """EvaluateAccuracy's default for a released folder is that folder (its parent may hold
    other releases); eval.json there may be replaced, the release's files may not."""
    import EvaluateAccuracy
    release = str(place / "release")
    assert EvaluateAccuracy.output_folder("", release) == release
    assert EvaluateAccuracy.output_folder("", str(place / "run" / "best.pt")) == str(place / "run")
    (place / "release" / "eval.json").write_text("{}")
    check_writes([("--OUT", os.path.join(release, "eval.json"))], [release])
    with pytest.raises(UserError, match="is the input"):
        check_writes([("--OUT", os.path.join(release, "config.json"))], [release])


def test_an_evaluation_of_a_release_writes_inside_it(place, capsys, monkeypatch):
    args = [f"--CHECKPOINT={place}/release", *(a.format(p=place) for a in EVAL), "--LIMIT=1", "--DEVICE=cpu"]
    code, printed = run_in_process("EvaluateAccuracy.py", args, capsys, monkeypatch)
    assert code == 0, printed.err
    assert json.loads((place / "release" / "eval.json").read_text())["count"] > 0
    assert not (place / "eval.json").exists()
