"""Checkpoint files: atomic saves, the weights-only loader, and one-line errors for both.

A checkpoint is a dict of tensors and plain data (``torch.load(weights_only=True)`` reads it,
and a file that would run code is refused). Writes go through roilib.outputs.atomic_write
(fsync'ed), so a crash or a full disk never costs the previous checkpoint.

A released model is a folder (``Export.py --FORMAT=safetensors``): model.safetensors (the
weights) and config.json (everything else in the checkpoint that is plain data). It is read
with no pickle at all. ``load_model_state`` reads either kind into the same dict.
"""
import importlib
import json
import os
import pickle

import torch

from roilib.errors import UserError
from roilib.outputs import atomic_path, atomic_write, write_error
from roilib.windows import check_stored_window

# The layout of the dict that model_checkpoint builds; model_from_state refuses other versions.
CHECKPOINT_FORMAT = 1
# A released model folder (see the module doc).
RELEASE_WEIGHTS = "model.safetensors"
RELEASE_CONFIG = "config.json"
# How torch's weights-only unpickler words a file that asks to import, call or build Python
# objects; its other errors are about damaged or foreign files.
_CODE_SIGNS = ("GLOBAL", "unrecognized function", "allowlisted", "add_safe_globals")


def save_checkpoint(state, path):
    """torch.save through roilib.outputs.atomic_write with fsync: readers see the old file or
    the new one, never half of one. Errors (disk full, no permission) become one line, and the
    previous checkpoint is left as it was."""
    try:
        with atomic_write(path, "wb", fsync=True, what="checkpoint") as f:
            torch.save(state, f)
    except RuntimeError as e:
        # torch.save reports a full disk as a RuntimeError ("enforce fail at
        # inline_container..."), open/fsync/replace as an OSError: the same for the user.
        raise UserError(write_error(os.fspath(path), OSError(f"disk full? {first_line(e)}"),
                                    "checkpoint")) from None


def load_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True: a checkpoint holds tensors and plain data, and a file
    carrying pickled code is refused instead of run."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a checkpoint file")
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
    except (MemoryError, RuntimeError, EOFError, OSError, ValueError) as e:
        if out_of_memory(e):
            raise UserError(out_of_memory_message(path, "loading the checkpoint")) from None
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupt: {first_line(e)})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint (expected a dict, found {type(state).__name__})")
    check_stored_window(state, path)
    check_stored_values(state, path)
    return state


def check_stored_values(state, path):
    """Refuse a stored step that is not a count (NaN would reach eval.json) and stored
    parameters that are not a dict: one line here, not a traceback in a script."""
    step = state.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise UserError(f"{path}: the stored step {step!r} is not a whole number >= 0; the file is "
                        "damaged or was edited")
    if state.get("params") is not None and not isinstance(state["params"], dict):
        raise UserError(f"{path}: the stored parameters are a {type(state['params']).__name__}, not a "
                        "dict; the file is damaged or was edited")


def out_of_memory(error):
    """Whether `error` is an allocation failure (Python's, or torch's RuntimeError)."""
    text = str(error)
    return (isinstance(error, MemoryError) or "DefaultCPUAllocator" in text
            or "out of memory" in text.lower())


def out_of_memory_message(path, doing):
    return (f"{path}: out of memory while {doing} (the file itself may be fine); free memory "
            "or load it on a larger machine")


def load_model_state(path, map_location="cpu"):
    """A trained model's state from a .pt checkpoint or a released folder, as one dict shape:
    {"format", "model" (the state_dict), "config", and where known "window", "params",
    "step"}; model_from_state (AttentionNet.from_state) builds the model from it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_released_folder(path, map_location)
    return load_checkpoint(path, map_location)


def model_checkpoint(model_state, config, **extra):
    """The dict a model checkpoint holds: {"format", "model", "config", **extra}."""
    return {"format": CHECKPOINT_FORMAT, "model": model_state, "config": dict(config), **extra}


def describe_model(config):
    """'resnet18 mode=crop+attention attention=stem merge=add': a model's config in words
    (attention=- where the mode has no mask side branch: its stored list is empty)."""
    return (f"{config['arch']} mode={config['mode']} "
            f"attention={','.join(config['attention']) or '-'} merge={config['merge']}")


def model_from_state(state, path, build):
    """Check a loaded state's layout and format version, then `build(config)` a model and load
    its weights; every mismatch is one line naming `path`."""
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"{path}: not an AttentionNet checkpoint (no 'model' and 'config' entries)")
    found = state.get("format")
    if found != CHECKPOINT_FORMAT:
        age = "a newer" if isinstance(found, int) and found > CHECKPOINT_FORMAT else "an older"
        raise UserError(f"{path}: checkpoint format {found} is from {age} version of this code "
                        f"(this one reads format {CHECKPOINT_FORMAT}); use the matching version")
    try:
        model = build(dict(state["config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError, MemoryError) as e:
        if out_of_memory(e):
            raise UserError(out_of_memory_message(path, "building the model")) from None
        raise UserError(f"{path}: checkpoint does not match this version of AttentionNet ({first_line(e)})") from None
    return model


def load_released_folder(folder, map_location="cpu"):
    """Read RELEASE_CONFIG and RELEASE_WEIGHTS from `folder`: JSON and safetensors, no pickle."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder; a released model is a folder of {RELEASE_WEIGHTS} "
                        f"and {RELEASE_CONFIG} (a .pt file is read with from_checkpoint)")
    config_path = os.path.join(folder, RELEASE_CONFIG)
    weights_path = os.path.join(folder, RELEASE_WEIGHTS)
    for name, file in ((RELEASE_CONFIG, config_path), (RELEASE_WEIGHTS, weights_path)):
        if not os.path.isfile(file):
            raise UserError(f"{folder}: not a released model ({name} missing); "
                            "`python Export.py --FORMAT=safetensors` writes one")
    state = read_release_config(config_path)
    check_stored_window(state, config_path)
    check_stored_values(state, config_path)
    state["model"] = read_safetensors(weights_path, map_location)
    return state


def read_release_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise UserError(f"{path}: not a readable model config (corrupt JSON: {first_line(e)})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the model config ({e.strerror or first_line(e)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path}: not an AttentionNet model config (no 'config' entry)")
    return state


def read_safetensors(path, map_location="cpu"):
    safetensors_torch = require("safetensors.torch", "safetensors")
    try:
        return safetensors_torch.load_file(path, device=str(map_location))
    except Exception as e:  # safetensors' own SafetensorError, or OSError from the mmap
        if out_of_memory(e):
            raise UserError(out_of_memory_message(path, "loading the weights")) from None
        raise UserError(f"{path}: not readable safetensors weights (truncated or corrupt: "
                        f"{first_line(e)})") from None


def write_safetensors(tensors, path, metadata=None):
    """Weights as safetensors, atomically (roilib.outputs.atomic_path)."""
    safetensors_torch = require("safetensors.torch", "safetensors")
    # safetensors stores dense row-major data: channels-last weights are made contiguous.
    tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        safetensors_torch.save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, _default_file_mode())   # safetensors creates it readable by its owner only


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def require(module, package):
    """Import an optional dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{package} is not installed: pip install {package}") from None


def first_line(error):
    """The first line of an exception's message (at most 200 characters), for one-line errors."""
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
