"""Classify the regions of an image given by ROI masks.

    python RunPrediction.py                                        # Test/example.png + its masks
    python RunPrediction.py --IMAGE=photo.jpg --MASKS=roi1.png,roi2.png --OVERLAY=out.png
    python RunPrediction.py --IMAGE=photo.jpg --LABEL_MAP=instances.png --JSON=True

Masks: PNGs with 0 outside and 1 or 255 inside, the image's size (several comma-separated, or
a glob), or one label/instance map where each nonzero value is one segment.
"""
import glob
import json

import cv2
import numpy as np
import torch

from AttentionNet import AttentionNet
from roilib.checkpoint import load_model_state
from roilib import cli
from roilib.paths import find_checkpoint, find_path
from roilib.errors import UserError
from roilib.evaluation import shrink_to_budget
from roilib.imageio import read_image, read_label_map, read_mask, write_png
from roilib.runtime import amp_dtype, autocast, resolve_device

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # trained model (relative paths: to this repository if not found here)
IMAGE = "Test/example.png"         # the image
MASKS = "Test/example_mask*.png"   # ROI mask PNG(s): one path, comma-separated paths, or a glob
LABEL_MAP = ""              # instead of MASKS: a map whose nonzero values are segments ("" = use MASKS)
TOPK = 3                    # classes listed per mask
JSON = False                # print JSON instead of text
OVERLAY = ""                # write the image with outlined, labelled masks to this PNG ("" = no)
MAX_PIXELS = 0              # larger images are shrunk to this many pixels, aspect kept (0 = the scale the model was validated at)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = False                 # bf16 autocast (faster on GPUs; float32 is exact and fast enough for a few masks)
# ---- end of parameters ----


def main():
    cli.parse_parameters(globals(), __file__)
    checkpoint = find_checkpoint(CHECKPOINT)
    image_path = find_path(IMAGE)
    image = read_image(image_path)
    names, masks = read_segments(image.shape[:2])
    device = resolve_device(DEVICE)
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint).to(device).eval()
    max_pixels = MAX_PIXELS or int(state.get("eval_max_pixels") or 1000000)
    results = predict(model, image, masks, device, max_pixels)
    for result, name, mask in zip(results, names, masks):
        result["mask"] = name
        result["area"] = int(mask.sum())
    if JSON:
        print(json.dumps({"image": image_path, "checkpoint": checkpoint, "segments": results}, indent=1))
    else:
        print(f"{image_path} ({image.shape[1]}x{image.shape[0]}), model {checkpoint}:")
        for r in results:
            others = ", ".join(f"{t['class']} {t['probability']:.2f}" for t in r["topk"][1:])
            print(f"  {r['mask']}: {r['class']} ({r['probability']:.2f})"
                  + (f"   then {others}" if others else ""))
    if OVERLAY:
        write_png(OVERLAY, draw_overlay(image, masks, [f"{r['class']} {r['probability']:.2f}" for r in results]))
        if not JSON:
            print(f"overlay written to {OVERLAY}")


def mask_paths():
    paths = []
    for part in (p.strip() for p in MASKS.split(",") if p.strip()):
        part = find_path(part)
        if any(c in part for c in "*?["):
            found = sorted(glob.glob(part))
            if not found:
                raise UserError(f"{part}: no mask file matches")
            paths += found
        else:
            paths.append(part)
    if not paths:
        raise UserError("no masks given: set --MASKS=path[,path...] or --LABEL_MAP=path")
    return paths


def read_segments(shape):
    """(names, masks): from the label map (one segment per nonzero value) or the mask files."""
    if LABEL_MAP:
        path = find_path(LABEL_MAP)
        label_map = read_label_map(path)
        if label_map.shape[:2] != tuple(shape):
            raise UserError(f"{path}: label map is {label_map.shape[1]}x{label_map.shape[0]} but the "
                            f"image is {shape[1]}x{shape[0]}")
        values = [int(v) for v in np.unique(label_map) if v != 0]
        if not values:
            raise UserError(f"{path}: label map has no nonzero value (no segment)")
        return [f"segment {v}" for v in values], [(label_map == v).astype(np.uint8) for v in values]
    paths = mask_paths()
    return paths, [read_mask(p, shape) for p in paths]


def predict(model, image, masks, device, max_pixels):
    """All masks of the image in one batch, the image shrunk to `max_pixels` if larger: a net
    trained on small crops is most accurate at that scale (see Train.py's VAL_MAX_PIXELS)."""
    image, masks = shrink_to_budget(image, masks, max_pixels)
    images = torch.from_numpy(image).permute(2, 0, 1)[None].to(device)
    batch = torch.from_numpy(np.stack(masks))[:, None].to(device)
    with autocast(device, amp_dtype(device, AMP)):
        out = model.predict(images, batch, topk=TOPK)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    results = []
    for probs, indices in zip(out["topk_probs"].tolist(), out["topk_indices"].tolist()):
        top = [{"class": names[i], "index": i, "probability": round(p, 4)} for p, i in zip(probs, indices)]
        results.append({"class": top[0]["class"], "probability": top[0]["probability"], "topk": top})
    return results


def draw_overlay(image, masks, labels):
    """The image with each mask outlined in its own colour and labelled at its top."""
    canvas = image.copy()
    for i, (mask, label) in enumerate(zip(masks, labels)):
        colour = tuple(int(c) for c in cv2.cvtColor(
            np.uint8([[[(i * 47) % 180, 230, 255]]]), cv2.COLOR_HSV2RGB)[0, 0])
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour, 2)
        ys, xs = np.nonzero(mask)
        x, y = int(xs.min()), max(int(ys.min()) - 4, 10)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


if __name__ == "__main__":
    cli.run(main)
