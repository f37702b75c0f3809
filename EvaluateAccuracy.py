"""Evaluate a trained AttentionNet: accuracy overall, per class and per segment size.

    python EvaluateAccuracy.py                                   # the default Train.py run
    python EvaluateAccuracy.py --CHECKPOINT=logs/coco_r50/best.pt --DATASET=coco

Prints a table and writes eval.json, eval_by_size.csv, eval_by_class.csv,
eval_accuracy_by_size.png and eval_confusion.png next to the checkpoint (inside a released
folder; or into --OUT).
Deterministic and scale-true: every segment once, in the window the model was trained with
(native scale, centred on the segment; see roilib/windows.py), windows of many images batched.
"""
import csv
import os

import torch

from AttentionNet import AttentionNet
from Datasets import label_convention, open_dataset, resolve_paths
from roilib.checkpoint import describe_model, load_model_state
from roilib import cli
from roilib.errors import UserError, one_line
from roilib.evaluation import predict_dataset
from roilib.metrics import summarize
from roilib.outputs import atomic_write, check_writable_folder, write_json
from roilib.paths import find_checkpoint
from roilib.runtime import amp_dtype, precision_name, resolve_device
from roilib.windows import WINDOW_RULE, check_memory, model_window
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] checkpoint to evaluate (relative paths: to this repository)
DATASET = ""                # [""|demo|coco|opensurfaces|camvid|cocojson|labelmap] dataset ("" = the one the checkpoint was trained on)
IMAGES = ""                 # image folder ("" = the DATASET's validation images)
ANNOTATIONS = ""            # instances JSON or label-map folder ("" = the DATASET's validation set)
CLASS_NAMES = None          # [None|names] label maps only: comma-separated names (None = as in training)
BACKGROUND = ""             # label maps: value of unlabelled pixels, None = every value is a class ("" = as in training)
IGNORE = ""                 # label maps: comma-separated values neither a class nor a region ("" = as in training)
CLASS_VALUES = ""           # label maps: comma-separated values of the classes in class order ("" = as in training)
LABEL_NAMES = ""            # label maps: IMAGE_ENDING,LABEL_ENDING ("" = as in training)
MIN_AREA = None             # [None|1..1e12] ignore segments smaller than this (pixels; None = as in training)
OUT = ""                    # output folder ("" = the checkpoint's folder)
WINDOW = ""                 # [""|HxW] evaluation window HxW around each segment ("" = the one stored in the checkpoint by Train.py)
MAX_BATCH = 32              # [1..65536] windows per forward pass
WORKERS = 2                 # [0..256] DataLoader worker processes
LIMIT = 0                   # [0..1e12] evaluate the first N images only (0 = all)
MATCH_BY_INDEX = False      # evaluate a checkpoint whose class names differ from the dataset's, matching classes by index
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 where the device runs it natively (else float32)
# ---- end of parameters ----

OUTPUTS = ("eval.json", "eval_by_size.csv", "eval_by_class.csv", "eval_accuracy_by_size.png",
           "eval_confusion.png")


def main():
    cfg = cli.parse_config(globals(), __file__)
    device = resolve_device(cfg.DEVICE)
    checkpoint = find_checkpoint(cfg.CHECKPOINT)
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint)
    window = model_window(state, cfg.WINDOW)
    check_memory(f"--MAX_BATCH={cfg.MAX_BATCH} (windows of {window[0]}x{window[1]})",
                 cfg.MAX_BATCH * window[0] * window[1], device)
    dataset_name, images, annotations = evaluation_paths(cfg, state)
    folder = output_folder(cfg.OUT, checkpoint)
    check_writes([("--OUT", os.path.join(folder, name)) for name in OUTPUTS],
                 [checkpoint, images, annotations], folders=[("--OUT", folder)])
    check_writable_folder(folder)  # before the evaluation, not after it
    dataset = open_evaluation_set(cfg, state, checkpoint, dataset_name, images, annotations)
    check_classes(model, dataset, checkpoint, annotations, cfg.MATCH_BY_INDEX)

    dtype = amp_dtype(device, cfg.AMP)
    model.to(device, memory_format=torch.channels_last)
    config = model.config
    print(f"evaluating {checkpoint} ({describe_model(config)}) on {annotations}: "
          f"{len(dataset)} segments in {len(dataset.images)} images, windows of {window[0]}x{window[1]}, {device}, "
          f"{precision_name(dtype)}")
    print(dataset.summary())
    out = predict_dataset(model, dataset, device, dtype, window=window, max_batch=cfg.MAX_BATCH,
                          workers=cfg.WORKERS, limit=cfg.LIMIT or None)
    report_skipped(out)
    if len(out["labels"]) == 0:
        raise UserError(f"no segment was evaluated (LIMIT={cfg.LIMIT}); the results already in {folder} "
                        "are left as they were")
    result = summarize(out["labels"], out["preds"], out["areas"], dataset.class_names, out["topk"])
    result.update({"checkpoint": os.path.abspath(checkpoint), "dataset": dataset_name,
                   "images": os.path.abspath(images), "annotations": os.path.abspath(annotations),
                   "model": config, "step": state.get("step"), "window": list(window), "window_rule": WINDOW_RULE,
                   "segments_per_s": out["segments_per_s"], "seconds": out["seconds"],
                   "precision": precision_name(dtype), "device": str(device),
                   "skipped_images": out["skipped"].as_list()})
    print(format_report(result))
    written = write_outputs(result, folder)
    print(f"{out['segments_per_s']:.1f} segments/s ({out['seconds']:.1f} s); wrote {', '.join(written)} in {folder}")


