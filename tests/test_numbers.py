"""Every number a script takes is finite and fits the machine (issue 24): inf, nan and huge
values of every numeric parameter of every script are refused with one line before any work,
and settings whose batches cannot fit in memory are refused naming what they would need. The
table is made from the parameter blocks, so a new numeric parameter is covered by construction."""
import os

import pytest
import torch

from helpers import ROOT, run_in_process
from roilib import cli, windows
from roilib.checkpoint import load_checkpoint, save_checkpoint
from roilib.errors import UserError
from test_parameters import SCRIPTS


def numeric_parameters():
    """[(script, name, default)] of every parameter whose value is a number or None|range."""
    found = []
    for script in SCRIPTS:
        path = os.path.join(ROOT, script)
        specs = cli.read_specs(path)
        for name, line in cli.read_block(path):
            default = eval(cli.ASSIGNMENT.match(line).group(2))
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if numeric or cli._none_or_range(specs.get(name, "")):
                found.append((script, name, default))
    return found


NUMERIC = numeric_parameters()
HOSTILE = ["inf", "-inf", "nan", "1e300", str(10 ** 40)]   # 10**40: above every range


def test_every_numeric_parameter_declares_a_range_bounded_on_both_sides():
    for script, name, _ in NUMERIC:
        spec = cli.read_specs(os.path.join(ROOT, script)).get(name, "")
        spec = spec[5:] if cli._none_or_range(spec) else spec
        bound = cli.BOUND.fullmatch(spec)
        assert bound and bound.group(1) is None, f"{script} {name}: [{spec}] has no upper bound"
    assert len(NUMERIC) >= 40


@pytest.mark.parametrize("script,name,value", [(s, n, v) for s, n, _ in NUMERIC for v in HOSTILE],
                         ids=lambda x: str(x))
def test_hostile_numbers_are_refused_before_any_work(script, name, value, capsys, monkeypatch):
    code, out = run_in_process(script, [f"--{name}={value}"], capsys, monkeypatch)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --{name}="), out.err
    assert "Traceback" not in out.err and out.out == ""


def test_a_recipe_cannot_bring_infinity(tmp_path):
    """1e999 is a Python literal for inf: refused like --LR=inf, whatever the spec."""
    recipe = tmp_path / "r.py"
    recipe.write_text("LR = 1e999\n")
    script = tmp_path / "Script.py"
    script.write_text("# ---- parameters ----\nLR = 0.1    # learning rate\n# ---- end of parameters ----\n")
    with pytest.raises(UserError, match=r"^--LR=inf: expected a finite number"):
        cli.parse_parameters({"LR": 0.1}, script, [str(recipe)])


@pytest.mark.parametrize("jitter", ["1,inf", "nan,1", "0,1", "1,1e300", "1e-300,1", "1,2,3"])
def test_jitter_is_finite_and_bounded(jitter, capsys, monkeypatch):
    code, out = run_in_process("Train.py", [f"--JITTER={jitter}"], capsys, monkeypatch)
    assert code == 2 and out.err.startswith("error: --JITTER=") and "Traceback" not in out.err


@pytest.mark.parametrize("window", ["16384x16384", "32x99999999", "0"])
def test_window_sides_are_bounded(window):
    with pytest.raises(UserError, match="--WINDOW=.*from 32 to 8192"):
        windows.parse_window(window)


