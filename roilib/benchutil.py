"""Benchmark.py's measuring and reporting helpers: median timings with device syncs, synthetic
inputs, table rows, and the report files."""
import json
import os
import statistics
import sys
import time

import torch

from roilib.outputs import atomic_write


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup):
    """Median seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs(batch, h, w, device, seed=0, channels_last=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=g)
    masks = torch.zeros(batch, 1, h, w, dtype=torch.uint8)
    for i in range(batch):   # rectangles of varied size and place
        y, x = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
        masks[i, :, y:y + 8 + 8 * i, x:x + 10 + 6 * i] = 1
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), masks.to(device)


def row(part, what, value, unit):
    return {"part": part, "what": what, "value": float(value), "unit": unit,
            "text": f"({part}) {what}: {value:.2f} {unit}" if unit == "x" else f"({part}) {what}: {value:.1f} {unit}"}


def report(rows, params, name, device, folder):
    command = " ".join(["python Benchmark.py"] + sys.argv[1:])
    lines = [f"Benchmark on {name} (torch {torch.__version__}): `{command}`", "",
             "| part | measurement | value |", "|---|---|---|"]
    for r in rows:
        value = f"{r['value']:.2f}×" if r["unit"] == "x" else f"{r['value']:.1f} {r['unit']}"
        lines.append(f"| {r['part']} | {r['what'].strip()} | {value} |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(folder, exist_ok=True)
    markdown, data = report_paths(folder, device)
    with atomic_write(markdown) as f:
        f.write(table + "\n")
    with atomic_write(data) as f:
        json.dump({"device": name, "torch": torch.__version__, "params": params, "rows": rows}, f, indent=1)
    print(f"\nwritten to {markdown} and {data}")


def report_paths(folder, device):
    """The table's two files in `folder`: <cpu|gpu>.md and .json."""
    stem = "gpu" if device.type == "cuda" else "cpu"
    return os.path.join(folder, f"{stem}.md"), os.path.join(folder, f"{stem}.json")
