"""Accuracy on a few classes (a context pair) by segment area, for one or more checkpoints: where
the far pair is lost (docs/results.md, "The paper's comparisons").

    python tools/pair_by_size.py logs/ablation/v3c/runs/crop+attention-s0/last.pt \
        logs/ablation/v3c/runs/stem-s0/last.pt --classes hive,kennel --edges 0,250,500,1000

Each checkpoint is evaluated as EvaluateAccuracy.py does (its stored window, the demo's
validation set unless --images/--annotations name another).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from AttentionNet import AttentionNet  # noqa: E402
from Datasets import open_dataset  # noqa: E402
from roilib.checkpoint import load_checkpoint  # noqa: E402
from roilib.evaluation import predict_dataset  # noqa: E402
from roilib.metrics import by_bins  # noqa: E402
from roilib.runtime import amp_dtype, resolve_device  # noqa: E402
from roilib.windows import model_window  # noqa: E402


def accuracy_by_area(labels, preds, areas, wanted, edges):
    """[(low, high, accuracy or None, count)] over the segments whose label is in `wanted`."""
    chosen = np.isin(labels, wanted)
    bins = [(low, high, f"{low}-{high}") for low, high in zip(edges, edges[1:])]
    rows = by_bins(labels[chosen], preds[chosen], areas[chosen], int(labels.max()) + 1, bins)
    return [(row["min_area"], row["max_area"], row["accuracy"], row["count"]) for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--classes", default="hive,kennel")
    parser.add_argument("--edges", default="0,250,500,1000,100000000", help="area bin edges in pixels")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--images", default="")
    parser.add_argument("--annotations", default="")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dataset = open_dataset(args.dataset, "val", args.images, args.annotations, train=False)
    unknown = [c for c in args.classes.split(",") if c not in dataset.class_names]
    if unknown:
        sys.exit(f"--classes: {', '.join(unknown)} not in this dataset's classes")
    wanted = [dataset.class_names.index(c) for c in args.classes.split(",")]
    edges = [int(e) for e in args.edges.split(",")]
    for path in args.checkpoints:
        state = load_checkpoint(path)
        model = AttentionNet.from_state(state, path)
        out = predict_dataset(model, dataset, device, amp_dtype(device), window=model_window(state, ""),
                              progress=False)
        rows = accuracy_by_area(out["labels"], out["topk"][:, 0], out["areas"], wanted, edges)
        cells = [f"{lo}-{hi} px: {'-' if acc is None else f'{100 * acc:.0f}%'} (n={n})" for lo, hi, acc, n in rows]
        print(f"{path}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
