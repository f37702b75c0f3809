"""Label-map datasets (OpenSurfaces format) as a SegmentDataset.

    reader = OpenSurfacesReader("TrainVal_Set/Images", "TrainVal_Set/Annotations")

Each image has a label map: a single-channel PNG in ``label_dir`` (by default the image's
stem + ".png"), pixel value = class. Each connected component (8-connectivity) of each class
is one segment. The convention is the caller's, so any label-map dataset is read as it is
on disk:
- ``background``: the value of unlabelled pixels (OpenSurfaces, ADE20K, VOC: 0), or None
  when every value is a class (CamVid: 0 is Sky);
- ``ignore``: values that are neither a class nor a region (VOC: 255, CamVid: 11);
- ``class_values``: the values of the classes, in class order, where they are not contiguous
  (Cityscapes labelIds); by default the values in order, skipping background and ignore, so
  for OpenSurfaces label = value - 1 over its 45 materials;
- ``label_names``: (image ending, label ending) where label files are named differently
  (Cityscapes: ("_leftImg8bit.png", "_gtFine_labelIds.png")).
A value that is none of these is never made a class: its pixels are counted per value and
reported by summary(). Palette (indexed) PNGs, as VOC ships them, are read as their indices.

All label maps are scanned once (threads: cv2 releases the GIL); for each segment its bbox
and one of its pixels are kept in numpy arrays, so a mask is later rebuilt from the label
map inside the bbox only. The index is cached on disk (roilib/indexcache.py), keyed on both
folders' file lists, sizes and mtimes: later starts do not scan.
"""
import os
from collections import Counter, namedtuple
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from roilib.compactindex import (StringTable, _View, adopt_segments, check_lengths,
                                 check_offsets)
from roilib.crops import BoxMask
from roilib.dataset import SegmentDataset
from roilib.errors import UserError
from roilib.imageio import read_label_map
from roilib.indexcache import cached_index, folder_identity

# The 45 OpenSurfaces materials, in the order of the original repository
# (sagieppel/Classification-of-the-material-given-region-of-an-image-using-a-convolutional-
# neural-net-with-attent, OpenSurfacesClasses.py): label-map value v is material v.
OPENSURFACES_CLASSES = [
    "Brick", "Cardboard", "Carpet / rug", "Ceramic", "Chalkboard / blackboard", "Concrete",
    "Cork / corkboard", "Dirt", "Fabric / cloth", "Fire", "Foliage", "Food", "Fur", "Glass",
    "Granite", "Granite / marble", "Hair", "Laminate", "Leather", "Linoleum", "Marble",
    "Metal", "Mirror", "Painted", "Paper towel / tissue", "Paper / tissue", "Plaster",
    "Plastic - clear", "Plastic - opaque", "Rubber / latex", "Skin", "Sky", "Sponge",
    "Stone", "Styrofoam", "Tile", "Wallboard - painted", "Wallboard - unpainted",
    "Wallpaper", "Water", "Wax", "Wicker", "Wood", "Wood - natural color", "Wood - painted",
]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Label folders from this many files on say, before their first (slow) scan, why.
ANNOUNCE_MAPS = 2000

# value: label-map value; seed: (x, y) of one pixel of the component, to find it again.
Component = namedtuple("Component", "value area bbox seed")


