"""Dataset machinery shared by the readers: samples, crops, batches of varying size.

A reader (CocoReader, OpenSurfacesReader) subclasses ``SegmentDataset`` and only says where
its images and segments are. Everything else lives here, so every reader yields the same
sample format and the same crops:

    sample = {"image": uint8 H×W×3 RGB, "mask": uint8 H×W {0,1}, "label": int,
              "area": int (pixels in the original image), "image_id", "segment_id"}

Training: ``VaryingSizeBatchSampler`` yields batches of ``(index, H, W, seed)`` items (one
geometry per batch, a pixel budget per batch); ``dataset[item]`` turns each into a crop, and
``collate_batch`` stacks them. Every random choice derives from (seed, step, rank), so a
batch does not depend on worker count or on where a run was resumed.
Evaluation: ``ImageBatches`` gives one whole (downscaled) image with all its segments.

Unreadable data files (corrupt image, mask of the wrong size...) do not stop a run: a
training item takes another segment instead, an evaluation item is empty, and both carry
``"skipped"``: [(image path, reason)] so that the main process can count and report them.
"""
import math
from collections import namedtuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from roilib.errors import UserError
from roilib.imageio import read_image

# bbox = (x, y, w, h) in original image pixels; area = segment pixels in the original image.
Segment = namedtuple("Segment", "image_index segment_id label area bbox")

# ImageNet mean colour (RGB, 0..255): padding normalises to ~0, so it reads as "nothing".
MEAN_COLOUR = (124, 116, 104)
SIZE_STEP = 32  # ResNet downsamples 32×: sides that are multiples of 32 tile exactly.
# Unreadable images tried in a row for one training item before giving up: more than a few
# means a systematic problem (folder gone, wrong format), not a few bad files.
MAX_SUBSTITUTES = 20


class SegmentDataset(Dataset):
    """Base of the readers: one item per segment.

    A subclass sets ``class_names``, ``images`` (records with at least "path" and "id"),
    ``segments`` (``Segment`` tuples, grouped by image, in a deterministic order), calls
    ``index_segments()``, and implements ``segment_mask(segment_index, image_shape)``.
    It may override ``image_masks`` when reading all masks of an image at once is cheaper.
    """

    def __init__(self, train=True):
        self.train = bool(train)  # training crops get scale jitter and random flips
        self.flip = True  # set False where left/right matters (only used when train)
        self.class_names = []
        self.images = []
        self.segments = []
        self.image_segments = []
        self.labels = np.zeros(0, np.int64)
        self.image_of_segment = np.zeros(0, np.int64)

    def index_segments(self):
        """Build ``image_segments``, ``labels`` and ``image_of_segment`` from ``segments``."""
        self.image_segments = [[] for _ in self.images]
        for index, segment in enumerate(self.segments):
            self.image_segments[segment.image_index].append(index)
        self.labels = np.array([s.label for s in self.segments], dtype=np.int64)
        self.image_of_segment = np.array([s.image_index for s in self.segments], np.int64)
        if self.labels.size and not 0 <= self.labels.min() <= self.labels.max() < \
                self.num_classes:
            raise ValueError("segment label outside [0, num_classes)")

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.segments)

    def load_image(self, image_index):
        return read_image(self.images[image_index]["path"])

    def segment_mask(self, segment_index, image_shape):
        """Full-size uint8 {0,1} mask of one segment."""
        raise NotImplementedError

    def image_masks(self, image_index, image_shape):
        """Masks of all segments of one image, in ``image_segments`` order."""
        return [self.segment_mask(i, image_shape) for i in self.image_segments[image_index]]

    def sample(self, index):
        """The full, unresized sample of segment ``index``."""
        segment = self.segments[index]
        image = self.load_image(segment.image_index)
        mask = self.segment_mask(index, image.shape[:2])
        return make_sample(image, mask, segment, self.images[segment.image_index]["id"])

    def __getitem__(self, item):
        """``int`` -> full sample; ``(index, H, W, seed)`` (from the batch sampler) -> crop,
        with "skipped": the unreadable images replaced to make it (see ``readable_sample``)."""
        if isinstance(item, (tuple, list)):
            index, height, width, seed = item
            sample, skipped = self.readable_sample(index)
            rng = np.random.default_rng(seed)
            flip = self.train and self.flip and rng.random() < 0.5
            jitter = DEFAULT_JITTER if self.train else None
            crop = crop_sample(sample, height, width, rng, flip, jitter)
            crop["skipped"] = skipped
            return crop
        return self.sample(item)

    def readable_sample(self, index):
        """(sample, skipped): the sample of segment ``index``, or where its files cannot be
        read, of a substitute (``substitute_segment``); skipped = [(image path, reason)]."""
        skipped, tried = [], set()
        while len(skipped) <= MAX_SUBSTITUTES:
            try:
                return self.sample(index), skipped
            except UserError as error:
                image_index = int(self.image_of_segment[index])
                skipped.append((self.images[image_index]["path"], str(error)))
                tried.add(image_index)
                index = self.substitute_segment(index, tried)
                if index is None:
                    break
        raise UserError(f"{len(skipped)} images in a row could not be read (first: "
                        f"{skipped[0][1]}); check the image folder")

    def substitute_segment(self, index, tried_images):
        """The next segment (cyclically) after ``index`` in an image not tried yet, of the
        same class where there is one (the balanced sampler's draw keeps its class). Depends
        on nothing else, so the data order stays reproducible and resumable. None: no image
        left to try."""
        untried = ~np.isin(self.image_of_segment, list(tried_images))
        for candidates in (untried & (self.labels == self.labels[index]), untried):
            found = np.flatnonzero(candidates)
            if found.size:
                later = found[found > index]
                return int(later[0] if later.size else found[0])
        return None


