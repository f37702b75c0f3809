"""Label-map datasets as a SegmentDataset: a folder of images and a folder of label maps
(OpenSurfaces, ADE20K, VOC, CamVid, Cityscapes, your own).

    reader = LabelMapReader("train/images", "train/labels", class_names=["road", "car"])

Each image has a label map: a single-channel PNG in ``label_dir`` (by default the image's
stem + ".png"; subfolders, e.g. Cityscapes' cities, mirrored), pixel value = class; each
connected component (8-connectivity) of a class is one segment. The convention (``background``, ``ignore``, ``class_values``, ``label_names``:
roilib/labelconvention.py) is the caller's; by default 0 is unlabelled and the other values
are the classes in order (OpenSurfaces: label = value - 1). Values neither a class nor void
are counted and reported by summary(). Palette PNGs (VOC) are read as their indices.

All label maps are scanned once (threads: cv2 releases the GIL); for each segment its bbox
and one of its pixels are kept in numpy arrays, so a mask is later rebuilt from the label
map inside the bbox only. The index is cached on disk (roilib/indexcache.py), keyed on both
folders' file lists and the label maps' sizes, mtimes, ctimes and inodes: later starts do
not scan. It holds one entry per label map (its stat, a content digest, its size and its
segments), so when the folders change only the maps that are new or whose content changed
are scanned again (a map whose stat changed is hashed: a touched or copied map is kept).
"""
import os
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from roilib.compactindex import StringTable, _View, adopt_segments, check_range
from roilib.crops import BoxMask
from roilib.dataset import SegmentDataset
from roilib.errors import UserError
from roilib.imageio import read_label_map
from roilib.indexcache import (cached_index, content_digest, folder_identity, notice,
                               regular_file_stat, stat_row, walk_files)
from roilib.labelconvention import LabelConvention, total_undeclared, undeclared_warning
from roilib.labelmapindex import (MapEntry, SEGMENT_COLUMNS, check_label_map_index, known_entries,
                                  pack_entries)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Label folders from this many files on say, before their first (slow) scan, why.
ANNOUNCE_MAPS = 2000

# value: label-map value; seed: (x, y) of one pixel of the component, to find it again.
Component = namedtuple("Component", "value area bbox seed")


