"""Writing results safely: whole files or nothing, output folders checked before the work
(which outputs may replace what: roilib/writeplan.py).

Every file the project writes (checkpoints, eval.json, CSVs, plots, config.json, PNGs, index
caches, ONNX) goes through ``atomic_path``/``atomic_write``: a temporary sibling named by the
one scheme of ``temporary_path`` that replaces the old file only once complete, so a crash,
a full disk or Ctrl-C leaves the previous file as it was. Checkpoints add ``fsync=True``.
"""
import contextlib
import errno
import json
import os
import re
import uuid

from roilib.errors import UserError

# What a failed atomic write leaves: the file as it was.
KEPT = "the previous file there, if any, is intact"
# temporary_path's names: .<name>.tmp<pid of the writer>
_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


def temporary_path(path):
    """The one temporary name of a write to ``path``: hidden, in the same folder (os.replace
    stays on one file system), tagged with the writer's pid (two processes never share one)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path, fsync=False, what=""):
    """Yield a temporary path to write ``path``'s new content to; when the block ends it
    replaces ``path`` (with ``fsync``: flushed to the disk first, as checkpoints need). An
    OSError becomes one line naming ``what`` (e.g. "checkpoint"); the temporary file is
    removed whatever happens."""
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync_folder(os.path.dirname(tmp))
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise UserError(write_error(path, error, what)) from None
        raise


@contextlib.contextmanager
def atomic_write(path, mode="w", fsync=False, what="", **kwargs):
    """``open(path, mode, **kwargs)`` for writing, atomically (see ``atomic_path``)."""
    with atomic_path(path, fsync, what) as tmp, open(tmp, mode, **kwargs) as file:
        yield file


def write_json(path, data, indent=None, fsync=False):
    """JSON written atomically and always valid: NaN or infinity is refused (ValueError), not
    written as the bare ``NaN`` that JSON readers reject."""
    try:
        with atomic_write(path, encoding="utf-8", fsync=fsync) as file:
            json.dump(data, file, indent=indent, allow_nan=False,
                      separators=None if indent else (",", ":"))
    except ValueError as error:   # a NaN that should have been refused where it entered
        raise UserError(f"{path}: not written ({error}); the previous file there, if any, "
                        "is intact") from None


def write_error(path, error, what="", kept=KEPT):
    """The one line for every failed write of ``path`` (``what``: e.g. "checkpoint"); a full
    disk is called so. ``kept``: what the failure left intact, said after it."""
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if getattr(error, "errno", None) == errno.ENOSPC:
        reason = f"disk full: {reason}"
    return f"{path}: cannot write{' ' + what if what else ''} ({reason}){'; ' + kept if kept else ''}"


@contextlib.contextmanager
def writing(path, what="", kept=""):
    """Writes that cannot be atomic (an append, a folder, a lock, a library's own writer): an
    OSError in the block becomes write_error's one line, a full disk called so."""
    try:
        yield
    except OSError as error:
        raise UserError(write_error(path, error, what, kept)) from None


def remove_stale_temporaries(folder):
    """Delete the temporary files (``temporary_path``) that killed writers left in ``folder``
    (a checkpoint's is as large as the checkpoint). Call it only where no other process writes
    into ``folder`` (Train.py, once it holds the run's lock). Returns the names removed."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder) if _TEMPORARY.match(name)]
    for name in stale:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
    return stale


def _fsync_file(path):
    """Flush a written file to the disk: a full disk may show only here (delayed allocation)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder):
    """Make the rename durable; a file system that cannot fsync a folder is no reason to fail."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_figure(fig, path, **kwargs):
    """matplotlib's savefig, atomically (the format follows the extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_write(path, "wb") as file:
        fig.savefig(file, format=fmt, **kwargs)


def check_writable_folder(folder, what="output folder"):
    """Create `folder` if needed and prove a file can be written there, before any work."""
    with writing(folder, f"to the {what}"):
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
        with open(probe, "w"):
            pass
        os.remove(probe)

