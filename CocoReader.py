"""COCO instances (json + image folder) as a SegmentDataset: one sample per annotation.

    reader = CocoReader("val2017", "annotations/instances_val2017.json", train=False)
    print(reader.summary())
    sample = reader[0]   # {"image", "mask", "label", "area", "image_id", "segment_id"}

Category ids (COCO: 80 ids in 1..90) map to labels 0..K-1 by sorted id. Polygons (all parts
merged), compressed and uncompressed RLE are decoded with pycocotools. Skipped: crowd
regions (unless ``include_crowd``), polygon parts of fewer than 6 numbers (pycocotools would
read a 4-number part as a box) and annotations left with no part, segments below
``min_area`` pixels, images without a usable segment, and images whose file is missing
(counted in ``missing_images`` and shown by ``summary()``).
Order is deterministic: images by id, their segments by annotation id.
"""
import contextlib
import io
import json
import os
import warnings

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from roilib.dataset import Segment, SegmentDataset
from roilib.errors import UserError

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation on every first call
# in each process: harmless, and not the user's business.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")

# RLEs measured per pycocotools call (vectorised C). pycocotools 2.0.11's mask.area fails
# ("out of bounds for uint8") on a list of more than 255 RLEs.
_CHUNK = 255


class CocoReader(SegmentDataset):
    def __init__(self, image_dir, annotation_file, train=True, min_area=1,
                 include_crowd=False):
        super().__init__(train)
        self.image_dir = str(image_dir)
        self.annotation_file = str(annotation_file)
        if not os.path.isdir(self.image_dir):
            raise UserError(f"{self.image_dir}: image folder not found")
        self.coco = _load_coco(self.annotation_file)
        self.category_ids = sorted(self.coco.cats)
        if not self.category_ids:
            raise UserError(f"{annotation_file}: no categories")
        self.class_names = [str(self.coco.cats[i].get("name", i)) for i in self.category_ids]
        self.skipped = {"crowd": 0, "degenerate": 0, "small": 0}
        self.missing_images = 0
        self._collect(min_area, include_crowd)
        self.index_segments()

    # ------------------------------------------------------------------ construction

    def _collect(self, min_area, include_crowd):
        label_of = {cat: label for label, cat in enumerate(self.category_ids)}
        kept = {}  # image id -> [(annotation, area, bbox)]
        pending = []  # (image id, annotation, rle) waiting to be measured
        for image_id in sorted(self.coco.imgs):
            record = self.coco.imgs[image_id]
            for ann in sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"]):
                if ann.get("iscrowd", 0) and not include_crowd:
                    self.skipped["crowd"] += 1
                    continue
                if ann.get("category_id") not in label_of:
                    raise UserError(f"{self.annotation_file}: annotation {ann.get('id')} "
                                    f"has unknown category_id {ann.get('category_id')}")
                rle = self._rle(ann, record)
                if rle is None:
                    self.skipped["degenerate"] += 1
                    continue
                pending.append((image_id, ann, rle))
                if len(pending) == _CHUNK:
                    self._measure(pending, min_area, kept)
        self._measure(pending, min_area, kept)
        self._add_images(kept, label_of)

    def _measure(self, pending, min_area, kept):
        """Area and bbox of the pending RLEs without decoding them; keeps those big enough.
        (RLEs are measured in chunks and dropped: all of COCO train's would fill memory.)"""
        if not pending:
            return
        rles = [rle for _, _, rle in pending]
        for (image_id, ann, _), area, box in zip(pending, mask_utils.area(rles),
                                                 mask_utils.toBbox(rles)):
            if area < max(min_area, 1):
                self.skipped["small"] += 1
                continue
            kept.setdefault(image_id, []).append((ann, int(area), box))
        pending.clear()

    def _add_images(self, kept, label_of):
        for image_id in sorted(kept):
            record = self.coco.imgs[image_id]
            path = os.path.join(self.image_dir, record["file_name"])
            if not os.path.isfile(path):
                self.missing_images += 1
                continue
            image_index = len(self.images)
            self.images.append({"path": path, "id": image_id,
                                "file_name": record["file_name"],
                                "height": record["height"], "width": record["width"]})
            for ann, area, box in kept[image_id]:
                x, y, w, h = (int(round(v)) for v in box)
                self.segments.append(Segment(image_index, ann["id"],
                                             label_of[ann["category_id"]], area, (x, y, w, h)))

    def _rle(self, ann, record):
        """Annotation -> one RLE (or None when no usable polygon part is left)."""
        height, width = record.get("height"), record.get("width")
        if not height or not width:
            raise UserError(f"{self.annotation_file}: image {record.get('id')} has no "
                            f"height/width")
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            # Parts shorter than 3 points are lines/points (and 4 numbers would be read
            # by pycocotools as a box): drop them.
            parts = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
            if not parts:
                return None
            rles = mask_utils.frPyObjects(parts, height, width)
            return rles[0] if len(rles) == 1 else mask_utils.merge(rles)
        if isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size", [])) != [height, width]:
                raise UserError(
                    f"{self.annotation_file}: annotation {ann['id']} RLE size "
                    f"{segmentation.get('size')} differs from image {height}x{width} (HxW)")
            if isinstance(segmentation["counts"], list):  # uncompressed RLE
                return mask_utils.frPyObjects(segmentation, height, width)
            return segmentation
        raise UserError(f"{self.annotation_file}: annotation {ann.get('id')} has no "
                        f"polygon or RLE segmentation")

    # ------------------------------------------------------------------ access

    def segment_mask(self, segment_index, image_shape):
        segment = self.segments[segment_index]
        record = self.images[segment.image_index]
        expected = (record["height"], record["width"])
        if tuple(image_shape[:2]) != expected:
            raise UserError(f"{record['path']}: image is {image_shape[1]}x{image_shape[0]} "
                            f"but {self.annotation_file} says {expected[1]}x{expected[0]}")
        rle = self._rle(self.coco.anns[segment.segment_id], self.coco.imgs[record["id"]])
        return np.ascontiguousarray(mask_utils.decode(rle))

    def summary(self):
        skipped = ", ".join(f"{count} {why}" for why, count in self.skipped.items())
        return (f"{self.annotation_file}: {len(self.images)} images, {len(self)} segments, "
                f"{self.num_classes} classes; skipped annotations: {skipped}; "
                f"missing image files: {self.missing_images}")


def _load_coco(annotation_file):
    """pycocotools COCO with its progress prints silenced and its failures as UserError."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(annotation_file)
    except FileNotFoundError:
        raise UserError(f"{annotation_file}: file not found") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{annotation_file}: invalid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{annotation_file}: cannot read ({error})") from None
    except (AssertionError, KeyError, TypeError) as error:
        raise UserError(f"{annotation_file}: not a COCO instances file ({error!r})") from None