class LabelMapReader(SegmentDataset):
    def __init__(self, image_dir, label_dir, train=True, background=0, class_names=None,
                 num_classes=None, min_area=1, ignore=(), class_values=None, label_names=None):
        super().__init__(train)
        self.image_dir, self.label_dir = str(image_dir), str(label_dir)
        if class_values is not None and class_names is None and num_classes is None:
            num_classes = len(class_values)
        self.class_names = _class_names(class_names, num_classes)
        self.rule = LabelConvention(len(self.class_names), background, ignore, class_values,
                                    label_names)  # how values and file names are read
        self.category_ids = self.rule.class_values  # the label-map value of each class
        self.min_area = max(int(min_area), 1)
        self._adopt(self._index())

    @property
    def convention(self):
        """How the label maps are read, as plain data (stored in checkpoints)."""
        return self.rule.as_dict()

    # ------------------------------------------------------------------ construction

    def _index(self):
        for folder in (self.image_dir, self.label_dir):
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: folder not found")
        identity = {"images": folder_identity(self.image_dir, with_stat=False,
                                              names=_is_image_name),
                    "labels": folder_identity(self.label_dir)}
        settings = {**self.convention, "classes": self.num_classes, "min_area": self.min_area}
        return cached_index(self.label_dir, "labelmap", identity, settings, self._scan,
                            self._check_index, incremental=True)

    def _scan(self, previous):
        """The index arrays: the entries of ``previous`` (a stale index of these settings)
        for maps whose stat or content is unchanged, a scan of the others."""
        maps, missing = self._maps()
        known = known_entries(previous)
        entries = [known.get(stem) for _, stem, _ in maps]
        todo = [i for i, (m, old) in enumerate(zip(maps, entries))
                if old is None or old.stat != m[2]]
        if len(todo) >= ANNOUNCE_MAPS:
            notice(f"{self.label_dir}: reading {len(todo)} of {len(maps)} label maps, new or "
                   f"changed on disk (scanned unless their content is the same)")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for i, entry in zip(todo, pool.map(lambda i: self._entry(maps[i], entries[i]),
                                               todo)):
                entries[i] = entry
        return pack_entries(entries, missing)

    def _maps(self):
        """(image name, stem, stat row of its label map) of each image with a label map (names
        relative to the image folder: a/b.png for a subfolder's), by name; how many have none."""
        maps, missing, broken = [], 0, []
        for name, _ in walk_files(self.image_dir, _is_image_name):
            stem = self.rule.stem_of(name, _is_image_name)
            if stem is None:
                continue
            status = regular_file_stat(self._label_path(stem), broken)
            if status is None:
                missing += 1
                continue
            maps.append((name, stem, stat_row(status)))
        if broken:
            notice(f"skipped {len(broken)} label maps that are broken symbolic links, counted as "
                   f"images without a label map (first: {broken[0]})")
        return maps, missing

    def _entry(self, found, old):
        """The index entry of a map whose stat differs from ``old``'s (None: a new map):
        ``old``'s segments when the content is the same, else a scan."""
        name, stem, status = found
        path = self._label_path(stem)
        digest = content_digest(path)
        if old is not None and old.digest == digest:
            return old._replace(name=name, stat=status)
        try:
            label_map = read_label_map(path)
        except UserError as error:   # skipped and counted, as an unreadable image is in training
            notice(f"skipped a label map that cannot be read: {error}")
            return MapEntry(name, stem, status, digest, (1, 1), np.zeros((0, len(SEGMENT_COLUMNS)), np.int64),
                            np.zeros((0, 2), np.int64), True)
        components, undeclared = components_of(label_map, self.rule, self.min_area)
        rows = [(number, *c.bbox, c.area, c.value, *c.seed)
                for number, c in enumerate(components)]
        return MapEntry(name, stem, status, digest, label_map.shape,
                        np.array(rows, np.int64).reshape(-1, len(SEGMENT_COLUMNS)), undeclared, False)

    def _adopt(self, arrays):
        """Index arrays -> the reader's tables; maps without a segment are left out."""
        self.missing_labels = int(arrays["missing_labels"])
        stems = StringTable.of(arrays, "stems")
        self.unreadable_labels = [self._label_path(stems[i]) for i in np.flatnonzero(arrays["map_unreadable"])]
        # value -> pixels of the values that are neither a class nor declared void
        self.undeclared = total_undeclared(arrays["undeclared"])
        counts = np.diff(arrays["map_segments"])
        kept = np.flatnonzero(counts)
        self.images = LabelMapImages(self.image_dir, self.label_dir, self.rule.label_end,
                                     StringTable.of(arrays, "image_names"),
                                     StringTable.of(arrays, "stems"), kept)
        table = arrays["segments"]  # columns: SEGMENT_COLUMNS
        self._values, self._seeds = table[:, 6], table[:, 7:9]
        adopt_segments(self, len(kept), np.repeat(np.arange(len(kept)), counts[kept]),
                       table[:, 0], self.labels_of(self._values), table[:, 5], table[:, 1:5])

    def _check_index(self, arrays):
        """check_label_map_index, every segment value a class of these settings and every
        undeclared value none."""
        check_label_map_index(arrays)
        values, others = arrays["segments"][:, 6], arrays["undeclared"][:, 0]
        if self.rule.is_void(values).any() or self.rule.is_void(others).any():
            raise ValueError("index holds the background or an ignore value")
        check_range("segment label", self.labels_of(values), 0, self.num_classes - 1)
        check_range("undeclared label", self.labels_of(others), -1, -1)

    def _label_path(self, stem):
        return os.path.join(self.label_dir, stem + self.rule.label_end)

    def labels_of(self, values):
        """The label of each class value (its index in ``category_ids``), -1 for other values."""
        return self.rule.labels_of(values)

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
        return component_box_mask(label_map, int(self._values[segment_index]),
                                  self.segments[segment_index].bbox, self._seeds[segment_index])

    def _mask_from(self, label_map, segment_index):
        box = self._box_mask_from(label_map, segment_index)
        mask = np.zeros(label_map.shape, np.uint8)
        h, w = box.mask.shape
        mask[box.y:box.y + h, box.x:box.x + w] = box.mask
        return mask

    def segment_mask(self, segment_index, image_shape):
        image_index = int(self.image_of_segment[segment_index])
        return self._mask_from(self._label_map(image_index, image_shape), segment_index)

    def box_masks(self, segment_indices, image_shape):
        if not len(segment_indices):
            return []
        image_index = self.segments[segment_indices[0]].image_index
        label_map = self._label_map(image_index, image_shape)  # read once for all segments
        return [self._box_mask_from(label_map, i) for i in segment_indices]

    def summary(self):
        warning = undeclared_warning(self.undeclared, "declare them (IGNORE, CLASS_VALUES) or "
                                                      "name more classes")
        return (f"{self.label_dir}: {len(self.images)} images, {len(self)} segments, "
                f"{self.num_classes} classes; images without a label map: "
                f"{self.missing_labels}" + self._unreadable_line() + (f"\n{warning}" if warning else ""))

    def _unreadable_line(self):
        found = self.unreadable_labels
        return f"; unreadable label maps skipped: {len(found)} (first: {found[0]})" if found else ""


