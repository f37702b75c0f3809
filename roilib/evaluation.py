"""Deterministic, scale-true prediction over a dataset: every segment once, cut to its
evaluation window (see roilib.windows), windows of many images batched together and built by
DataLoader workers. Train.py's validation, EvaluateAccuracy.py and Benchmark.py share it."""
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roilib.dataset import SkippedFiles
from roilib.errors import UserError
from roilib.metrics import summarize
from roilib.progress import progress_bar
from roilib.runtime import autocast
from roilib.windows import cut_windows


class SegmentWindows(Dataset):
    """Item k = the windows of up to ``chunk`` segments of one image (an image with more
    segments gives several items, so memory stays bounded whatever the segment count):
    {"images": uint8 [S,3,H,W], "masks": uint8 [S,1,H,W], "labels": int64 [S],
     "areas": int64 [S] (pixels in the original image), "segments": int64 [S] (dataset
     indices), "skipped": [(image path, reason)]}. An image that cannot be read gives S = 0
    and its reason in "skipped". ``images``: the image indices to cover (default all)."""

    def __init__(self, dataset, window, chunk=32, images=None):
        self.dataset, self.window, self.chunk = dataset, tuple(window), int(chunk)
        images = range(len(dataset.images)) if images is None else images
        starts = [(i, s) for i in images for s in range(0, len(dataset.image_segments[i]), self.chunk)]
        self.chunks = np.array(starts, dtype=np.int64).reshape(-1, 2)

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, k):
        image_index, start = (int(v) for v in self.chunks[k])
        dataset = self.dataset
        segments = np.asarray(dataset.image_segments[image_index][start:start + self.chunk], np.int64)
        try:
            image = dataset.load_image(image_index)
            masks = dataset.box_masks(segments, image.shape[:2])
        except UserError as error:
            return _empty_item(dataset.images[image_index]["path"], str(error))
        images, window_masks = cut_windows(image, masks, self.window)
        return {"images": images, "masks": window_masks,
                "labels": torch.as_tensor(dataset.labels[segments], dtype=torch.int64),
                "areas": torch.tensor([dataset.segments[s].area for s in segments], dtype=torch.int64),
                "segments": torch.from_numpy(segments), "skipped": []}


def _empty_item(path, reason):
    return {"images": None, "masks": None, "labels": torch.zeros(0, dtype=torch.int64),
            "areas": torch.zeros(0, dtype=torch.int64), "segments": torch.zeros(0, dtype=torch.int64),
            "skipped": [(path, reason)]}


def shard(count, rank=0, world_size=1):
    """The image indices one process of `world_size` covers: every world_size-th one."""
    return range(rank, count, world_size)


class WindowBatcher:
    """Regroups items of any size into forward batches of exactly ``max_batch`` windows (the
    last one smaller), so that images with few segments still fill a batch."""

    def __init__(self, max_batch):
        self.max_batch, self.pending, self.count = int(max_batch), [], 0

    def add(self, item):
        """Queue an item's windows; yields the full batches now ready."""
        if item["images"] is not None and len(item["labels"]):
            self.pending.append(item)
            self.count += len(item["labels"])
        while self.count >= self.max_batch:
            yield self._take(self.max_batch)

    def flush(self):
        if self.count:
            yield self._take(self.count)

    def _take(self, n):
        keys = ("images", "masks", "labels", "areas", "segments")
        joined = {key: torch.cat([item[key] for item in self.pending]) for key in keys}
        batch = {key: value[:n] for key, value in joined.items()}
        rest = {key: value[n:] for key, value in joined.items()}
        self.count -= n
        self.pending = [rest] if self.count else []
        return batch


def forward_windows(model, images, masks, device, dtype=None):
    """float32 logits for a batch of windows (uint8, as cut_windows gives them). The model
    puts its input in its own memory format (AttentionNet.normalize)."""
    with autocast(device, dtype):
        return model(images.to(device, non_blocking=True), masks.to(device, non_blocking=True)).float()


