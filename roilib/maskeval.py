"""LabelMasks' evaluation: pycocotools' COCOeval "segm" of the labelled masks, and the region
accuracy of the masks matched to a ground-truth mask, overall and per segment size."""
import contextlib
import io
import os

import numpy as np
from pycocotools import mask as mask_utils

from roilib.errors import UserError
from roilib.metrics import SIZE_BINS

# pycocotools' COCOeval stats, in its order (-1 where no GT mask is of that size).
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate(results, labelled, gt_path):
    """COCOeval "segm" of ``results`` against the instances file ``gt_path``: AP, AP50, AP75,
    APs, APm, APl (None where COCOeval has no GT of that size), and the region accuracy of
    the labelled masks matched to a GT mask (IoU >= 0.5), overall and per size bin. Results
    on images not in the GT are left out (counted in "outside_gt")."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            gt = COCO(gt_path)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
            raise UserError(f"{gt_path}: not a COCO instances file ({error})") from None
    inside = [r for r in results if r["image_id"] in gt.imgs]
    stats = [0.0] * len(AP_NAMES)
    if inside:
        with contextlib.redirect_stdout(io.StringIO()):
            detections = gt.loadRes(inside)
            coco_eval = COCOeval(gt, detections, "segm")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = coco_eval.stats[:len(AP_NAMES)].tolist()
    report = {name: (None if value < 0 else float(value)) for name, value in zip(AP_NAMES, stats)}
    report["outside_gt"] = len(results) - len(inside)
    report.update(matched_accuracy(gt, [m for m in labelled if m["image_id"] in gt.imgs]))
    return report


def matched_accuracy(gt, labelled):
    """Region accuracy of the masks whose best GT match (IoU >= 0.5, crowds aside) exists:
    the fraction whose top-1 class is that GT mask's, overall and per SIZE_BINS bin of the
    mask's area."""
    correct, areas = [], []
    by_image = {}
    for mask in labelled:
        by_image.setdefault(mask["image_id"], []).append(mask)
    for image_id, masks in by_image.items():
        anns = [a for a in gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        gt_rles = [gt.annToRLE(a) for a in anns]
        ious = np.asarray(mask_utils.iou([rle_bytes(m["rle"]) for m in masks], gt_rles,
                                         [0] * len(gt_rles))).reshape(len(masks), len(anns))
        for mask, row in zip(masks, ious):
            best = int(np.argmax(row))
            if row[best] >= 0.5:
                correct.append(mask["category_id"] == anns[best]["category_id"])
                areas.append(mask["area"])
    correct, areas = np.asarray(correct, bool), np.asarray(areas, np.int64)
    by_size = []
    for low, high, name in SIZE_BINS:
        inside = (areas >= low) & (areas < high)
        by_size.append({"bin": name, "min_area": low, "max_area": None if high == float("inf") else high,
                        "count": int(inside.sum()),
                        "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return {"matched": int(len(correct)), "unmatched": len(labelled) - int(len(correct)),
            "accuracy": float(correct.mean()) if len(correct) else None, "by_size": by_size}


def format_evaluation(report):
    """The figures as a few printed lines."""
    def fmt(value):
        return "-" if value is None else f"{value:.3f}"
    lines = ["mask AP (COCOeval segm): " + "  ".join(f"{n} {fmt(report[n])}" for n in AP_NAMES),
             f"region accuracy of matched masks (IoU >= 0.5): {fmt(report['accuracy'])} "
             f"({report['matched']} matched, {report['unmatched']} unmatched)"]
    sizes = [f"{row['bin']} {fmt(row['accuracy'])} ({row['count']})"
             for row in report["by_size"] if row["count"]]
    if sizes:
        lines.append("  by size: " + ", ".join(sizes))
    if report["outside_gt"]:
        lines.append(f"warning: {report['outside_gt']} results are on images not in the GT file "
                     "and were left out of the evaluation")
    return lines


def evaluation_path(out_path):
    """labelled.json -> labelled_eval.json, next to it."""
    stem, _ = os.path.splitext(out_path)
    return f"{stem}_eval.json"


def rle_bytes(rle):
    """A JSON RLE (counts as text) as pycocotools takes it."""
    return {"size": rle["size"], "counts": rle["counts"].encode()}
