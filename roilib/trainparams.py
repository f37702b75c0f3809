"""Checks of a training run's settings: before the first step, and on resume against those
stored in last.pt, so that no setting is ever ignored silently.

The caller (Train.py) says which of its parameters are FIXED (they define the model, the
data or the schedule's shape: a resumed run must use the checkpoint's values, or it stops with
one line listing the differences) and which are CHANGEABLE (they take effect on resume, and
each change is announced). This module knows no parameter by name.
"""
import os

from roilib.errors import UserError

# Scale jitter beyond this shows a segment at 1/100 or 100x its size: no augmentation, and the
# crop's source box would outgrow the integers OpenCV takes.
MAX_JITTER = 100.0


def check_weights(weights, setting):
    """None, "imagenet" or the path of an existing file (else an error naming `setting`)."""
    if weights not in (None, "none", "imagenet") and not os.path.isfile(weights):
        raise UserError(f"{setting}={weights}: expected None, imagenet or the path of a "
                        "state_dict of the backbone (no such file)")


def parse_jitter(text, setting):
    """'low,high' -> (low, high) scale factors, 1/MAX_JITTER <= low <= high <= MAX_JITTER;
    '1,1' -> None (native). Errors name the caller's `setting`."""
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"{setting}={text}: expected low,high (e.g. 0.8,1.25)") from None
    if not 1 / MAX_JITTER <= low <= high <= MAX_JITTER:   # also refuses inf and nan
        raise UserError(f"{setting}={text}: expected {1 / MAX_JITTER:g} <= low <= high <= {MAX_JITTER:g}")
    return None if low == high == 1 else (low, high)


def due(step, every):
    """Whether a cadence of `every` steps (0 = never) falls on `step`."""
    return every > 0 and step % every == 0


def resume_changes(stored, params, checkpoint, fixed_names, changeable_names, normalize, way_out):
    """Compare this run's parameters with those stored in `checkpoint`. A difference in one of
    `fixed_names` -> UserError listing all of them and the caller's `way_out`; returns
    ["NAME: old -> new", ...] of the `changeable_names` that differ. `normalize(params)` -> the
    parameters as they are read (e.g. a default path filled in), so that "" and the path it
    stands for count as the same."""
    if not isinstance(stored, dict):
        raise UserError(f"{checkpoint}: no parameters stored (not a training checkpoint); {way_out}")
    fixed = differences(stored, params, fixed_names, normalize)
    if fixed:
        raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(fixed)}); resume "
                        f"with the stored values, or {way_out}")
    return differences(stored, params, changeable_names, normalize)


def differences(stored, params, names, normalize):
    """["NAME: old -> new", ...] of the `names` whose values differ, compared as read
    (`normalize`, see resume_changes)."""
    old, new = normalize(dict(stored)), normalize(dict(params))
    return [f"{name}: {old.get(name)!r} -> {new[name]!r}" for name in names
            if name in new and old.get(name) != new[name]]


def check_class_names(found, expected, checkpoint, way_out):
    """The classes (and their order) are part of the model; `way_out`: what the caller can do."""
    if list(found or []) != list(expected):
        raise UserError(f"{checkpoint} was trained on other classes ({_names(found or [])}) than this "
                        f"data has ({_names(expected)}); {way_out}")


def _names(names, shown=5):
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(map(str, names[:shown])) + more
