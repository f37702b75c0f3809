"""Training batches of varying size: one geometry per batch, a pixel budget per batch.

``VaryingSizeBatchSampler`` yields batches of ``(index, H, W, seed)`` items; ``dataset[item]``
turns each into a crop, and ``collate_batch`` stacks them. Every random choice derives from
(seed, step) and the rank, so a batch does not depend on worker count or on where a run was
resumed.
"""
import gc
import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from roilib.crops import SIZE_STEP
from roilib.errors import BadValue

# Scale jitter beyond this shows a segment at 1/100 or 100x its size: no augmentation, and the
# crop's source box would outgrow the integers OpenCV takes.
MAX_JITTER = 100.0

def check_sizes(min_size, max_size):
    """BadValue unless [min_size, max_size] holds a multiple of 32 (the crop sides)."""
    if math.ceil(min_size / SIZE_STEP) > max_size // SIZE_STEP:
        raise BadValue(f"expected {{min_size}} <= {{max_size}} with a multiple of {SIZE_STEP} between them",
                       min_size=min_size, max_size=max_size)


def parse_jitter(text):
    """'low,high' -> (low, high) scale factors, 1/MAX_JITTER <= low <= high <= MAX_JITTER;
    '1,1' -> None (native)."""
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise BadValue("expected low,high (e.g. 0.8,1.25)", jitter=text) from None
    if not 1 / MAX_JITTER <= low <= high <= MAX_JITTER:   # also refuses inf and nan
        raise BadValue(f"expected {1 / MAX_JITTER:g} <= low <= high <= {MAX_JITTER:g}", jitter=text)
    return None if low == high == 1 else (low, high)


def batch_pixels(max_size, max_pixels, max_batch):
    """The most pixels one training batch can hold: the largest crop alone (a batch holds at
    least one), or as many smaller ones as fit max_pixels and max_batch."""
    top = max(SIZE_STEP, max_size // SIZE_STEP * SIZE_STEP) ** 2
    return max(top, min(max_pixels, max_batch * top))


class VaryingSizeBatchSampler:
    """Infinite batches of ``(index, H, W, item_seed)`` items, one geometry per batch.

    H, W: uniform multiples of 32 in [min_size, max_size]; batch size: as many as fit
    ``max_pixels`` (at most ``max_batch``, at least 1). Balanced (the original recipe):
    class uniformly, then an image containing it, then one of its segments of that class in
    that image; otherwise segments uniformly. The geometry (H, W, batch size) of step s
    depends only on (seed, s), so every DDP rank trains on the same shape and DDP's gradient
    average is a true mean over the global batch; the samples depend on (seed, s, rank), so
    ranks draw different ones. Resuming is ``start_step``.
    ``step`` is the step of the next batch the iterator yields.
    """

    def __init__(self, labels, min_size, max_size, max_pixels, max_batch, balanced=True,
                 seed=0, start_step=0, rank=0, world_size=1, image_of_segment=None):
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.size == 0:
            raise ValueError("no segments to sample from")
        self.size_range = (math.ceil(min_size / SIZE_STEP), max_size // SIZE_STEP)
        if not 1 <= self.size_range[0] <= self.size_range[1]:
            raise ValueError(f"no multiple of {SIZE_STEP} in [{min_size}, {max_size}]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.max_pixels, self.max_batch = int(max_pixels), int(max_batch)
        self.balanced, self.seed, self.rank = balanced, int(seed), int(rank)
        self.world_size = world_size
        self.step = int(start_step)
        if image_of_segment is None:  # each segment its own image
            image_of_segment = np.arange(self.labels.size)
        self._groups = _class_image_groups(self.labels, np.asarray(image_of_segment))

    def batch_for_step(self, step):
        shape_rng = np.random.default_rng([self.seed, int(step)])
        height, width = SIZE_STEP * shape_rng.integers(*self.size_range, endpoint=True, size=2)
        count = max(1, min(self.max_batch, self.max_pixels // int(height * width)))
        rng = np.random.default_rng([self.seed, int(step), self.rank])
        indices = self._draw(rng, count)
        seeds = rng.integers(0, 2 ** 63 - 1, size=count)
        return [(int(i), int(height), int(width), int(s)) for i, s in zip(indices, seeds)]

    def _draw(self, rng, count):
        if not self.balanced:
            return rng.integers(0, self.labels.size, size=count)
        order, group_starts, class_groups = self._groups
        classes = rng.integers(0, len(class_groups), size=count)
        picked = []
        for c in classes:
            first, last = class_groups[c]  # this class's (image) groups
            group = rng.integers(first, last)
            picked.append(order[rng.integers(group_starts[group], group_starts[group + 1])])
        return picked

    def __iter__(self):
        while True:
            batch = self.batch_for_step(self.step)
            self.step += 1
            yield batch


def _class_image_groups(labels, image_of_segment):
    """Segments sorted by (class, image); a group = one image's segments of one class.
    Returns (order, group_starts[n_groups + 1], [(first_group, end_group) per class])."""
    order = np.lexsort((np.arange(labels.size), image_of_segment, labels))
    keys = np.stack([labels[order], image_of_segment[order]], axis=1)
    new_group = np.ones(labels.size, bool)
    new_group[1:] = (keys[1:] != keys[:-1]).any(axis=1)
    group_starts = np.append(np.flatnonzero(new_group), labels.size)
    group_class = labels[order][group_starts[:-1]]
    class_groups = []
    for c in np.unique(group_class):  # classes without segments are never drawn
        where = np.flatnonzero(group_class == c)
        class_groups.append((where[0], where[-1] + 1))
    return order, group_starts, class_groups


def collate_batch(samples):
    """Samples of one geometry -> {"images" uint8 [B,3,H,W] (channels-last strides),
    "masks" uint8 [B,1,H,W], "labels" int64 [B], "areas" int64 [B], "image_ids",
    "segment_ids", "skipped" [(image path, reason)] of all samples}."""
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    return {"images": images,
            "masks": torch.from_numpy(np.stack([s["mask"] for s in samples]))[:, None],
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
            "areas": torch.tensor([s["area"] for s in samples], dtype=torch.int64),
            "image_ids": [s["image_id"] for s in samples],
            "segment_ids": [s["segment_id"] for s in samples],
            "skipped": [entry for s in samples for entry in s.get("skipped", ())]}


def make_train_loader(dataset, sampler, workers):
    """DataLoader over the sampler's batches. (Workers get torch's one thread each; do not
    call cv2.setNumThreads in a forked worker: tearing down the inherited pool hangs.)"""
    if workers:
        # A forked worker's garbage collector would write to every object inherited from the
        # main process, copying its memory page: frozen objects are left alone.
        gc.collect()
        gc.freeze()
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None)
