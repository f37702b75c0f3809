"""ONNX export cost and CPU latency of the deployed shape: onnxruntime vs PyTorch eager float32
vs PyTorch bf16 autocast, on the same inputs.

    python tools/bench_export.py                          # ResNet-50, 8 masks in 224x224 windows
    python tools/bench_export.py --ARCH=resnet18 --REPEATS=3

RunPrediction shows each segment of an image in its own window (roilib/windows.py), so one
640x480 image with 8 masks is a batch of 8 windows. Random weights: speed does not depend on them.
"""
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from AttentionNet import AttentionNet  # noqa: E402
from roilib import cli  # noqa: E402
from roilib.export import export_onnx, open_onnx, parity_inputs  # noqa: E402
from roilib.windows import parse_window  # noqa: E402

# ---- parameters: edit here, or override as --NAME=value ----
ARCH = "resnet50"           # resnet18 .. resnet152
CLASSES = 80                # output classes (COCO's 80)
WINDOW = "224x224"          # the evaluation window (HxW)
MASKS = 8                   # segments of the image: the batch size
REPEATS = 5                 # timed runs per engine (median reported), after one warm-up run
THREADS = 0                 # CPU threads for both engines (0 = torch's default)
# ---- end of parameters ----


def main():
    cfg = cli.parse_config(globals(), __file__)
    if cfg.THREADS:
        torch.set_num_threads(cfg.THREADS)
    window = parse_window(cfg.WINDOW)
    torch.manual_seed(0)
    model = AttentionNet(cfg.CLASSES, arch=cfg.ARCH).eval()
    images, masks = parity_inputs(cfg.MASKS, *window)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        export_onnx(model, path, window, {"class_names": "null", "window": str(list(window))})
        export_s = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 1e6
        session = open_onnx(path, threads=torch.get_num_threads())
    feed = {"images": images.numpy(), "masks": masks.numpy()}
    engines = {
        "onnxruntime float32": lambda: session.run(None, feed),
        "PyTorch eager float32": lambda: eager(model, images, masks, None),
        "PyTorch eager bf16 autocast": lambda: eager(model, images, masks, torch.bfloat16),
    }
    print(f"{cfg.ARCH}, {cfg.MASKS} masks in {window[0]}x{window[1]} windows, CPU, {torch.get_num_threads()} threads; "
          f"ONNX export {export_s:.1f} s, file {size_mb:.1f} MB")
    for name, run in engines.items():
        times = timed(run, cfg.REPEATS)
        print(f"  {name:<28} {1000 * statistics.median(times):8.0f} ms  "
              f"(min {1000 * min(times):.0f}, {cfg.REPEATS} runs)")


def eager(model, images, masks, dtype):
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model(images, masks)


def timed(run, repeats):
    run()   # warm-up: allocations, onnxruntime's first-run planning, oneDNN kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    cli.run(main)
