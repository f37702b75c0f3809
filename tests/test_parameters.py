"""Every parameter with declared valid values is checked before any work, in every script:
one `error: --NAME=value: expected ...` line, exit code 2, no traceback. The cases are made
from the declarations themselves, so a new parameter is covered by construction."""
import ast
import os

import pytest

from helpers import ROOT, invalid_example, run_in_process
from roilib import cli
from roilib.demo import CLASS_NAMES

SCRIPTS = ["Train.py", "EvaluateAccuracy.py", "RunPrediction.py", "Ablation.py", "Benchmark.py", "Export.py", "LabelMasks.py", "App.py"]


def declared_cases():
    cases = []
    for script in SCRIPTS:
        path = os.path.join(ROOT, script)
        defaults = {}
        for name, line in cli.read_block(path):
            defaults[name] = eval(cli.ASSIGNMENT.match(line).group(2))   # the block's literal
        for name, spec in cli.read_specs(path).items():
            cases.append((script, name, invalid_example(spec, defaults[name])))
    return cases


CASES = declared_cases()
# Rules that involve more than one parameter, or the machine.
CROSS_CASES = [
    ("Train.py", ["--MIN_SIZE=160", "--MAX_SIZE=96"], "MIN_SIZE"),
    ("Train.py", ["--MIN_SIZE=100", "--MAX_SIZE=120"], "MIN_SIZE"),
    ("Train.py", ["--JITTER=1.25,0.8"], "JITTER"),
    ("Train.py", ["--JITTER=fast"], "JITTER"),
    ("Train.py", ["--DEVICE=mps"], "DEVICE"),
    ("Train.py", ["--WEIGHTS=/no/such/file.pth"], "WEIGHTS"),
    ("Train.py", ["--DEVICE=cuda:7"], "DEVICE"),
    ("EvaluateAccuracy.py", ["--DEVICE=tpu"], "DEVICE"),
    ("RunPrediction.py", ["--DEVICE=cpu:1"], "DEVICE"),
    ("Ablation.py", ["--MIN_SIZE=200", "--MAX_SIZE=100"], "MIN_SIZE"),
    ("Ablation.py", ["--DEVICE=mps"], "DEVICE"),
]


def test_every_script_declares_constraints():
    counts = {script: sum(1 for case in CASES if case[0] == script) for script in SCRIPTS}
    assert all(count >= 3 for count in counts.values()), counts
    assert len(CASES) >= 40


@pytest.mark.parametrize("script,name,value", CASES, ids=[f"{s}-{n}" for s, n, _ in CASES])
def test_invalid_value_is_refused_before_any_work(script, name, value, capsys, monkeypatch):
    code, out = run_in_process(script, [f"--{name}={value}"], capsys, monkeypatch)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --{name}="), out.err
    assert "expected" in lines[0] and "Traceback" not in out.err and out.out == ""


@pytest.mark.parametrize("script,args,name", CROSS_CASES, ids=[" ".join(c[1]) for c in CROSS_CASES])
def test_cross_parameter_and_device_rules(script, args, name, capsys, monkeypatch):
    code, out = run_in_process(script, args, capsys, monkeypatch)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"--{name}=" in lines[0], out.err
    assert "Traceback" not in out.err


def test_a_default_edited_in_the_block_is_checked_too(tmp_path):
    script = tmp_path / "Script.py"
    script.write_text("# ---- parameters: edit here ----\nSTEPS = 0    # [>=1] steps\n# ---- end of parameters ----\n")
    with pytest.raises(cli.UserError, match=r"--STEPS=0: expected a number >= 1"):
        cli.parse_parameters({"STEPS": 0}, script, [])


@pytest.mark.parametrize("spec,good,bad", [
    ("demo|coco", ["demo", "coco"], ["", "COCO"]),
    ('""|demo', ["", "demo"], ["x"]),
    ("list of stem|layer1|all", ["stem", "stem,layer1", "all"], ["", "stem,layer5"]),
    (">=1", [1, 5, 2.5], [0, -1, "1"]),
    (">0", [1e-9, 3], [0, -1]),
    ("0..1", [0, 0.5, 1], [-0.1, 1.5]),
    ('""|HxW', ["", "160x160", "96", "64x128"], ["100x96", "abc", "0x0"]),
    ("nonempty", ["x"], ["", None]),
])
def test_spec_language(spec, good, bad):
    for value in good:
        cli.check_value("X", value, spec)
    for value in bad:
        with pytest.raises(cli.UserError, match="^--X=.*: expected "):
            cli.check_value("X", value, spec)


# The scripts whose parameters reach their functions only as arguments (tools with a block too).
# Benchmark.py is split and converted on its own branch (issue 22, point 7): add it here then.
CFG_SCRIPTS = SCRIPTS + ["tools/bench_export.py"]


def parameter_reads(script):
    """(names of the block, [(function, name)] where a function reads a block global:
    as a name, through globals()[...], or in a default argument bound at import)."""
    path = os.path.join(ROOT, script)
    names = {name for name, _ in cli.read_block(path)}
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    found = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))):
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load):
                found.append((getattr(function, "name", "lambda"), node.id))
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "globals"):
                found.append((getattr(function, "name", "lambda"), "globals()[...]"))
    return names, found, tree


@pytest.mark.parametrize("script", CFG_SCRIPTS)
def test_no_function_reads_a_parameter_global(script):
    """The command line changes the parsed dict, not the globals (roilib.cli): a function
    reading a global would silently use the block's default."""
    _, found, _ = parameter_reads(script)
    assert found == [], f"{script}: functions read parameter globals: {found}"


