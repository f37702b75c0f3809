"""Checkpoint files: atomic saves, the weights-only loader, and one-line errors for both.

A checkpoint is a dict of tensors and plain data (``torch.load(weights_only=True)`` reads it,
and a file that would run code is refused). Writes go to a temporary file that replaces the
old one only when complete, so a crash or a full disk never costs the previous checkpoint.
"""
import os
import pickle
import re

import torch

from roilib.errors import UserError

# The layout of the dict that AttentionNet.save writes; from_state refuses other versions.
CHECKPOINT_FORMAT = 1
_TEMPORARY = re.compile(r"^\..+\.tmp\d+$")  # save_checkpoint's .<name>.tmp<pid>
# How torch's weights-only unpickler words a file that asks to import, call or build Python
# objects; its other errors are about damaged or foreign files.
_CODE_SIGNS = ("GLOBAL", "unrecognized function", "allowlisted", "add_safe_globals")


def save_checkpoint(state, path):
    """torch.save to a temporary file in the same folder, fsync, then os.replace: readers see
    the old file or the new one, never half of one. Errors (disk full, no permission) become
    one line, and the previous checkpoint is left as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError ("enforce fail at
        # inline_container..."), open/fsync/replace as an OSError: the same for the user.
        _remove_quietly(tmp)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise UserError(f"{path}: could not write checkpoint (disk full? {reason}); "
                        "the previous file there, if any, is intact") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def remove_stale_temporaries(folder):
    """Delete the temporary files of saves into `folder` that a killed process left behind
    (each as large as a checkpoint). Call it before this process saves there, and only where
    no other process saves into the same folder. Returns the names removed."""
    if not os.path.isdir(folder):
        return []
    stale = [name for name in os.listdir(folder) if _TEMPORARY.match(name)]
    for name in stale:
        _remove_quietly(os.path.join(folder, name))
    return stale


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True: a checkpoint holds tensors and plain data, and a file
    carrying pickled code is refused instead of run."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if any(sign in str(e) for sign in _CODE_SIGNS):
            raise UserError(f"{path}: refused: the file holds Python objects that could run code, "
                            "not only tensors and plain data; load only checkpoints you trust") from None
        detail = str(e).split("WeightsUnpickler error:")[-1]   # after torch's generic preamble
        raise UserError(f"{path}: not a readable checkpoint (corrupt, or not a PyTorch file: "
                        f"{first_line(detail)})") from None
    except MemoryError:
        raise UserError(f"{path}: out of memory while loading the checkpoint (the file itself may "
                        "be fine); free memory or load it on a larger machine") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if "DefaultCPUAllocator" in str(e) or "out of memory" in str(e).lower():
            raise UserError(f"{path}: out of memory while loading the checkpoint (the file "
                            "itself may be fine); free memory or load it on a larger machine") from None
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {first_line(e)})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint (expected a dict, found {type(state).__name__})")
    return state


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def first_line(error):
    """The first line of an exception's message (at most 200 characters), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
