"""Label every mask of a class-agnostic segmenter (e.g. Segment Anything) with a trained model.

    python LabelMasks.py --MASKS=sam_out/ --IMAGES=photos/ --OUT=labelled.json
    python LabelMasks.py --MASKS=proposals.json --IMAGES=val2017 \\
        --IMAGE_INFO=annotations/instances_val2017.json --GT=annotations/instances_val2017.json

MASKS: a COCO results list, a COCO instances file (its annotations are the masks), or Segment
Anything's amg.py output: a folder of per-image JSON files (--convert-to-rle), or its default,
a folder per image of PNG masks with metadata.csv (that folder, or the folder holding them).
Writes OUT, a COCO results list: one entry per mask and class among its TOPK, with the
training set's own category ids and score = class probability × the mask's score (or its
predicted_iou). With GT (an instances file), pycocotools' COCOeval "segm" scores it: AP, AP50,
AP75, APs/APm/APl and the region accuracy of the masks matched to a GT mask, printed and
written to OUT's name + "_eval.json". Each mask is seen in a window of the model's training
geometry at native scale (roilib/windows.py); windows of many masks and images are batched.
Masks that cannot be used (empty, outside the image, RLE counts that do not cover it, NaN
scores, unknown image, missing file...) are skipped, counted and reported by reason.
"""
import os

import torch

from AttentionNet import AttentionNet
from roilib import cli
from roilib.checkpoint import load_model_state
from roilib.outputs import check_writable_folder, write_json
from roilib.labelling import (evaluate, evaluation_path, format_evaluation, label_masks, model_category_ids,
                              skipped_lines)
from roilib.maskinputs import read_masks
from roilib.paths import find_checkpoint, find_path
from roilib.runtime import amp_dtype, precision_name, resolve_device
from roilib.windows import check_memory, model_window
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] trained model (relative paths: to this repository if not found here)
IMAGES = "Test/demo/val/images"    # image folder
MASKS = "Test/demo/val/instances.json"  # [nonempty] COCO results list, instances file, or folder of SAM amg.py JSON files
IMAGE_INFO = ""             # instances file mapping image ids to files, where MASKS has no 'images' ("" = IMAGES' listing: 00042.png -> id 42)
OUT = "logs/labelled.json"  # [nonempty] COCO results JSON to write (and, with GT, <OUT>_eval.json next to it)
TOPK = 1                    # [1..1e6] results per mask: one per class among its TOPK
GT = ""                     # instances file to score OUT against with COCOeval "segm" ("" = no evaluation)
KEEP_CATEGORIES = False     # keep each mask's own category_id instead of labelling it (checks files and ids; no model is run)
WINDOW = ""                 # [""|HxW] window HxW around each mask ("" = the one the model was trained and validated with)
MAX_BATCH = 64              # [1..65536] windows per forward pass (from many masks and images)
WORKERS = 2                 # [0..256] DataLoader worker processes (decode masks, cut windows)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 where the device runs it natively (else float32)
# ---- end of parameters ----


def main():
    cfg = cli.parse_config(globals(), __file__)
    device = resolve_device(cfg.DEVICE)
    reads = [find_path(p) for p in (cfg.MASKS, cfg.IMAGES, cfg.GT, cfg.IMAGE_INFO, cfg.CHECKPOINT) if p]
    writes = [("--OUT", cfg.OUT)] + ([("--OUT", evaluation_path(cfg.OUT))] if cfg.GT else [])
    check_writes(writes, reads)   # before any work: never over an input or a run's files
    check_writable_folder(os.path.dirname(os.path.abspath(cfg.OUT)), "OUT's folder")
    mask_set = read_masks(find_path(cfg.MASKS), find_path(cfg.IMAGES),
                          find_path(cfg.IMAGE_INFO) if cfg.IMAGE_INFO else "")
    print(f"{len(mask_set.masks)} masks on {len(mask_set.image_paths)} images from {mask_set.source}")
    model, window, dtype = (None, None, None) if cfg.KEEP_CATEGORIES else load_model(cfg, device)
    labelled = label_masks(model, mask_set, device, window, cfg.TOPK, dtype, cfg.MAX_BATCH, cfg.WORKERS,
                           keep_categories=cfg.KEEP_CATEGORIES)
    for line in skipped_lines(mask_set.skipped):
        print(line)
    write_json(cfg.OUT, labelled["results"])
    print(f"labelled {len(labelled['masks'])} masks ({labelled['masks_per_s']:.1f} masks/s); "
          f"wrote {len(labelled['results'])} results to {cfg.OUT}")
    if cfg.GT:
        report = evaluate(labelled["results"], labelled["masks"], find_path(cfg.GT))
        report.update(masks_per_s=labelled["masks_per_s"], labelled=len(labelled["masks"]),
                      skipped=dict(mask_set.skipped), results=cfg.OUT, gt=cfg.GT, topk=cfg.TOPK,
                      window=list(window) if window else None,
                      checkpoint=None if cfg.KEEP_CATEGORIES else cfg.CHECKPOINT)
        print("\n".join(format_evaluation(report)))
        write_json(evaluation_path(cfg.OUT), report, indent=1)
        print(f"wrote {evaluation_path(cfg.OUT)}")


def load_model(cfg, device):
    """(model, window, autocast dtype) of cfg.CHECKPOINT."""
    checkpoint = find_checkpoint(cfg.CHECKPOINT)
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint).to(device, memory_format=torch.channels_last)
    _, warning = model_category_ids(model)
    if warning:
        print(warning)
    window = model_window(state, cfg.WINDOW)
    check_memory(f"--MAX_BATCH={cfg.MAX_BATCH} (windows of {window[0]}x{window[1]})",
                 cfg.MAX_BATCH * window[0] * window[1], device)
    dtype = amp_dtype(device, cfg.AMP)
    print(f"model {checkpoint} ({model.config['arch']}, {model.num_classes} classes), windows of "
          f"{window[0]}x{window[1]}, {device}, {precision_name(dtype)}")
    return model, window, dtype


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE"})