@pytest.mark.parametrize("script", CFG_SCRIPTS)
def test_every_parameter_is_used(script):
    """Each declared parameter is read from the parsed values somewhere (cfg.NAME, or its name
    handed on, as Ablation.py hands its SHARED names to Train.py): none is declared and ignored."""
    names, _, tree = parameter_reads(script)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert sorted(names - used) == [], f"{script}: declared but never read"


def test_the_command_line_leaves_the_globals_alone(tmp_path):
    script = tmp_path / "Script.py"
    script.write_text("# ---- parameters: edit here ----\nSTEPS = 5    # [>=1] steps\n# ---- end of parameters ----\n")
    namespace = {"STEPS": 5}
    cfg = cli.parse_config(namespace, script, ["--STEPS=7"])
    assert cfg.STEPS == 7 and namespace == {"STEPS": 5}


@pytest.fixture(scope="module")
def prediction_inputs(data, tmp_path_factory):
    """A fresh model for the demo's classes, an image, two of its masks and its label map."""
    import numpy as np
    import torch

    from AttentionNet import AttentionNet
    from roilib.imageio import read_label_map, write_png
    folder = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    AttentionNet(len(CLASS_NAMES), arch="resnet18", class_names=CLASS_NAMES).save(folder / "model.pt",
                                                                                  window=[96, 96])
    labels = data / "val" / "labels" / "00001.png"
    label_map = read_label_map(labels)
    masks = []
    for value in [v for v in np.unique(label_map) if v][:2]:
        masks.append(str(folder / f"mask{value}.png"))
        write_png(masks[-1], (label_map == value).astype(np.uint8) * 255)
    from LabelMapReader import components_of
    from roilib.labelconvention import LabelConvention
    areas = sorted(c.area for c in components_of(label_map, LabelConvention(len(CLASS_NAMES)))[0])
    assert len(areas) >= 3 and areas[-1] > areas[-2]   # MIN_AREA=<the largest> keeps one of several
    return {"dir": folder, "checkpoint": str(folder / "model.pt"), "labels": str(labels),
            "image": str(data / "val" / "images" / "00001.png"), "masks": masks, "largest": areas[-1],
            "regions": len(areas)}


# Each parameter a test touches, set away from its default, changes what RunPrediction does:
# (arguments, what the JSON answer must show).
PREDICTION_CASES = {
    "MASKS": (["--MASKS={mask0}"], lambda a, f: [s["mask"] for s in a["segments"]] == [f["masks"][0]]),
    "INSTANCE_MAP": (["--INSTANCE_MAP={labels}"], lambda a, f: a["segments"][0]["mask"].startswith("segment ")),
    "LABEL_MAP": (["--LABEL_MAP={labels}"], lambda a, f: len(a["segments"]) == f["regions"]
                  and all(s["labelled"] in CLASS_NAMES and " #" in s["mask"] for s in a["segments"])),
    "MIN_AREA": (["--LABEL_MAP={labels}", "--MIN_AREA={largest}"],
                 lambda a, f: [s["area"] for s in a["segments"]] == [f["largest"]]),
    "TOPK": (["--TOPK=5"], lambda a, f: all(len(s["topk"]) == 5 for s in a["segments"])),
    "WINDOW": (["--WINDOW=64x128"], lambda a, f: a["window"] == [64, 128]),
    "CHECKPOINT": ([], lambda a, f: a["checkpoint"] == f["checkpoint"]),
    "IMAGE": ([], lambda a, f: a["image"] == f["image"]),
}


@pytest.mark.parametrize("name", PREDICTION_CASES)
def test_each_prediction_parameter_takes_effect(name, prediction_inputs, capsys, monkeypatch):
    import json
    f = prediction_inputs
    args, check = PREDICTION_CASES[name]
    fields = {"mask0": f["masks"][0], "labels": f["labels"], "largest": f["largest"]}
    base = [f"--CHECKPOINT={f['checkpoint']}", f"--IMAGE={f['image']}", f"--MASKS={','.join(f['masks'])}",
            "--JSON=True", "--DEVICE=cpu", "--TOPK=2"]
    code, out = run_in_process("RunPrediction.py", base + [a.format(**fields) for a in args], capsys, monkeypatch)
    assert code == 0, out.err
    answer = json.loads(out.out)
    assert check(answer, f), answer
    assert all(len(s["topk"]) == (5 if name == "TOPK" else 2) for s in answer["segments"])


def test_prediction_json_and_overlay_take_effect(prediction_inputs, capsys, monkeypatch):
    f = prediction_inputs
    overlay = f["dir"] / "overlay.png"
    base = [f"--CHECKPOINT={f['checkpoint']}", f"--IMAGE={f['image']}", f"--MASKS={f['masks'][0]}", "--DEVICE=cpu"]
    code, out = run_in_process("RunPrediction.py", base + [f"--OVERLAY={overlay}"], capsys, monkeypatch)
    assert code == 0 and out.out.startswith(f["image"]) and "overlay written" in out.out   # text, not JSON
    assert overlay.stat().st_size > 1000


def test_export_format_takes_effect(prediction_inputs, capsys, monkeypatch):
    """FORMAT picks the default output (Export.py:58 once read the block's default there)."""
    f = prediction_inputs
    code, out = run_in_process("Export.py", [f"--CHECKPOINT={f['checkpoint']}", "--FORMAT=safetensors",
                                             "--CHECK=False"], capsys, monkeypatch)
    assert code == 0, out.err
    assert (f["dir"] / "model" / "model.safetensors").is_file() and not (f["dir"] / "model.onnx").exists()
