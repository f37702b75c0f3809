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
import numpy as np
import torch

from roilib.crops import SIZE_STEP, box_mask_bbox, crop_sample, plan_crop
from roilib.errors import UserError

WINDOW_RULE = ("native scale (scaled down only where the segment's box does not fit), "
               "window centred on the segment, no flip, padding with the ImageNet mean colour")
# For checkpoints that carry neither a window nor their training geometry (written before
# windows existed): torchvision's classification size.
DEFAULT_WINDOW = (224, 224)


def parse_window(text, name="WINDOW"):
    """'HxW' or 'N' (square) -> (H, W); both multiples of 32 and at least 32."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        height, width = (int(parts[0]), int(parts[0])) if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise UserError(f"--{name}={text}: expected HxW (e.g. 160x160) or one size") from None
    if len(parts) > 2 or min(height, width) < SIZE_STEP or height % SIZE_STEP or width % SIZE_STEP:
        raise UserError(f"--{name}={text}: expected HxW with both sides multiples of {SIZE_STEP}, "
                        f"at least {SIZE_STEP}")
    return height, width


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
    if isinstance(window, (list, tuple)) and len(window) == 2:
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
