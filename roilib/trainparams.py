"""Train.py's parameters: checked before the first step, and on resume compared with those
stored in last.pt, so that no parameter is ever ignored silently.

- FIXED parameters define the model, the data or the schedule's shape: a resumed run must
  use the checkpoint's values, or it stops with one line listing the differences.
- CHANGEABLE ones (learning rate, length, cadences, speed settings) take effect on resume, and
  each change is announced.
- The folder itself (LOG_DIR, RUN, RESUME) is not compared.
"""
import os

from roilib.errors import UserError
from roilib.sampler import check_sizes

FIXED = ("DATASET", "TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS",
         "CLASS_NAMES", "BACKGROUND", "IGNORE", "CLASS_VALUES", "LABEL_NAMES", "MIN_AREA", "ARCH", "WEIGHTS", "MODE", "ATTENTION", "MERGE", "WARMUP_STEPS",
         "MIN_SIZE", "MAX_SIZE", "MAX_PIXELS", "MAX_BATCH", "JITTER", "CROP_MARGIN", "BALANCED",
         "FLIP", "SEED", "WINDOW")
CHANGEABLE = ("STEPS", "STOP_AT", "LR", "WEIGHT_DECAY", "WORKERS", "DEVICE", "AMP", "CHANNELS_LAST",
              "COMPILE", "LOG_EVERY", "VAL_EVERY", "VAL_MAX_IMAGES", "SAVE_EVERY", "SNAPSHOT_EVERY")
FOLDER = ("LOG_DIR", "RUN", "RESUME")
# Parameters added after runs were stored, with the value those runs had in effect.
ADDED = {"BACKGROUND": "", "IGNORE": "", "CLASS_VALUES": "", "LABEL_NAMES": ""}
PATHS = ("TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS")


def check_parameters(cfg):
    """The rules the parameter block's declared values cannot say (those are checked by
    roilib.cli): across parameters, and files that must exist. Cadences: 0 = never."""
    check_sizes(cfg.MIN_SIZE, cfg.MAX_SIZE)
    if cfg.WEIGHTS not in (None, "none", "imagenet") and not os.path.isfile(cfg.WEIGHTS):
        raise UserError(f"--WEIGHTS={cfg.WEIGHTS}: expected None, imagenet or the path of a ResNet "
                        "state_dict (no such file)")


def parse_jitter(text):
    """'low,high' -> (low, high) scale factors, 0 < low <= high; '1,1' -> None (native)."""
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--JITTER={text}: expected low,high (e.g. 0.8,1.25)") from None
    if not 0 < low <= high:
        raise UserError(f"--JITTER={text}: expected 0 < low <= high")
    return None if low == high == 1 else (low, high)


def due(step, every):
    """Whether a cadence of `every` steps (0 = never) falls on `step`."""
    return every > 0 and step % every == 0


def resume_changes(stored, params, checkpoint, resolve):
    """Compare this run's parameters with those stored in `checkpoint`. A FIXED difference ->
    UserError listing all of them; returns ["NAME: old -> new", ...] of the CHANGEABLE ones.
    `resolve(params)` -> the four data paths as read (defaults filled in), so that "" and the
    default path it stands for count as the same."""
    if not isinstance(stored, dict):
        raise UserError(f"{checkpoint}: no parameters stored (not written by Train.py); use "
                        "another --RUN, or --RESUME=False to start afresh")
    old, new = {**ADDED, **stored}, dict(params)
    for values in (old, new):
        values.update(zip(PATHS, (os.path.abspath(p) for p in resolve(values))))
    fixed = [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in FIXED
             if name in new and old.get(name) != new[name]]
    if fixed:
        raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(fixed)}); resume "
                        "with the stored values, or start afresh with --RESUME=False (the old run "
                        "is moved aside) or another --RUN")
    return [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in CHANGEABLE
            if name in new and old.get(name) != new[name]]


def check_class_names(found, expected, checkpoint):
    """The classes (and their order) are part of the model."""
    if list(found or []) != list(expected):
        raise UserError(f"{checkpoint} was trained on other classes ({_names(found or [])}) than this "
                        f"data has ({_names(expected)}); use another --RUN, or --RESUME=False to start afresh")


def _names(names, shown=5):
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more