def output_folder(out, checkpoint):
    """OUT, else the checkpoint's own folder: a run folder for a .pt file, the released folder
    itself for a released model (its parent may hold other releases: results there would mix)."""
    if out:
        return out
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def evaluation_paths(cfg, state):
    """(dataset name, images, annotations): the parameters' data, or by default the validation
    set the checkpoint was trained with (Train.py's parameters stored in it)."""
    trained = trained_params(state)
    dataset_name = cfg.DATASET or trained.get("DATASET") or "demo"
    images, annotations = cfg.IMAGES, cfg.ANNOTATIONS
    if not cfg.DATASET and not cfg.IMAGES and not cfg.ANNOTATIONS:
        images, annotations = trained.get("VAL_IMAGES", ""), trained.get("VAL_ANNOTATIONS", "")
    return (dataset_name, *resolve_paths(dataset_name, "val", images, annotations))


# Train.py's parameters this script takes from a checkpoint: the type each must have, and the
# parameter here that overrides it.
TRAINED = {"DATASET": (str, "DATASET"), "VAL_IMAGES": (str, "IMAGES"), "VAL_ANNOTATIONS": (str, "ANNOTATIONS"),
           "MIN_AREA": (int, "MIN_AREA"), "CLASS_NAMES": (list, "CLASS_NAMES")}


def trained_params(state):
    """The checkpoint's stored parameters that this script reads, each checked (one line for an
    edited or damaged file, not a traceback deep in a reader)."""
    trained = state.get("params") or {}
    for name, (kind, override) in TRAINED.items():
        value = trained.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or kind is list and not all(isinstance(v, str) for v in value)):
            raise UserError(f"the checkpoint's stored {name}={value!r} is not a {kind.__name__}"
                            f"{' of names' if kind is list else ''}: the file is damaged or was edited; "
                            f"give --{override} to override it")
    return trained


def open_evaluation_set(cfg, state, checkpoint, dataset_name, images, annotations):
    """The reader of evaluation_paths' data, with the checkpoint's class names, label-map
    convention and MIN_AREA unless the parameters say."""
    trained = trained_params(state)
    names = cfg.CLASS_NAMES if cfg.CLASS_NAMES is not None else trained.get("CLASS_NAMES")
    given = {"BACKGROUND": cfg.BACKGROUND, "IGNORE": cfg.IGNORE, "CLASS_VALUES": cfg.CLASS_VALUES,
             "LABEL_NAMES": cfg.LABEL_NAMES}
    convention = label_convention(given, dataset_name, state.get("label_convention"), checkpoint)
    min_area = cfg.MIN_AREA if cfg.MIN_AREA is not None else trained.get("MIN_AREA", 1)
    return open_dataset(dataset_name, "val", images, annotations, train=False,
                        class_names=names, min_area=min_area, convention=convention)


def report_skipped(out):
    """Unreadable images are left out of the figures: say so, and stop if none could be read."""
    skipped = out["skipped"]
    if not skipped:
        return
    if len(out["labels"]) == 0:
        raise UserError(f"no image could be read: {skipped.summary()}")
    print(f"warning: {skipped.summary()}; their segments are left out of the figures")


def check_classes(model, dataset, checkpoint, annotations, by_index=False):
    """The model's classes must be the dataset's, in the same order: figures for a mismatched
    mapping would look plausible and mean nothing."""
    if model.num_classes != dataset.num_classes:
        raise UserError(f"{checkpoint}: the model has {model.num_classes} classes but {annotations} "
                        f"has {dataset.num_classes}; evaluate on the dataset it was trained for")
    if not model.class_names or model.class_names == dataset.class_names:
        return
    index = next(i for i, (a, b) in enumerate(zip(model.class_names, dataset.class_names)) if a != b)
    difference = (f"class {index} is {model.class_names[index]!r} in the model but "
                  f"{dataset.class_names[index]!r} in {annotations}")
    if not by_index:
        raise UserError(f"{checkpoint}: {difference}; evaluate on the dataset it was trained for, "
                        "or pass --MATCH_BY_INDEX=True to match classes by index")
    print(f"warning: {difference}; matching classes by index (--MATCH_BY_INDEX=True)")


def format_report(result):
    topk = next((key for key in result if key.startswith("top") and key.endswith("_accuracy")), None)
    top_text = f"   top-{topk[3:-9]} {pct(result[topk])}" if topk else ""
    lines = [f"overall accuracy {pct(result['accuracy'])}   mean class accuracy "
             f"{pct(result['mean_class_accuracy'])}{top_text}   ({result['count']} segments)", "",
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
        lines.append(f"  {one_line(row['class'])[:23]:<24}{row['count']:>9}{pct(row['accuracy']):>10}")
    return "\n".join(lines)


def pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def write_outputs(result, folder):
    write_json(os.path.join(folder, "eval.json"), result, indent=1)
    with atomic_write(os.path.join(folder, "eval_by_size.csv"), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bin", "min_area", "max_area", "count", "accuracy", "mean_class_accuracy"])
        for row in result["by_size"] + result["coco_size"]:
            writer.writerow([row["bin"], row["min_area"], row["max_area"], row["count"],
                             row["accuracy"], row["mean_class_accuracy"]])
    with atomic_write(os.path.join(folder, "eval_by_class.csv"), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "count", "accuracy"])
        for row in result["per_class"]:
            writer.writerow([row["class"], row["count"], row["accuracy"]])
    from roilib.metrics import plot_accuracy_by_size, plot_confusion
    plot_accuracy_by_size({"model": result["by_size"]}, os.path.join(folder, "eval_accuracy_by_size.png"))
    if result["confusion"] is None:   # too many classes for a matrix (its cells are in eval.json)
        return list(OUTPUTS[:-1])
    plot_confusion(result["confusion"], [r["class"] for r in result["per_class"]],
                   os.path.join(folder, "eval_confusion.png"))
    return list(OUTPUTS)


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE"})
