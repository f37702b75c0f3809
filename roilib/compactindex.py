"""Read-only sequence views over a reader's index arrays.

A reader at real scale (COCO train2017: 860k segments) keeps its index in a few numpy arrays
instead of one Python object per segment: forked DataLoader workers then share it for good
(a Python object's refcount is written whenever it is touched, which copies its memory page
into every worker; a numpy array's data is never written). These views give the readers'
public API (``segments[i]`` -> Segment, ``images[i]["path"]``, ``image_segments[i]``) on top
of the arrays, building the small Python objects on demand.
"""
from collections.abc import Sequence

import numpy as np

from roilib.dataset import Segment


class _View(Sequence):
    """Common sequence behaviour: slices give lists, == compares item by item."""

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.item(i) for i in range(*item.indices(len(self)))]
        return self.item(_position(item, len(self)))

    def __eq__(self, other):
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self):
        return f"<{type(self).__name__} of {len(self)}>"


def _position(item, length):
    index = int(item)
    if not -length <= index < length:
        raise IndexError(f"index {item} out of range for {length} items")
    return index % length


class StringTable(_View):
    """Strings as one UTF-8 byte buffer plus offsets (one array, not n str objects)."""

    def __init__(self, data, offsets):
        self.data, self.offsets = data, offsets

    @classmethod
    def build(cls, strings):
        return cls.from_bytes([s.encode("utf-8", "surrogateescape") for s in strings])

    @classmethod
    def from_bytes(cls, chunks):
        offsets = np.zeros(len(chunks) + 1, np.int64)
        np.cumsum([len(c) for c in chunks], out=offsets[1:])
        return cls(np.frombuffer(b"".join(chunks), np.uint8), offsets)

    def raw(self, index):
        """Item ``index`` as bytes."""
        return self.data[self.offsets[index]:self.offsets[index + 1]].tobytes()

    def arrays(self, prefix):
        return {f"{prefix}_data": self.data, f"{prefix}_offsets": self.offsets}

    @classmethod
    def of(cls, arrays, prefix):
        return cls(arrays[f"{prefix}_data"], arrays[f"{prefix}_offsets"])

    def __len__(self):
        return len(self.offsets) - 1

    def item(self, index):
        return self.raw(index).decode("utf-8", "surrogateescape")


class SegmentTable(_View):
    """``Segment`` tuples on demand from per-segment arrays (bbox: int [n, 4])."""

    def __init__(self, image_index, segment_id, label, area, bbox):
        self.image_index, self.segment_id, self.label = image_index, segment_id, label
        self.area, self.bbox = area, bbox

    def __len__(self):
        return len(self.label)

    def item(self, index):
        return Segment(int(self.image_index[index]), int(self.segment_id[index]),
                       int(self.label[index]), int(self.area[index]),
                       tuple(int(v) for v in self.bbox[index]))


class ImageSegments(_View):
    """``image_segments[i]``: the segment indices of image i, as a list. Segments are
    grouped by image, so one array of start positions says it all."""

    def __init__(self, image_of_segment, image_count):
        self.starts = np.searchsorted(image_of_segment, np.arange(image_count + 1))

    def __len__(self):
        return len(self.starts) - 1

    def item(self, index):
        return list(range(int(self.starts[index]), int(self.starts[index + 1])))


def adopt_segments(dataset, image_count, image_index, segment_id, label, area, bbox):
    """Set a dataset's ``segments``, ``labels``, ``image_of_segment`` and
    ``image_segments`` from arrays (segments grouped by image, in image order)."""
    image_index = np.asarray(image_index, np.int64)
    label = np.asarray(label, np.int64)
    if image_index.size and (np.diff(image_index) < 0).any():
        raise ValueError("segments are not grouped by image")
    if label.size and not 0 <= label.min() <= label.max() < dataset.num_classes:
        raise ValueError("segment label outside [0, num_classes)")
    dataset.segments = SegmentTable(image_index, segment_id, label, area, bbox)
    dataset.labels = label
    dataset.image_of_segment = image_index
    dataset.image_segments = ImageSegments(image_index, image_count)


def check_lengths(arrays, groups):
    """ValueError unless each group of arrays (names) has one length (an index whose parts
    disagree is damaged, whatever its key says)."""
    for names in groups:
        lengths = {len(arrays[name]) for name in names}
        if len(lengths) != 1:
            raise ValueError(f"index arrays {', '.join(names)} differ in length")


def check_offsets(offsets, data):
    """ValueError unless ``offsets`` cut ``data`` into consecutive pieces."""
    if offsets.ndim != 1 or offsets.size == 0 or offsets[0] != 0 or \
            offsets[-1] != len(data) or (np.diff(offsets) < 0).any():
        raise ValueError("index offsets do not fit their data")


def check_schema(arrays, schema):
    """ValueError unless each array named in ``schema`` is there with its dtype and shape
    (``(dtype, shape)``, None in a shape: any length): an index read from a file is checked
    before any of its values is used as a size or a position."""
    for name, (dtype, shape) in schema.items():
        array = arrays.get(name)
        if not isinstance(array, np.ndarray) or array.dtype != dtype or \
                array.ndim != len(shape) or \
                any(want is not None and got != want for got, want in zip(array.shape, shape)):
            raise ValueError(f"index array {name} is not {np.dtype(dtype).name} of shape "
                             f"{shape}")


def check_range(name, values, low, high):
    """ValueError unless every value lies in [low, high] (bounds: scalars or arrays)."""
    if values.size and not ((low <= values) & (values <= high)).all():
        raise ValueError(f"index array {name} out of range")


def check_boxes(bbox, heights, widths, area):
    """ValueError unless each box (x, y, w, h) is non-empty, inside its image (heights and
    widths per box) and holds its area."""
    x, y, w, h = bbox.T
    check_range("bbox size", np.minimum(w, h), 1, np.inf)
    check_range("bbox x", x, 0, widths - w)
    check_range("bbox y", y, 0, heights - h)
    check_range("area", area, 1, w * h)
