"""COCO instances JSON -> the compact index of CocoReader (numpy arrays only).

Every annotation is checked before pycocotools sees it, by roilib.segmentation (the one
check, shared with LabelMasks): bad polygons and RLEs are dropped and counted with their ids. Masks are kept as compressed RLE bytes in one buffer, read by position (two
annotations with one id both keep their own mask).
"""
import json
import operator
import warnings
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils

from roilib.compactindex import StringTable
from roilib.errors import UserError
from roilib.segmentation import BadSegmentation, checked, to_rles

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation on every first call
# in each process: harmless, and not the user's business.
warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")

# RLEs measured per pycocotools call (vectorised C). pycocotools 2.0.11's mask.area fails
# ("out of bounds for uint8") on a list of more than 255 RLEs.
_CHUNK = 255
SKIP_REASONS = ("crowd", "degenerate", "small")
# Why an annotation is degenerate (stored as its position here).
DEGENERATE_REASONS = (
    "polygon given as a dict: convert with `kwcoco conform --legacy=True`",
    "no polygon of 3 or more points", "polygon with an odd number of coordinates")
INVALID_REASONS = ("bad polygon", "bad RLE", "unknown image")


def build_coco_index(annotation_file, min_area, include_crowd):
    """The arrays of CocoReader's index (see ``CocoIndexBuilder``)."""
    data = _load_json(annotation_file)
    return CocoIndexBuilder(annotation_file, data, min_area, include_crowd).arrays()


def _load_json(annotation_file):
    try:
        with open(annotation_file, "rb") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise UserError(f"{annotation_file}: file not found") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{annotation_file}: invalid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{annotation_file}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{annotation_file}: not a COCO instances file (top level is "
                        f"{type(data).__name__}, not an object)")
    return data


