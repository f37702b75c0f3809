"""End to end: a tiny Train.py -> EvaluateAccuracy.py -> RunPrediction.py on generated demo
data, with resume after an interrupted run (torchrun's 2-process runs: tests/test_train.py)."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from CocoReader import CocoReader
from helpers import ROOT, TINY, read_csv, run_script
from roilib.demo import CLASS_NAMES
from roilib.errors import UserError
from roilib.imageio import read_image, read_label_map
from roilib.paths import find_checkpoint

def data_args(root):
    return [f"--TRAIN_IMAGES={root}/train/images", f"--TRAIN_ANNOTATIONS={root}/train/instances.json",
            f"--VAL_IMAGES={root}/val/images", f"--VAL_ANNOTATIONS={root}/val/instances.json"]


def test_train_evaluate_predict(data, tmp_path):
    logs = tmp_path / "logs"
    out = run_script("Train.py", *TINY, *data_args(data), f"--LOG_DIR={logs}", "--RUN=t", "--STEPS=6",
                     "--VAL_EVERY=3", "--SAVE_EVERY=3").stdout
    run = logs / "t"
    assert "new run" in out and "done: 6 steps" in out
    config = json.loads((run / "config.json").read_text())
    assert config["params"]["STEPS"] == 6 and config["num_classes"] == len(CLASS_NAMES)
    rows = read_csv(run / "train_log.csv")
    assert [r["step"] for r in rows if r["loss"]] == ["2", "4", "6"]
    assert [r["step"] for r in rows if r["val_accuracy"]] == ["3", "6"]
    assert all(np.isfinite(float(r["loss"])) and float(r["img_per_s"]) > 0 for r in rows if r["loss"])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run))
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    assert last["step"] == 6 and best["step"] in (3, 6)
    assert best["metrics"]["mean_class_accuracy"] == best["best_metric"]
    assert set(last) >= {"model", "config", "optimizer", "step", "params", "schedule_steps"}
    assert last["window"] == [96, 96]          # the training geometry (MAX_SIZE=96) is stored

    # evaluation: every validation segment once, per size and per class consistent
    val = CocoReader(data / "val" / "images", data / "val" / "instances.json", train=False)
    run_script("EvaluateAccuracy.py", f"--CHECKPOINT={run / 'best.pt'}", "--WORKERS=0", f"--OUT={tmp_path / 'eval'}",
               "--DATASET=demo", f"--IMAGES={data}/val/images", f"--ANNOTATIONS={data}/val/instances.json",
               here=True)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["window"] == [96, 96]        # the checkpoint's window, with no parameter given
    assert result["count"] == len(val)
    assert sum(r["count"] for r in result["by_size"]) == len(val)
    assert sum(r["count"] for r in result["coco_size"]) == len(val)
    assert [r["count"] for r in result["per_class"]] == np.bincount(val.labels, minlength=len(CLASS_NAMES)).tolist()
    assert np.asarray(result["confusion"]).sum() == len(val)
    hits = np.trace(np.asarray(result["confusion"]))
    assert result["accuracy"] == pytest.approx(hits / len(val))
    sizes = read_csv(tmp_path / "eval" / "eval_by_size.csv")
    assert sizes[0]["bin"] == "<1k" and int(sizes[0]["count"]) == int(np.sum(val_areas(val) < 1000))
    for name in ("eval_accuracy_by_size.png", "eval_confusion.png"):
        assert read_image(tmp_path / "eval" / name).shape[0] > 100

    # prediction on a label map: one answer per segment, probabilities sorted
    first = sorted(os.listdir(data / "val" / "images"))[0]
    image = data / "val" / "images" / first
    labels = data / "val" / "labels" / first
    overlay = tmp_path / "overlay.png"
    out = run_script("RunPrediction.py", f"--CHECKPOINT={run / 'best.pt'}", f"--IMAGE={image}",
                     f"--INSTANCE_MAP={labels}", "--JSON=True", "--TOPK=3", f"--OVERLAY={overlay}", here=True).stdout
    answer = json.loads(out)
    assert answer["window"] == [96, 96]
    values = [v for v in np.unique(read_label_map(labels)) if v]
    assert len(answer["segments"]) == len(values)
    for seg in answer["segments"]:
        probs = [t["probability"] for t in seg["topk"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
        assert seg["class"] in val.class_names and seg["area"] > 0
    assert read_image(overlay).shape == read_image(image).shape


def val_areas(reader):
    return np.array([s.area for s in reader.segments])


def test_resume_after_interruption_matches_uninterrupted_run(data, tmp_path):
    """A run stopped at step 3 and resumed gives the same weights as a run straight to 6:
    model, optimiser, schedule and data order all come back from last.pt."""
    common = [*TINY, *data_args(data), f"--LOG_DIR={tmp_path}", "--STEPS=6", "--VAL_EVERY=100",
              "--SAVE_EVERY=100"]
    run_script("Train.py", *common, "--RUN=straight", here=True)
    run_script("Train.py", *common, "--RUN=split", "--STOP_AT=3", here=True)
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["step"] == 3
    out = run_script("Train.py", *common, "--RUN=split", here=True).stdout
    assert "resuming" in out and "at step 3" in out
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    rows = read_csv(tmp_path / "split" / "train_log.csv")
    assert [r["step"] for r in rows if r["loss"]] == ["2", "3", "4", "6"]


def test_fresh_start_moves_old_run_aside(data, tmp_path):
    common = [*TINY, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r", "--STEPS=2", "--VAL_EVERY=100"]
    run_script("Train.py", *common, here=True)
    out = run_script("Train.py", *common, "--RESUME=False", here=True).stdout
    assert "moved the existing run" in out
    kept = [d for d in os.listdir(tmp_path) if d.startswith("r.old-")]
    assert len(kept) == 1 and (tmp_path / kept[0] / "last.pt").exists()


def test_prediction_without_model_says_what_to_do(tmp_path):
    result = run_script("RunPrediction.py", f"--CHECKPOINT={tmp_path / 'none.pt'}", check=False, here=True)
    assert result.returncode == 2
    assert "run `python Train.py` first" in result.stderr and "Traceback" not in result.stderr


def test_demo_label_maps_read_with_demo_names(data):
    from Datasets import open_dataset
    coco = open_dataset("demo", "val", f"{data}/val/images", f"{data}/val/instances.json", train=False)
    maps = open_dataset("demo", "val", f"{data}/val/images", f"{data}/val/labels", train=False)
    assert maps.class_names == coco.class_names and len(maps) == len(coco)
    assert sorted(maps.labels.tolist()) == sorted(coco.labels.tolist())


def test_ctrl_c_names_the_checkpoint_and_a_resume_counts_its_own_steps(data, tmp_path):
    """Ctrl-C (SIGINT) mid-run: one line names last.pt and its step and says the same command
    resumes; the resumed run reports the steps it ran and the total."""
    common = [*TINY, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r", "--DEVICE=cpu",
              "--VAL_EVERY=0", "--SAVE_EVERY=1", "--LOG_EVERY=1"]
    train = subprocess.Popen([sys.executable, os.path.join(ROOT, "Train.py"), *common, "--STEPS=500"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env=dict(os.environ, OMP_NUM_THREADS="1"),
                             # a suite started in the background (`cmd &`) ignores SIGINT, and so would Train
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in train.stdout:
        if line.startswith("step      2/"):
            break
    train.send_signal(signal.SIGINT)
    stdout, stderr = train.communicate(timeout=120)
    assert train.returncode == 130, stdout + stderr
    saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"]
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: the last checkpoint is {tmp_path / 'r' / 'last.pt'} (step {saved}); "
        "the same command resumes from it")
    out = run_script("Train.py", *common, f"--STEPS={saved + 2}", here=True).stdout
    assert f"resuming {tmp_path / 'r'} at step {saved}" in out
    assert "done: 2 steps in " in out and f"(steps {saved + 1}-{saved + 2}; {saved + 2} of {saved + 2} in all)" in out


@pytest.mark.parametrize("present,asked,found", [
    (["best.pt", "last.pt"], "best.pt", "best.pt"), (["last.pt"], "best.pt", "last.pt"),
    ([], "best.pt", None), (["last.pt"], "step_4.pt", None), (["last.pt/"], "best.pt", None)])
def test_a_missing_best_pt_falls_back_to_last_pt(tmp_path, capsys, present, asked, found):
    """A run stopped before its first validation has last.pt and no best.pt: every script that
    looks for best.pt takes last.pt and says so; nothing else is guessed."""
    for name in present:
        (tmp_path / name).mkdir() if name.endswith("/") else (tmp_path / name).write_bytes(b"")
    if found is None:
        with pytest.raises(UserError, match="no trained model there"):
            find_checkpoint(str(tmp_path / asked))
        return
    assert find_checkpoint(str(tmp_path / asked)) == str(tmp_path / found)
    said = capsys.readouterr().err
    assert (f"using {tmp_path / 'last.pt'}" in said) == (found != asked)


@pytest.mark.parametrize("script", ["EvaluateAccuracy.py", "RunPrediction.py", "LabelMasks.py", "Export.py"])
def test_every_script_looking_for_best_pt_falls_back(script):
    with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        source = f.read()
    assert 'CHECKPOINT = "logs/demo/best.pt"' in source and "find_checkpoint(cfg.CHECKPOINT)" in source


def test_evaluation_of_a_run_without_best_pt_uses_last_pt(data, tmp_path):
    run_script("Train.py", *TINY, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r", "--STEPS=2",
               "--VAL_EVERY=0", here=True)
    result = run_script("EvaluateAccuracy.py", f"--CHECKPOINT={tmp_path / 'r' / 'best.pt'}", "--WORKERS=0",
                        f"--IMAGES={data}/val/images", f"--ANNOTATIONS={data}/val/instances.json", "--LIMIT=2", here=True)
    assert f"using {tmp_path / 'r' / 'last.pt'}" in result.stderr
    assert json.loads((tmp_path / "r" / "eval.json").read_text())["checkpoint"] == str(tmp_path / "r" / "last.pt")
