"""Segments per class at several MIN_AREA thresholds: how CamVid's MIN_AREA was chosen
(docs/results.md, "CamVid's segment sizes"). Segments are counted with MIN_AREA=1, as the
reader finds them.

    python tools/component_sizes.py --dataset camvid --split train
    python tools/component_sizes.py --dataset opensurfaces --thresholds 1,100,1000

Prints, per class, the segments of at least each threshold, and the share of the class's
labelled pixels that lie in segments below --keep (the threshold considered).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from Datasets import open_dataset  # noqa: E402
from roilib.cli import run  # noqa: E402


def size_table(labels, areas, class_names, thresholds, keep):
    """Rows [name, segments >= each threshold..., % of pixels in segments < keep]."""
    rows = []
    for name, chosen in [(n, labels == c) for c, n in enumerate(class_names)] + [("all", None)]:
        a = areas if chosen is None else areas[chosen]
        lost = a[a < keep].sum() / max(int(a.sum()), 1)
        rows.append([name, *[int((a >= t).sum()) for t in thresholds], f"{100 * lost:.2f}%"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--images", default="")
    parser.add_argument("--annotations", default="")
    parser.add_argument("--thresholds", default="1,16,32,64,100,200,400,1000")
    parser.add_argument("--keep", type=int, default=64, help="the MIN_AREA considered")
    args = parser.parse_args()
    thresholds = [int(t) for t in args.thresholds.split(",")]
    reader = open_dataset(args.dataset, args.split, args.images, args.annotations, train=False)
    areas = np.array([s.area for s in reader.segments], np.int64)
    print(reader.summary())
    print(f"{'class':<12}" + "".join(f"{'>=' + str(t):>8}" for t in thresholds)
          + f"  px in < {args.keep}")
    for name, *counts, lost in size_table(reader.labels, areas, reader.class_names, thresholds,
                                          args.keep):
        print(f"{name[:11]:<12}" + "".join(f"{c:>8}" for c in counts) + f"  {lost:>10}")


if __name__ == "__main__":
    run(main)