class CocoIndexBuilder:
    """One pass over the annotations: images by id, their annotations by id (then file
    order); each annotation -> one compressed RLE, measured in chunks (area, bbox)."""

    def __init__(self, annotation_file, data, min_area, include_crowd):
        self.file = annotation_file
        self.min_area, self.include_crowd = max(min_area, 1), include_crowd
        try:
            # dicts keyed by id, the last entry winning, as pycocotools' COCO does
            self.categories = {c["id"]: c for c in data.get("categories", [])}
            self.records = {r["id"]: r for r in data.get("images", [])}
            self.by_image = defaultdict(list)
            for ann in data.get("annotations", []):
                self.by_image[ann["image_id"]].append(ann)
            self.image_order = sorted(self.records)
        except (KeyError, TypeError) as error:
            raise UserError(f"{annotation_file}: not a COCO instances file "
                            f"({error!r})") from None
        self.category_ids = sorted(self.categories)
        if not self.category_ids:
            raise UserError(f"{annotation_file}: no categories")
        self.label_of = {cat: label for label, cat in enumerate(self.category_ids)}
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.invalid = {reason: [] for reason in INVALID_REASONS}
        self.degenerate = []  # (annotation id, index in DEGENERATE_REASONS)
        self.pending = []  # (image id, annotation id, label, rle) waiting to be measured
        self.kept = defaultdict(list)  # column -> values of the kept segments, in order

    # ------------------------------------------------------------------ the pass

    def arrays(self):
        unknown = set(self.by_image) - set(self.records)
        for image_id in unknown:
            self.invalid["unknown image"] += [a.get("id", -1) for a in self.by_image[image_id]]
        for image_id in self.image_order:
            anns = self.by_image.get(image_id)
            if anns:
                self._add_image(image_id, self._by_id(anns))
        self._measure()
        return self._pack()

    def _by_id(self, anns):
        """Annotations by id, file order among equal ids (a stable sort, as before)."""
        try:
            return sorted(anns, key=operator.itemgetter("id"))
        except (KeyError, TypeError) as error:
            raise UserError(f"{self.file}: not a COCO instances file (annotation ids: "
                            f"{error!r})") from None

    def _add_image(self, image_id, anns):
        record = self.records[image_id]
        usable = []  # (annotation, its RLE or its polygon parts), in id order
        for ann in anns:
            if ann.get("iscrowd", 0) and not self.include_crowd:
                self.skipped["crowd"] += 1
                continue
            if ann.get("category_id") not in self.label_of:
                raise UserError(f"{self.file}: annotation {ann.get('id')} has unknown "
                                f"category_id {ann.get('category_id')}")
            height, width = self._size(record)
            segmentation = ann.get("segmentation")
            if _is_dict_polygon(segmentation):
                self._degenerate(ann, 0)  # kwcoco's form: never read as something else
                continue
            try:
                usable.append((ann, checked(segmentation, height, width)))
            except BadSegmentation as bad:
                self._refuse(ann, str(bad), height, width)
        shapes = to_rles([shape for _, shape in usable], height, width) if usable else []
        for (ann, _), rle in zip(usable, shapes):
            self._queue(image_id, ann, rle)

    def _refuse(self, ann, reason, height, width):
        """Count a segmentation that roilib.segmentation refused, by reason."""
        if reason == "degenerate polygon":
            self._degenerate(ann, _degenerate_reason(ann["segmentation"]))
        elif reason in ("polygon not numbers", "polygon outside the image",
                        "polygon outline too long"):
            self.invalid["bad polygon"].append(ann["id"])
        elif reason.startswith("RLE counts"):
            self.invalid["bad RLE"].append(ann["id"])
        elif reason == "RLE size differs from the image":
            raise UserError(f"{self.file}: annotation {ann['id']} RLE size "
                            f"{ann['segmentation'].get('size')} differs from image "
                            f"{height}x{width} (HxW)")
        else:
            raise UserError(f"{self.file}: annotation {ann.get('id')} has no polygon "
                            f"or RLE segmentation")

    def _degenerate(self, ann, reason):
        self.skipped["degenerate"] += 1
        self.degenerate.append((ann.get("id", -1), reason))

    def _size(self, record):
        height, width = record.get("height"), record.get("width")
        if not height or not width:
            raise UserError(f"{self.file}: image {record.get('id')} has no height/width")
        return height, width

    def _queue(self, image_id, ann, rle):
        self.pending.append((image_id, ann["id"], self.label_of[ann["category_id"]], rle))
        if len(self.pending) == _CHUNK:
            self._measure()

    def _measure(self):
        """Area and bbox of the pending RLEs without decoding them; keeps those big enough.
        Kept segments stay in the order of the pass: grouped by image, images by id."""
        if not self.pending:
            return
        image_ids, ann_ids, labels, rles = zip(*self.pending)
        self.pending.clear()
        rles = list(rles)
        areas = np.asarray(mask_utils.area(rles), np.int64)
        keep = np.flatnonzero(areas >= self.min_area)
        self.skipped["small"] += len(rles) - len(keep)
        # np.rint rounds halves to even, as Python's round() does
        self.kept["bbox"].append(np.rint(mask_utils.toBbox(rles)[keep]).astype(np.int64))
        self.kept["area"].append(areas[keep])
        for name, column in (("image", image_ids), ("id", ann_ids), ("label", labels)):
            self.kept[name] += [column[i] for i in keep]
        self.kept["counts"] += [rles[i]["counts"] for i in keep]

    # ------------------------------------------------------------------ the arrays

    def _pack(self):
        """Images with at least one kept segment, their segments in order, as arrays."""
        kept = self.kept
        image_ids, image_index = np.unique(self._ints(kept["image"]), return_inverse=True)
        records = [self.records[i] for i in image_ids.tolist()]
        names = [str(self.categories[i].get("name", i)) for i in self.category_ids]
        invalid = {f"invalid_{reason.replace(' ', '_')}": self._ints(ids)
                   for reason, ids in self.invalid.items()}
        return {"category_ids": self._ints(self.category_ids),
                **StringTable.build(names).arrays("class_names"),
                "image_ids": image_ids,
                "image_heights": np.array([r["height"] for r in records], np.int64),
                "image_widths": np.array([r["width"] for r in records], np.int64),
                **StringTable.build([str(r["file_name"]) for r in records]).arrays(
                    "file_names"),
                "segment_image": image_index.astype(np.int64).ravel(),
                "segment_id": self._ints(kept["id"]),
                "segment_label": np.array(kept["label"], np.int64),
                "segment_area": np.concatenate(kept["area"] or [np.zeros(0, np.int64)]),
                "segment_bbox": np.concatenate(kept["bbox"] or [np.zeros((0, 4), np.int64)]),
                **StringTable.from_bytes(kept["counts"]).arrays("rle"),
                "skipped": np.array([self.skipped[r] for r in SKIP_REASONS], np.int64),
                "degenerate_ids": self._ints([i for i, _ in self.degenerate]),
                "degenerate_reasons": np.array([r for _, r in self.degenerate], np.int64),
                **invalid}

    def _ints(self, values):
        """Ids as int64: ids that are not integers cannot go into the index."""
        values = list(values)
        try:
            return np.array(values, np.int64)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{self.file}: ids must be integers (got e.g. "
                            f"{values[:3]})") from None


def _is_dict_polygon(segmentation):
    """kwcoco's polygon: {"exterior": [...], "interiors": [...]}, alone or in a list."""
    parts = segmentation if isinstance(segmentation, list) else [segmentation]
    return any(isinstance(p, dict) and "exterior" in p for p in parts)


def _degenerate_reason(segmentation):
    """Why a polygon list has no usable part (a position in DEGENERATE_REASONS)."""
    odd = any(isinstance(p, list) and len(p) >= 6 and len(p) % 2 for p in segmentation)
    return 2 if odd else 1
