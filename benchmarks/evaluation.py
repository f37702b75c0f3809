"""(d) evaluation: segments/s of EvaluateAccuracy's batched path vs. one segment per forward in
float32 (the original's way), on demo images and on one larger synthetic image with 8 masks."""
import time

import numpy as np
import torch

from benchmarks.common import model_on
from Datasets import open_dataset
from roilib.benchutil import row, timed
from roilib.evaluation import SegmentWindows, forward_windows, predict_dataset
from roilib.runtime import precision_name
from roilib.windows import cut_windows

FULL_MASKS = 8


def demo_rates(bench, arch, images, window):
    """(batched, one per forward) segments/s on the first `images` demo validation images."""
    dataset = open_dataset("demo", "val", train=False)
    model = model_on(bench.device, arch, bench.channels_last).eval()
    batched = predict_dataset(model, dataset, bench.device, bench.dtype, window=window, limit=images,
                              progress=False)["segments_per_s"]
    naive_model = model_on(bench.device, arch, channels_last=False).eval()
    windows = SegmentWindows(dataset, window, images=range(min(images, len(dataset.images))))
    count, start = 0, time.perf_counter()
    with torch.no_grad():
        for item in windows:
            for image, mask in zip(item["images"], item["masks"]):
                naive_model(image[None].to(bench.device), mask[None].to(bench.device)).argmax(1).cpu()
                count += 1
    return batched, count / (time.perf_counter() - start)


def synthetic_scene(h, w, seed=0):
    """A random h x w image with FULL_MASKS small rectangles as masks."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = []
    for _ in range(FULL_MASKS):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        mask[y:y + rng.integers(8, 40), x:x + rng.integers(8, 40)] = 1
        masks.append(mask)
    return image, masks


def full_size_rates(bench, arch, hw, window):
    """Segments/s on one hw image: batched (window cutting included), one window per forward
    in float32, and one per forward at the default precision."""
    image, masks = synthetic_scene(*hw)
    fast = model_on(bench.device, arch, bench.channels_last).eval()
    slow = model_on(bench.device, arch, channels_last=False).eval()
    cut, cut_masks = cut_windows(image, masks, window)

    def batched():
        images, window_masks = cut_windows(image, masks, window)
        with torch.inference_mode():
            forward_windows(fast, images, window_masks, bench.device, bench.dtype)

    def one_by_one(model, precision):
        def run():
            with torch.inference_mode():
                for i in range(len(masks)):
                    forward_windows(model, cut[i:i + 1], cut_masks[i:i + 1], bench.device, precision)
        return run
    repeats = max(bench.steps // 4, 2)
    return {"batched": FULL_MASKS / timed(batched, bench.device, repeats, 1),
            "naive": FULL_MASKS / timed(one_by_one(slow, None), bench.device, repeats, 1),
            "single": FULL_MASKS / timed(one_by_one(fast, bench.dtype), bench.device, repeats, 1)}


def measure(bench, arch, images, window, full_hw):
    batched, naive = demo_rates(bench, arch, images, window)
    full = full_size_rates(bench, arch, full_hw, window)
    (h, w), size, precision = full_hw, f"{window[0]}x{window[1]} windows", precision_name(bench.dtype)
    return [row("d", f"evaluation, demo images, {size}, {arch}: batched ({precision})", batched, "seg/s"),
            row("d", "evaluation, same windows: one segment per forward (float32)", naive, "seg/s"),
            row("d", "  batched / one per forward", batched / naive, "x"),
            row("d", f"{h}x{w} image, {FULL_MASKS} masks, {size}: batched ({precision}), cutting included",
                full["batched"], "seg/s"),
            row("d", f"{h}x{w} image, {FULL_MASKS} masks: one per forward (float32)", full["naive"], "seg/s"),
            row("d", f"{h}x{w} image, {FULL_MASKS} masks: one per forward ({precision})", full["single"], "seg/s"),
            row("d", f"  {h}x{w}: batched / one per forward (float32)", full["batched"] / full["naive"], "x")]
