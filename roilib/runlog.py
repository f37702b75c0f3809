"""A training run's records: console lines, train_log.csv, config.json, TensorBoard, and
the loss and throughput meter between two progress lines (like torchvision's MetricLogger).
Only rank 0 writes. The run's parameters are stored as given, never read by name here."""
import csv
import json
import os
import sys
import threading
import time

import torch

from roilib.checkpoint import describe_model
from roilib.errors import ResumeError
from roilib.outputs import atomic_write, writing
from roilib.progress import format_seconds
from roilib.runtime import precision_name

# What a failed write of the run's records leaves.
KEPT = "the checkpoints saved before are intact"
RATE_FIELD = "img_per_s"   # train_log.csv's throughput column (Benchmark.py reads it back)
CSV_FIELDS = ["step", "loss", "lr", RATE_FIELD, "val_accuracy", "val_mean_class_accuracy"]
# The records a run opens before its first checkpoint (see RunLock.discard_if_unused).
STARTUP_FILES = ("config.json", "train_log.csv", "events.out.tfevents.*")  # written before the first step


def read_log(csv_path):
    """train_log.csv's rows; a file that is not a CSV text log (a non-UTF-8 byte, a NUL, a
    field beyond csv's limit, a folder) is a ResumeError that says how to go on."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ResumeError(f"{csv_path}: cannot be read as this run's log ({why}); move it aside to "
                          "resume with a new log", then=", or ") from None


def trim_log(csv_path, step):
    """Drop train_log.csv rows after `step` (the step resumed from): a killed run logged
    them after its last checkpoint, and they are logged again. Torn or malformed rows go
    too. Rewritten atomically. Returns the number of rows dropped."""
    rows = read_log(csv_path)
    header = rows[0] if rows else CSV_FIELDS  # an empty file: killed before its header
    kept = [row for row in rows[1:] if len(row) == len(header) and row[0].isdigit()
            and int(row[0]) <= step]
    if rows and len(kept) == len(rows) - 1:
        return 0
    with atomic_write(csv_path, newline="") as f:
        csv.writer(f).writerows([header] + kept)
    return max(len(rows) - 1, 0) - len(kept)


class LossMeter:
    """Loss and throughput over the steps since the last progress line, without a device
    sync per step (losses stay on the device until the log step)."""

    def __init__(self):
        self.losses, self.images, self.steps = [], 0, 0
        self.restart_clock()

    def restart_clock(self):
        self.start = time.perf_counter()
        self.images_since_start = 0

    def add(self, loss, images):
        self.losses.append(loss)
        self.images += images
        self.images_since_start += images
        self.steps += 1

    def summary(self, dist):
        """(mean loss, images/s) over all processes, since the last progress line: the one
        device sync and all-reduce per progress line. A collective: every process calls it."""
        losses = torch.stack(self.losses).float()
        local = torch.stack([losses.mean(), torch.tensor(float(self.images_since_start),
                                                          device=losses.device)])
        loss_sum, images = dist.sum(local).tolist()
        return loss_sum / dist.world_size, images / max(time.perf_counter() - self.start, 1e-9)


class RunLogger:
    """Console lines, train_log.csv, config.json and TensorBoard; only rank 0 writes."""

    def __init__(self, run_dir, params, steps, train_set, dist, device, dtype, resumed_step, schedule,
                 will_train=True):
        """`params`: stored in config.json as they are; `steps`: the run's length (for the ETA);
        `will_train`: False when no step will run (config.json then keeps the values of the
        model it describes)."""
        self.run_dir, self.active, self.steps = run_dir, dist.is_main, steps
        self.device, self.dtype, self.dist = device, dtype, dist
        self.start = time.perf_counter()
        self.first_step = resumed_step or 0
        self.tensorboard = None
        if not self.active:
            return
        with writing(run_dir, "the run folder"):
            os.makedirs(run_dir, exist_ok=True)
        config = {"params": params, "num_classes": train_set.num_classes,
                  "class_names": train_set.class_names, "world_size": dist.world_size,
                  "device": str(device), "precision": precision_name(dtype),
                  "lr_schedule": schedule, "resumed_from_step": resumed_step,
                  "torch": torch.__version__, "command": sys.argv}
        if will_train:
            with atomic_write(os.path.join(run_dir, "config.json"), what="the run's config") as f:
                json.dump(config, f, indent=2)
        self.csv_path = os.path.join(run_dir, "train_log.csv")
        if os.path.exists(self.csv_path):
            dropped = trim_log(self.csv_path, self.first_step)
            if dropped:
                self.print(f"train_log.csv: dropped {dropped} rows logged after step "
                           f"{self.first_step} by the interrupted run (those steps are done again)")
        else:
            with atomic_write(self.csv_path, newline="", what="the training log") as f:
                csv.writer(f).writerow(CSV_FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.print("TensorBoard is not installed: no event files (pip install tensorboard)")
            return
        # Events after the resumed step were written by the interrupted run: hidden.
        purge = self.first_step + 1 if resumed_step is not None else None
        quiet_event_writer_failures()
        with writing(run_dir, "the TensorBoard events", KEPT):
            self.tensorboard = SummaryWriter(run_dir, purge_step=purge)

    def print(self, text):
        if self.active:
            print(text, flush=True)

    def announce(self, train_set, val_set, model, step, settings):
        """The run's first lines; `settings`: how it runs, in words (weights, memory format,
        workers, crop sizes...)."""
        what = f"resuming {self.run_dir} at step {step}" if self.first_step else f"new run in {self.run_dir}"
        self.print(f"{what}\n"
                   f"data: {len(train_set)} training segments in {len(train_set.images)} images, "
                   f"{len(val_set)} validation segments, {train_set.num_classes} classes\n"
                   f"model: {describe_model(model.config)}\n"
                   f"device: {self.device} x{self.dist.world_size}, {precision_name(self.dtype)}; "
                   f"{self.steps} steps, {settings}")
        summary = getattr(train_set, "summary", None)
        if callable(summary) and summary():
            self.print(summary())

    def log_train(self, step, loss, lr, rate):
        if not self.active:
            return
        done = step - self.first_step
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(done, 1) * (self.steps - step)
        self.print(f"step {step:>6}/{self.steps} | loss {loss:.4f} | lr {lr:.2e} | {rate:7.1f} img/s | "
                   f"ETA {format_seconds(eta)}")
        self._csv([step, f"{loss:.5f}", f"{lr:.3e}", f"{rate:.1f}", "", ""])
        self._events(step, {"train/loss": loss, "train/lr": lr, "train/img_per_s": rate})

    def log_val(self, step, metrics, segments_per_s):
        if not self.active:
            return
        self.print(f"validation at step {step}: accuracy {metrics['accuracy']:.4f}, mean class accuracy "
                   f"{metrics['mean_class_accuracy']:.4f} ({metrics['count']} segments, "
                   f"{segments_per_s:.0f} segments/s)")
        self._csv([step, "", "", "", f"{metrics['accuracy']:.5f}", f"{metrics['mean_class_accuracy']:.5f}"])
        self._events(step, {"val/accuracy": metrics["accuracy"],
                            "val/mean_class_accuracy": metrics["mean_class_accuracy"]})

    def log_skipped(self, skipped):
        """Each image the loader could not read (and replaced), once, when first met."""
        for reason in skipped.unreported():
            self.print(f"skipped an unreadable image (another segment used instead): {reason}")

    def _csv(self, row):
        with writing(self.csv_path, "the training log", KEPT), open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow(row)

    def _events(self, step, scalars):
        """TensorBoard scalars, flushed: its writer thread's OSError (a full disk) shows here."""
        if not self.tensorboard:
            return
        with writing(self.run_dir, "the TensorBoard events", KEPT):
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, step)
            self.tensorboard.flush()

    def finish(self, step, best, skipped):
        if not self.active:
            return
        if self.tensorboard:
            with writing(self.run_dir, "the TensorBoard events", KEPT):
                self.tensorboard.close()
        minutes = (time.perf_counter() - self.start) / 60
        skipped_note = f"; {skipped.summary()}" if skipped else ""
        best_path = os.path.join(self.run_dir, "best.pt")
        if os.path.exists(best_path):
            saved = (f"best validation mean class accuracy {best:.4f}{skipped_note}; checkpoints in "
                     f"{self.run_dir} (best.pt, last.pt)")
            evaluate = best_path
        else:   # stopped (STOP_AT) before the first validation
            saved = f"not validated yet{skipped_note}; checkpoint {os.path.join(self.run_dir, 'last.pt')}"
            evaluate = os.path.join(self.run_dir, "last.pt")
        ran = step - self.first_step
        total = (f" (steps {self.first_step + 1}-{step}; {step} of {self.steps} in all)"
                 if self.first_step or step < self.steps else "")
        self.print(f"done: {ran} steps in {minutes:.1f} min{total}; {saved}\n"
                   f"next: python EvaluateAccuracy.py --CHECKPOINT={evaluate}")


def quiet_event_writer_failures():
    """TensorBoard's writer thread dies on a failed write (a full disk) with a traceback of its
    own; the main thread re-raises that error at its next flush or close, where it becomes one
    line. So that thread's OSError is not printed (every other thread's error still is)."""
    previous = threading.excepthook
    if getattr(previous, "quiet_event_writer", False):
        return

    def hook(args):
        if not (issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)
    hook.quiet_event_writer = True
    threading.excepthook = hook
