"""Batched, deterministic prediction over a dataset: all segments of an image in one forward
(the image runs once up to the first merge point; see AttentionNet.forward)."""
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from roilib.data import ImageBatches, SkippedFiles
from roilib.progress import Progress
from roilib.runtime import autocast


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
