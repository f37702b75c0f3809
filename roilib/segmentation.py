"""A COCO segmentation (polygon, uncompressed or compressed RLE) -> compressed RLE, checked.

The one gate between untrusted files (COCO instances, a segmenter's results) and pycocotools,
which trusts its input: a NaN or 1e9 polygon coordinate makes it allocate until the kernel
kills the process (or crash), RLE counts that do not add up raise deep inside evaluation, and
an invalid compressed RLE string decodes to different garbage on each call. ``checked`` refuses
each such segmentation with a short reason (BadSegmentation), so that readers count them.
"""
import math

import numpy as np
from pycocotools import mask as mask_utils

# The reasons of BadSegmentation, with what each means; readers report counts by reason.
REASONS = {
    "no segmentation": "neither a polygon list nor an RLE with 'counts'",
    "polygon given as a dict": "kwcoco's {'exterior', 'interiors'}, not COCO's list of "
                               "coordinate lists: convert with `kwcoco conform --legacy=True`",
    "degenerate polygon": "no part with 3 or more points",
    "polygon not numbers": "a coordinate that is not a finite number",
    "polygon outside the image": "a coordinate more than one image size outside the image",
    "polygon outline too long": f"an outline longer than {2 ** 24} pixels, which pycocotools "
                                "would draw point by point",
    "RLE size differs from the image": "the RLE's 'size' is not the image's [height, width]",
    "RLE counts invalid": "counts that are neither integer run lengths nor a COCO RLE string",
    "RLE counts negative": "a negative run length",
    "RLE counts do not cover the image": "run lengths that do not add up to height x width",
}


_MAX_OUTLINE = 2 ** 24   # pixels: ~0.7 GB in pycocotools at most


class BadSegmentation(ValueError):
    """A segmentation that cannot be used; str() is one of REASONS."""


def checked(segmentation, height, width):
    """The segmentation of an image of height × width, checked: a list of polygon parts
    (each an even list of >= 6 finite coordinates within bounds) or a compressed RLE dict
    (counts as bytes). Raises BadSegmentation(reason)."""
    if isinstance(segmentation, list):
        parts = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not parts:
            raise BadSegmentation("degenerate polygon")
        _check_polygon(parts, height, width)
        return parts
    if not isinstance(segmentation, dict):
        raise BadSegmentation("no segmentation")
    if "counts" not in segmentation:
        raise BadSegmentation("polygon given as a dict" if "exterior" in segmentation
                              else "no segmentation")
    size = segmentation.get("size")
    if not isinstance(size, list) or size != [height, width]:
        raise BadSegmentation("RLE size differs from the image")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed: checked, then compressed by pycocotools
        _check_runs(_uncompressed_runs(counts), height * width)
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        counts = counts.encode("utf-8")  # a non-ASCII character fails the check below
    if not isinstance(counts, bytes):
        raise BadSegmentation("RLE counts invalid")
    if len(counts) > 7 * (height * width + 1):   # at most 7 characters a run, h × w + 1 runs
        raise BadSegmentation("RLE counts do not cover the image")
    _check_runs(_compressed_runs(counts), height * width)
    return {"size": [height, width], "counts": counts}


def to_rles(shapes, height, width):
    """Checked shapes (``checked``'s results) of one image -> compressed RLEs, in order: all
    polygon parts in one pycocotools call; a polygon of several parts is their union."""
    parts = [part for shape in shapes if isinstance(shape, list) for part in shape]
    rles = iter(mask_utils.frPyObjects(parts, height, width) if parts else ())
    out = []
    for shape in shapes:
        if isinstance(shape, list):
            pieces = [next(rles) for _ in shape]
            shape = pieces[0] if len(pieces) == 1 else mask_utils.merge(pieces)
        out.append(shape)
    return out


def to_rle(segmentation, height, width):
    """One segmentation -> compressed RLE (counts as bytes); raises BadSegmentation(reason)."""
    return to_rles([checked(segmentation, height, width)], height, width)[0]


def _check_polygon(parts, height, width):
    """Every coordinate a finite number within one image size of the image. (pycocotools
    upsamples the outline 5×, so its memory grows with the coordinates: 1e9 is 23 GB.)"""
    for part in parts:
        try:
            finite = math.isfinite(sum(part))  # TypeError for a string, None or a list
        except TypeError:
            finite = False
        if not finite:
            raise BadSegmentation("polygon not numbers")
        xs, ys = part[0::2], part[1::2]
        if not (-width <= min(xs) and max(xs) <= 2 * width
                and -height <= min(ys) and max(ys) <= 2 * height):
            raise BadSegmentation("polygon outside the image")
    # pycocotools draws each edge point by point (5x upsampled): many long edges in bounds
    # cost as much memory as one far away. An edge in bounds is at most 3 image sides long,
    # so only polygons of very many points need the exact sum.
    edges = sum(len(part) // 2 for part in parts)
    if edges * 3 * max(height, width) > _MAX_OUTLINE \
            and sum(_outline(part) for part in parts) > _MAX_OUTLINE:
        raise BadSegmentation("polygon outline too long")


def _outline(part):
    """Sum over the closed outline's edges of their longer side, in pixels."""
    points = np.asarray(part, np.float64).reshape(-1, 2)
    steps = np.abs(np.diff(points, axis=0, append=points[:1]))
    return float(steps.max(axis=1).sum())


def _check_runs(runs, pixels):
    if (runs < 0).any():
        raise BadSegmentation("RLE counts negative")
    if runs.size and runs.max() > pixels or int(runs.sum(dtype=np.int64)) != pixels:
        raise BadSegmentation("RLE counts do not cover the image")


def _uncompressed_runs(counts):
    """Integer run lengths as int64, or BadSegmentation."""
    try:
        runs = np.asarray(counts)
    except (TypeError, ValueError, OverflowError):  # ragged, or beyond any integer type
        raise BadSegmentation("RLE counts invalid") from None
    if runs.ndim != 1 or runs.dtype.kind not in "iu":  # floats, strings, booleans, objects
        raise BadSegmentation("RLE counts invalid")
    return runs


def _compressed_runs(counts):
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString,
    vectorised: 6-bit characters from '0', 5 value bits, bit 5 = more characters follow,
    bit 4 of the last = sign; from the third run on, a value is the difference to the run two
    before), or BadSegmentation where it is not one."""
    codes = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if codes.size == 0 or codes.min() < 0 or codes.max() > 63:
        raise BadSegmentation("RLE counts invalid")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise BadSegmentation("RLE counts invalid")  # cut off: pycocotools would read past it
    token = np.concatenate([[0], np.cumsum(~more[:-1])])
    starts = np.flatnonzero(np.concatenate([[True], ~more[:-1]]))
    digit = np.arange(codes.size) - starts[token]
    if digit.max() > 6:
        raise BadSegmentation("RLE counts do not cover the image")  # beyond 35 bits
    values = np.zeros(len(starts), np.int64)
    np.add.at(values, token, (codes & 0x1F) << (5 * digit))
    ends = np.flatnonzero(~more)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (digit[ends][negative] + 1))
    runs = values.copy()
    for parity in (1, 2):  # run i (i >= 3) = value i + run i - 2
        runs[parity::2] = np.cumsum(values[parity::2])
    return runs
