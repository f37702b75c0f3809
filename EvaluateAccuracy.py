"""Evaluate a trained AttentionNet: accuracy overall, per class and per segment size.

    python EvaluateAccuracy.py                                   # the default Train.py run
    python EvaluateAccuracy.py --CHECKPOINT=logs/coco_r50/best.pt --DATASET=coco

Prints a table and writes eval.json, eval_by_size.csv, eval_by_class.csv,
eval_accuracy_by_size.png and eval_confusion.png next to the checkpoint (or into --OUT).
Deterministic: every segment once, each image with all its segments in one batch.
"""
import csv
import json
import os

import torch

from AttentionNet import AttentionNet
from Datasets import open_dataset, resolve_paths
from roilib.checkpoint import load_model_state
from roilib import cli
from roilib.errors import UserError
from roilib.evaluation import predict_dataset
from roilib.metrics import summarize
from roilib.paths import find_checkpoint
from roilib.runtime import amp_dtype, precision_name, resolve_device

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # checkpoint to evaluate (relative paths: to this repository)
DATASET = ""                # demo | coco | opensurfaces ("" = the dataset the checkpoint was trained on)
IMAGES = ""                 # image folder ("" = the DATASET's validation images)
ANNOTATIONS = ""            # instances JSON or label-map folder ("" = the DATASET's validation set)
CLASS_NAMES = None          # label maps only: comma-separated names (None = as in training)
MIN_AREA = 1                # ignore segments smaller than this (pixels)
OUT = ""                    # output folder ("" = the checkpoint's folder)
MAX_PIXELS = 0              # images shrunk to fit this many pixels, aspect kept (0 = as validated in training)
MAX_BATCH = 32              # segments per forward pass at most
WORKERS = 2                 # DataLoader worker processes
LIMIT = 0                   # evaluate the first N images only (0 = all)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 where the device runs it natively (else float32)
# ---- end of parameters ----


def main():
    cli.parse_parameters(globals(), __file__)
    checkpoint = find_checkpoint(CHECKPOINT)
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint)
    trained = state.get("params") if isinstance(state.get("params"), dict) else {}
    dataset_name = DATASET or trained.get("DATASET") or "demo"
    names = CLASS_NAMES if CLASS_NAMES is not None else trained.get("CLASS_NAMES")
    images, annotations = IMAGES, ANNOTATIONS
    if not DATASET and not IMAGES and not ANNOTATIONS:   # the validation set used in training
        images, annotations = trained.get("VAL_IMAGES", ""), trained.get("VAL_ANNOTATIONS", "")
    images, annotations = resolve_paths(dataset_name, "val", images, annotations)
    dataset = open_dataset(dataset_name, "val", images, annotations, train=False,
                           class_names=names, min_area=MIN_AREA)
    check_classes(model, dataset, checkpoint, annotations)
    folder = OUT or os.path.dirname(os.path.abspath(checkpoint))
    make_folder(folder)  # before the evaluation, not after it

    max_pixels = MAX_PIXELS or int(state.get("eval_max_pixels") or 640 * 480)
    device = resolve_device(DEVICE)
    dtype = amp_dtype(device, AMP)
    model.to(device, memory_format=torch.channels_last)
    cfg = model.config
    print(f"evaluating {checkpoint} ({cfg['arch']}, mode={cfg['mode']}, "
          f"attention={','.join(cfg['attention']) or '-'}, merge={cfg['merge']}) on {annotations}: "
          f"{len(dataset)} segments in {len(dataset.images)} images at <= {max_pixels} pixels, {device}, "
          f"{precision_name(dtype)}")
    print(dataset.summary())
    out = predict_dataset(model, dataset, device, dtype, max_pixels=max_pixels, max_batch=MAX_BATCH,
                          workers=WORKERS, limit=LIMIT or None)
    report_skipped(out)
    result = summarize(out["labels"], out["preds"], out["areas"], dataset.class_names, out["topk"])
    result.update({"checkpoint": os.path.abspath(checkpoint), "dataset": dataset_name,
                   "images": os.path.abspath(images), "annotations": os.path.abspath(annotations),
                   "model": cfg, "step": state.get("step"), "max_pixels": max_pixels,
                   "segments_per_s": out["segments_per_s"], "seconds": out["seconds"],
                   "precision": precision_name(dtype), "device": str(device),
                   "skipped_images": out["skipped"].as_list()})
    print(format_report(result))
    written = write_outputs(result, folder)
    print(f"{out['segments_per_s']:.1f} segments/s ({out['seconds']:.1f} s); wrote {', '.join(written)} in {folder}")


def report_skipped(out):
    """Unreadable images are left out of the figures: say so, and stop if none could be read."""
    skipped = out["skipped"]
    if not skipped:
        return
    if len(out["labels"]) == 0:
        raise UserError(f"no image could be read: {skipped.summary()}")
    print(f"warning: {skipped.summary()}; their segments are left out of the figures")


def check_classes(model, dataset, checkpoint, annotations):
    if model.num_classes != dataset.num_classes:
        raise UserError(f"{checkpoint}: the model has {model.num_classes} classes but {annotations} "
                        f"has {dataset.num_classes}; evaluate on the dataset it was trained for")
    if model.class_names and model.class_names != dataset.class_names:
        print(f"warning: class names differ between {checkpoint} and {annotations}; "
              "matching classes by index")


def format_report(result):
    lines = [f"overall accuracy {pct(result['accuracy'])}   mean class accuracy "
             f"{pct(result['mean_class_accuracy'])}   top-5 {pct(result.get('top5_accuracy'))}   "
             f"({result['count']} segments)", "",
             "by segment size (pixels in the original image)",
             f"  {'size':<11}{'segments':>9}{'accuracy':>10}{'mean class':>12}"]
    for row in result["by_size"] + [None] + result["coco_size"]:
        if row is None:
            lines.append("  " + "-" * 40)
        elif row["count"]:
            lines.append(f"  {row['bin']:<11}{row['count']:>9}{pct(row['accuracy']):>10}"
                         f"{pct(row['mean_class_accuracy']):>12}")
    lines += ["", "by class", f"  {'class':<24}{'segments':>9}{'accuracy':>10}"]
    for row in result["per_class"]:
        lines.append(f"  {row['class'][:23]:<24}{row['count']:>9}{pct(row['accuracy']):>10}")
    return "\n".join(lines)


def pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def make_folder(folder):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise UserError(f"{folder}: cannot create the output folder ({error.strerror or error})") from None


def write_outputs(result, folder):
    make_folder(folder)
    with open(os.path.join(folder, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(folder, "eval_by_size.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bin", "min_area", "max_area", "count", "accuracy", "mean_class_accuracy"])
        for row in result["by_size"] + result["coco_size"]:
            writer.writerow([row["bin"], row["min_area"], row["max_area"], row["count"],
                             row["accuracy"], row["mean_class_accuracy"]])
    with open(os.path.join(folder, "eval_by_class.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "count", "accuracy"])
        for row in result["per_class"]:
            writer.writerow([row["class"], row["count"], row["accuracy"]])
    written = ["eval.json", "eval_by_size.csv", "eval_by_class.csv"]
    from roilib.plots import plot_accuracy_by_size, plot_confusion
    plot_accuracy_by_size({"model": result["by_size"]}, os.path.join(folder, "eval_accuracy_by_size.png"))
    plot_confusion(result["confusion"], [r["class"] for r in result["per_class"]],
                   os.path.join(folder, "eval_confusion.png"))
    return written + ["eval_accuracy_by_size.png", "eval_confusion.png"]


if __name__ == "__main__":
    cli.run(main)
