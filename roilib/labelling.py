"""Labelling class-agnostic masks (a segmenter's output) with a trained region classifier.

The masks come from roilib.maskinputs (formats, reading); each is checked and decoded in the
worker that cuts its window, by roilib.segmentation (the COCO reader's own check), and shown
to the net by the evaluation rule (roilib/windows.py); windows of many masks and images share
a forward (WindowBatcher). Bad masks are skipped and counted by kind; one bad mask never stops
a run. ``evaluate`` scores the result against ground truth: pycocotools' COCOeval "segm" of
the labelled masks, and the region accuracy of the masks matched to a ground-truth mask,
overall and per segment size.
"""
import contextlib
import io
import os
import time
import warnings

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset

from roilib.crops import box_mask
from roilib.errors import UserError
from roilib.evaluation import WindowBatcher, forward_windows
from roilib.imageio import read_image, read_mask
from roilib.maskinputs import READ_KINDS, MaskFile
from roilib.metrics import SIZE_BINS
from roilib.progress import progress_bar
from roilib.segmentation import REASONS, BadSegmentation, to_rle
from roilib.windows import cut_windows

warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")

# The kinds of skipped masks, in the order they are reported, with what each means.
SKIP_KINDS = {
    **READ_KINDS,
    "unknown image id": "their image id is not among the images",
    "missing image file": "their image file is missing",
    "unreadable image": "their image file could not be read",
    "missing mask file": "the PNG mask named in metadata.csv is missing",
    "bad mask file": "the PNG mask is unreadable, empty or not the image's size",
    **REASONS,
    "empty": "the mask has no pixel",
    "no category_id": "no integer category_id to keep",
}


def mask_of(segmentation, height, width):
    """(compressed RLE, the mask as uint8 H×W) of a segmentation as given, checked by
    roilib.segmentation; a MaskFile is read and must be the image's size. Raises
    BadSegmentation(kind)."""
    if isinstance(segmentation, MaskFile):
        if not os.path.isfile(segmentation.path):
            raise BadSegmentation("missing mask file")
        try:
            mask = read_mask(segmentation.path, (height, width))
        except UserError:
            raise BadSegmentation("bad mask file") from None
        return mask_utils.encode(np.asfortranarray(mask)), mask
    rle = to_rle(segmentation, height, width)
    return rle, mask_utils.decode(rle)


