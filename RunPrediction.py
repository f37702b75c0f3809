"""Classify the regions of an image given by ROI masks.

    python RunPrediction.py                                        # Test/example.png + its masks
    python RunPrediction.py --IMAGE=photo.jpg --MASKS=roi1.png,roi2.png --OVERLAY=out.png
    python RunPrediction.py --IMAGE=photo.jpg --INSTANCE_MAP=instances.png --JSON=True
    python RunPrediction.py --CHECKPOINT=logs/camvid_r18/best.pt --IMAGE=data/camvid/val/0016E5_07959.png \
        --LABEL_MAP=data/camvid/valannot/0016E5_07959.png --MIN_AREA=64   # every labelled region, with its truth
    python RunPrediction.py --OVERLAY=out.png --EXPLAIN=True       # + where the model looked

Masks: PNGs with 0 outside and 1 or 255 inside, the image's size (several comma-separated, or
a glob), or one instance map where each nonzero value is one segment, or one label map where
each connected region of a class value is one segment (read the way the model's training read
label maps: CamVid's 0 is Sky, its 11 void; the labelled class is printed beside the answer).
Each segment is shown to the net the way training showed it: in a window of the model's
training geometry, centred on it, at the photo's native scale (roilib/windows.py), so a
4000x3000 photo is not shrunk as a whole. Windows go through the net MAX_BATCH at a time:
memory does not grow with the number of masks or the size of the photo beyond the photo and
the masks themselves. The numbers are RegionClassifier's (the Python API): this script is that
class on files.
"""
import glob
from collections import Counter
import json
import os
import sys

import numpy as np

from Datasets import label_convention
from LabelMapReader import component_box_mask, components_of
from RegionClassifier import RegionClassifier
from roilib import cli
from roilib.crops import BoxMask, box_mask
from roilib.errors import UserError, one_line
from roilib.explain import check_explainable, draw_regions, explained_layout, explained_overlay
from roilib.imageinfo import exif_notice
from roilib.labelconvention import LabelConvention, total_undeclared, undeclared_warning
from roilib.imageio import check_image_extension, check_image_size, read_image, read_label_map, read_mask, write_image
from roilib.outputs import check_writable_folder
from roilib.paths import find_checkpoint, find_path, split_paths
from roilib.runtime import resolve_device
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] trained model (relative paths: to this repository if not found here)
IMAGE = "Test/example.png"         # [nonempty] the image
MASKS = "Test/example_mask*.png"   # ROI mask PNG(s): one path, comma-separated paths, or a glob (a name with a comma: taken whole if it exists, or write \,)
INSTANCE_MAP = ""           # instead of MASKS: an instance map whose nonzero values are segments ("" = use MASKS)
LABEL_MAP = ""              # instead of MASKS: a label map whose connected regions of one class value are segments, read with the model's label convention ("" = use MASKS)
MIN_AREA = 1                # [1..1e12] LABEL_MAP: regions smaller than this (pixels) are left out
TOPK = 3                    # [1..1e6] classes listed per mask
JSON = False                # print JSON instead of text
OVERLAY = ""                # write the image with outlined, labelled masks and their windows to this file, .png or .jpg ("" = no)
EXPLAIN = False             # the overlay also shows, per mask, its window, the attention map and the Grad-CAM heat map
WINDOW = ""                 # [""|HxW] window HxW around each segment ("" = the one the model was trained and validated with)
MAX_BATCH = 32              # [1..65536] windows per forward pass (bounds memory for maps with many instances)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = False                 # bf16 autocast (faster on GPUs; float32 is exact and fast enough for a few masks)
# ---- end of parameters ----