MEMORY_CASES = [
    ("Train.py", ["--MAX_SIZE=8192", "--MIN_SIZE=96", "--MAX_BATCH=64", "--MAX_PIXELS=1000000000"], "--MAX_SIZE="),
    ("Train.py", ["--WINDOW=8192x8192", "--MAX_BATCH=64"], "--MAX_SIZE="),
    ("EvaluateAccuracy.py", ["--WINDOW=8192x8192", "--MAX_BATCH=64"], "--MAX_BATCH=64"),
    ("RunPrediction.py", ["--WINDOW=8192x8192", "--MAX_BATCH=64"], "--MAX_BATCH=64"),
    ("LabelMasks.py", ["--WINDOW=8192x8192", "--MAX_BATCH=64"], "--MAX_BATCH=64"),
    ("Export.py", ["--BATCHES=1,100000000"], "--BATCHES="),
    ("Benchmark.py", ["--BATCH=65536", "--SIZE=8192"], "--BATCH="),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from AttentionNet import AttentionNet
    folder = tmp_path_factory.mktemp("numbers")
    from roilib.demo import CLASS_NAMES
    AttentionNet(len(CLASS_NAMES), arch="resnet18", class_names=CLASS_NAMES).save(folder / "model.pt", window=[64, 64])
    return str(folder / "model.pt")


@pytest.mark.parametrize("script,args,named", MEMORY_CASES, ids=[c[0] + " " + " ".join(c[1]) for c in MEMORY_CASES])
def test_batches_that_cannot_fit_are_refused_naming_the_memory(script, args, named, tiny_model, data,
                                                               tmp_path, capsys, monkeypatch):
    """On a machine of 16 GiB (whatever this one has), before any work."""
    monkeypatch.setattr(windows, "device_memory", lambda device=None: 16 * 2 ** 30)
    inputs = {"EvaluateAccuracy.py": [f"--CHECKPOINT={tiny_model}", f"--IMAGES={data / 'val' / 'images'}",
                                      f"--ANNOTATIONS={data / 'val' / 'instances.json'}", "--DATASET=coco",
                                      f"--OUT={tmp_path}", "--DEVICE=cpu", "--MATCH_BY_INDEX=True"],
              "RunPrediction.py": [f"--CHECKPOINT={tiny_model}", f"--IMAGE={data / 'val' / 'images' / '00001.png'}",
                                   f"--INSTANCE_MAP={data / 'val' / 'labels' / '00001.png'}", "--DEVICE=cpu"],
              "LabelMasks.py": [f"--CHECKPOINT={tiny_model}", f"--IMAGES={data / 'val' / 'images'}",
                                f"--MASKS={data / 'val' / 'instances.json'}", f"--OUT={tmp_path / 'l.json'}",
                                "--DEVICE=cpu"],
              "Export.py": [f"--CHECKPOINT={tiny_model}", f"--OUT={tmp_path / 'm.onnx'}"],
              "Benchmark.py": [f"--OUT={tmp_path}", "--DEVICE=cpu"],
              "Train.py": [f"--LOG_DIR={tmp_path}", "--DEVICE=cpu"]}[script]
    code, out = run_in_process(script, inputs + args, capsys, monkeypatch)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0], out.err
    assert "would need at least" in lines[0] and "GiB" in lines[0] and "Traceback" not in out.err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "l.json").exists()


@pytest.mark.parametrize("window", [[0, 0], [32, 10 ** 9], ["a", 32], [32.5, 32], [64], True])
def test_a_checkpoint_with_an_absurd_window_is_refused_when_loaded(window, tmp_path):
    path = tmp_path / "w.pt"
    save_checkpoint({"format": 1, "model": {"w": torch.zeros(1)}, "config": {}, "window": window}, path)
    with pytest.raises(UserError, match=r"w.pt: the checkpoint's window .* is not a window"):
        load_checkpoint(path)


@pytest.mark.parametrize("window", [[0, 0], [10 ** 9, 64]])
def test_a_release_folder_with_an_absurd_window_is_refused_when_loaded(window, tiny_model, tmp_path):
    import json

    from roilib.checkpoint import load_model_state
    from roilib.export import write_release
    state = load_checkpoint(tiny_model)
    write_release(state, str(tmp_path / "release"))
    config = json.loads((tmp_path / "release" / "config.json").read_text())
    config["window"] = window
    (tmp_path / "release" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config.json: the checkpoint's window .* is not a window"):
        load_model_state(tmp_path / "release")
