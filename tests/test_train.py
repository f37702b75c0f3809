"""Train.py as a long multi-process job: two processes (torchrun, gloo on the CPU) that validate
and fail together, resume that applies or refuses each parameter, the run-folder lock, recipe
files."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

import Train
from AttentionNet import AttentionNet
from CocoReader import CocoReader
from helpers import ROOT, TINY, read_csv, run_in_process, run_script
from roilib import runlog
from roilib.cli import parse_parameters, read_block, user_message
from roilib.errors import UserError
from roilib.evaluation import merge_shards, predict_dataset, shard_result
from roilib.metrics import summarize
from roilib.run import ResumeRules, RunLock, check_class_names, resume_changes
from roilib.sampler import VaryingSizeBatchSampler, check_sizes

RULES = ResumeRules(Train.FIXED, Train.CHANGEABLE, Train.as_read)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
FAST = [*TINY, "--AMP=False", "--DEVICE=cpu"]   # float32: exact, and fast on CPUs without bf16


def said(call, *args):
    """The one line Train.py prints for the error that `call(*args)` raises: the library's
    words, with Train.py's parameter names and way out (roilib.cli.run)."""
    with pytest.raises(UserError) as caught:
        call(*args)
    return user_message(caught.value, Train.NAMES, Train.ADVICE)


def data_args(root):
    return [f"--TRAIN_IMAGES={root}/train/images", f"--TRAIN_ANNOTATIONS={root}/train/instances.json",
            f"--VAL_IMAGES={root}/val/images", f"--VAL_ANNOTATIONS={root}/val/instances.json"]


def torchrun(args, port, **env):
    """Train.py (through tests/train_probe.py) in 2 processes; (result, seconds)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           os.path.join(ROOT, "tests", "train_probe.py"), *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(ENV, **env))
    return result, time.perf_counter() - start


def probe_log(path):
    """{step: (height, width, [segment ids])} of one process's batches."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return {int(r[0]): (int(r[1]), int(r[2]), r[3:]) for r in rows}


