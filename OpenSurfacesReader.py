"""Label-map datasets (OpenSurfaces format) as a SegmentDataset.

    reader = OpenSurfacesReader("TrainVal_Set/Images", "TrainVal_Set/Annotations")

Each image has a label map: a single-channel PNG with the image's stem in ``label_dir``,
pixel value = class, ``background`` = unlabelled. Each connected component (8-connectivity)
of each class is one segment. Labels number the non-background values in order, so for
OpenSurfaces (background 0) label = value - 1 over its 45 materials. Any other label-map
dataset works by giving ``class_names`` or ``num_classes``.

All label maps are scanned once at construction (threads: cv2 releases the GIL); for each
segment its bbox and one of its pixels are kept, so a mask is later rebuilt from the label
map inside the bbox only.
"""
import os
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from roilib.crops import BoxMask
from roilib.dataset import Segment, SegmentDataset
from roilib.errors import UserError
from roilib.imageio import read_label_map

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

# value: label-map value; seed: (x, y) of one pixel of the component, to find it again.
Component = namedtuple("Component", "value area bbox seed")


class OpenSurfacesReader(SegmentDataset):
    def __init__(self, image_dir, label_dir, train=True, background=0, class_names=None,
                 num_classes=None, min_area=1):
        super().__init__(train)
        self.image_dir, self.label_dir = str(image_dir), str(label_dir)
        self.background = background
        self.class_names = _class_names(class_names, num_classes)
        self.category_ids = [v for v in range(len(self.class_names) + 1) if v != background][:len(self.class_names)]
        self.min_area = max(int(min_area), 1)
        self.missing_labels = 0
        self._components = []  # per segment: (value, seed), to rebuild its mask
        self._scan()
        self.index_segments()

    # ------------------------------------------------------------------ construction

    def _scan(self):
        for folder in (self.image_dir, self.label_dir):
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: folder not found")
        pairs = []
        for name in sorted(os.listdir(self.image_dir)):
            stem, extension = os.path.splitext(name)
            if extension.lower() not in IMAGE_EXTENSIONS:
                continue
            label_path = os.path.join(self.label_dir, stem + ".png")
            if not os.path.isfile(label_path):
                self.missing_labels += 1
                continue
            pairs.append((os.path.join(self.image_dir, name), label_path, stem))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            scans = pool.map(lambda pair: self._components_of(pair[1]), pairs)
            for (image_path, label_path, stem), components in zip(pairs, scans):
                if components:
                    self._add_image(image_path, label_path, stem, components)

    def _add_image(self, image_path, label_path, stem, components):
        image_index = len(self.images)
        self.images.append({"path": image_path, "label_path": label_path,
                            "id": int(stem) if stem.isdigit() else stem})
        for number, component in enumerate(components):
            self.segments.append(Segment(image_index, number, self.label_of(component.value),
                                         component.area, component.bbox))
            self._components.append((component.value, component.seed))

    def label_of(self, value):
        """Label of a non-background label-map value (its index among such values)."""
        return int(value) - (value > self.background)

    def _components_of(self, label_path):
        """One scan of a label map -> its components (by value, then raster order)."""
        label_map = read_label_map(label_path)
        counts = np.bincount(label_map.ravel())
        components = []
        for value in np.flatnonzero(counts):
            if value == self.background:
                continue
            if not 0 <= self.label_of(value) < self.num_classes:
                raise UserError(
                    f"{label_path}: label value {value} but only {self.num_classes} classes "
                    f"(background {self.background}); give class_names or num_classes")
            components += _value_components(label_map, value, self.min_area)
        return components

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
        value, (seed_x, seed_y) = self._components[segment_index]
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
        image_index = self.segments[segment_index].image_index
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
        return (f"{self.label_dir}: {len(self.images)} images, {len(self)} segments, "
                f"{self.num_classes} classes; images without a label map: "
                f"{self.missing_labels}")


def _class_names(class_names, num_classes):
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise UserError(f"num_classes {num_classes} but {len(class_names)} class names")
        return [str(name) for name in class_names]
    if num_classes is not None:
        return [f"class {i}" for i in range(num_classes)]
    return list(OPENSURFACES_CLASSES)


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
