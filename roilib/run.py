"""A training run's life in one object, `Run`: its folder (checked against what the run reads,
claimed and locked: one writer), the resume check against the settings stored in last.pt,
its checkpoints (last, best, snapshots; each written atomically), its records (console lines,
train_log.csv, TensorBoard: roilib.runlog), what Ctrl-C leaves, and the rules of several
processes (torchrun): rank 0 alone writes, and work that can fail on one process alone runs
inside `run.together()`, so that all processes stop at once (roilib.runtime.Distributed).

The script says which of its parameters a resumed run must keep (`ResumeRules.fixed`: they
define the model, the data or the schedule's shape) and which may change and are announced
(`changeable`); this module knows no parameter by name. Its errors name the problem: those
about last.pt are ResumeError, those about the folder FolderClash, a NaN loss Diverged, and
the script adds its way out to each (roilib.cli.run).
"""
import contextlib
import fcntl
import fnmatch
import math
import os
import shutil
import time
from collections import namedtuple

import torch

from roilib.checkpoint import load_checkpoint
from roilib.dataset import SkippedFiles
from roilib.errors import (BadValue, Diverged, FolderClash, Interrupted, ResumeClash, ResumeError,
                           UserError)
from roilib.evaluation import validate
from roilib.optim import FINAL_FACTOR
from roilib.outputs import remove_stale_temporaries, writing
from roilib.runlog import STARTUP_FILES, LossMeter, RunLogger
from roilib.runtime import Distributed, amp_dtype, autocast, resolve_device
from roilib.windows import WINDOW_RULE
from roilib.writeplan import RUN_FILES, check_writes

LOCK_NAME = ".lock"
# fixed, changeable: parameter names; as_read(params) -> the parameters as a run reads them
# (e.g. a default path filled in), so that "" and the path it stands for compare equal.
ResumeRules = namedtuple("ResumeRules", "fixed changeable as_read")


def due(step, every):
    """Whether a cadence of `every` steps (0 = never) falls on `step`."""
    return every > 0 and step % every == 0