def test_two_processes_share_geometry_and_validate_as_one(data, tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    result, _ = torchrun([*FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=ddp", "--STEPS=4",
                          "--VAL_EVERY=4"], 29561, PROBE_LOG=str(probes))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("validation at step 4") == 1
    assert result.stdout.count("new run") == 1            # rank 0 alone reports and writes
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    # (c) one geometry and batch size per step on both processes, different samples
    ranks = [probe_log(probes / f"rank{r}.txt") for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(ranks[1]) == [1, 2, 3, 4]
    for step in ranks[0]:
        (h0, w0, ids0), (h1, w1, ids1) = ranks[0][step], ranks[1][step]
        assert (h0, w0, len(ids0)) == (h1, w1, len(ids1))
    assert any(ranks[0][s][2] != ranks[1][s][2] for s in ranks[0])
    # (a) the sharded validation equals one process evaluating the same checkpoint
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4
    assert not any(k.startswith("module.") for k in state["model"])   # saved unwrapped from DDP
    model = AttentionNet.from_state(state)
    val = CocoReader(data / "val" / "images", data / "val" / "instances.json", train=False)
    args = dict(device=torch.device("cpu"), window=tuple(state["window"]), max_batch=6, progress=False)
    whole = predict_dataset(model, val, **args)
    full = summarize(whole["labels"], whole["preds"], whole["areas"], val.class_names, whole["topk"])
    assert state["metrics"] == {k: full[k] for k in ("accuracy", "mean_class_accuracy", "count")}
    shards = merge_shards([shard_result(predict_dataset(model, val, rank=r, world_size=2, **args))
                           for r in (0, 1)])
    for key in ("labels", "preds", "topk", "areas", "segments"):
        assert np.array_equal(shards[key], whole[key]), key
    rows = read_csv(tmp_path / "ddp" / "train_log.csv")
    assert [r["step"] for r in rows if r["loss"]] == ["2", "4"]


def test_error_on_one_process_stops_both_at_once(data, tmp_path):
    """(b) rank 1's data loader fails at step 3: both processes stop (no collective timeout),
    the message is printed once, and the checkpoint of step 2 is intact."""
    result, seconds = torchrun([*FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=fail",
                                "--STEPS=6", "--SAVE_EVERY=2", "--VAL_EVERY=0"], 29562, PROBE_FAIL="1:3")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert seconds < 150, f"took {seconds:.0f} s"   # the collective timeout is 30 min
    assert out.count("injected failure on rank 1 at step 3") == 1, out
    assert out.count("stopped: process 1 of 2 failed") == 1, out
    assert 'Train.py", line' not in out, out      # no traceback through the training code
    assert torch.load(tmp_path / "fail" / "last.pt", weights_only=True)["step"] == 2


def expected_lr(step, lr=1e-3, warmup=0, cosine_steps=6):
    """The documented schedule: cosine to 1% over the first run's STEPS, then 1% flat (a
    6-step run: its WARMUP_STEPS=2 is capped to a tenth of 6, i.e. none)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / (cosine_steps - warmup))
    return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def tensorboard_steps(run, tag="train/loss"):
    """(steps TensorBoard shows, steps in the event files as written)."""
    shown = EventAccumulator(str(run))
    shown.Reload()
    written = [e.step for f in sorted(run.glob("events.out.tfevents.*"))
               for e in EventFileLoader(str(f)).Load() if any(v.tag == tag for v in e.summary.value)]
    return [s.step for s in shown.Scalars(tag)], written


def test_resume_applies_or_refuses_each_change(data, tmp_path):
    common = [*FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r", "--LOG_EVERY=1",
              "--VAL_EVERY=0", "--SAVE_EVERY=2"]
    run_script("Train.py", *common, "--STEPS=6", "--SNAPSHOT_EVERY=4", here=True)
    run = tmp_path / "r"
    assert not (run / "best.pt").exists()                  # VAL_EVERY=0: never validated
    shutil.copy(run / "step_4.pt", run / "last.pt")        # as a kill after step 6's logs leaves it

    refused = run_script("Train.py", *common, "--STEPS=6", "--ATTENTION=layer1", "--MIN_SIZE=32",
                         check=False, here=True)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    for words in ("ATTENTION: 'stem' -> 'layer1'", "MIN_SIZE: 64 -> 32", "--RESUME=False"):
        assert words in refused.stderr

    out = run_script("Train.py", *common, "--STEPS=9", "--LR=1e-3", "--WEIGHT_DECAY=0.01", here=True).stdout
    assert "resuming" in out and "at step 4" in out
    assert "changed on resume: LR: 0.002 -> 0.001" in out and "STEPS: 6 -> 9" in out
    assert "steps 7-9 run at" in out and "warm-up: 0 steps, not WARMUP_STEPS=2" in out
    lrs = {int(r["step"]): float(r["lr"]) for r in read_csv(run / "train_log.csv") if r["loss"]}
    assert sorted(lrs) == list(range(1, 10))
    for step in range(5, 10):   # the LR step N ran with (the (N-1)th of the schedule, from 0)
        assert lrs[step] == pytest.approx(expected_lr(step - 1), rel=2e-3), step
    assert all(lrs[s + 1] <= lrs[s] for s in range(4, 9))  # never up again
    state = torch.load(run / "last.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert groups[0]["lr"] == pytest.approx(expected_lr(8), rel=1e-6)   # step 9's, at 1% of LR
    config = json.loads((run / "config.json").read_text())
    assert config["params"]["LR"] == 1e-3 and config["lr_schedule"]["cosine_steps"] == 6
    assert state["params"]["STEPS"] == 9 and state["schedule_steps"] == 6 and state["warmup_steps"] == 0

    shown, written = tensorboard_steps(run)
    assert written.count(5) == 2                          # written twice, before and after resume
    assert shown == list(range(1, 10))                    # shown once (purge_step)


def test_second_writer_is_refused(data, tmp_path):
    run = tmp_path / "r"
    lock = RunLock(str(run))
    (run / ".last.pt.tmp4242").write_bytes(b"the holder's save in flight")
    with pytest.raises(UserError, match=f"in use by another Train.py \\(pid {os.getpid()}\\)"):
        RunLock(str(run))
    result = run_script("Train.py", *FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r",
                        check=False, env=ENV)
    assert result.returncode == 2 and f"(pid {os.getpid()})" in result.stderr
    assert (run / ".last.pt.tmp4242").exists()            # not removed by the refused process
    lock.release()
    RunLock(str(run)).release()                           # free again


def test_every_parameter_is_classified_for_resume():
    names = [name for name, _ in read_block(Train.__file__)]
    groups = Train.FIXED + Train.CHANGEABLE + Train.FOLDER
    assert sorted(groups) == sorted(names) and len(set(groups)) == len(groups)


def test_class_names_are_part_of_the_model():
    assert re.search("other classes.*; start afresh with --RESUME=False",
                     said(check_class_names, ["grass", "road"], ["grass", "water"], "last.pt"))
    stored = train_namespace()
    changed = dict(stored, CLASS_NAMES="grass,water")
    assert re.search("CLASS_NAMES: None -> 'grass,water'.*stored values, or start afresh .*or choose another --RUN$",
                     said(resume_changes, stored, changed, "last.pt", RULES))


def test_label_convention_is_fixed_on_resume_and_older_runs_resume():
    stored = train_namespace()
    older = {k: v for k, v in stored.items() if k not in ("BACKGROUND", "IGNORE")}
    assert resume_changes(older, stored, "last.pt", RULES) == []
    with pytest.raises(UserError, match="IGNORE: '' -> '255'"):
        resume_changes(older, dict(stored, IGNORE="255"), "last.pt", RULES)


@pytest.mark.parametrize("name,value", [("VAL_MAX_IMAGES", -1), ("LOG_EVERY", -1), ("STEPS", 0),
                                        ("LR", 0.0)])
def test_bad_values_are_refused_before_training(name, value):
    """Declared in Train.py's block, checked by roilib.cli before anything runs."""
    with pytest.raises(UserError, match=f"--{name}={value}: expected"):
        parse_parameters(train_namespace(), os.path.join(ROOT, "Train.py"), [f"--{name}={value}"])


def test_rules_across_parameters_are_refused_before_training():
    check_sizes(96, 160)
    assert said(check_sizes, 200, 160).startswith("--MIN_SIZE=200 --MAX_SIZE=160: expected MIN_SIZE <= MAX_SIZE")


def test_geometry_depends_on_the_step_not_the_rank():
    labels = np.arange(60) % 5
    ranks = [VaryingSizeBatchSampler(labels, 64, 256, 200000, 16, rank=r, world_size=3) for r in range(3)]
    for step in range(40):
        batches = [s.batch_for_step(step) for s in ranks]
        assert len({(len(b), b[0][1], b[0][2]) for b in batches}) == 1
        assert len({tuple(i for i, *_ in b) for b in batches}) > 1


def train_namespace():
    return {name: getattr(Train, name) for name in Train.FIXED + Train.CHANGEABLE + Train.FOLDER}


def test_recipe_files_apply_in_order():
    coco = os.path.join(ROOT, "configs", "coco_r50.py")
    params = parse_parameters(train_namespace(), Train.__file__, [coco, "--STEPS=10"])
    assert params["DATASET"] == "coco" and params["MIN_SIZE"] == 160 and params["STEPS"] == 10
    params = parse_parameters(train_namespace(), Train.__file__, ["--STEPS=10", coco])
    assert params["STEPS"] == 200000
    params = parse_parameters(train_namespace(), Train.__file__,
                              [os.path.join(ROOT, "configs", "opensurfaces_r50.py")])
    assert params["DATASET"] == "opensurfaces" and params["WEIGHTS"] == "imagenet"


@pytest.mark.parametrize("text,message", [
    ("STEPZ = 5\n", r"unknown parameter STEPZ \(did you mean STEPS\?\)"),
    ("import os\n", "expected NAME = value"), ("STEPS = int('5')\n", "expected NAME = value"),
    ("STEPS = 1.5\n", "STEPS = 1.5: expected int"), ("STEPS = \n", "not Python")])
def test_bad_recipe_files_are_refused(tmp_path, text, message):
    recipe = tmp_path / "recipe.py"
    recipe.write_text('"""a recipe"""\n' + text)
    with pytest.raises(UserError, match=message):
        parse_parameters(train_namespace(), Train.__file__, [str(recipe)])


def test_resume_that_runs_no_step_keeps_config_and_a_bad_log_is_one_line(data, tmp_path):
    """A resume with nothing to do (STEPS reached, or STOP_AT passed) leaves config.json
    describing the model as trained, whatever new values it was given; a train_log.csv that
    is not text stops the resume in one line that says how to go on."""
    common = [*FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--RUN=r", "--VAL_EVERY=0"]
    run_script("Train.py", *common, "--STEPS=2", here=True)
    config = (tmp_path / "r" / "config.json").read_text()
    for extra, said in ((["--STEPS=2"], "already trained 2 steps"),
                        (["--STEPS=5", "--STOP_AT=2"], "past STOP_AT=2: no step to run")):
        out = run_script("Train.py", *common, *extra, "--LR=0.5", "--WEIGHT_DECAY=0.3", here=True).stdout
        assert said in out and "changed on resume: LR: 0.002 -> 0.5" in out
        assert (tmp_path / "r" / "config.json").read_text() == config
    log = tmp_path / "r" / "train_log.csv"
    log.write_bytes(log.read_bytes() + b"3,0.5\xff,1e-3,1.0,,\n")
    result = run_script("Train.py", *common, "--STEPS=4", check=False, here=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "train_log.csv: cannot be read" in result.stderr and "--RESUME=False" in result.stderr
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 2   # untouched


@pytest.mark.parametrize("content", [b"step,loss\n1,\xff\xfe\n", b"\x80step,loss\n",
                                     b"step,loss\n1," + b"9" * 200000 + b"\n", None])
def test_a_train_log_that_is_not_a_csv_text_is_one_line(tmp_path, content):
    """Each way train_log.csv can fail to read (bytes, an endless field, a folder)."""
    log = tmp_path / "train_log.csv"
    if content is None:
        log.mkdir()
    else:
        log.write_bytes(content)
    assert re.search("cannot be read as this run's log .*, or start afresh with --RESUME=False .* or choose another --RUN",
                     said(runlog.trim_log, str(log), 1))
    assert content is None or log.read_bytes() == content     # left as it was


@pytest.mark.parametrize("run", [".", "..", "../elsewhere", "a/../..", "/", "link"])
def test_fresh_start_refuses_a_run_that_is_not_inside_log_dir(tmp_path, run, capsys, monkeypatch):
    """--RESUME=False moves the run folder aside: never LOG_DIR itself or anything above or
    outside it (a symlink out of LOG_DIR included). Refused in one line, nothing moved."""
    logs = tmp_path / "logs"
    (logs / "kept").mkdir(parents=True)
    (logs / "link").symlink_to(tmp_path)
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(logs))
    code, out = run_in_process("Train.py", [f"--LOG_DIR={logs}", f"--RUN={run}", "--RESUME=False",
                                            "--DEVICE=cpu"], capsys, monkeypatch)
    assert code == 2 and "not a folder inside --LOG_DIR" in out.err, out
    assert len(out.err.strip().splitlines()) == 1
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(logs))) == before


@pytest.mark.parametrize("files,created,removed", [
    ([], True, True), (["config.json", "train_log.csv", "events.out.tfevents.1.host"], True, True),
    (["config.json", "last.pt"], True, False), (["notes.txt"], True, False), ([], False, False),
    (["config.json"], False, False)])
def test_a_run_folder_without_checkpoint_is_removed_only_when_made_here(tmp_path, files, created, removed):
    """What a failed start leaves: a folder it made that holds only its own records goes;
    a checkpoint, someone's file, or a folder that was there before stays as it is."""
    run = tmp_path / "r"
    if not created:
        run.mkdir()
    lock = RunLock(str(run))
    for name in files:
        (run / name).write_text("x")
    lock.discard_if_unused(runlog.STARTUP_FILES)
    assert run.exists() != removed
    if not removed:
        assert sorted(os.listdir(run)) == sorted(files + [".lock"])


def test_failed_start_leaves_no_run_folder(data, tmp_path):
    """Failed before its first step: no folder. Failed after steps, before any checkpoint: the
    folder stays with the log that shows what happened."""
    common = [*FAST, *data_args(data), f"--LOG_DIR={tmp_path}", "--VAL_EVERY=0", "--SAVE_EVERY=0"]
    result = run_script("Train.py", *common, "--RUN=r", f"--VAL_ANNOTATIONS={tmp_path}/missing.json",
                        check=False, here=True)
    assert result.returncode == 2 and "missing.json" in result.stderr
    assert os.listdir(tmp_path) == []
    result = run_script("Train.py", *common, "--RUN=nan", "--LR=1e30", "--LOG_EVERY=1", "--STEPS=6",
                        check=False, here=True)
    assert result.returncode == 2 and "the loss became nan" in result.stderr
    assert os.listdir(tmp_path) == ["nan"] and read_csv(tmp_path / "nan" / "train_log.csv")
