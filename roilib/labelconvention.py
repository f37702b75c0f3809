"""How a dataset's label maps are read: its convention, declared by the user, never guessed.

- ``background``: the value of unlabelled pixels (OpenSurfaces, ADE20K, VOC: 0), or None
  when every value is a class (CamVid: 0 is Sky);
- ``ignore``: values that are neither a class nor a region (VOC: 255, CamVid: 11);
- ``class_values``: the value of each class, in class order, where they are not contiguous
  (Cityscapes labelIds); by default the values in order, skipping background and ignore;
- ``label_names``: (image ending, label ending) where label files are named otherwise than
  image stem + ".png" (Cityscapes: ("_leftImg8bit.png", "_gtFine_labelIds.png")).
A value that is none of these is never made a class: its pixels are counted ("undeclared")
and reported.
"""
import os

import numpy as np

from roilib.errors import UserError

MAX_VALUE = 2 ** 16 - 1   # label maps are 8- or 16-bit PNGs


class LabelConvention:
    def __init__(self, count, background=0, ignore=(), class_values=None, label_names=None):
        """The convention of a dataset of `count` classes (OpenSurfacesReader's keywords)."""
        self.background = None if background is None else int(background)
        self.ignore = tuple(sorted({int(v) for v in _as_values(ignore)}))
        self.class_values = _class_values(class_values, count, {self.background, *self.ignore})
        self.image_end, self.label_end = label_names or (None, ".png")
        # value -> label, -1 for a value that is not a class
        self._lookup = np.full(max(self.class_values, default=-1) + 1, -1, np.int64)
        self._lookup[self.class_values] = np.arange(len(self.class_values))

    def as_dict(self):
        """The convention as plain data (stored in checkpoints, part of the cache key)."""
        return {"background": self.background, "ignore": list(self.ignore),
                "class_values": list(self.class_values),
                "label_names": None if self.image_end is None
                else [self.image_end, self.label_end]}

    def labels_of(self, values):
        """The label of each value (its index among ``class_values``), -1 for any other."""
        values = np.asarray(values, np.int64)
        inside = (values >= 0) & (values < len(self._lookup))
        labels = np.full(values.shape, -1, np.int64)
        labels[inside] = self._lookup[values[inside]]
        return labels

    def is_void(self, values):
        """Whether each value is the background or an ignore value."""
        void = [v for v in (self.background, *self.ignore) if v is not None]
        return np.isin(values, void)

    def split(self, counts):
        """A map's pixel count per value (np.bincount) -> (the class values present, rows of
        (value, pixels) of the values that are neither a class nor void)."""
        present = np.flatnonzero(counts)
        return self.split_values(present, counts[present])

    def split_values(self, values, pixels):
        """split() of the values present (ascending) and their pixel counts."""
        values, pixels = np.asarray(values, np.int64), np.asarray(pixels, np.int64)
        keep = ~self.is_void(values)
        values, pixels = values[keep], pixels[keep]
        is_class = self.labels_of(values) >= 0
        return values[is_class], np.stack([values[~is_class], pixels[~is_class]], 1)

    def stem_of(self, image_name, is_image):
        """The part of an image's name its label file is named from (None: not an image, or
        not named as ``label_names`` says)."""
        if self.image_end is None:
            return os.path.splitext(image_name)[0] if is_image(image_name) else None
        if image_name.endswith(self.image_end) and len(image_name) > len(self.image_end):
            return image_name[:-len(self.image_end)]
        return None


def total_undeclared(rows):
    """Rows of (value, pixels), several per value -> {value: pixels}, by value."""
    values, where = np.unique(rows[:, 0], return_inverse=True)
    pixels = np.zeros(len(values), np.int64)
    np.add.at(pixels, where.ravel(), rows[:, 1])
    return dict(zip(values.tolist(), pixels.tolist()))


def undeclared_warning(undeclared, how, shown=8):
    """The line saying which values were left out and `how` to declare them ("" if none)."""
    if not undeclared:
        return ""
    listed = ", ".join(f"{v} ({n} px)" for v, n in list(undeclared.items())[:shown])
    more = f", ... ({len(undeclared)} values)" if len(undeclared) > shown else ""
    return (f"warning: label values neither a class nor declared void, left out: "
            f"{listed}{more}; {how}")


def _as_values(values):
    """None, one value or several -> an iterable of values."""
    if values is None:
        return ()
    return (values,) if isinstance(values, (int, np.integer)) else values


def _class_values(values, count, void):
    """The label-map value of each of `count` classes: `values` checked, or by default every
    value in order but the `void` ones."""
    if values is None:
        return [v for v in range(count + len(void)) if v not in void][:count]
    values = [int(v) for v in values]
    if len(set(values)) != len(values) or void & set(values) or min(values, default=0) < 0:
        raise UserError(f"class values {values}: each once, >= 0, and none of them background "
                        f"or ignore ({', '.join(str(v) for v in sorted(void, key=str))})")
    if len(values) != count:
        raise UserError(f"{len(values)} class values for {count} class names")
    if max(values, default=0) > MAX_VALUE:   # also bounds the value -> label table
        raise UserError(f"class values up to {max(values)}: label maps hold values <= {MAX_VALUE} (16 bit)")
    return values
