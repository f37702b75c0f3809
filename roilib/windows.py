"""Scale-true evaluation: the one rule by which a segment is shown to a trained net.

Training shows each segment in a crop of a training geometry, at the image's native pixel
scale (jittered), scaled down only where the segment does not fit. Evaluation, validation,
prediction and labelling all show a segment the same way, without the randomness:

    the window: a fixed H×W of a training geometry, centred on the segment;
    the scale: native (1.0), scaled down only where the segment's box does not fit the window,
               and up only where the whole image is smaller than the window (as in training);
    no flip, no jitter; outside the image, the ImageNet mean colour.

The window is stored in the checkpoint ("window": [H, W]), so every script follows the
model's own training unless told otherwise (--WINDOW=HxW). Whatever the photo's size, the net
sees segments at the scale it learnt them: a 4000x3000 photo is not shrunk as a whole.
"""
import os

import numpy as np
import torch

from roilib.crops import SIZE_STEP, box_mask_bbox, crop_sample, plan_crop
from roilib.errors import UserError

WINDOW_RULE = ("native scale (scaled down only where the segment's box does not fit), "
               "window centred on the segment, no flip, padding with the ImageNet mean colour")
# For checkpoints that carry neither a window nor their training geometry (written before
# windows existed): torchvision's classification size.
DEFAULT_WINDOW = (224, 224)
# The largest window side (and training crop side): past it OpenCV's warps refuse the sizes,
# and one window of float32 activations no longer fits a GPU.
MAX_SIDE = 8192
# A lower bound of the memory one window pixel takes in a ResNet forward pass: the uint8 image
# and mask (4 B), the float32 input (12 B) and the stem's 64 channels at stride 2, in bf16 as
# under AMP (32 B). Training keeps several times more for the backward pass: what is refused
# can never run.
BYTES_PER_PIXEL = 48
_GIB = 2 ** 30


def parse_window(text, name="WINDOW"):
    """'HxW' or 'N' (square) -> (H, W); both multiples of 32 in [32, MAX_SIDE]."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        height, width = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise UserError(f"--{name}={text}: expected HxW (e.g. 160x160) or one size") from None
    if len(parts) > 2 or not valid_window((height, width)):
        raise UserError(f"--{name}={text}: expected HxW with both sides multiples of {SIZE_STEP}, "
                        f"from {SIZE_STEP} to {MAX_SIDE}")
    return height, width


def valid_window(window):
    """Whether `window` is (H, W) of integers, multiples of 32 in [32, MAX_SIDE]."""
    return (isinstance(window, (list, tuple)) and len(window) == 2
            and all(isinstance(side, int) and not isinstance(side, bool)
                    and SIZE_STEP <= side <= MAX_SIDE and side % SIZE_STEP == 0 for side in window))


def check_stored_window(state, path):
    """Refuse, where a checkpoint is loaded, one whose stored window is not a window (zero,
    absurd, not integers): every script would otherwise fail deep inside OpenCV or torch."""
    window = state.get("window") if isinstance(state, dict) else None
    if window is not None and not valid_window(window):
        raise UserError(f"{path}: the checkpoint's window {window!r} is not a window (expected "
                        f"[H, W], multiples of {SIZE_STEP} from {SIZE_STEP} to {MAX_SIDE}); "
                        "the file is damaged or was edited")


def check_memory(setting, pixels, device=None):
    """Refuse before any work a `setting` (e.g. "--MAX_BATCH=65536 with windows of 160x160")
    under which one forward pass over `pixels` window pixels would need more memory than
    `device` (None: the CPU) has, naming what it would need."""
    need = int(pixels) * BYTES_PER_PIXEL
    have = device_memory(device)
    if need > have:
        raise UserError(f"{setting}: one forward pass would need at least {need / _GIB:.1f} GiB "
                        f"of memory; this machine has {have / _GIB:.1f} GiB")


def device_memory(device=None):
    """Bytes of memory of a CUDA device, or of the machine (physical RAM) otherwise."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_window(max_size):
    """The window a run with crops up to `max_size` evaluates in: its largest geometry, the
    one with the most context and the fewest segments scaled down."""
    side = max(SIZE_STEP, int(max_size) // SIZE_STEP * SIZE_STEP)
    return side, side


def model_window(state, override=""):
    """The evaluation window for a checkpoint's state: `override` ('HxW') when given, else the
    window stored at training (every checkpoint since the window rule was introduced), else
    DEFAULT_WINDOW."""
    if override:
        return parse_window(override)
    window = state.get("window")
    if window is not None:
        check_stored_window(state, "the checkpoint")
        return int(window[0]), int(window[1])
    return DEFAULT_WINDOW


def window_sample(sample, window):
    """A sample (image + mask of one segment) cut to its evaluation window: the rule above."""
    height, width = window
    return crop_sample(sample, height, width, rng=None, flip=False, scale_jitter=None)


def window_box(image_hw, region, window):
    """(x0, y0, x1, y1) in photo pixels (floats; may reach past the photo, where the window is
    padded): the part of the photo that the window of `region` (a BoxMask) shows."""
    height, width = window
    scale, x0, y0 = plan_crop(image_hw, box_mask_bbox(region), window)
    return x0 / scale, y0 / scale, (x0 + width) / scale, (y0 + height) / scale


def cut_windows(image, masks, window):
    """One image's segments (full-size masks or BoxMasks) -> their windows as uint8 tensors:
    images [S,3,H,W] and masks [S,1,H,W]. Memory: S windows, whatever the image's size."""
    height, width = window
    images = np.empty((len(masks), height, width, 3), np.uint8)
    window_masks = np.empty((len(masks), 1, height, width), np.uint8)
    for i, mask in enumerate(masks):
        crop = window_sample({"image": image, "mask": mask, "segment_id": i, "image_id": None}, window)
        images[i], window_masks[i, 0] = crop["image"], crop["mask"]
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(window_masks)