def main():
    cfg = cli.parse_config(globals(), __file__)
    if cfg.EXPLAIN and not cfg.OVERLAY:
        raise UserError("--EXPLAIN=True draws the heat maps into the overlay: set --OVERLAY=out.png too")
    device = resolve_device(cfg.DEVICE)   # a wrong device stops here, before any reading
    checkpoint = find_checkpoint(cfg.CHECKPOINT)
    image_path = find_path(cfg.IMAGE)
    if cfg.INSTANCE_MAP and cfg.LABEL_MAP:
        raise UserError("--INSTANCE_MAP and --LABEL_MAP: give one of them")
    map_path = cfg.INSTANCE_MAP or cfg.LABEL_MAP
    sources = [find_path(map_path)] if map_path else mask_paths(cfg.MASKS)
    if cfg.OVERLAY:   # before any work: never over an input, in a known format, somewhere writable
        check_writes([("--OVERLAY", cfg.OVERLAY)], [image_path, checkpoint, *sources])
        check_image_extension(cfg.OVERLAY)
        check_writable_folder(os.path.dirname(os.path.abspath(cfg.OVERLAY)), "OVERLAY's folder")
    image = read_image(image_path)
    notice = exif_notice(image_path)
    if notice:
        print(notice, file=sys.stderr)
    classifier = RegionClassifier.from_pretrained(checkpoint, device, cfg.WINDOW, cfg.MAX_BATCH, cfg.AMP,
                                                  batch_name="--MAX_BATCH")
    truths = None
    if cfg.LABEL_MAP:
        names, masks, truths = label_map_regions(image.shape[:2], sources[0], classifier, cfg.MIN_AREA)
    else:
        names, masks = read_segments(image.shape[:2], sources, instance_map=bool(cfg.INSTANCE_MAP))
    if cfg.EXPLAIN:   # before any work: heat maps this model has, in an overlay that can be written
        check_explainable(classifier.model)
        height, width, _ = explained_layout(image.shape[:2], len(masks), classifier.window, classifier.model)
        try:
            check_image_size(cfg.OVERLAY, height, width)
        except UserError as error:
            raise error.advised(f"explain fewer than {len(masks)} regions") from None
    many = len(masks) > cfg.MAX_BATCH   # more than one batch: show progress (stderr)
    results = classifier.classify_box_masks(image, masks, cfg.TOPK, progress=many)
    for i, (result, name) in enumerate(zip(results, names)):
        result["mask"] = name
        if truths:
            result["labelled"] = truths[i]
    overlay = cfg.OVERLAY and draw_overlay(image, classifier, masks, results, cfg.EXPLAIN, cfg.MAX_BATCH, many)
    if cfg.JSON:
        print(json.dumps({"image": image_path, "checkpoint": checkpoint, "window": list(classifier.window),
                          "segments": results}, indent=1))
    else:
        print(f"{image_path} ({image.shape[1]}x{image.shape[0]}), model {checkpoint}:")
        for r in results:
            others = ", ".join(f"{one_line(t['class'])} {t['probability']:.2f}" for t in r["topk"][1:])
            print(f"  {one_line(r['mask'])}: {one_line(r['class'])} ({r['probability']:.2f})"
                  + (f"   then {others}" if others else ""))
        if truths:
            right = sum(r["class"] == r["labelled"] for r in results)
            print(f"{right} of {len(results)} regions named as the label map has them")
    if cfg.OVERLAY:
        write_image(cfg.OVERLAY, overlay)
        if not cfg.JSON:
            print(f"overlay written to {cfg.OVERLAY}")


def mask_paths(masks):
    """The mask files of --MASKS: paths and globs, comma-separated (a name with a comma:
    see split_paths)."""
    paths = []
    for part in split_paths(masks):
        part = find_path(part)
        if any(c in part for c in "*?["):
            found = sorted(glob.glob(part))
            if not found:
                raise UserError(f"{part}: no mask file matches")
            paths += found
        else:
            paths.append(part)
    if not paths:
        raise UserError("no masks given: set --MASKS=path[,path...] or --INSTANCE_MAP=path")
    return paths