class LabelMapImages(_View):
    """``images[i]``: {"path", "label_path", "id"} built on demand (id: the file stem, as
    an int when it is a number), over the maps ``rows`` of the index."""

    def __init__(self, image_dir, label_dir, label_end, names, stems, rows):
        self.image_dir, self.label_dir, self.label_end = image_dir, label_dir, label_end
        self.names, self.stems, self.rows = names, stems, rows

    def __len__(self):
        return len(self.rows)

    def item(self, index):
        row = self.rows[index]
        stem = self.stems[row]
        return {"path": os.path.join(self.image_dir, self.names[row]),
                "label_path": os.path.join(self.label_dir, stem + self.label_end),
                "id": int(stem) if stem.isdigit() else stem}


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_names(class_names, num_classes):
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise UserError(f"num_classes {num_classes} but {len(class_names)} class names")
        return [str(name) for name in class_names]
    if num_classes is not None:
        return [f"class {i}" for i in range(num_classes)]
    raise UserError("label maps name no classes: give their names (in value order) or their number")


def components_of(label_map, rule, min_area=1):
    """One scan of a label map read with `rule` (a LabelConvention) -> (its components of at
    least `min_area` pixels, by value then raster order; (value, pixels) rows of the values
    that are neither a class nor declared void)."""
    flat = label_map.ravel()
    if flat.dtype.itemsize <= 2:   # a count per value up to 65535, a slice at a time: np.bincount
        counts = np.zeros(1 << 8 * flat.dtype.itemsize, np.int64)   # makes an int64 copy of its input
        for start in range(0, flat.size, 1 << 20):
            counts += np.bincount(flat[start:start + (1 << 20)], minlength=counts.size)
        classes, undeclared = rule.split(counts)
    else:   # a count per value up to the largest (2**31 - 1: 16 GiB) would not be
        classes, undeclared = rule.split_values(*np.unique(flat, return_counts=True))
    components = []
    for value in classes:
        components += _value_components(label_map, value, min_area)
    return components, undeclared


def component_box_mask(label_map, value, bbox, seed):
    """A component over its bbox, rebuilt: connected components of its value inside the bbox,
    keep the one holding its seed pixel (a component stays connected inside its bbox)."""
    x, y, w, h = (int(v) for v in bbox)
    seed_x, seed_y = (int(v) for v in seed)
    inside = (label_map[y:y + h, x:x + w] == value).astype(np.uint8)
    _, ids = cv2.connectedComponents(inside, connectivity=8)
    return BoxMask((ids == ids[seed_y - y, seed_x - x]).astype(np.uint8), x, y)


def _value_components(label_map, value, min_area):
    """Components of one value, labelled inside the value's bounding box only (several
    times faster than over the whole map: the stats pass is costly)."""
    # cv2.compare gives the uint8 0/255 image in one pass (== plus astype would take two).
    binary = cv2.compare(label_map, int(value), cv2.CMP_EQ)
    left, top, width, height = cv2.boundingRect(binary)
    box = binary[top:top + height, left:left + width]
    try:   # 16-bit labels: half the memory of 32-bit; OpenCV refuses (never wraps) past 65535
        count, ids, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        count, ids, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
    components = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        seed_x = x + int(np.argmax(ids[y, x:x + w] == k))  # its first pixel on its top row
        components.append(Component(int(value), area, (left + x, top + y, w, h),
                                    (left + seed_x, top + y)))
    return components
