"""COCO instances (json + image folder) as a SegmentDataset: one sample per annotation.

    reader = CocoReader("val2017", "annotations/instances_val2017.json", train=False)
    print(reader.summary())
    sample = reader[0]   # {"image", "mask", "label", "area", "image_id", "segment_id"}

Category ids (COCO: 80 ids in 1..90) map to labels 0..K-1 by sorted id. Polygons (all parts
merged), compressed and uncompressed RLE are decoded with pycocotools. Skipped: crowd
regions (unless ``include_crowd``), polygon parts of fewer than 6 numbers (pycocotools would
read a 4-number part as a box) and annotations left with no part, segments below
``min_area`` pixels, images without a usable segment, and images whose file is missing
(counted in ``missing_images`` and shown by ``summary()``). Dropped and counted with their
ids (``invalid``): polygons with coordinates that are not finite or far outside the image,
RLEs whose counts do not cover the image, annotations of an image id that is not in the file.
Order is deterministic: images by id, their segments by annotation id (then file order).

The index (roilib/cocoindex.py) is numpy arrays, each mask a compressed RLE in one byte
buffer; it is cached on disk (roilib/indexcache.py), so only the first start reads the JSON.
"""
import os

import numpy as np
from pycocotools import mask as mask_utils

from roilib.cocoindex import (DEGENERATE_REASONS, INVALID_REASONS, SKIP_REASONS,
                              build_coco_index)
from roilib.compactindex import (StringTable, _View, adopt_segments, check_boxes,
                                 check_lengths, check_offsets, check_range, check_schema)
from roilib.dataset import SegmentDataset
from roilib.errors import UserError
from roilib.imageio import orientation_hint
from roilib.indexcache import cached_index, content_digest, file_identity, notice

# Annotation files from this size on say, before their first (slow) indexing, why.
ANNOUNCE_BYTES = 50 * 2 ** 20


