"""Writing results safely: whole files or nothing, output places checked before the work,
and never over an input.

Every result file (eval.json, CSVs, plots, config.json, PNGs) goes through ``atomic_write``:
a temporary sibling that replaces the old file only once complete, so a crash, a full disk or
Ctrl-C leaves the previous results as they were. (Checkpoints have their own, fsync'ed
variant in roilib/checkpoint.py.)
"""
import contextlib
import os
import uuid

from roilib.errors import UserError


@contextlib.contextmanager
def atomic_write(path, mode="w", **kwargs):
    """Open a temporary file next to `path` for writing; on success it replaces `path`."""
    path = os.fspath(path)
    # A unique sibling name (not mkstemp, which would leave the file mode 0600).
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, mode, **kwargs) as file:
            yield file
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise UserError(f"{path}: cannot write ({error.strerror or error}); "
                            "the previous file there, if any, is intact") from None
        raise


def save_figure(fig, path, **kwargs):
    """matplotlib's savefig, atomically (the format follows the extension)."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_write(path, "wb") as file:
        fig.savefig(file, format=fmt, **kwargs)


def check_writable_folder(folder, what="output folder"):
    """Create `folder` if needed and prove a file can be written there, before any work."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise UserError(f"{folder}: cannot write to the {what} ({error.strerror or error})") from None


def refuse_input_as_output(output, inputs, name):
    """One line instead of overwriting one of the inputs with an output."""
    target = os.path.realpath(output)
    for path in inputs:
        if path and os.path.exists(path) and os.path.realpath(path) == target:
            raise UserError(f"--{name}={output}: is an input of this run; choose another path")
