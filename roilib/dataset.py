"""The dataset base class and the one sample format every reader yields.

A reader (CocoReader, OpenSurfacesReader) subclasses ``SegmentDataset`` and only says where
its images and segments are; crops, batches and evaluation windows are built on top of it, so
every reader yields the same samples:

    sample = {"image": uint8 H×W×3 RGB, "mask": uint8 H×W {0,1}, "label": int,
              "area": int (pixels in the original image), "image_id", "segment_id"}

Unreadable data files (corrupt image, mask of the wrong size...) do not stop a run: a
training item takes another segment instead (``readable_sample``) and carries
``"skipped"``: [(image path, reason)] so that the main process can count and report them
(``SkippedFiles``).
"""
from collections import namedtuple

import numpy as np
from torch.utils.data import Dataset

from roilib.crops import DEFAULT_JITTER, box_mask, crop_sample
from roilib.errors import UserError
from roilib.imageio import read_image

# bbox = (x, y, w, h) in original image pixels; area = segment pixels in the original image.
# segment_id identifies the segment within its dataset's own terms: the annotation id in a
# COCO file, the component's number within its label map (by value, then raster order) for
# label maps. It is for reports, never for indexing.
Segment = namedtuple("Segment", "image_index segment_id label area bbox")

# Unreadable images tried in a row for one training item before giving up: more than a few
# means a systematic problem (folder gone, wrong format), not a few bad files.
MAX_SUBSTITUTES = 20


class SegmentDataset(Dataset):
    """Base of the readers: one item per segment.

    A subclass sets ``class_names``, ``images`` (records with at least "path" and "id") and
    its segments (grouped by image, in a deterministic order) through
    ``roilib.compactindex.adopt_segments``, and implements ``segment_mask(segment_index, image_shape)``.
    It may override ``box_masks`` when reading all masks of an image at once is cheaper.
    """

    def __init__(self, train=True):
        self.train = bool(train)  # training crops get scale jitter and random flips
        self.flip = True  # set False where left/right matters (only used when train)
        self.jitter = DEFAULT_JITTER  # training scale jitter (low, high); None = native scale
        self.class_names = []
        self.category_ids = []  # the dataset's own id of each class (COCO category id, label-map value)
        self.images = []
        self.segments = []
        self.image_segments = []
        self.labels = np.zeros(0, np.int64)
        self.image_of_segment = np.zeros(0, np.int64)

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

    def box_masks(self, segment_indices, image_shape):
        """BoxMasks (masks over their bounding boxes only) of some segments of ONE image: what
        evaluation windows are cut from. A reader overrides it where it can build them without
        full-size masks (a label map with thousands of segments)."""
        return [box_mask(self.segment_mask(i, image_shape)) for i in segment_indices]

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
            jitter = self.jitter if self.train else None
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