class CocoReader(SegmentDataset):
    def __init__(self, image_dir, annotation_file, train=True, min_area=1,
                 include_crowd=False, class_names=None):
        """`class_names` is taken for the readers' common signature (Datasets.FORMATS) and not
        used: a COCO file names its own categories."""
        super().__init__(train)
        self.image_dir = str(image_dir)
        self.annotation_file = str(annotation_file)
        if not os.path.isdir(self.image_dir):
            raise UserError(f"{self.image_dir}: image folder not found")
        arrays = self._index(min_area, include_crowd)
        self.category_ids = arrays["category_ids"].tolist()
        self.class_names = list(StringTable.of(arrays, "class_names"))
        self.skipped = dict(zip(SKIP_REASONS, arrays["skipped"].tolist()))
        self.invalid_ids = {reason: arrays[_invalid_key(reason)] for reason in INVALID_REASONS}
        self.invalid = {reason: len(ids) for reason, ids in self.invalid_ids.items()}
        self.degenerate_ids = {reason: arrays["degenerate_ids"][arrays["degenerate_reasons"] == k]
                               for k, reason in enumerate(DEGENERATE_REASONS)}
        self._adopt(arrays)

    # ------------------------------------------------------------------ construction

    def _index(self, min_area, include_crowd):
        try:
            identity = file_identity(self.annotation_file)
        except FileNotFoundError:
            raise UserError(f"{self.annotation_file}: file not found") from None
        except OSError as error:
            raise UserError(f"{self.annotation_file}: cannot read "
                            f"({error.strerror or error})") from None
        settings = {"min_area": float(min_area), "include_crowd": bool(include_crowd)}
        announce = None
        if identity["size"] >= ANNOUNCE_BYTES:
            announce = (f"{self.annotation_file}: indexing {identity['size'] / 2 ** 20:.0f} "
                        f"MiB of annotations (first start only)")

        def build(previous):
            """Index the file, unless ``previous`` (a stale cache) is of the same content:
            a touched or copied file (new mtime, ctime or inode) keeps its index."""
            digest = content_digest(self.annotation_file)
            if previous is not None and int(previous["source_digest"]) == digest:
                return previous
            if previous is not None and announce:
                notice(announce)
            return {**build_coco_index(self.annotation_file, min_area, include_crowd),
                    "source_digest": np.array(digest, np.int64)}

        return cached_index(self.annotation_file, "coco", identity, settings, build,
                            check_coco_index, announce, incremental=True)

    def _adopt(self, arrays):
        """Index arrays -> the reader's tables, leaving out images whose file is missing
        (checked at every start: the cache depends on the annotation file only)."""
        file_names = StringTable.of(arrays, "file_names")
        present = _present(self.image_dir, file_names)
        self.missing_images = int((~present).sum())
        keep_segment = present[arrays["segment_image"]]
        new_index = np.cumsum(present) - 1  # old image index -> index among the kept
        self.images = CocoImages(self.image_dir, file_names, arrays["image_ids"],
                                 arrays["image_heights"], arrays["image_widths"], present)
        self._rles = StringTable(arrays["rle_data"], arrays["rle_offsets"])
        self._rle_of = np.flatnonzero(keep_segment)  # segment -> its RLE in the buffer
        adopt_segments(self, len(self.images), new_index[arrays["segment_image"][keep_segment]],
                       arrays["segment_id"][keep_segment],
                       arrays["segment_label"][keep_segment],
                       arrays["segment_area"][keep_segment],
                       arrays["segment_bbox"][keep_segment])

    # ------------------------------------------------------------------ access

    def segment_mask(self, segment_index, image_shape):
        image_index = int(self.image_of_segment[segment_index])
        height, width = self.images.size(image_index)
        if tuple(image_shape[:2]) != (height, width):
            raise UserError(f"{self.images[image_index]['path']}: image is {image_shape[1]}x"
                            f"{image_shape[0]} but {self.annotation_file} says "
                            f"{width}x{height}{orientation_hint(image_shape, (height, width))}")
        rle = {"size": [height, width], "counts": self._rles.raw(self._rle_of[segment_index])}
        return np.ascontiguousarray(mask_utils.decode(rle))

    def summary(self):
        skipped = ", ".join(f"{count} {why}" for why, count in self.skipped.items())
        text = (f"{self.annotation_file}: {len(self.images)} images, {len(self)} segments, "
                f"{self.num_classes} classes; skipped annotations: {skipped}")
        degenerate = [f"{_some_ids(ids)}: {why}" for why, ids in self.degenerate_ids.items()
                      if len(ids)]
        text += f" ({'; '.join(degenerate)})" if degenerate else ""
        text += f"; missing image files: {self.missing_images}"
        invalid = [f"{len(ids)} {why} ({_some_ids(ids)})"
                   for why, ids in self.invalid_ids.items() if len(ids)]
        if invalid:
            text += f"; invalid annotations dropped: {', '.join(invalid)}"
        unused = self.unused_categories()
        if unused:
            text += (f"; categories with no usable annotation: {', '.join(unused)} (kept as classes "
                     f"with 0 segments, so that class ids stay stable)")
        return text

    def unused_categories(self):
        """'name (id N)' of each category with no segment (kwcoco's background, id 0)."""
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return [f"{self.class_names[k]} (id {self.category_ids[k]})"
                for k in np.flatnonzero(counts == 0)]


class CocoImages(_View):
    """``images[i]``: {"path", "id", "file_name", "height", "width"} built on demand from
    the index arrays, over the images whose file is present."""

    def __init__(self, image_dir, file_names, ids, heights, widths, present):
        self.image_dir, self.file_names = image_dir, file_names
        self.rows = np.flatnonzero(present)  # image -> its row in the index arrays
        self.ids, self.heights, self.widths = ids, heights, widths

    def __len__(self):
        return len(self.rows)

    def size(self, index):
        row = self.rows[index]
        return int(self.heights[row]), int(self.widths[row])

    def item(self, index):
        row = self.rows[index]
        name = self.file_names[row]
        return {"path": os.path.join(self.image_dir, name), "id": int(self.ids[row]),
                "file_name": name, "height": int(self.heights[row]),
                "width": int(self.widths[row])}