class OpenSurfacesReader(SegmentDataset):
    def __init__(self, image_dir, label_dir, train=True, background=0, class_names=None,
                 num_classes=None, min_area=1, ignore=(), class_values=None, label_names=None):
        super().__init__(train)
        self.image_dir, self.label_dir = str(image_dir), str(label_dir)
        self.background = None if background is None else int(background)
        self.ignore = tuple(sorted({int(v) for v in _as_values(ignore)}))
        if class_values is not None and class_names is None and num_classes is None:
            num_classes = len(class_values)
        self.class_names = _class_names(class_names, num_classes)
        class_values = _class_values(class_values, len(self.class_names),
                                     {self.background, *self.ignore})
        self.category_ids = class_values  # the label-map value of each class
        self._label_of = {v: label for label, v in enumerate(class_values)}
        self.image_end, self.label_end = label_names or (None, ".png")
        self.min_area = max(int(min_area), 1)
        self._adopt(self._index())

    @property
    def convention(self):
        """How the label maps are read, as plain data (stored in checkpoints)."""
        return {"background": self.background, "ignore": list(self.ignore),
                "class_values": list(self.category_ids),
                "label_names": None if self.image_end is None else [self.image_end, self.label_end]}

    # ------------------------------------------------------------------ construction

    def _index(self):
        for folder in (self.image_dir, self.label_dir):
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: folder not found")
        identity = {"images": folder_identity(self.image_dir, with_stat=False,
                                              names=_is_image_name),
                    "labels": folder_identity(self.label_dir)}
        settings = {**self.convention, "classes": self.num_classes, "min_area": self.min_area}
        announce = None
        if identity["labels"]["files"] >= ANNOUNCE_MAPS:
            announce = (f"{self.label_dir}: scanning {identity['labels']['files']} label maps "
                        f"(first start only)")
        return cached_index(self.label_dir, "labelmap", identity, settings, self._scan,
                            check_label_map_index, announce)

    def _scan(self):
        """Every label map, once -> the index arrays."""
        pairs, missing = [], 0
        for name in sorted(os.listdir(self.image_dir)):
            stem = self._stem_of(name)
            if stem is None:
                continue
            if not os.path.isfile(self._label_path(stem)):
                missing += 1
                continue
            pairs.append((name, stem))
        names, stems, rows, undeclared = [], [], [], Counter()
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            scans = pool.map(lambda pair: self._components_of(self._label_path(pair[1])),
                             pairs)
            for (name, stem), (components, others) in zip(pairs, scans):
                undeclared.update(others)
                if components:
                    rows += [(len(names), number, *c.bbox, c.area, c.value, *c.seed)
                             for number, c in enumerate(components)]
                    names.append(name)
                    stems.append(stem)
        table = np.array(rows, np.int64).reshape(-1, 10)
        return {**StringTable.build(names).arrays("image_names"),
                **StringTable.build(stems).arrays("stems"),
                "segment_image": table[:, 0], "segment_number": table[:, 1],
                "segment_bbox": table[:, 2:6], "segment_area": table[:, 6],
                "segment_value": table[:, 7], "segment_seed": table[:, 8:10],
                "missing_labels": np.array(missing, np.int64),
                "undeclared": np.array(sorted(undeclared.items()), np.int64).reshape(-1, 2)}

    def _adopt(self, arrays):
        self.missing_labels = int(arrays["missing_labels"])
        # value -> pixels of the values that are neither a class nor declared void
        self.undeclared = {int(v): int(n) for v, n in arrays["undeclared"]}
        self.images = LabelMapImages(self.image_dir, self.label_dir, self.label_end,
                                     StringTable.of(arrays, "image_names"),
                                     StringTable.of(arrays, "stems"))
        self._values, self._seeds = arrays["segment_value"], arrays["segment_seed"]
        lookup = np.array([self.label_of(v) for v in range(int(self._values.max(initial=0)) + 1)],
                          np.int64)
        labels = lookup[self._values]
        adopt_segments(self, len(self.images), arrays["segment_image"],
                       arrays["segment_number"], labels, arrays["segment_area"],
                       arrays["segment_bbox"])

    def _stem_of(self, image_name):
        """The part of an image's name its label file is named from (None: not an image, or
        not named as ``label_names`` says)."""
        if self.image_end is None:
            return os.path.splitext(image_name)[0] if _is_image_name(image_name) else None
        if image_name.endswith(self.image_end) and len(image_name) > len(self.image_end):
            return image_name[:-len(self.image_end)]
        return None

    def _label_path(self, stem):
        return os.path.join(self.label_dir, stem + self.label_end)

    def label_of(self, value):
        """Label of a class value (its index in ``category_ids``), -1 for any other value."""
        return self._label_of.get(int(value), -1)

    def _components_of(self, label_path):
        """One scan of a label map -> (its components, by value then raster order;
        {value: pixels} of the values that are neither a class nor declared void)."""
        label_map = read_label_map(label_path)
        counts = np.bincount(label_map.ravel())
        components, undeclared = [], {}
        for value in np.flatnonzero(counts):
            if value == self.background or value in self.ignore:
                continue
            if self.label_of(value) < 0:
                undeclared[int(value)] = int(counts[value])
                continue
            components += _value_components(label_map, value, self.min_area)
        return components, undeclared

    # ------------------------------------------------------------------ access

    def _label_map(self, image_index, image_shape):
        record = self.images[image_index]
        label_map = read_label_map(record["label_path"])
        if label_map.shape != tuple(image_shape[:2]):
            raise UserError(
                f"{record['label_path']}: label map is {label_map.shape[1]}x"
                f"{label_map.shape[0]} but image {record['path']} is "
                f"{image_shape[1]}x{image_shape[0]}")
        return label_map

    def _box_mask_from(self, label_map, segment_index):
        """Rebuild a component over its bbox: connected components of its value inside the
        bbox, keep the one holding its seed pixel (a component stays connected inside it)."""
        value = int(self._values[segment_index])
        seed_x, seed_y = (int(v) for v in self._seeds[segment_index])
        x, y, w, h = self.segments[segment_index].bbox
        inside = (label_map[y:y + h, x:x + w] == value).astype(np.uint8)
        _, ids = cv2.connectedComponents(inside, connectivity=8)
        return BoxMask((ids == ids[seed_y - y, seed_x - x]).astype(np.uint8), x, y)

    def _mask_from(self, label_map, segment_index):
        box = self._box_mask_from(label_map, segment_index)
        mask = np.zeros(label_map.shape, np.uint8)
        h, w = box.mask.shape
        mask[box.y:box.y + h, box.x:box.x + w] = box.mask
        return mask

    def segment_mask(self, segment_index, image_shape):
        image_index = int(self.image_of_segment[segment_index])
        return self._mask_from(self._label_map(image_index, image_shape), segment_index)

    def image_masks(self, image_index, image_shape):
        label_map = self._label_map(image_index, image_shape)  # read once for all segments
        return [self._mask_from(label_map, i) for i in self.image_segments[image_index]]

    def box_masks(self, segment_indices, image_shape):
        if not len(segment_indices):
            return []
        image_index = self.segments[segment_indices[0]].image_index
        label_map = self._label_map(image_index, image_shape)  # read once for all segments
        return [self._box_mask_from(label_map, i) for i in segment_indices]

    def summary(self):
        text = (f"{self.label_dir}: {len(self.images)} images, {len(self)} segments, "
                f"{self.num_classes} classes; images without a label map: "
                f"{self.missing_labels}")
        if self.undeclared:
            shown = ", ".join(f"{v} ({n} px)" for v, n in list(self.undeclared.items())[:8])
            more = f", ... ({len(self.undeclared)} values)" if len(self.undeclared) > 8 else ""
            text += (f"\nwarning: label values neither a class nor declared void, left out: "
                     f"{shown}{more}; declare them (IGNORE, CLASS_VALUES) or name more classes")
        return text


