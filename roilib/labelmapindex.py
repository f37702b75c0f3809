"""The index of a label-map folder as plain arrays (cached by roilib/indexcache.py): one
entry per map (its image's name, stem, stat row, content digest, shape, segments and
undeclared values), packed into arrays, unpacked into entries for an incremental rescan, and
checked before use (a cache is a file anyone can replace)."""
from collections import namedtuple

import numpy as np

from roilib.compactindex import (StringTable, check_boxes, check_lengths, check_offsets,
                                 check_range, check_schema)
from roilib.labelconvention import MAX_VALUE

# One label map in the index: its stat row, content digest, (height, width), its segments
# as rows of SEGMENT_COLUMNS, (value, pixels) rows of its undeclared values, and whether it
# could not be read (then no segment; kept so that a later start still counts it unrescanned).
MapEntry = namedtuple("MapEntry", "name stem stat digest shape segments undeclared unreadable")
SEGMENT_COLUMNS = ("number", "x", "y", "w", "h", "area", "value", "seed_x", "seed_y")


def known_entries(previous):
    """stem -> MapEntry of a previous index (empty without one)."""
    if previous is None:
        return {}
    names = StringTable.of(previous, "image_names")
    stems = StringTable.of(previous, "stems")
    bounds, others = previous["map_segments"], previous["map_undeclared"]
    return {stems[i]: MapEntry(names[i], stems[i], tuple(previous["map_stat"][i].tolist()),
                               int(previous["map_digest"][i]),
                               tuple(previous["map_shape"][i].tolist()),
                               previous["segments"][bounds[i]:bounds[i + 1]],
                               previous["undeclared"][others[i]:others[i + 1]],
                               bool(previous["map_unreadable"][i]))
            for i in range(len(stems))}


def pack_entries(entries, missing):
    """Index arrays of MapEntry items, in order."""
    bounds, others = (np.zeros(len(entries) + 1, np.int64) for _ in range(2))
    np.cumsum([len(e.segments) for e in entries], out=bounds[1:])
    np.cumsum([len(e.undeclared) for e in entries], out=others[1:])
    empty = np.zeros((0, len(SEGMENT_COLUMNS)), np.int64)
    return {**StringTable.build([e.name for e in entries]).arrays("image_names"),
            **StringTable.build([e.stem for e in entries]).arrays("stems"),
            "map_stat": np.array([e.stat for e in entries], np.int64).reshape(-1, 4),
            "map_digest": np.array([e.digest for e in entries], np.int64),
            "map_shape": np.array([e.shape for e in entries], np.int64).reshape(-1, 2),
            "map_unreadable": np.array([e.unreadable for e in entries], np.int64),
            "map_segments": bounds,
            "segments": np.concatenate([e.segments for e in entries] + [empty]),
            "map_undeclared": others,
            "undeclared": np.concatenate([e.undeclared for e in entries]
                                         + [np.zeros((0, 2), np.int64)]),
            "missing_labels": np.array(missing, np.int64)}


def check_label_map_index(arrays):
    """ValueError unless the arrays form an OpenSurfacesReader index: types, shapes, and
    every value that is later a position or a size within its range (a seed pixel outside
    its box or a huge value would hang or misread the reader)."""
    ints = np.int64
    check_schema(arrays, {
        "image_names_data": (np.uint8, (None,)), "image_names_offsets": (ints, (None,)),
        "stems_data": (np.uint8, (None,)), "stems_offsets": (ints, (None,)),
        "map_stat": (ints, (None, 4)), "map_digest": (ints, (None,)),
        "map_shape": (ints, (None, 2)), "map_segments": (ints, (None,)),
        "map_unreadable": (ints, (None,)),
        "segments": (ints, (None, len(SEGMENT_COLUMNS))), "missing_labels": (ints, ()),
        "map_undeclared": (ints, (None,)), "undeclared": (ints, (None, 2))})
    check_lengths(arrays, [("image_names_offsets", "stems_offsets", "map_segments",
                            "map_undeclared"),
                           ("map_stat", "map_digest", "map_shape", "map_unreadable")])
    check_offsets(arrays["image_names_offsets"], arrays["image_names_data"])
    check_offsets(arrays["stems_offsets"], arrays["stems_data"])
    check_offsets(arrays["map_segments"], arrays["segments"])
    check_offsets(arrays["map_undeclared"], arrays["undeclared"])
    if len(arrays["map_stat"]) + 1 != len(arrays["map_segments"]):
        raise ValueError("index arrays do not fit together")
    shape, table = arrays["map_shape"], arrays["segments"]
    check_range("map shape", shape, 1, np.iinfo(np.int32).max)
    check_range("map unreadable", arrays["map_unreadable"], 0, 1)
    of_map = np.repeat(np.arange(len(shape)), np.diff(arrays["map_segments"]))
    check_boxes(table[:, 1:5], shape[of_map, 0], shape[of_map, 1], table[:, 5])
    x, y, w, h = table[:, 1:5].T
    check_range("seed x", table[:, 7], x, x + w - 1)
    check_range("seed y", table[:, 8], y, y + h - 1)
    check_range("segment value", table[:, 6], 0, MAX_VALUE)
    check_range("missing_labels", arrays["missing_labels"], 0, np.inf)
    check_range("undeclared value", arrays["undeclared"][:, 0], 0, MAX_VALUE)
    check_range("undeclared pixels", arrays["undeclared"][:, 1], 1, np.inf)
