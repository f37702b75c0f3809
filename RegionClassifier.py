"""RegionClassifier: what RunPrediction.py does, as one Python call.

    from RegionClassifier import RegionClassifier
    classifier = RegionClassifier.from_pretrained("logs/demo/best.pt")   # or a release folder
    for region in classifier.classify("Test/example.png", ["Test/example_mask1.png"]):
        print(region["class"], region["probability"], region["topk"])

Each region is shown to the net by the evaluation rule (roilib/windows.py: a window of the
checkpoint's training geometry centred on the region, at the photo's native scale), windows go
through the net `max_batch` at a time, and the model is in eval mode: the numbers are those of
`python RunPrediction.py --JSON=True` for the same photo and masks.
"""
import os
import threading

import numpy as np
import torch

from AttentionNet import AttentionNet
from roilib.checkpoint import load_model_state
from roilib.crops import BoxMask, box_mask
from roilib.errors import UserError
from roilib.evaluation import forward_windows
from roilib.explain import explain_regions
from roilib.imageio import read_image, read_mask
from roilib.progress import progress_bar
from roilib.runtime import amp_dtype, resolve_device
from roilib.windows import check_memory, cut_windows, model_window, window_box


class RegionClassifier:
    """A trained AttentionNet with its evaluation window, ready to classify regions of photos."""

    def __init__(self, model, window, device=torch.device("cpu"), max_batch=32, amp=False,
                 label_convention=None, batch_name="max_batch"):
        """`label_convention`: how the label maps the model was trained on were read (a
        checkpoint's "label_convention", unchecked; None: trained on COCO-style masks);
        `batch_name`: what the caller calls max_batch, for the message refusing it."""
        self.window = tuple(int(side) for side in window)
        max_batch = whole_number(max_batch, batch_name)
        height, width = self.window   # refused before the model moves: a batch must fit the device
        check_memory(f"{batch_name}={max_batch} with windows of {height}x{width}", max_batch * height * width, device)
        self.model = model.to(device).eval()
        self.label_convention = label_convention
        self.device = device
        self.max_batch = int(max_batch)
        self.dtype = amp_dtype(device, amp)
        self.class_names = model.class_names or [str(i) for i in range(model.num_classes)]
        # One forward at a time: the heat maps' hooks sit on this one model, and concurrent
        # callers (the page's requests) would read each other's (a lock, not a model each:
        # the forwards share the cores anyway, and memory stays that of one).
        self.lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, path, device="auto", window="", max_batch=32, amp=False, batch_name="max_batch"):
        """Load a checkpoint (.pt) or a released folder (Export.py --FORMAT=safetensors).
        `window`: 'HxW' to override the checkpoint's window; `device`: auto | cpu | cuda[:N]."""
        path = os.fspath(path)
        state = load_model_state(path)
        model = AttentionNet.from_state(state, path)
        return cls(model, model_window(state, window), resolve_device(device), max_batch, amp,
                   state.get("label_convention"), batch_name)

    def classify(self, image, masks, topk=5):
        """Class, probability and top-k of each region. `image`: a path or an RGB uint8 array
        H×W×3; `masks`: one mask or a list of them, each a path or an H×W array (nonzero =
        inside). Returns one dict per mask: {"class", "probability", "topk": [{"class",
        "index", "probability"}], "area"}, probabilities rounded to 4 digits as RunPrediction's."""
        image = as_image(image)
        regions = as_box_masks(masks, image.shape[:2])
        return self.classify_box_masks(image, regions, topk)

    def classify_box_masks(self, image, regions, topk=5, progress=False):
        """classify() for an RGB array and BoxMasks (roilib.crops), each checked to lie in it;
        `progress`: a bar with regions/s on stderr."""
        k = min(whole_number(topk, "topk"), len(self.class_names))
        regions = check_regions(regions, image.shape[:2])
        results = []
        with self.lock, torch.inference_mode(), progress_bar(len(regions), "classify", "region", progress) as bar:
            for first in range(0, len(regions), self.max_batch):
                part = regions[first:first + self.max_batch]
                images, window_masks = cut_windows(image, part, self.window)
                probs = forward_windows(self.model, images, window_masks, self.device, self.dtype).softmax(1)
                top_p, top_i = probs.topk(k, dim=1)
                for region, p_row, i_row in zip(part, top_p.tolist(), top_i.tolist()):
                    top = [{"class": self.class_names[i], "index": i, "probability": round(p, 4)}
                           for p, i in zip(p_row, i_row)]
                    results.append({"class": top[0]["class"], "probability": top[0]["probability"],
                                    "topk": top, "area": int(region.mask.sum())})
                bar.update(len(part))
        return results

    def explain(self, image, regions):
        """roilib.explain.explain_regions for BoxMasks of an RGB array, one caller at a time."""
        regions = check_regions(regions, image.shape[:2])
        with self.lock:
            return explain_regions(self.model, image, regions, self.window)

    def window_box(self, image_hw, region):
        """(x0, y0, x1, y1) in photo pixels: the part of the photo the net sees for `region`."""
        return window_box(image_hw, region, self.window)


