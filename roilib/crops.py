"""Crop geometry: where a training crop or an evaluation window lies, and the warp that cuts it.

Every crop is one ``cv2.warpAffine`` per array (image, mask) over only the part of the image
under the window. The whole segment is kept with context whenever it fits; a segment larger
than the window is scaled down, never cut, and a mask never ends empty.
"""
import math
from collections import namedtuple

import cv2
import numpy as np

# A segment's mask kept only over its bounding box: uint8 {0,1} array of the box's size, whose
# top-left pixel is (x, y) of the image. A 1-pixel segment of a 4000x3000 photo costs a byte,
# not 12 MB; crops read from it exactly what they would read from the full mask.
BoxMask = namedtuple("BoxMask", "mask x y")

# ImageNet mean colour (RGB, 0..255): padding normalises to ~0, so it reads as "nothing".
MEAN_COLOUR = (124, 116, 104)
SIZE_STEP = 32  # ResNet downsamples 32×: sides that are multiples of 32 tile exactly.

DEFAULT_JITTER = (0.8, 1.25)  # log-uniform scale augmentation around native resolution


def plan_crop(image_hw, bbox, out_hw, rng=None, scale_jitter=DEFAULT_JITTER):
    """Where to crop: returns (scale, x0, y0). The crop is the window
    [x0, x0 + out_w) × [y0, y0 + out_h) of the image resized by ``scale``.

    The scale starts at 1 (native resolution, as in the original recipe), jittered when an
    ``rng`` is given; it grows so that the image covers the window, but never so much that
    the segment's bbox stops fitting; a segment bigger than the window scales it down (it is
    never cut). The window then contains the whole scaled bbox and as much image as possible;
    where the image is smaller than the window the rest is padding. Placement is random when
    ``rng`` is given, centred on the segment otherwise.
    """
    height, width = image_hw
    out_h, out_w = out_hw
    x, y, box_w, box_h = bbox
    box_w, box_h = max(box_w, 1), max(box_h, 1)
    scale = 1.0
    if rng is not None and scale_jitter is not None:
        low, high = scale_jitter
        scale = math.exp(rng.uniform(math.log(low), math.log(high)))
    scale = max(scale, out_w / width, out_h / height)
    scale = min(scale, out_w / box_w, out_h / box_h)
    x0 = _place(width * scale, x * scale, (x + box_w) * scale, out_w, rng)
    y0 = _place(height * scale, y * scale, (y + box_h) * scale, out_h, rng)
    return scale, x0, y0


def _place(length, start, end, window, rng):
    """Window start along one axis: contains [start, end], stays inside [0, length] when the
    image is long enough, else contains the whole image (the rest is padding)."""
    if length >= window:
        low, high = max(0.0, end - window), min(length - window, start)
    else:
        low, high = length - window, 0.0
    high = max(high, low)  # float round-off when the segment exactly fills the window
    if rng is None:
        offset = min(max((start + end - window) / 2, low), high)
    else:
        offset = rng.uniform(low, high)
    # An integer offset at scale 1 makes the warp an exact copy (no half-pixel blur).
    rounded = round(offset)
    return float(rounded) if low <= rounded <= high else offset


def box_mask(mask):
    """A full-size mask -> its BoxMask (None when empty)."""
    mask = np.asarray(mask)
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8, copy=False))
    if w == 0:
        return None
    return BoxMask(np.ascontiguousarray(mask[y:y + h, x:x + w] != 0, dtype=np.uint8), x, y)


def box_mask_bbox(mask):
    """(x, y, w, h) in image pixels of a BoxMask's nonzero pixels."""
    local = cv2.boundingRect(mask.mask)
    return mask.x + local[0], mask.y + local[1], local[2], local[3]


def crop_sample(sample, out_h, out_w, rng=None, flip=False, scale_jitter=DEFAULT_JITTER):
    """Crop a sample to exactly out_h × out_w (see ``plan_crop``), one warp per array.
    ``sample["mask"]`` is the full-size mask or a BoxMask (same crop either way). The mask
    never ends empty; ``area`` keeps the original value."""
    image, mask = sample["image"], sample["mask"]
    if not isinstance(mask, BoxMask):
        mask = box_mask(mask)
    if mask is None or not mask.mask.any():
        raise ValueError(f"empty mask for segment {sample['segment_id']!r} of image "
                         f"{sample['image_id']!r}")
    bbox = box_mask_bbox(mask)
    out_hw = (out_h, out_w)
    scale, x0, y0 = plan_crop(image.shape[:2], bbox, out_hw, rng, scale_jitter)
    image = _warp(image, scale, x0, y0, out_hw, flip, cv2.INTER_LINEAR, MEAN_COLOUR)
    coverage = _warp(mask, scale, x0, y0, out_hw, flip, cv2.INTER_LINEAR, 0, np.float32,
                     full_hw=sample["image"].shape[:2])
    centre_x = scale * (bbox[0] + bbox[2] / 2) - x0 - 0.5
    centre_y = scale * (bbox[1] + bbox[3] / 2) - y0 - 0.5
    if flip:
        centre_x = out_w - 1 - centre_x
    return dict(sample, image=image, mask=_binarize(coverage, centre_x, centre_y))