def read_segments(shape, sources, instance_map=False):
    """(names, BoxMasks): from the instance map sources[0] (one segment per nonzero value) or
    the mask files. Each mask is kept over its bounding box only."""
    if instance_map:
        path = sources[0]
        values, masks = instance_box_masks(read_map(path, shape, "instance map"))
        if not values:
            raise UserError(f"{path}: instance map has no nonzero value (no segment)")
        return [f"segment {v}" for v in values], masks
    return sources, [box_mask(read_mask(p, shape)) for p in sources]


def read_map(path, shape, kind):
    """An instance or label map of the image's `shape`."""
    label_map = read_label_map(path)
    if label_map.shape[:2] != tuple(shape):
        raise UserError(f"{path}: {kind} is {label_map.shape[1]}x{label_map.shape[0]} "
                        f"but the image is {shape[1]}x{shape[0]}")
    return label_map


def label_map_regions(shape, path, classifier, min_area):
    """(names, BoxMasks, labelled classes) of each connected region of a class value of the
    label map at `path`, of at least `min_area` pixels, read as the model's training read its
    label maps (none stored, e.g. a COCO model: 0 unlabelled, its category ids the values)."""
    stored = classifier.label_convention
    keywords = label_convention({}, "opensurfaces", stored, "the model")
    if stored is None and classifier.model.config.get("category_ids") is not None:
        keywords["class_values"] = list(classifier.model.config["category_ids"])
    rule = LabelConvention(len(classifier.class_names), **keywords)
    label_map = read_map(path, shape, "label map")
    components, undeclared = components_of(label_map, rule, min_area)
    warning = undeclared_warning(total_undeclared(undeclared), "they are not the model's classes")
    if warning:
        print(warning, file=sys.stderr)
    if not components:
        raise UserError(f"{path}: no region of the model's classes of at least {min_area} px "
                        f"(read with {keywords})")
    truths = [classifier.class_names[label] for label in rule.labels_of([c.value for c in components])]
    seen = Counter()   # regions of each class so far: Road #1, Road #2, ...
    names = []
    for truth, c in zip(truths, components):
        seen[truth] += 1
        names.append(f"{one_line(truth)} #{seen[truth]} ({c.area} px at {c.bbox[0]},{c.bbox[1]})")
    masks = [component_box_mask(label_map, c.value, c.bbox, c.seed) for c in components]
    return names, masks, truths


def instance_box_masks(instance_map):
    """(values, BoxMasks) of every nonzero value of an instance map, in one sort of its
    pixels: no full-size mask per instance, whatever their number."""
    flat = instance_map.ravel()
    order = np.argsort(flat, kind="stable")
    values, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    width = instance_map.shape[1]
    found, masks = [], []
    for value, start, end in zip(values.tolist(), starts, ends):
        if value == 0:
            continue
        ys, xs = np.divmod(order[start:end], width)
        x, y = int(xs.min()), int(ys.min())
        mask = np.zeros((int(ys.max()) - y + 1, int(xs.max()) - x + 1), np.uint8)
        mask[ys - y, xs - x] = 1
        found.append(value)
        masks.append(BoxMask(mask, x, y))
    return found, masks


def draw_overlay(image, classifier, masks, results, explain=False, batch=32, progress=False):
    """The photo with each mask outlined, labelled (class and probability) and its evaluation
    window boxed; with `explain`, a strip under it per mask, in mask order, `batch` at a time:
    the window as the net saw it, the attention map and the Grad-CAM heat map (roilib/explain.py)."""
    labels = [f"{one_line(r['class'])} {r['probability']:.2f}" for r in results]
    boxes = [classifier.window_box(image.shape[:2], mask) for mask in masks]
    canvas = draw_regions(image, masks, labels, boxes)
    if not explain:
        return canvas
    return explained_overlay(classifier.model, canvas, image, masks, classifier.window, batch, progress)


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE"})