def as_image(image):
    """A path or an array -> RGB uint8 H×W×3 (a one-line UserError for anything else)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise UserError(f"image: expected an RGB uint8 array H×W×3, got {array.dtype} {array.shape}")
    return array


def whole_number(value, name):
    """`value` as an int >= 1, or a one-line UserError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


def check_regions(regions, shape):
    """BoxMasks checked to lie inside the photo of size `shape` (H, W), each a 2D mask of
    numbers with a nonzero pixel at whole-number x, y -> the same as {0, 1} uint8 BoxMasks."""
    checked = []
    for i, region in enumerate(regions):
        mask, x, y = region if isinstance(region, tuple) and len(region) == 3 else (None, None, None)
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or not (
                mask.dtype == bool or np.issubdtype(mask.dtype, np.number)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (x, y)):
            raise UserError(f"region {i + 1}: a BoxMask is (2D array of numbers, x, y) with whole-number x, y")
        height, width = mask.shape
        if not (0 <= x and 0 <= y and x + width <= shape[1] and y + height <= shape[0]):
            raise UserError(f"region {i + 1}: its {width}x{height} box at ({x}, {y}) is not inside the "
                            f"{shape[1]}x{shape[0]} photo")
        inside = mask != 0
        if np.issubdtype(mask.dtype, np.inexact) and not np.isfinite(mask).all() or not inside.any():
            raise UserError(f"region {i + 1}: mask is empty or holds NaN or infinity")
        checked.append(BoxMask(inside.view(np.uint8), int(x), int(y)))
    return checked


def as_box_masks(masks, shape):
    """One mask or a list (paths or H×W arrays) -> BoxMasks, each checked against the photo's
    size `shape` (H, W) and refused when empty."""
    if isinstance(masks, (str, os.PathLike, BoxMask)) or (isinstance(masks, np.ndarray) and masks.ndim == 2):
        masks = [masks]
    if isinstance(masks, np.ndarray) and masks.ndim == 3:   # a stack of masks
        masks = list(masks)
    if not isinstance(masks, (list, tuple)):
        raise UserError(f"masks: expected a path, an array or a list of them, got {type(masks).__name__}")
    if len(masks) == 0:
        raise UserError("no mask given")
    return [as_box_mask(mask, shape, f"mask {i + 1}") for i, mask in enumerate(masks)]


def as_box_mask(mask, shape, name="mask"):
    if isinstance(mask, BoxMask):
        return mask
    if isinstance(mask, (str, os.PathLike)):
        return box_mask(read_mask(mask, shape))
    array = np.asarray(mask)
    if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{name}: a mask of {array.dtype} values; expected numbers (nonzero = inside)")
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise UserError(f"{name}: a mask with NaN or infinite values")
    if array.ndim != 2 or array.shape != tuple(shape[:2]):
        raise UserError(f"{name}: mask is {'x'.join(map(str, array.shape[::-1]))} (WxH) but the photo "
                        f"is {shape[1]}x{shape[0]}; a mask must have the photo's size")
    region = box_mask(array != 0)
    if region is None:
        raise UserError(f"{name}: mask is empty (no nonzero pixel)")
    return region