def _warp(array, scale, x0, y0, out_hw, flip, interpolation, border, dtype=None, full_hw=None):
    """Resample ``array`` into the window (x0, y0, out_w, out_h) of the image scaled by
    ``scale``. Only the part under the window is touched (and converted to ``dtype``);
    below scale 0.5 that part is first shrunk by area averaging: bilinear sampling alone
    would alias. ``array`` may be a BoxMask of an image of size ``full_hw``."""
    out_h, out_w = out_hw
    height, width = full_hw if isinstance(array, BoxMask) else array.shape[:2]
    # Source rows/cols under the window, with a margin for the interpolation kernel (two
    # pixels of the shrunk part, when there is one).
    margin = 2 + (math.ceil(2 / scale) if scale < 0.5 else 0)
    left = min(max(math.floor(x0 / scale) - margin, 0), width - 1)
    top = min(max(math.floor(y0 / scale) - margin, 0), height - 1)
    right = max(min(math.ceil((x0 + out_w) / scale) + margin, width), left + 1)
    bottom = max(min(math.ceil((y0 + out_h) / scale) + margin, height), top + 1)
    part = _part(array, top, bottom, left, right)
    if dtype is not None:
        part = part.astype(dtype)
    step_x = step_y = scale  # output pixels per pixel of ``part``
    if scale < 0.5:
        new_w = max(1, round(part.shape[1] * scale))
        new_h = max(1, round(part.shape[0] * scale))
        step_x, step_y = scale * part.shape[1] / new_w, scale * part.shape[0] / new_h
        part = cv2.resize(part, (new_w, new_h), interpolation=cv2.INTER_AREA)
    # Pixel centres: output index u <-> continuous coordinate (u + 0.5) of the scaled image.
    shift_x = 0.5 * step_x - 0.5 + scale * left - x0
    shift_y = 0.5 * step_y - 0.5 + scale * top - y0
    if flip:
        matrix = [[-step_x, 0, out_w - 1 - shift_x], [0, step_y, shift_y]]
    else:
        matrix = [[step_x, 0, shift_x], [0, step_y, shift_y]]
    # Replicate, not a constant border: pixels on the image's edge must not be blended with
    # the padding colour; the padding is painted afterwards, where the image is absent.
    out = cv2.warpAffine(np.ascontiguousarray(part), np.array(matrix, np.float64),
                         (out_w, out_h), flags=interpolation,
                         borderMode=cv2.BORDER_REPLICATE)
    first, last = _inside(x0, width * scale, out_w)
    if flip:
        first, last = out_w - last, out_w - first
    out[:, :first] = border
    out[:, last:] = border
    first, last = _inside(y0, height * scale, out_h)
    out[:first] = border
    out[last:] = border
    return out


def _part(array, top, bottom, left, right):
    """array[top:bottom, left:right], also for a BoxMask (zero outside its box)."""
    if not isinstance(array, BoxMask):
        return array[top:bottom, left:right]
    part = np.zeros((bottom - top, right - left), array.mask.dtype)
    h, w = array.mask.shape
    y0, y1 = max(top, array.y), min(bottom, array.y + h)
    x0, x1 = max(left, array.x), min(right, array.x + w)
    if y0 < y1 and x0 < x1:
        part[y0 - top:y1 - top, x0 - left:x1 - left] = \
            array.mask[y0 - array.y:y1 - array.y, x0 - array.x:x1 - array.x]
    return part


def _inside(start, length, size):
    """Output pixels [first, last) whose centres fall on the scaled image [0, length)."""
    first = min(max(math.ceil(-start - 0.5), 0), size)
    last = min(max(math.ceil(length - start - 0.5), first), size)
    return first, last


def _binarize(coverage, centre_x, centre_y):
    """Coverage (0..1) -> {0,1} mask that never vanishes: half coverage; else (a segment
    thinner than a pixel) the pixels with at least half the best coverage, which keeps its
    shape without smearing it over every pixel it touches; else the pixel at its centre."""
    mask = coverage >= 0.5
    if not mask.any():
        best = coverage.max()
        mask = coverage >= 0.5 * best if best > 0 else mask
    if not mask.any():
        height, width = coverage.shape
        mask[min(max(round(centre_y), 0), height - 1),
             min(max(round(centre_x), 0), width - 1)] = True
    return mask.astype(np.uint8)