def make_sample(image, mask, segment, image_id):
    return {"image": image, "mask": mask, "label": int(segment.label),
            "area": int(segment.area), "image_id": image_id,
            "segment_id": segment.segment_id}


# ----------------------------------------------------------------------------- crops

DEFAULT_JITTER = (0.8, 1.25)  # log-uniform scale augmentation around native resolution


def plan_crop(image_hw, bbox, out_hw, rng=None, scale_jitter=DEFAULT_JITTER):
    """Where to crop: returns (scale, x0, y0). The crop is the window
    [x0, x0 + out_w) × [y0, y0 + out_h) of the image resized by ``scale``.

    The scale starts at 1 (native resolution, as in the original recipe), jittered when an
    ``rng`` is given; it grows so that the image covers the window, but never so much that
    the segment's bbox stops fitting; a segment bigger than the window scales it down (it is
    never cut). The window then contains the whole scaled bbox and as much image as possible;
    where the image is smaller than the window the rest is padding. Placement is random when
    ``rng`` is given, centred on the segment otherwise.
    """
    height, width = image_hw
    out_h, out_w = out_hw
    x, y, box_w, box_h = bbox
    box_w, box_h = max(box_w, 1), max(box_h, 1)
    scale = 1.0
    if rng is not None and scale_jitter is not None:
        low, high = scale_jitter
        scale = math.exp(rng.uniform(math.log(low), math.log(high)))
    scale = max(scale, out_w / width, out_h / height)
    scale = min(scale, out_w / box_w, out_h / box_h)
    x0 = _place(width * scale, x * scale, (x + box_w) * scale, out_w, rng)
    y0 = _place(height * scale, y * scale, (y + box_h) * scale, out_h, rng)
    return scale, x0, y0


def _place(length, start, end, window, rng):
    """Window start along one axis: contains [start, end], stays inside [0, length] when the
    image is long enough, else contains the whole image (the rest is padding)."""
    if length >= window:
        low, high = max(0.0, end - window), min(length - window, start)
    else:
        low, high = length - window, 0.0
    high = max(high, low)  # float round-off when the segment exactly fills the window
    if rng is None:
        offset = min(max((start + end - window) / 2, low), high)
    else:
        offset = rng.uniform(low, high)
    # An integer offset at scale 1 makes the warp an exact copy (no half-pixel blur).
    rounded = round(offset)
    return float(rounded) if low <= rounded <= high else offset


