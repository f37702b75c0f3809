"""A full disk, wherever the project writes, is one line that says "disk full" (issue 24):
train_log.csv's creation and rows, the TensorBoard events, the run's lock, the demo data,
a release folder, the output-folder probe, atomic writes. One mechanism
(roilib.outputs.write_error, through atomic_path or `writing`); each case injects ENOSPC
where that path writes."""
import errno
import os
from types import SimpleNamespace

import pytest
import torch

from roilib import demo, export, outputs, run, runlog
from roilib.runtime import Distributed
from roilib.errors import UserError


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def logger(run_dir):
    data = SimpleNamespace(num_classes=2, class_names=["a", "b"])
    return runlog.RunLogger(str(run_dir), {"STEPS": 1}, 1, data, Distributed(), torch.device("cpu"),
                            None, None, {})


class FullEvents:
    """A TensorBoard writer whose worker thread met a full disk (it raises on flush)."""
    def add_scalar(self, *args):
        pass
    flush = close = staticmethod(no_space)


def log_row_with_full_disk(tmp_path, monkeypatch):
    log = logger(tmp_path / "run")
    monkeypatch.setattr(runlog, "open", no_space, raising=False)
    log.log_train(1, 0.5, 1e-3, 10.0)


def events_with_full_disk(tmp_path, monkeypatch):
    log = logger(tmp_path / "run")
    log.tensorboard = FullEvents()
    log.log_val(1, {"accuracy": 0.5, "mean_class_accuracy": 0.5, "count": 2}, 1.0)


def events_created_on_full_disk(tmp_path, monkeypatch):
    import torch.utils.tensorboard
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", no_space)
    logger(tmp_path / "run")


def log_created_on_full_disk(tmp_path, monkeypatch):
    """config.json is written; train_log.csv's header is not."""
    def full_for_the_log(path, *args, **kwargs):
        if "train_log.csv" in str(path):
            no_space()
        return open(path, *args, **kwargs)
    monkeypatch.setattr(outputs, "open", full_for_the_log, raising=False)
    monkeypatch.setattr(runlog, "open", full_for_the_log, raising=False)
    logger(tmp_path / "run")


def lock_on_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "open", no_space, raising=False)
    run.RunLock(str(tmp_path / "run"))


def demo_on_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "makedirs", no_space)
    demo.make_demo(tmp_path / "demo", n_train=1, n_val=1)


def release_on_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "makedirs", no_space)
    export.write_release({"model": {}}, str(tmp_path / "release"))


def probe_on_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "open", no_space, raising=False)
    outputs.check_writable_folder(str(tmp_path / "out"))


CASES = [log_row_with_full_disk, events_with_full_disk, events_created_on_full_disk,
         log_created_on_full_disk, lock_on_full_disk, demo_on_full_disk, release_on_full_disk,
         probe_on_full_disk]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_a_full_disk_is_one_line_that_says_so(case, tmp_path, monkeypatch):
    with pytest.raises(UserError) as error:
        case(tmp_path, monkeypatch)
    message = str(error.value)
    assert "disk full: No space left on device" in message and "\n" not in message, message
