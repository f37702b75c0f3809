"""Classify the regions of an image given by ROI masks.

    python RunPrediction.py                                        # Test/example.png + its masks
    python RunPrediction.py --IMAGE=photo.jpg --MASKS=roi1.png,roi2.png --OVERLAY=out.png
    python RunPrediction.py --IMAGE=photo.jpg --INSTANCE_MAP=instances.png --JSON=True

Masks: PNGs with 0 outside and 1 or 255 inside, the image's size (several comma-separated, or
a glob), or one instance map where each nonzero value is one segment. Each segment is shown
to the net the way training showed it: in a window of the model's training geometry, centred
on it, at the photo's native scale (roilib/windows.py), so a 4000x3000 photo is not shrunk as
a whole. Windows go through the net MAX_BATCH at a time: memory does not grow with the number
of masks or the size of the photo beyond the photo and the masks themselves.
"""
import glob
import json
import os

import cv2
import numpy as np
import torch

from AttentionNet import AttentionNet
from roilib import cli
from roilib.checkpoint import load_model_state
from roilib.crops import BoxMask, box_mask
from roilib.errors import UserError, one_line
from roilib.imageio import check_image_extension, read_image, read_label_map, read_mask, write_image
from roilib.outputs import check_writable_folder
from roilib.paths import find_checkpoint, find_path
from roilib.evaluation import forward_windows
from roilib.runtime import amp_dtype, resolve_device
from roilib.windows import cut_windows, model_window
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] trained model (relative paths: to this repository if not found here)
IMAGE = "Test/example.png"         # [nonempty] the image
MASKS = "Test/example_mask*.png"   # ROI mask PNG(s): one path, comma-separated paths, or a glob
INSTANCE_MAP = ""           # instead of MASKS: an instance map whose nonzero values are segments ("" = use MASKS)
TOPK = 3                    # [>=1] classes listed per mask
JSON = False                # print JSON instead of text
OVERLAY = ""                # write the image with outlined, labelled masks to this file, .png or .jpg ("" = no)
WINDOW = ""                 # [""|HxW] window HxW around each segment ("" = the one the model was trained and validated with)
MAX_BATCH = 32              # [>=1] windows per forward pass (bounds memory for maps with many instances)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = False                 # bf16 autocast (faster on GPUs; float32 is exact and fast enough for a few masks)
# ---- end of parameters ----


def main():
    cfg = cli.parse_config(globals(), __file__)
    device = resolve_device(cfg.DEVICE)
    checkpoint = find_checkpoint(cfg.CHECKPOINT)
    image_path = find_path(cfg.IMAGE)
    sources = [find_path(cfg.INSTANCE_MAP)] if cfg.INSTANCE_MAP else mask_paths(cfg.MASKS)
    if cfg.OVERLAY:   # before any work: never over an input, in a known format, somewhere writable
        check_writes([("--OVERLAY", cfg.OVERLAY)], [image_path, checkpoint, *sources])
        check_image_extension(cfg.OVERLAY)
        check_writable_folder(os.path.dirname(os.path.abspath(cfg.OVERLAY)), "OVERLAY's folder")
    image = read_image(image_path)
    names, masks = read_segments(image.shape[:2], sources, instance_map=bool(cfg.INSTANCE_MAP))
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint).to(device).eval()
    window = model_window(state, cfg.WINDOW)
    results = predict(model, image, masks, device, window, cfg.MAX_BATCH, cfg.TOPK,
                      amp_dtype(device, cfg.AMP))
    for result, name, mask in zip(results, names, masks):
        result["mask"] = name
        result["area"] = int(mask.mask.sum())
    if cfg.JSON:
        print(json.dumps({"image": image_path, "checkpoint": checkpoint, "window": list(window),
                          "segments": results}, indent=1))
    else:
        print(f"{image_path} ({image.shape[1]}x{image.shape[0]}), model {checkpoint}:")
        for r in results:
            others = ", ".join(f"{one_line(t['class'])} {t['probability']:.2f}" for t in r["topk"][1:])
            print(f"  {r['mask']}: {one_line(r['class'])} ({r['probability']:.2f})"
                  + (f"   then {others}" if others else ""))
    if cfg.OVERLAY:
        write_image(cfg.OVERLAY, draw_overlay(image, masks, [f"{r['class']} {r['probability']:.2f}"
                                                             for r in results]))
        if not cfg.JSON:
            print(f"overlay written to {cfg.OVERLAY}")


def mask_paths(masks):
    """The mask files of --MASKS: paths and globs, comma-separated."""
    paths = []
    for part in (p.strip() for p in masks.split(",") if p.strip()):
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
        label_map = read_label_map(path)
        if label_map.shape[:2] != tuple(shape):
            raise UserError(f"{path}: instance map is {label_map.shape[1]}x{label_map.shape[0]} "
                            f"but the image is {shape[1]}x{shape[0]}")
        values, masks = instance_box_masks(label_map)
        if not values:
            raise UserError(f"{path}: instance map has no nonzero value (no segment)")
        return [f"segment {v}" for v in values], masks
    return sources, [box_mask(read_mask(p, shape)) for p in sources]


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


@torch.inference_mode()
def predict(model, image, masks, device, window, max_batch, topk, dtype=None):
    """Class, probability and top-k of each mask, each seen in its window (the evaluation
    rule), at most `max_batch` windows per forward (`dtype`: autocast, None = float32)."""
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    was_training = model.training
    model.eval()
    results = []
    for first in range(0, len(masks), max_batch):
        images, window_masks = cut_windows(image, masks[first:first + max_batch], window)
        probs = forward_windows(model, images, window_masks, device, dtype).softmax(1)
        top_p, top_i = probs.topk(min(topk, model.num_classes), dim=1)
        for row_p, row_i in zip(top_p.tolist(), top_i.tolist()):
            top = [{"class": names[i], "index": i, "probability": round(p, 4)} for p, i in zip(row_p, row_i)]
            results.append({"class": top[0]["class"], "probability": top[0]["probability"], "topk": top})
    model.train(was_training)
    return results


def draw_overlay(image, masks, labels):
    """The image with each mask (BoxMask) outlined in its own colour and labelled at its top."""
    canvas = image.copy()
    for i, (mask, label) in enumerate(zip(masks, labels)):
        colour = tuple(int(c) for c in cv2.cvtColor(
            np.uint8([[[(i * 47) % 180, 230, 255]]]), cv2.COLOR_HSV2RGB)[0, 0])
        contours, _ = cv2.findContours(mask.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(mask.x, mask.y))
        cv2.drawContours(canvas, contours, -1, colour, 2)
        ys = np.flatnonzero(mask.mask.any(axis=1))
        x, y = mask.x + int(np.flatnonzero(mask.mask[ys[0]])[0]), max(mask.y + int(ys[0]) - 4, 10)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


if __name__ == "__main__":
    cli.run(main)
