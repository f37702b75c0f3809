"""Degrade GT masks the way a segmenter would, for LabelMasks.py measurements.

    python tools/degrade_masks.py Test/demo/val/instances.json eroded.json --erode=2
    python tools/degrade_masks.py Test/demo/val/instances.json dilated.json --dilate=2
    python tools/degrade_masks.py Test/demo/val/instances.json split.json --split=0.25
    python tools/degrade_masks.py Test/demo/val/instances.json merged.json --merge=0.25

Reads an instances file and writes a COCO results list of masks with score 1, as a segmenter
would give them; each keeps the category_id of the GT mask it came from (the larger one of a
merge), which LabelMasks.py ignores unless --KEEP_CATEGORIES=True: that run gives the AP
the degraded masks would reach with perfect labels, the ceiling the classifier is measured
against.
  --erode/--dilate N: every mask shrunk/grown by N pixels (a disk of radius N); a mask
                      eroded away is dropped;
  --split F:          a fraction F of the masks cut in two across their long axis;
  --merge F:          each mask, with probability F, merged with its nearest free
                      neighbour in the same image (both replaced by their union).
"""
import argparse
import json
import math
import os
import sys
import warnings

import cv2
import numpy as np
from pycocotools import mask as mask_utils

warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")


def decode(segmentation, height, width):
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles))
    if isinstance(segmentation["counts"], list):
        segmentation = mask_utils.frPyObjects(segmentation, height, width)
    return mask_utils.decode(segmentation)


def encode(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def morph(mask, radius, grow):
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    return (cv2.dilate if grow else cv2.erode)(mask, disk)


def split(mask):
    """Two halves cut through the centroid, across the mask's long axis (principal axis)."""
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    moments = cv2.moments(mask, binaryImage=True)
    angle = 0.5 * math.atan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"])
    along = (xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)
    halves = []
    for side in (along < 0, along >= 0):
        half = np.zeros_like(mask)
        half[ys[side], xs[side]] = 1
        halves.append(half)
    return halves if all(h.any() for h in halves) else [mask]


def nearest(masks, index):
    """The mask closest to masks[index] (distance between centroids), or None."""
    centres = [np.argwhere(m).mean(0) for m in masks]
    others = [(np.linalg.norm(centres[index] - c), j) for j, c in enumerate(centres) if j != index]
    return min(others)[1] if others else None


def degrade_image(masks, categories, args, rng):
    """One image's masks (uint8 arrays) and their categories -> the degraded ones."""
    pairs = list(zip(masks, categories))
    if args.erode or args.dilate:
        pairs = [(morph(m, args.erode or args.dilate, grow=bool(args.dilate)), c) for m, c in pairs]
        pairs = [(m, c) for m, c in pairs if m.any()]
    if args.split:
        pairs = [(half, c) for m, c in pairs for half in (split(m) if rng.random() < args.split else [m])]
    if args.merge:
        masks = [m for m, _ in pairs]
        taken, merged = set(), []
        for i in rng.permutation(len(pairs)):
            if i in taken or rng.random() >= args.merge:
                continue
            j = nearest(masks, i)
            if j is None or j in taken:
                continue
            taken |= {i, j}
            larger = max((i, j), key=lambda k: masks[k].sum())
            merged.append((masks[i] | masks[j], pairs[larger][1]))
        pairs = [p for k, p in enumerate(pairs) if k not in taken] + merged
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("instances", help="COCO instances file (the GT masks)")
    parser.add_argument("out", help="COCO results list to write")
    parser.add_argument("--erode", type=int, default=0, help="shrink every mask by N pixels")
    parser.add_argument("--dilate", type=int, default=0, help="grow every mask by N pixels")
    parser.add_argument("--split", type=float, default=0.0, help="fraction of masks cut in two")
    parser.add_argument("--merge", type=float, default=0.0, help="fraction of masks merged with a neighbour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with open(args.instances, encoding="utf-8") as file:
        coco = json.load(file)
    rng = np.random.default_rng(args.seed)
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results, before = [], 0
    for image in sorted(coco["images"], key=lambda record: record["id"]):
        anns = by_image.get(image["id"], [])
        before += len(anns)
        masks = [decode(a["segmentation"], image["height"], image["width"]) for a in anns]
        pairs = degrade_image(masks, [a["category_id"] for a in anns], args, rng)
        results += [{"image_id": image["id"], "segmentation": encode(m), "score": 1.0, "category_id": c}
                    for m, c in pairs]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as file:
        json.dump(results, file, separators=(",", ":"))
    print(f"{before} masks -> {len(results)} masks in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