def crop_sample(sample, out_h, out_w, rng=None, flip=False, scale_jitter=DEFAULT_JITTER):
    """Crop a sample to exactly out_h × out_w (see ``plan_crop``), one warp per array.
    The mask never ends empty; ``area`` keeps the original value."""
    image, mask = sample["image"], sample["mask"].astype(np.uint8, copy=False)
    bbox = cv2.boundingRect(mask)
    if bbox[2] == 0:
        raise ValueError(f"empty mask for segment {sample['segment_id']!r} of image "
                         f"{sample['image_id']!r}")
    out_hw = (out_h, out_w)
    scale, x0, y0 = plan_crop(image.shape[:2], bbox, out_hw, rng, scale_jitter)
    image = _warp(image, scale, x0, y0, out_hw, flip, cv2.INTER_LINEAR, MEAN_COLOUR)
    coverage = _warp(mask, scale, x0, y0, out_hw, flip, cv2.INTER_LINEAR, 0, np.float32)
    centre_x = scale * (bbox[0] + bbox[2] / 2) - x0 - 0.5
    centre_y = scale * (bbox[1] + bbox[3] / 2) - y0 - 0.5
    if flip:
        centre_x = out_w - 1 - centre_x
    return dict(sample, image=image, mask=_binarize(coverage, centre_x, centre_y))


def _warp(array, scale, x0, y0, out_hw, flip, interpolation, border, dtype=None):
    """Resample ``array`` into the window (x0, y0, out_w, out_h) of the image scaled by
    ``scale``. Only the part under the window is touched (and converted to ``dtype``);
    below scale 0.5 that part is first shrunk by area averaging: bilinear sampling alone
    would alias."""
    out_h, out_w = out_hw
    height, width = array.shape[:2]
    # Source rows/cols under the window, with a margin for the interpolation kernel (two
    # pixels of the shrunk part, when there is one).
    margin = 2 + (math.ceil(2 / scale) if scale < 0.5 else 0)
    left = min(max(math.floor(x0 / scale) - margin, 0), width - 1)
    top = min(max(math.floor(y0 / scale) - margin, 0), height - 1)
    right = max(min(math.ceil((x0 + out_w) / scale) + margin, width), left + 1)
    bottom = max(min(math.ceil((y0 + out_h) / scale) + margin, height), top + 1)
    part = array[top:bottom, left:right]
    if dtype is not None:
        part = part.astype(dtype)
    step_x = step_y = scale  # output pixels per pixel of ``part``
    if scale < 0.5:
        new_w = max(1, round(part.shape[1] * scale))
        new_h = max(1, round(part.shape[0] * scale))
        step_x, step_y = scale * part.shape[1] / new_w, scale * part.shape[0] / new_h
        part = cv2.resize(part, (new_w, new_h), interpolation=cv2.INTER_AREA)
    # Pixel centres: output index u <-> continuous coordinate (u + 0.5) of the scaled image.
    shift_x = 0.5 * step_x - 0.5 + scale * left - x0
    shift_y = 0.5 * step_y - 0.5 + scale * top - y0
    if flip:
        matrix = [[-step_x, 0, out_w - 1 - shift_x], [0, step_y, shift_y]]
    else:
        matrix = [[step_x, 0, shift_x], [0, step_y, shift_y]]
    # Replicate, not a constant border: pixels on the image's edge must not be blended with
    # the padding colour; the padding is painted afterwards, where the image is absent.
    out = cv2.warpAffine(np.ascontiguousarray(part), np.array(matrix, np.float64),
                         (out_w, out_h), flags=interpolation,
                         borderMode=cv2.BORDER_REPLICATE)
    first, last = _inside(x0, width * scale, out_w)
    if flip:
        first, last = out_w - last, out_w - first
    out[:, :first] = border
    out[:, last:] = border
    first, last = _inside(y0, height * scale, out_h)
    out[:first] = border
    out[last:] = border
    return out