class Run:
    """One training run in `run_dir`, from the claim of its folder to its last line; used as
    `with Run(...) as run:` (see Train.py). `params`: stored with every checkpoint and in
    config.json as they are; `rules`: a ResumeRules."""

    def __init__(self, params, run_dir, resume, device, amp, rules):
        self.params, self.run_dir, self.resume_asked, self.rules = params, run_dir, resume, rules
        self.dist = Distributed()
        self.device = resolve_device(device, self.dist.local_rank)
        self.dtype = amp_dtype(self.device, amp)
        self.last = os.path.join(run_dir, "last.pt")
        self.lock = self.state = self.model = self.records = None
        self.changes = []
        self.saved = None        # last.pt's step once written or resumed from (said on Ctrl-C)
        self.stepped = False     # a failure before the first step leaves no folder behind
        self.meter, self.skipped = LossMeter(), SkippedFiles()

    def __enter__(self):
        self.dist.start(self.device)
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if self.lock and error is not None and not self.stepped:
                self.lock.discard_if_unused(STARTUP_FILES)
            elif self.lock:
                self.lock.release()
        finally:
            self.dist.stop()
        if kind is KeyboardInterrupt:
            if self.saved is None:
                raise KeyboardInterrupt("no checkpoint was written yet, nothing to resume from") from None
            raise Interrupted(f"the last checkpoint is {self.last} (step {self.saved})") from None

    def together(self):
        """A section every process leaves alike: all go on, or all raise (runtime.Distributed)."""
        return self.dist.together()

    def autocast(self):
        return autocast(self.device, self.dtype)

    def print(self, text):
        if self.dist.is_main:
            print(text, flush=True)

    def claim(self, reads):
        """Before any work: the run's files never over what it reads (`reads`: its data and
        weights; roilib.writeplan); then rank 0, which alone writes there, locks the folder,
        removes the temporaries a killed run left and, for a fresh start, moves an old run aside."""
        with self.together():
            try:
                check_writes([("run", os.path.join(self.run_dir, name)) for name in RUN_FILES], reads,
                             folders=[("run", self.run_dir)], owns=("run",),
                             moved=[] if self.resume_asked else [("run", self.run_dir)])
            except BadValue as clash:
                kind = ResumeClash if self.resume_asked else FolderClash
                raise kind(clash.problem, "; or ", **clash.values) from None
        with self.together():
            self.lock = claim_run_folder(self.run_dir, self.resume_asked) if self.dist.is_main else None

    def resume(self, build, expected, class_names):
        """The model of last.pt, `build(state, path)`, once last.pt is found to be a training
        checkpoint of the same model (`expected`: {config key: value}), classes and fixed
        parameters; None for a new run (no last.pt, or a fresh start)."""
        if not (self.resume_asked and os.path.exists(self.last)):
            return None
        try:
            state = load_checkpoint(self.last)
        except UserError as error:
            raise ResumeError(str(error)) from None
        model = build(state, self.last)
        found = {key: model.config.get(key) for key in expected}
        if found != expected:
            raise ResumeError(f"{self.last} holds a different model ({found}) than asked ({expected})")
        missing = [key for key in ("optimizer", "step", "params") if key not in state]
        if missing:
            raise ResumeError(f"{self.last}: no training state ({', '.join(missing)} missing: not a "
                              "training checkpoint)")
        self.changes = resume_changes(state["params"], self.params, self.last, self.rules)
        check_class_names(model.class_names, class_names, self.last)
        if state.get("world_size", self.dist.world_size) != self.dist.world_size:
            self.changes.append(f"processes: {state['world_size']} -> {self.dist.world_size} (the data "
                                "order differs from here on)")
        self.state = state
        return model

    def start(self, model, optimizer, scaler, train_set, val_set, window, schedule, steps, stop_at,
              settings):
        """The optimiser and scaler restored (with this run's weight decay: `optimizer`'s) and the
        records opened; says what runs. `schedule`: (warm-up, cosine steps); `steps`: the run's
        length; `settings`: how it runs, in words. Returns the step to go on from."""
        self.model, self.optimizer, self.scaler, self.window = model, optimizer, scaler, window
        self.schedule, self.convention = schedule, getattr(train_set, "convention", None)
        step = 0 if self.state is None else restore_training_state(self.state, optimizer, scaler, self.last)
        self.saved = None if self.state is None else step
        self.best = (self.state or {}).get("best_metric", -1.0)
        lr_schedule = {"warmup_steps": schedule[0], "cosine_steps": schedule[1], "final_factor": FINAL_FACTOR}
        self.records = RunLogger(self.run_dir, self.params, steps, train_set, self.dist, self.device,
                                 self.dtype, resumed_step=None if self.state is None else step,
                                 schedule=lr_schedule, will_train=step < stop_at)
        self.records.announce(train_set, val_set, model, step, settings)
        for change in self.changes:
            self.print(f"changed on resume: {change}")
        self.print(f"evaluation window: {window[0]}x{window[1]} ({WINDOW_RULE})")
        return step

    def parallel(self, model):
        """The model as the training steps call it: DDP over several processes."""
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def record(self, loss, images, skipped):
        """One step's loss (kept on the device), batch size and unreadable files."""
        self.stepped = True
        self.meter.add(loss, images)
        self.skipped.add(skipped)

    def log(self, step, lr):
        """A progress line and a train_log.csv row: the loss and img/s since the last one, over
        all processes (a collective)."""
        loss, rate = self.meter.summary(self.dist)
        with self.together():
            if not math.isfinite(loss):
                raise Diverged(f"the loss became {loss} between steps {step - self.meter.steps} and {step} "
                               f"at a learning rate of {lr:.2e} (the checkpoints in {self.run_dir} are "
                               "from before and intact)")
            self.records.log_train(step, loss, lr, rate)
            self.records.log_skipped(self.skipped)
        self.meter = LossMeter()

    def validate(self, step, val_set, max_batch, workers, limit):
        """Validate (last.pt saved before: a failed validation never costs the training), then
        save last.pt with the metrics, and best.pt when the mean class accuracy improved."""
        self.save("last.pt", step)
        metrics = validate(self.model, val_set, self.device, self.dtype, self.dist, self.records, step,
                           self.window, max_batch, workers, limit)
        improved = metrics["mean_class_accuracy"] > self.best
        self.best = max(self.best, metrics["mean_class_accuracy"])
        self.save("last.pt", step, **metrics)
        if improved:
            self.save("best.pt", step, **metrics)
            self.print(f"best.pt updated: mean class accuracy {self.best:.4f} at step {step}")
        self.meter.restart_clock()
        return metrics

    def save(self, name, step, **metrics):
        """A checkpoint in the run folder, written by rank 0, atomically; never a model that
        holds NaN/inf over a good checkpoint."""
        with self.together():
            if self.dist.is_main:
                if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                    raise Diverged(f"the weights hold NaN/inf at step {step}: not saving (the checkpoints "
                                   "already written are intact)")
                self.model.save(os.path.join(self.run_dir, name), optimizer=self.optimizer.state_dict(),
                                scaler=self.scaler.state_dict(), step=step, best_metric=self.best,
                                metrics=metrics, params=self.params, window=list(self.window),
                                schedule_steps=self.schedule[1], warmup_steps=self.schedule[0],
                                world_size=self.dist.world_size, label_convention=self.convention)
        if name == "last.pt":
            self.saved = step

    def finish(self, step):
        self.records.finish(step, self.best, self.skipped)


