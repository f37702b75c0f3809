"""Batched, deterministic prediction over a dataset: all segments of an image in one forward
(the image runs once up to the first merge point; see AttentionNet.forward)."""
import math
import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roilib.crops import SIZE_STEP, resize_mask
from roilib.errors import UserError
from roilib.skipped import SkippedFiles
from roilib.progress import Progress
from roilib.runtime import autocast


def fit_size(image_hw, max_pixels):
    """(w, h) of an image shrunk (aspect kept) to about ``max_pixels``, each side at least
    32: the net's minimum, to which a smaller side is enlarged."""
    height, width = image_hw
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    return max(SIZE_STEP, round(width * scale)), max(SIZE_STEP, round(height * scale))


def shrink_to_budget(image, masks, max_pixels):
    """Image and its masks resized together to fit ``max_pixels`` (see fit_size): the one
    evaluation-time resize, shared by EvaluateAccuracy and RunPrediction so both see the
    same scale and interpolation."""
    size = fit_size(image.shape[:2], max_pixels)
    if size == (image.shape[1], image.shape[0]):
        return image, masks
    return (cv2.resize(image, size, interpolation=cv2.INTER_AREA),
            [resize_mask(mask, size) for mask in masks])


class ImageBatches(Dataset):
    """Deterministic evaluation: item i = image i (resized with INTER_AREA to fit
    ``max_pixels``) with ALL its segments, as
    {"image": uint8 [1,3,H,W], "masks": uint8 [S,1,H,W], "labels": int64 [S],
     "areas": int64 [S] (original pixels), "image_ids": [S], "segment_ids": [S]}.
    The image is stored once: the model side expands it to S without copying
    (``image.expand(S, -1, -1, -1)``). Use with ``DataLoader(..., batch_size=None)``.
    Every item also has "skipped": [(image path, reason)] for an image whose files cannot
    be read; such an item has no segment (S = 0) and "image" None.
    """

    def __init__(self, dataset, max_pixels):
        self.dataset = dataset
        self.max_pixels = max_pixels

    def __len__(self):
        return len(self.dataset.images)

    def __getitem__(self, image_index):
        dataset = self.dataset
        try:
            image = dataset.load_image(image_index)
            masks = dataset.image_masks(image_index, image.shape[:2])
        except UserError as error:
            return skipped_image_item(dataset.images[image_index]["path"], str(error))
        image, masks = shrink_to_budget(image, masks, self.max_pixels)
        segments = [dataset.segments[i] for i in dataset.image_segments[image_index]]
        image_id = dataset.images[image_index]["id"]
        return {"image": torch.from_numpy(image).permute(2, 0, 1)[None],
                "masks": torch.from_numpy(np.stack(masks))[:, None],
                "labels": torch.tensor([s.label for s in segments], dtype=torch.int64),
                "areas": torch.tensor([s.area for s in segments], dtype=torch.int64),
                "image_ids": [image_id] * len(segments),
                "segment_ids": [s.segment_id for s in segments], "skipped": []}


def skipped_image_item(path, reason):
    """An ``ImageBatches`` item without segments for an image that cannot be read."""
    return {"image": None, "masks": torch.zeros((0, 1, 1, 1), dtype=torch.uint8),
            "labels": torch.zeros(0, dtype=torch.int64), "areas": torch.zeros(0, dtype=torch.int64),
            "image_ids": [], "segment_ids": [], "skipped": [(path, reason)]}


@torch.inference_mode()
def predict_dataset(model, dataset, device, dtype=None, max_pixels=640 * 480, max_batch=32,
                    workers=0, limit=None, topk=5, progress=True):
    """Predict every segment of `dataset` (a SegmentDataset). Returns a dict of numpy arrays
    (labels, preds, topk, areas) plus image_ids, segment_ids, seconds, segments/s and
    "skipped" (a SkippedFiles: images that could not be read, whose segments are left out).
    `limit` evaluates only the first N images (quick validation during training)."""
    was_training = model.training
    model.eval()
    channels_last = model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    images = ImageBatches(dataset, max_pixels)
    count = len(images) if limit is None else min(limit, len(images))
    subset = torch.utils.data.Subset(images, range(count))
    loader = DataLoader(subset, batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda")
    k = min(topk, model.num_classes)
    labels, tops, areas, image_ids, segment_ids = [], [], [], [], []
    bar = Progress(count, "evaluate", unit="segments", enabled=progress)
    skipped = SkippedFiles()
    start = time.perf_counter()
    for batch in loader:
        if batch["skipped"]:
            skipped.add(batch["skipped"])
            bar.update(1)
            continue
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        masks = batch["masks"].to(device, non_blocking=True)
        for i in range(0, masks.shape[0], max_batch):
            with autocast(device, dtype):
                logits = model(image, masks[i:i + max_batch])
            tops.append(logits.float().topk(k, dim=1).indices.cpu())
        labels.append(batch["labels"])
        areas.append(batch["areas"])
        image_ids += batch["image_ids"]
        segment_ids += batch["segment_ids"]
        bar.update(1, counted=masks.shape[0])
    seconds = time.perf_counter() - start
    model.train(was_training)
    top = torch.cat(tops).numpy() if tops else np.zeros((0, k), dtype=np.int64)
    n = len(image_ids)
    return {"labels": torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
            "preds": top[:, 0], "topk": top,
            "areas": torch.cat(areas).numpy() if areas else np.zeros(0, dtype=np.int64),
            "image_ids": image_ids, "segment_ids": segment_ids, "skipped": skipped,
            "seconds": seconds, "segments_per_s": n / max(seconds, 1e-9)}