def _inside(start, length, size):
    """Output pixels [first, last) whose centres fall on the scaled image [0, length)."""
    first = min(max(math.ceil(-start - 0.5), 0), size)
    last = min(max(math.ceil(length - start - 0.5), first), size)
    return first, last


def _binarize(coverage, centre_x, centre_y):
    """Coverage (0..1) -> {0,1} mask that never vanishes: half coverage; else (a segment
    thinner than a pixel) the pixels with at least half the best coverage, which keeps its
    shape without smearing it over every pixel it touches; else the pixel at its centre."""
    mask = coverage >= 0.5
    if not mask.any():
        best = coverage.max()
        mask = coverage >= 0.5 * best if best > 0 else mask
    if not mask.any():
        height, width = coverage.shape
        mask[min(max(round(centre_y), 0), height - 1),
             min(max(round(centre_x), 0), width - 1)] = True
    return mask.astype(np.uint8)


def resize_mask(mask, size):
    """Resize a {0,1} mask to ``size`` = (w, h) so that no segment vanishes (same rule as
    the crops, see ``_binarize``)."""
    width, height = size
    src_h, src_w = mask.shape
    shrink = width * height < src_w * src_h
    coverage = cv2.resize(mask.astype(np.float32), (width, height),
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x, y, box_w, box_h = cv2.boundingRect(mask.astype(np.uint8))
    if box_w == 0:
        return np.zeros((height, width), np.uint8)
    centre_x = (x + box_w / 2) * width / src_w - 0.5
    centre_y = (y + box_h / 2) * height / src_h - 0.5
    return _binarize(coverage, centre_x, centre_y)


# ----------------------------------------------------------------------------- batches

class VaryingSizeBatchSampler:
    """Infinite batches of ``(index, H, W, item_seed)`` items, one geometry per batch.

    H, W: uniform multiples of 32 in [min_size, max_size]; batch size: as many as fit
    ``max_pixels`` (at most ``max_batch``, at least 1). Balanced (the original recipe):
    class uniformly, then an image containing it, then one of its segments of that class in
    that image; otherwise segments uniformly. The batch of step s depends only on
    (seed, s, rank): resuming is ``start_step``, and DDP ranks draw different samples.
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
        rng = np.random.default_rng([self.seed, int(step), self.rank])
        height, width = SIZE_STEP * rng.integers(*self.size_range, endpoint=True, size=2)
        count = max(1, min(self.max_batch, self.max_pixels // int(height * width)))
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


class SkippedFiles:
    """Unreadable images met so far (each counted once, in order of appearance), for the
    main process's reports."""

    def __init__(self):
        self.reasons = {}  # image path -> the first reason it could not be used
        self.reported = 0

    def __len__(self):
        return len(self.reasons)

    def add(self, entries):
        for path, reason in entries:
            self.reasons.setdefault(path, reason)

    def unreported(self):
        """Reasons not returned by an earlier call."""
        fresh = list(self.reasons.values())[self.reported:]
        self.reported = len(self.reasons)
        return fresh

    def summary(self):
        """'skipped N unreadable images (first: reason)', or '' when none was."""
        if not self.reasons:
            return ""
        return f"skipped {len(self)} unreadable images (first: {next(iter(self.reasons.values()))})"

    def as_list(self):
        return [{"path": path, "reason": reason} for path, reason in self.reasons.items()]


def make_train_loader(dataset, sampler, workers):
    """DataLoader over the sampler's batches. (Workers get torch's one thread each; do not
    call cv2.setNumThreads in a forked worker: tearing down the inherited pool hangs.)"""
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None)


# ----------------------------------------------------------------------------- evaluation

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