def restore_training_state(state, optimizer, scaler, checkpoint):
    """Optimiser and scaler from a training checkpoint's `state`, keeping `optimizer`'s own
    weight decay (this run's); returns its step. (The LR is set before every step.)"""
    try:
        decay = optimizer.param_groups[0]["weight_decay"]
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state.get("scaler") or {})
    except (ValueError, KeyError, TypeError) as error:
        raise ResumeError(f"{checkpoint}: its optimiser state does not fit this model ({error})") from None
    optimizer.param_groups[0]["weight_decay"] = decay   # group 1 (norms, biases): none
    return int(state["step"])


def resume_changes(stored, params, checkpoint, rules):
    """Compare this run's parameters with those stored in `checkpoint`: a difference in a fixed
    one -> ResumeError listing all of them; returns ["NAME: old -> new", ...] of the
    changeable ones that differ (compared as read: see ResumeRules)."""
    if not isinstance(stored, dict):
        raise ResumeError(f"{checkpoint}: no parameters stored (not a training checkpoint)")
    fixed = differences(stored, params, rules.fixed, rules.as_read)
    if fixed:
        raise ResumeError(f"{checkpoint} was trained with other settings ({'; '.join(fixed)}); resume "
                          "with the stored values", then=", or ")
    return differences(stored, params, rules.changeable, rules.as_read)


def differences(stored, params, names, as_read):
    """["NAME: old -> new", ...] of the `names` whose values differ, compared as read."""
    old, new = as_read(dict(stored)), as_read(dict(params))
    return [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in names
            if name in new and old.get(name) != new[name]]


def check_class_names(found, expected, checkpoint):
    """The classes (and their order) are part of the model."""
    if list(found or []) != list(expected):
        raise ResumeError(f"{checkpoint} was trained on other classes ({_names(found or [])}) than this "
                          f"data has ({_names(expected)})")


def _names(names, shown=5):
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more


class RunLock:
    """One run folder, one writer: an exclusive lock on <run folder>/.lock (created if needed)
    until release() or exit. The OS drops a flock when its process ends, however it ends, so
    a killed run never leaves a stale lock behind."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.created = not os.path.isdir(run_dir)   # by this process: it may remove it again
        with writing(run_dir, "the run folder", "check the run folder's path"):
            os.makedirs(run_dir, exist_ok=True)
            self.file = open(os.path.join(run_dir, LOCK_NAME), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"{run_dir} is in use by another Train.py (pid {holder}); wait for it to "
                            "end, stop it, or use another run folder") from None
        with writing(self.file.name, "the run's lock"):
            self.file.seek(0)
            self.file.truncate()
            self.file.write(f"{os.getpid()}\n")
            self.file.flush()

    def release(self):
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def discard_if_unused(self, run_files):
        """Release the lock; a folder this process created that holds only the lock and files
        matching `run_files` (glob patterns: the records a run opens before its first step) is
        removed, so that a run which failed before any checkpoint leaves nothing behind.
        Anything else in it (a checkpoint, a user's file) keeps the folder as it is."""
        self.release()
        if not self.created:
            return
        patterns = (LOCK_NAME, *run_files)
        with contextlib.suppress(OSError):   # kept: a later start reads it as a new run
            names = os.listdir(self.run_dir)
            if all(any(fnmatch.fnmatch(n, p) for p in patterns) for n in names):
                for name in names:
                    os.remove(os.path.join(self.run_dir, name))
                os.rmdir(self.run_dir)


def claim_run_folder(run_dir, resume):
    """Lock `run_dir` for this process and tidy it: delete the checkpoint temporaries a killed
    run left (safe only now that no other process writes there); without `resume`, move an
    existing run aside (never delete it) and lock a fresh folder. Returns the RunLock."""
    lock = RunLock(run_dir)
    for name in remove_stale_temporaries(run_dir):
        print(f"removed {name}: a checkpoint write cut off by the interrupted run", flush=True)
    if resume or not set(os.listdir(run_dir)) - {LOCK_NAME}:
        return lock
    aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(run_dir, aside)   # the lock moves with it, and is held until the new one is
    fresh = RunLock(run_dir)
    lock.release()
    print(f"starting afresh: moved the existing run to {aside}", flush=True)
    return fresh
