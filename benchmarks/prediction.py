"""(e) prediction: RunPrediction.py latency for one image with 8 masks (the whole command, with
Python's start), and the model load and the prediction alone."""
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from AttentionNet import AttentionNet
from roilib.benchutil import row, timed
from roilib.imageio import read_label_map, write_png
from roilib.paths import REPO

COMMAND_RUNS = 3


def example_masks(folder):
    """The example's instance map and 8 masks (its 4 and their mirror images) written as PNGs
    into `folder`: (labels, masks, paths)."""
    labels = read_label_map(os.path.join(REPO, "Test", "example_labels.png"))
    masks = [(labels == v).astype(np.uint8) * 255 for v in np.unique(labels) if v]
    masks = (masks + [np.fliplr(m).copy() for m in masks])[:8]
    paths = [os.path.join(folder, f"mask{i}.png") for i in range(len(masks))]
    for path, mask in zip(paths, masks):
        write_png(path, mask)
    return labels, masks, paths


def measure(bench, arch):
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "model.pt")
        AttentionNet(8, arch=arch, attention="stem").save(checkpoint)
        labels, masks, paths = example_masks(tmp)
        cmd = [sys.executable, os.path.join(REPO, "RunPrediction.py"), f"--CHECKPOINT={checkpoint}",
               f"--MASKS={','.join(paths)}", f"--DEVICE={bench.device}", "--JSON=True"]
        totals = []
        for _ in range(COMMAND_RUNS):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
            totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        model = AttentionNet.from_checkpoint(checkpoint).to(bench.device).eval()
        load = time.perf_counter() - start
    image = torch.from_numpy(np.ascontiguousarray(
        np.repeat(labels[..., None], 3, 2).astype(np.uint8))).permute(2, 0, 1)[None].to(bench.device)
    batch = torch.from_numpy(np.stack(masks))[:, None].to(bench.device)
    predict = timed(lambda: model.predict(image, batch), bench.device, 5, 1)
    return [row("e", f"RunPrediction.py, 1 image + 8 masks, {arch}: whole command (Python start, load, predict)",
                1000 * statistics.median(totals), "ms"),
            row("e", "  model load from checkpoint", 1000 * load, "ms"),
            row("e", "  predict (8 masks, one batch), model loaded", 1000 * predict, "ms")]
