"""The embedded demo dataset: synthetic scenes, deterministic from a seed, in both formats.

    python -m roilib.demo --out Test/demo --seed 0

writes
    <root>/{train,val}/images/NNNNN.png   RGB scenes, 160-224 px, not square
    <root>/{train,val}/instances.json     COCO instances (RLE, categories 1..K)
    <root>/{train,val}/labels/NNNNN.png   label maps: pixel = class + 1, 0 = background
    <root>/demo.json                      seed, version, classes, context pair, counts

The scenes themselves (classes, the near- and far-context pairs) are drawn by
roilib/demo_scenes.py; the example input of RunPrediction.py by roilib/demo_example.py.
"""
import argparse
import json
import os
import re
import shutil
import sys
import time
import uuid

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roilib.demo_example import check_example_folder, write_example
from roilib.demo_scenes import CLASS_NAMES, CONTEXT_PAIR, FAR_CONTEXT_PAIR, SPLIT_CODES, make_scene
from roilib.errors import UserError
from roilib.imageio import write_png
from roilib.outputs import write_json, writing

# Bump whenever the generated data changes (demo_scenes.py and demo_shapes.py included):
# ensure_demo then rebuilds.
VERSION = 3
# Every path (relative, "/"-separated) that a demo dataset holds: what a rebuild may replace.
_DEMO_PATH = re.compile(r"demo\.json|(train|val)(/instances\.json|/(images|labels)(/\d{5,}\.png)?)?")
__all__ = ["CLASS_NAMES", "CONTEXT_PAIR", "FAR_CONTEXT_PAIR", "VERSION", "ensure_demo", "make_demo", "main"]


# ----------------------------------------------------------------------------- writing

def _annotation(ann_id, image_id, label, mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1,
            "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode()},
            "area": int(mask.sum()), "bbox": list(cv2.boundingRect(mask.astype(np.uint8))),
            "iscrowd": 0}


def _write_split(folder, split, seed, count):
    """Write one split in both formats; returns its counts for demo.json."""
    images, annotations = [], []
    per_class = [0] * len(CLASS_NAMES)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for image_id in range(1, count + 1):
        image, objects = make_scene(np.random.default_rng([seed, SPLIT_CODES[split], image_id]))
        name = f"{image_id:05d}.png"
        label_map = np.zeros(image.shape[:2], np.uint8)
        # Annotation ids in class order: both readers then list an image's segments alike.
        for label, mask in sorted(objects, key=lambda obj: obj[0]):
            label_map[mask] = label + 1
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
            per_class[label] += 1
        write_png(os.path.join(folder, "images", name), image)
        write_png(os.path.join(folder, "labels", name), label_map)
        images.append({"id": image_id, "file_name": name, "height": image.shape[0],
                       "width": image.shape[1]})
    categories = [{"id": k + 1, "name": name, "supercategory": "demo"}
                  for k, name in enumerate(CLASS_NAMES)]
    coco = {"info": {"description": f"roilib demo v{VERSION}, seed {seed}, {split}"},
            "images": images, "annotations": annotations, "categories": categories}
    write_json(os.path.join(folder, "instances.json"), coco)
    return {"images": count, "segments": len(annotations), "per_class": per_class}


def _params(seed, n_train, n_val):
    return {"version": VERSION, "seed": int(seed), "n_train": int(n_train),
            "n_val": int(n_val)}


def make_demo(root, seed=0, n_train=600, n_val=200):
    """(Re)build the demo dataset at ``root``: written to a temporary sibling folder, then
    renamed into place, so a killed run never leaves half a dataset. Returns demo.json."""
    root = os.path.abspath(root)
    check_replaceable(root)
    tmp = f"{root}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with writing(root, "the demo dataset"):
            info = dict(_params(seed, n_train, n_val), class_names=CLASS_NAMES,
                        context_pair=CONTEXT_PAIR, far_context_pair=FAR_CONTEXT_PAIR, splits={})
            for split, count in (("train", n_train), ("val", n_val)):
                info["splits"][split] = _write_split(os.path.join(tmp, split), split, seed, count)
            write_json(os.path.join(tmp, "demo.json"), info)
            _swap_in(tmp, root, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def check_replaceable(root):
    """Refuse a `root` that is a file, or a folder holding anything a demo build did not write
    (a rebuild replaces the whole folder): the demo goes only into a new or empty folder or
    over a demo dataset."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"{root}: a file, not a folder for the demo dataset")
    if not os.path.isdir(root) or not os.listdir(root):
        return
    paths = (os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
             for folder, subfolders, files in os.walk(root) for name in sorted(subfolders + files))
    foreign = next((path for path in paths if not _DEMO_PATH.fullmatch(path)), None)
    if foreign is None and _read_info(root) is None:
        foreign = "no demo.json"
    if foreign:
        raise UserError(f"{root}: not empty and not a demo dataset ({foreign}): the demo is written "
                        "only into a new or empty folder or over a demo dataset; nothing was changed")


def _swap_in(tmp, root, info):
    """Replace ``root`` by ``tmp`` (a rename cannot replace a non-empty folder: move the
    old one aside first). Another process finishing the same dataset first is fine."""
    old = None
    if os.path.exists(root):
        old = f"{root}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if _read_info(root) is None or not _same(_read_info(root), info):
            raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _read_info(root):
    try:
        with open(os.path.join(root, "demo.json"), encoding="utf-8") as file:
            info = json.load(file)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _same(info, params):
    return all(info.get(key) == value for key, value in _params(
        params["seed"], params["n_train"], params["n_val"]).items())


def ensure_demo(root, seed=0, n_train=600, n_val=200, announce=None):
    """Build the demo dataset at ``root`` unless it is there already with this version,
    seed and size; ``announce(line)``, if given, is told before a build. Returns demo.json's
    content."""
    info = _read_info(root)
    if info is not None and _same(info, _params(seed, n_train, n_val)):
        return info
    if announce:
        announce(f"writing the demo dataset (v{VERSION}, {n_train} + {n_val} scenes) into {root}: "
                 "once, a few seconds")
    return make_demo(root, seed, n_train, n_val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="Test/demo", help="dataset folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=600, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--example", metavar="DIR",
                        help="also write example.png and its masks into DIR")
    args = parser.parse_args(argv)
    start = time.time()
    build = make_demo if args.force else ensure_demo
    try:
        if args.example:   # refused before the dataset is made, not after
            check_example_folder(args.example)
        info = build(args.out, args.seed, args.train, args.val)
        counts = ", ".join(f"{split}: {c['images']} images, {c['segments']} segments"
                           for split, c in info["splits"].items())
        print(f"demo dataset v{info['version']} (seed {info['seed']}) in {args.out}: {counts} "
              f"[{time.time() - start:.1f} s]")
        if args.example:
            write_example(args.example)
            print(f"example image and masks in {args.example}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