@torch.inference_mode()
def predict_dataset(model, dataset, device, dtype=None, window=(224, 224), max_batch=32,
                    workers=0, limit=None, topk=5, progress=True, rank=0, world_size=1):
    """Predict every segment of `dataset` (a SegmentDataset) in its window. Returns numpy
    arrays labels, preds, topk, topk_probs, areas, segments (dataset indices), plus
    image_ids, segment_ids, seconds, segments_per_s and "skipped" (a SkippedFiles: images
    that could not be read, whose segments are left out). `limit`: the first N images only;
    `rank`/`world_size`: this process's share of the images (see ``shard``)."""
    was_training = model.training
    model.eval()
    count = len(dataset.images) if limit is None else min(limit, len(dataset.images))
    windows = SegmentWindows(dataset, window, max_batch, shard(count, rank, world_size))
    loader = DataLoader(windows, batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda")
    k = min(topk, model.num_classes)
    out = {key: [] for key in ("labels", "topk", "topk_probs", "areas", "segments")}
    skipped, batcher = SkippedFiles(), WindowBatcher(max_batch)
    bar = progress_bar(len(windows), "evaluate", enabled=progress)
    start = time.perf_counter()

    def run(batch):
        probs = forward_windows(model, batch["images"], batch["masks"], device, dtype).softmax(1)
        top_p, top_i = probs.topk(k, dim=1)
        for key, value in (("topk", top_i), ("topk_probs", top_p), ("labels", batch["labels"]),
                           ("areas", batch["areas"]), ("segments", batch["segments"])):
            out[key].append(value.cpu())
        bar.set_postfix_str(f"{sum(len(x) for x in out['labels'])} segments", refresh=False)

    for item in loader:
        skipped.add(item["skipped"])
        for batch in batcher.add(item):
            run(batch)
        bar.update(1)
    for batch in batcher.flush():
        run(batch)
    bar.close()
    seconds = time.perf_counter() - start
    model.train(was_training)
    result = {key: torch.cat(value).numpy() if value else np.zeros((0, k) if "topk" in key else 0)
              for key, value in out.items()}
    result["labels"] = result["labels"].astype(np.int64)
    result["areas"] = result["areas"].astype(np.int64)
    result["segments"] = result["segments"].astype(np.int64)
    result["topk"] = result["topk"].astype(np.int64)
    result["preds"] = result["topk"][:, 0]
    result["image_ids"] = [dataset.images[dataset.segments[s].image_index]["id"] for s in result["segments"]]
    result["segment_ids"] = [dataset.segments[s].segment_id for s in result["segments"]]
    n = len(result["labels"])
    result.update(skipped=skipped, seconds=seconds, segments_per_s=n / max(seconds, 1e-9))
    return result


SHARD_KEYS = ("labels", "preds", "topk", "topk_probs", "areas", "segments")


def shard_result(out):
    """The part of a predict_dataset result that other processes need (picklable, small)."""
    part = {key: out[key] for key in SHARD_KEYS}
    part.update(skipped=list(out["skipped"].reasons.items()), seconds=out["seconds"])
    return part


def merge_shards(parts):
    """The shard_result of each process -> one result in dataset order, as a single process
    would give it (labels, preds, topk, topk_probs, areas, segments, skipped, segments_per_s)."""
    order = np.argsort(np.concatenate([p["segments"] for p in parts]), kind="stable")
    merged = {key: np.concatenate([p[key] for p in parts])[order] for key in SHARD_KEYS}
    merged["skipped"] = SkippedFiles()
    for part in parts:
        merged["skipped"].add(part["skipped"])
    seconds = max(p["seconds"] for p in parts)   # the slowest shard sets the pace
    merged["segments_per_s"] = len(merged["labels"]) / max(seconds, 1e-9)
    return merged


def validate(model, val_set, device, dtype, dist, logger, step, window, max_batch, workers, limit):
    """Training's validation: each process evaluates its share of the images (every
    world_size-th one); the shares are gathered, so every process gets the same metrics.
    Returns the summary metrics and puts the model back in training mode."""
    dist.share_buffers(model)
    with dist.together():
        out = predict_dataset(model, val_set, device, dtype, window=window, max_batch=max_batch,
                              workers=workers, limit=limit,
                              progress=dist.is_main and sys.stderr.isatty(), rank=dist.rank,
                              world_size=dist.world_size)
    out = merge_shards(dist.gather(shard_result(out)))
    with dist.together():
        if len(out["labels"]) == 0:
            raise UserError(f"validation at step {step}: no image could be read "
                            f"({out['skipped'].summary()}); the checkpoints saved before are intact")
        if out["skipped"]:
            logger.print(f"validation: {out['skipped'].summary()}")
        full = summarize(out["labels"], out["preds"], out["areas"], val_set.class_names, out["topk"])
        metrics = {k: full[k] for k in ("accuracy", "mean_class_accuracy", "count")}
        logger.log_val(step, metrics, out["segments_per_s"])
    model.train()
    return metrics
