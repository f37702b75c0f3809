"""Ablation.py end to end on tiny data: 2 variants (one with a '+' in its name) x 2 seeds, a few
steps, then a rerun that reuses the finished runs."""
import csv
import json
import os
import subprocess
import sys

import pytest

import Ablation
from helpers import run_script
from roilib.demo import make_demo
from roilib.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_two_variants_table_and_resume(tmp_path):
    data = tmp_path / "data"
    make_demo(data, seed=5, n_train=16, n_val=6)
    args = [sys.executable, os.path.join(ROOT, "Ablation.py"), f"--LOG_DIR={tmp_path / 'abl'}", "--NAME=t",
            "--VARIANTS=stem,crop+attention", "--SEEDS=0,1", "--STEPS=3", "--MIN_SIZE=64", "--MAX_SIZE=64",
            "--MAX_BATCH=4", "--WORKERS=0", "--DEVICE=cpu", "--JOBS=2",
            f"--TRAIN_IMAGES={data}/train/images", f"--TRAIN_ANNOTATIONS={data}/train/instances.json",
            f"--VAL_IMAGES={data}/val/images", f"--VAL_ANNOTATIONS={data}/val/instances.json"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    folder = tmp_path / "abl" / "t"
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["stem", "crop+attention"]
    for column in ("near pair mean", "far pair mean", "size <1k mean", "class boat mean", "class car spread"):
        assert column in rows[0]
    summary = json.loads((folder / "results.json").read_text())
    for variant in ("stem", "crop+attention"):
        per_seed = summary["variants"][variant]["mean_class_accuracy"]["per_seed"]
        assert len(per_seed) == 2 and all(0 <= v <= 1 for v in per_seed)
        evals = [json.loads((folder / "runs" / f"{variant}-s{s}" / "eval.json").read_text()) for s in (0, 1)]
        assert per_seed == [e["mean_class_accuracy"] for e in evals]
        assert float(next(r for r in rows if r["variant"] == variant)["mean_class_accuracy mean"]) == \
            pytest.approx(sum(per_seed) / 2, abs=1e-4)
        assert evals[0]["model"]["mode"] == ("attention" if variant == "stem" else "crop+attention")
        assert evals[0]["model"]["attention"] == ["stem"]
    assert "| stem |" in summary["table"] and (folder / "results.png").stat().st_size > 1000
    assert summary["class_table"].splitlines()[0].startswith("| variant | ") and "| crop+attention |" in summary["class_table"]
    interim = subprocess.run([a if not a.startswith("--SEEDS=") else "--SEEDS=0,1,2" for a in args]
                             + ["--REPORT_ONLY=True"], capture_output=True, text=True, timeout=600)
    assert interim.returncode == 0 and "interim results: 4 of 6 runs evaluated" in interim.stdout
    assert interim.stdout.count("not done yet") == 2 and not (folder / "runs" / "stem-s2").exists()
    assert json.loads((folder / "results.json").read_text())["variants"]["stem"]["accuracy"]["per_seed"] == \
        summary["variants"]["stem"]["accuracy"]["per_seed"]
    nothing = subprocess.run([a if not a.startswith("--NAME=") else "--NAME=new" for a in args]
                             + ["--REPORT_ONLY=True"], capture_output=True, text=True, timeout=600)
    assert nothing.returncode == 2 and "no run of ablation 'new' has been evaluated yet" in nothing.stderr
    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stdout.count("done before") == 4
    changed = subprocess.run([a if not a.startswith("--STEPS=") else "--STEPS=4" for a in args],
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "trained with other settings (STEPS" in changed.stderr


def fake_eval(mean_class, per_class):
    return {"mean_class_accuracy": mean_class, "accuracy": mean_class,
            "by_size": [{"bin": "<1k", "mean_class_accuracy": mean_class / 2},
                        {"bin": "8k-16k", "mean_class_accuracy": 1.0}],
            "per_class": [{"class": c, "accuracy": a} for c, a in per_class.items()]}


def test_per_class_columns_and_a_dataset_without_a_far_pair():
    """Per-class figures with their spread, a class a seed lacks averaged over the others, and a
    pair given no classes left out (CamVid has no designed far pair) rather than shown empty."""
    from roilib.ablation_report import aggregate, format_class_table, format_table
    results = {"stem": [fake_eval(0.6, {"Road": 0.5, "Pole": 0.9}), fake_eval(0.8, {"Road": 0.7})],
               "crop": [fake_eval(0.4, {"Road": 0.2, "Pole": 0.1}), fake_eval(0.5, {"Road": 0.4, "Pole": 0.3})]}
    pairs = {"near pair": "Road,Pavement", "far pair": ""}
    table = aggregate(results, pairs)
    assert table["stem"]["mean_class_accuracy"][:2] == pytest.approx((0.7, 0.1))
    assert table["stem"]["class Pole"][:2] == pytest.approx((0.9, 0.0))
    assert table["crop"]["near pair"][:2] == pytest.approx((0.3, 0.1))
    assert "far pair" not in table["stem"]
    summary = format_table(table, pairs)
    assert summary.splitlines()[0] == "| variant | mean class acc | accuracy | <1k | 8k-16k | near pair |"
    assert summary.splitlines()[2] == "| stem | 70.0 ± 10.0 | 70.0 ± 10.0 | 35.0 ± 5.0 | 100.0 ± 0.0 | 60.0 ± 10.0 |"
    assert format_class_table(table).splitlines() == [
        "| variant | Road | Pole |", "|---|---|---|", "| stem | 60.0 ± 10.0 | 90.0 |",
        "| crop | 30.0 ± 10.0 | 20.0 ± 10.0 |"]
    assert format_class_table(table, ["Pole"]).splitlines()[3] == "| crop | 20.0 ± 10.0 |"


def test_jobs_share_the_cpu_or_take_a_gpu_each(monkeypatch):
    import torch
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [s["run"] for s in Ablation.job_slots(1, "cpu")] == [{}]
    assert [s["run"] for s in Ablation.job_slots(4, "cpu")] == [{"env": {"OMP_NUM_THREADS": "2"}}] * 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")   # the user's own setting wins
    assert [s["run"] for s in Ablation.job_slots(2, "cpu")] == [{"env": {}}] * 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices = [s["run"]["device"] for s in Ablation.job_slots(3, "auto")]
    assert devices == ["cuda:0", "cuda:1", "cuda:0"]
    assert all("device" not in s["run"] for s in Ablation.job_slots(2, "cuda:1"))   # a named GPU is kept


def test_pair_accuracy_by_area():
    import importlib.util
    import numpy as np
    spec = importlib.util.spec_from_file_location("pair_by_size", os.path.join(ROOT, "tools", "pair_by_size.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    labels = np.array([8, 8, 9, 9, 0, 8])
    preds = np.array([8, 9, 9, 9, 1, 8])
    areas = np.array([100, 200, 300, 900, 50, 5000])
    rows = tool.accuracy_by_area(labels, preds, areas, [8, 9], [0, 250, 1000, 2000])
    # class 0 (wrong, 50 px) is not in the pair; the 5000-px segment is beyond the last edge
    assert rows == [(0, 250, 0.5, 2), (250, 1000, 1.0, 2), (1000, 2000, None, 0)]


def ablation_config(*args):
    from roilib import cli
    return cli.parse_config(vars(Ablation), Ablation.__file__, ["--STEPS=3", "--DEVICE=cpu", *args])


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """Ablation.run_variant with Train.py and EvaluateAccuracy.py replaced by stand-ins that
    leave what they would (config.json with the parameters Train.py parses, eval.json)."""
    from roilib import cli
    import Train
    calls = []

    def call(script, overrides, env=None):
        calls.append((script, dict(overrides)))
        if script == "Train.py":
            run_dir = tmp_path / overrides["RUN"]
            run_dir.mkdir(exist_ok=True)
            params = cli.parse_parameters(vars(Train), Train.__file__, Ablation.arguments(overrides))
            (run_dir / "config.json").write_text(json.dumps({"params": params}))
            result = dict(fake_eval(0.5, {"a": 0.5}), step=params["STEPS"])
            (run_dir / "eval.json").write_text(json.dumps(result))
    monkeypatch.setattr(Ablation, "call", call)
    Ablation.run_variant("stem", 0, str(tmp_path), ablation_config())
    assert [script for script, _ in calls] == ["Train.py", "EvaluateAccuracy.py"]
    calls.clear()
    return calls


def test_a_runs_line_is_written_whole(fake_runs, tmp_path, monkeypatch):
    """Runs report from threads of their own: a line and its newline in one write, else two
    runs' lines ran together ("done before: a  done before: b")."""
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass
    monkeypatch.setattr(sys, "stdout", Recorder())
    Ablation.run_variant("stem", 0, str(tmp_path), ablation_config())
    assert writes == ["  done before: stem-s0\n"]


# A change of what the run learns is named; where and how it runs is not a change.
@pytest.mark.parametrize("args,changed", [
    (["--LR=0.5"], "LR: 0.002 -> 0.5"), (["--STEPS=7"], "STEPS: 3 -> 7"), (["--MAX_BATCH=5"], "MAX_BATCH"),
    (["--ARCH=resnet34"], "ARCH"), (["--MIN_SIZE=64"], "MIN_SIZE"), (["--TRAIN_IMAGES=elsewhere"], "TRAIN_IMAGES"),
    (["--WORKERS=0"], None), (["--DEVICE=auto"], None), (["--AMP=False"], "AMP"), (["--JOBS=2"], None)])
def test_a_run_is_reused_only_with_the_settings_it_learned_with(fake_runs, tmp_path, capsys, args, changed):
    cfg = ablation_config(*args)
    if changed is None:
        assert Ablation.run_variant("stem", 0, str(tmp_path), cfg)["step"] == 3
        assert fake_runs == [] and "done before: stem-s0" in capsys.readouterr().out
        return
    with pytest.raises(UserError, match=f"trained with other settings \\({changed}.*--NAME.*--RETRAIN=True"):
        Ablation.run_variant("stem", 0, str(tmp_path), cfg)
    assert fake_runs == []
    Ablation.run_variant("stem", 0, str(tmp_path), ablation_config(*args, "--RETRAIN=True"))
    assert [(s, o.get("RESUME")) for s, o in fake_runs] == [("Train.py", False), ("EvaluateAccuracy.py", None)]


def test_context_classes_the_data_lacks_are_refused(data, tmp_path, capsys, monkeypatch):
    from helpers import run_in_process
    args = [f"--LOG_DIR={tmp_path}", "--DEVICE=cpu", f"--TRAIN_IMAGES={data}/train/images",
            f"--TRAIN_ANNOTATIONS={data}/train/instances.json", f"--VAL_IMAGES={data}/val/images",
            f"--VAL_ANNOTATIONS={data}/val/instances.json"]
    for option in ("CONTEXT_CLASSES", "FAR_CONTEXT_CLASSES"):
        code, printed = run_in_process("Ablation.py", args + [f"--{option}=boat,Car"], capsys, monkeypatch)
        assert code == 2 and f"--{option}: Car not among the data's classes; valid: " in printed.err
        assert "boat" in printed.err.split("valid:")[1] and not os.path.exists(tmp_path / "demo" / "runs")


def test_help_prints_the_variant_table():
    """--VARIANTS says "names from the table below": --help prints it, each name with its settings."""
    result = run_script("Ablation.py", "--help", here=True)
    assert result.returncode == 0 and "names from the table below" in result.stdout
    table = result.stdout.split("VARIANTS (name", 1)[1].splitlines()[1:]
    assert [row.split()[0] for row in table] == list(Ablation.VARIANT_TABLE)
    for row, overrides in zip(table, Ablation.VARIANT_TABLE.values()):
        assert row.split()[1:] == [f"--{k}={v}" for k, v in overrides.items()]