class LabelMapImages(_View):
    """``images[i]``: {"path", "label_path", "id"} built on demand (id: the file stem, as
    an int when it is a number)."""

    def __init__(self, image_dir, label_dir, label_end, names, stems):
        self.image_dir, self.label_dir, self.label_end = image_dir, label_dir, label_end
        self.names, self.stems = names, stems

    def __len__(self):
        return len(self.names)

    def item(self, index):
        stem = self.stems[index]
        return {"path": os.path.join(self.image_dir, self.names[index]),
                "label_path": os.path.join(self.label_dir, stem + self.label_end),
                "id": int(stem) if stem.isdigit() else stem}


def check_label_map_index(arrays):
    """ValueError unless the arrays form an OpenSurfacesReader index."""
    check_lengths(arrays, [("image_names_offsets", "stems_offsets"),
                           ("segment_image", "segment_number", "segment_bbox", "segment_area",
                            "segment_value", "segment_seed")])
    check_offsets(arrays["image_names_offsets"], arrays["image_names_data"])
    check_offsets(arrays["stems_offsets"], arrays["stems_data"])
    images, segments = len(arrays["stems_offsets"]) - 1, len(arrays["segment_image"])
    if arrays["segment_bbox"].shape != (segments, 4) or \
            arrays["segment_seed"].shape != (segments, 2) or \
            arrays["missing_labels"].shape != () or arrays["undeclared"].ndim != 2 or (segments and not (
                0 <= arrays["segment_image"].min() and arrays["segment_image"].max() < images
                and arrays["segment_value"].min() >= 0)):
        raise ValueError("index arrays do not fit together")


def _as_values(values):
    """None, one value or several -> an iterable of values."""
    if values is None:
        return ()
    return (values,) if isinstance(values, (int, np.integer)) else values


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_names(class_names, num_classes):
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise UserError(f"num_classes {num_classes} but {len(class_names)} class names")
        return [str(name) for name in class_names]
    if num_classes is not None:
        return [f"class {i}" for i in range(num_classes)]
    return list(OPENSURFACES_CLASSES)


def _class_values(values, count, void):
    """The label-map value of each of `count` classes: `values` checked, or by default every
    value in order but the `void` ones."""
    if values is None:
        return [v for v in range(count + len(void)) if v not in void][:count]
    values = [int(v) for v in values]
    if len(set(values)) != len(values) or void & set(values):
        raise UserError(f"class values {values}: each once, and none of them background or "
                        f"ignore ({', '.join(str(v) for v in sorted(void, key=str))})")
    if len(values) != count:
        raise UserError(f"{len(values)} class values for {count} class names")
    return values


def _value_components(label_map, value, min_area):
    """Components of one value, labelled inside the value's bounding box only (several
    times faster than over the whole map: the stats pass is costly)."""
    # cv2.compare gives the uint8 0/255 image in one pass (== plus astype would take two).
    binary = cv2.compare(label_map, int(value), cv2.CMP_EQ)
    left, top, width, height = cv2.boundingRect(binary)
    count, ids, stats, _ = cv2.connectedComponentsWithStats(
        binary[top:top + height, left:left + width], connectivity=8)
    components = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        seed_x = x + int(np.argmax(ids[y, x:x + w] == k))  # its first pixel on its top row
        components.append(Component(int(value), area, (left + x, top + y, w, h),
                                    (left + seed_x, top + y)))
    return components