def rle_json(rle):
    """A compressed RLE as JSON wants it (counts as text)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode() if isinstance(counts, bytes) else counts}


class MaskWindows(Dataset):
    """Item k = up to ``chunk`` masks of one image, decoded and cut to their windows: the
    keys WindowBatcher takes ("images", "masks", "labels", "areas", "segments" = mask
    indices), plus "rles" (the masks as compressed RLE, for the output) and "skipped"
    (kinds of the masks that could not be used). ``windows=False`` decodes and checks the
    masks without cutting windows (nothing to classify)."""

    def __init__(self, mask_set, groups, window, chunk=32, windows=True):
        self.mask_set, self.windows = mask_set, windows
        self.window = tuple(window) if windows else None
        self.chunks = [(image_id, indices[start:start + chunk])
                       for image_id, indices in groups.items()
                       for start in range(0, len(indices), chunk)]

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, k):
        image_id, indices = self.chunks[k]
        try:
            image = read_image(self.mask_set.image_paths[image_id])
        except UserError:
            return _item(None, None, [], [], {}, ["unreadable image"] * len(indices))
        height, width = image.shape[:2]
        kept, box_masks, areas, rles, skipped = [], [], [], {}, []
        for index in indices:
            try:
                rle, dense = mask_of(self.mask_set.masks[index].segmentation, height, width)
            except BadSegmentation as kind:
                skipped.append(str(kind))
                continue
            mask = box_mask(dense)
            if mask is None:
                skipped.append("empty")
                continue
            kept.append(index)
            box_masks.append(mask)
            areas.append(int(mask.mask.sum()))
            rles[index] = rle_json(rle)
        if not kept:
            return _item(None, None, [], [], rles, skipped)
        images, window_masks = cut_windows(image, box_masks, self.window) if self.windows else (None, None)
        return _item(images, window_masks, kept, areas, rles, skipped)


def _item(images, masks, indices, areas, rles, skipped):
    return {"images": images, "masks": masks, "labels": torch.zeros(len(indices), dtype=torch.int64),
            "areas": torch.tensor(areas, dtype=torch.int64),
            "segments": torch.tensor(indices, dtype=torch.int64), "rles": rles, "skipped": skipped}


# ----------------------------------------------------------------------------- labelling

def model_category_ids(model):
    """The training set's own id of each class (COCO: 1..90), or 0..K-1 with a warning line
    for a checkpoint written before they were stored. Returns (ids, warning or "")."""
    ids = model.config.get("category_ids")
    if ids:
        return [int(i) for i in ids], ""
    return list(range(model.num_classes)), ("warning: this checkpoint carries no category ids "
                                            "(trained before they were stored): writing classes "
                                            "as 0..K-1, which match no dataset's ids")


@torch.inference_mode()
def label_masks(model, mask_set, device, window, topk=1, dtype=None, max_batch=32, workers=0,
                keep_categories=False, progress=True):
    """Label every usable mask of ``mask_set``. Returns {"results": COCO results list (one
    entry per mask and class among its top-k; score = class probability × mask score),
    "masks": [{"index", "image_id", "rle", "area", "category_id" (top-1)}] of the masks
    labelled, "seconds", "masks_per_s"}; skipped masks are counted in mask_set.skipped.
    ``keep_categories``: keep each mask's own category_id instead (no model is run)."""
    ids = None
    if not keep_categories:
        model.eval()
        ids, _ = model_category_ids(model)
    groups = mask_set.by_image()
    windows = MaskWindows(mask_set, groups, window, max_batch, windows=not keep_categories)
    loader = DataLoader(windows, batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda")
    rles, top = {}, {}  # mask index -> RLE; -> [(category id, probability)]
    batcher = WindowBatcher(max_batch)
    bar = progress_bar(sum(len(v) for v in groups.values()), "label", unit="mask", enabled=progress)
    start = time.perf_counter()
    for item in loader:
        mask_set.skipped.update(item["skipped"])
        rles.update(item["rles"])
        if keep_categories:
            _keep_own_categories(mask_set, item["segments"].tolist(), top)
        else:
            for batch in batcher.add(item):
                _classify(model, batch, device, dtype, topk, ids, top)
        bar.update(len(item["segments"]) + len(item["skipped"]))
    for batch in ([] if keep_categories else batcher.flush()):
        _classify(model, batch, device, dtype, topk, ids, top)
    bar.close()
    seconds = time.perf_counter() - start
    return _assemble(mask_set, rles, top, seconds)


def _classify(model, batch, device, dtype, topk, ids, top):
    probs = forward_windows(model, batch["images"], batch["masks"], device, dtype).softmax(1)
    top_p, top_i = probs.topk(min(topk, probs.shape[1]), dim=1)
    for index, ps, classes in zip(batch["segments"].tolist(), top_p.tolist(), top_i.tolist()):
        top[index] = [(ids[c], p) for c, p in zip(classes, ps)]


def _keep_own_categories(mask_set, indices, top):
    for index in indices:
        category = mask_set.masks[index].category_id
        if isinstance(category, bool) or not isinstance(category, int):
            mask_set.skipped["no category_id"] += 1
        else:
            top[index] = [(category, 1.0)]


def _assemble(mask_set, rles, top, seconds):
    """Results in input order (mask, then class rank): the same masks in any format give
    the same file."""
    results, labelled = [], []
    for index in sorted(top):
        mask, rle = mask_set.masks[index], rles[index]
        bbox = [float(v) for v in mask_utils.toBbox(rle_bytes(rle))]
        for category, probability in top[index]:
            results.append({"image_id": mask.image_id, "category_id": int(category),
                            "segmentation": rle, "bbox": bbox,
                            "score": round(float(probability) * mask.score, 6)})
        labelled.append({"index": index, "image_id": mask.image_id, "rle": rle,
                         "area": int(mask_utils.area(rle_bytes(rle))),
                         "category_id": int(top[index][0][0])})
    return {"results": results, "masks": labelled, "seconds": seconds,
            "masks_per_s": len(labelled) / max(seconds, 1e-9)}


def skipped_lines(skipped):
    """One line per kind of skipped mask (none when nothing was skipped)."""
    return [f"skipped {skipped[kind]} masks: {kind} ({why})"
            for kind, why in SKIP_KINDS.items() if skipped.get(kind)]


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