def _present(image_dir, file_names):
    """Which image files exist: one listing of the folder instead of 118k stat calls."""
    with os.scandir(image_dir) as entries:
        files = {entry.name for entry in entries if entry.is_file()}
    return np.array([name in files if os.sep not in name and "/" not in name
                     else os.path.isfile(os.path.join(image_dir, name))
                     for name in file_names], bool)


def _invalid_key(reason):
    return f"invalid_{reason.replace(' ', '_')}"


def _some_ids(ids, shown=5):
    listed = ", ".join(str(i) for i in ids[:shown])
    return f"id{'s' if len(ids) > 1 else ''} {listed}{', ...' if len(ids) > shown else ''}"


def check_coco_index(arrays):
    """ValueError unless the arrays form a CocoReader index: types, shapes, and every value
    that is later a position or a size within its range."""
    ints = np.int64
    check_schema(arrays, {
        "category_ids": (ints, (None,)), "image_ids": (ints, (None,)),
        "image_heights": (ints, (None,)), "image_widths": (ints, (None,)),
        "segment_image": (ints, (None,)), "segment_id": (ints, (None,)),
        "segment_label": (ints, (None,)), "segment_area": (ints, (None,)),
        "segment_bbox": (ints, (None, 4)), "skipped": (ints, (len(SKIP_REASONS),)),
        "source_digest": (ints, ()),
        "degenerate_ids": (ints, (None,)), "degenerate_reasons": (ints, (None,)),
        **{_invalid_key(reason): (ints, (None,)) for reason in INVALID_REASONS},
        **{f"{table}_{part}": (dtype, (None,)) for table in ("file_names", "class_names", "rle")
           for part, dtype in (("data", np.uint8), ("offsets", ints))}})
    check_lengths(arrays, [("image_ids", "image_heights", "image_widths"),
                           ("segment_image", "segment_id", "segment_label", "segment_area",
                            "segment_bbox"), ("degenerate_ids", "degenerate_reasons")])
    for table, items in (("file_names", "image_ids"), ("class_names", "category_ids"),
                         ("rle", "segment_id")):
        check_offsets(arrays[f"{table}_offsets"], arrays[f"{table}_data"])
        if len(arrays[f"{table}_offsets"]) != len(arrays[items]) + 1:
            raise ValueError(f"index table {table} does not fit {items}")
    image = arrays["segment_image"]
    check_range("segment_image", image, 0, len(arrays["image_ids"]) - 1)
    check_range("segment_image order", np.diff(image), 0, np.inf)
    check_range("segment_label", arrays["segment_label"], 0, len(arrays["category_ids"]) - 1)
    check_range("image size", np.minimum(arrays["image_heights"], arrays["image_widths"]), 1,
                np.inf)
    check_boxes(arrays["segment_bbox"], arrays["image_heights"][image],
                arrays["image_widths"][image], arrays["segment_area"])
    check_range("skipped", arrays["skipped"], 0, np.inf)
    check_range("degenerate_reasons", arrays["degenerate_reasons"], 0,
                len(DEGENERATE_REASONS) - 1)
    check_rle_strings(arrays["rle_data"], arrays["rle_offsets"])


def check_rle_strings(data, offsets):
    """ValueError unless each compressed RLE is a non-empty string of RLE characters whose
    last one ends its run: pycocotools would read past it. (Cheap: one pass over the
    buffer; whether the runs cover the image was checked when the index was built.)"""
    if len(offsets) > 1 and ((np.diff(offsets) < 1).any() or (data < 48).any() or
                             (data > 48 + 63).any() or
                             ((data[offsets[1:] - 1] - 48) & 0x20).any()):
        raise ValueError("index RLE strings are not compressed RLE")
