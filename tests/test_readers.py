"""CocoReader and OpenSurfacesReader: one sample format, exact segments, clear errors."""
import contextlib
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from CocoReader import CocoReader  # noqa: E402
from OpenSurfacesReader import OPENSURFACES_CLASSES, OpenSurfacesReader  # noqa: E402
from roilib.demo import CLASS_NAMES  # noqa: E402
from roilib.errors import UserError  # noqa: E402
from helpers import image_masks  # noqa: E402

# pycocotools trips numpy 2's __array__(copy=...) deprecation: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
SEED_DATA = Path(__file__).resolve().parents[2] / "shared" / "seed-data"


def _write(path, array):
    ok, data = cv2.imencode(Path(path).suffix, array)
    assert ok
    Path(path).write_bytes(data.tobytes())


def _uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = np.asfortranarray(mask).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _disk(height, width, centre, radius):
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return mask


# ----------------------------------------------------------------------------- COCO

@pytest.fixture()
def coco_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    red = np.zeros((60, 80, 3), np.uint8)
    red[..., 2] = 255  # BGR on disk: pure red
    _write(images / "red.png", red)
    _write(images / "gray.png", np.full((50, 40), 77, np.uint8))
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 10  # green, nearly transparent
    _write(images / "rgba.png", rgba)
    _write(images / "lonely.png", red)
    crowd_mask = _disk(30, 30, (15, 15), 6)
    ann = [
        dict(id=1, image_id=5, category_id=3, segmentation=[[10, 10, 40, 10, 40, 30, 10, 30]]),
        dict(id=2, image_id=5, category_id=17, segmentation=[
            [50, 5, 70, 5, 60, 20], [50, 40, 70, 40, 70, 55, 50, 55]]),
        dict(id=10, image_id=5, category_id=90, segmentation=[[2, 50, 6, 50, 4, 53]]),
        dict(id=3, image_id=2, category_id=90, segmentation=_compressed(
            _disk(50, 40, (20, 25), 9))),
        dict(id=4, image_id=2, category_id=3, segmentation=_uncompressed_rle(
            _disk(50, 40, (8, 8), 4))),
        dict(id=5, image_id=9, category_id=17, iscrowd=1,
             segmentation=_uncompressed_rle(crowd_mask)),
        dict(id=6, image_id=9, category_id=90, segmentation=[[1, 1, 5, 5]]),
        dict(id=7, image_id=9, category_id=3, segmentation=[
            [2, 2, 4, 4], [10, 10, 20, 10, 20, 20, 10, 20]]),
        dict(id=8, image_id=11, category_id=3, segmentation=[[1, 1, 9, 1, 9, 9]]),
        dict(id=9, image_id=12, category_id=17, segmentation=[[1, 1, 3, 3]]),
    ]
    for a in ann:
        a.setdefault("iscrowd", 0)
    coco = {
        "images": [dict(id=5, file_name="red.png", height=60, width=80),
                   dict(id=2, file_name="gray.png", height=50, width=40),
                   dict(id=9, file_name="rgba.png", height=30, width=30),
                   dict(id=11, file_name="missing.png", height=20, width=20),
                   dict(id=12, file_name="lonely.png", height=60, width=80)],
        "annotations": ann,
        "categories": [dict(id=90, name="ninety"), dict(id=3, name="three"),
                       dict(id=17, name="seventeen")],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return images, path


def _pycocotools(path):
    """pycocotools' own reading of an instances file: the reference for masks."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_coco_classes_segments_and_areas(coco_files):
    images, path = coco_files
    reader = CocoReader(images, path, train=False)
    coco = _pycocotools(path)
    assert reader.category_ids == [3, 17, 90]
    assert reader.class_names == ["three", "seventeen", "ninety"] and reader.num_classes == 3
    assert [image["id"] for image in reader.images] == [2, 5, 9]  # 11 missing, 12 unusable
    assert reader.missing_images == 1 and "missing image files: 1" in reader.summary()
    assert [s.segment_id for s in reader.segments] == [3, 4, 1, 2, 10, 7]
    assert reader.labels.tolist() == [2, 0, 0, 1, 2, 0]
    assert reader.image_segments == [[0, 1], [2, 3, 4], [5]]
    assert reader.skipped == {"crowd": 1, "degenerate": 2, "small": 0}
    for index, segment in enumerate(reader.segments):
        sample = reader[index]
        assert sample["mask"].sum() == sample["area"] == segment.area > 0
        assert sample["image_id"] == reader.images[segment.image_index]["id"]
        assert segment.bbox == cv2.boundingRect(sample["mask"])
        if segment.segment_id != 7:
            expected = coco.annToMask(coco.anns[segment.segment_id])
            assert (sample["mask"] == expected).all()
    # the 4-number part of annotation 7 is dropped, its square part kept
    square = mask_utils.decode(mask_utils.frPyObjects([[10, 10, 20, 10, 20, 20, 10, 20]],
                                                      30, 30))[:, :, 0]
    assert (reader[5]["mask"] == square).all()


def test_coco_image_channels(coco_files):
    reader = CocoReader(*coco_files)
    gray, red, rgba = (reader[i]["image"] for i in (0, 2, 5))
    for image in (gray, red, rgba):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (gray == 77).all()
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()  # RGB order
    assert (rgba[..., 1] == 200).all() and (rgba[..., [0, 2]] == 0).all()  # alpha dropped


def test_coco_crowd_and_min_area(coco_files):
    with_crowd = CocoReader(*coco_files, include_crowd=True)
    crowd = [i for i, s in enumerate(with_crowd.segments) if s.segment_id == 5]
    assert len(crowd) == 1 and with_crowd.labels[crowd[0]] == 1
    coco = _pycocotools(coco_files[1])
    assert with_crowd[crowd[0]]["area"] == coco.annToMask(coco.anns[5]).sum()
    small = CocoReader(*coco_files, min_area=20)
    assert 10 not in [s.segment_id for s in small.segments] and small.skipped["small"] == 1


def test_coco_errors(coco_files, tmp_path):
    images, path = coco_files
    with pytest.raises(UserError, match="nothere.json"):
        CocoReader(images, tmp_path / "nothere.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json.*JSON"):
        CocoReader(images, tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UserError, match="list.json"):
        CocoReader(images, tmp_path / "list.json")
    data = json.loads(path.read_text())
    data["annotations"][3]["segmentation"]["size"] = [10, 10]
    (tmp_path / "size.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="annotation 3"):
        CocoReader(images, tmp_path / "size.json")
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 4
    (tmp_path / "cat.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="category_id 4"):
        CocoReader(images, tmp_path / "cat.json")


# ----------------------------------------------------------------------------- label maps

def _label_map():
    """Value 1: two components; value 2: two squares touching at a corner (one component
    with 8-connectivity); value 3: an L shape; 0: background."""
    label_map = np.zeros((40, 50), np.uint8)
    label_map[2:6, 2:6] = 1
    label_map[30:35, 40:45] = 1
    label_map[22:25, 2:5] = 2
    label_map[25:28, 5:8] = 2
    label_map[10:20, 10:12] = 3
    label_map[18:20, 10:20] = 3
    return label_map


@pytest.fixture()
def label_files(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    _write(images / "a.png", np.full((40, 50, 3), 128, np.uint8))
    _write(labels / "a.png", _label_map())
    _write(images / "b.jpg", np.full((40, 50, 3), 128, np.uint8))  # no label map
    _write(images / "c.png", np.full((40, 50, 3), 128, np.uint8))
    _write(labels / "c.png", np.zeros((40, 50), np.uint8))  # background only
    return images, labels


def test_label_map_components(label_files):
    reader = OpenSurfacesReader(*label_files, num_classes=4, train=False)
    assert reader.missing_labels == 1 and [im["id"] for im in reader.images] == ["a"]
    label_map = _label_map()
    expected = []  # (label, area, bbox, mask) by value, then raster order
    for value in (1, 2, 3):
        count, ids, stats, _ = cv2.connectedComponentsWithStats(
            (label_map == value).astype(np.uint8), connectivity=8)
        for k in range(1, count):
            expected.append((value - 1, stats[k, 4], tuple(stats[k, :4]), ids == k))
    assert len(expected) == 4 == len(reader)
    assert [(s.label, s.area, s.bbox) for s in reader.segments] == \
        [(label, area, bbox) for label, area, bbox, _ in expected]
    assert [s.area for s in reader.segments] == [16, 25, 18, 36]
    masks = image_masks(reader, 0, label_map.shape)
    for index, (_, area, _, mask) in enumerate(expected):
        sample = reader[index]
        assert (sample["mask"] == mask).all() and (masks[index] == mask).all()
        assert sample["mask"].sum() == sample["area"] == area


def test_label_map_background_value_and_names(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "l").mkdir()
    label_map = np.full((20, 20), 255, np.uint8)
    label_map[2:5, 2:5] = 0
    label_map[10:15, 10:15] = 2
    _write(tmp_path / "i" / "x.jpg", np.zeros((20, 20, 3), np.uint8))
    _write(tmp_path / "l" / "x.png", label_map)
    reader = OpenSurfacesReader(tmp_path / "i", tmp_path / "l", background=255,
                                class_names=["zero", "one", "two"])
    assert reader.labels.tolist() == [0, 2] and reader.num_classes == 3
    assert [s.area for s in reader.segments] == [9, 25]
    assert len(OPENSURFACES_CLASSES) == OpenSurfacesReader(
        tmp_path / "i", tmp_path / "l", background=255).num_classes


def test_label_map_errors(label_files, tmp_path):
    # A value beyond the classes is counted and reported, never made a class.
    fewer = OpenSurfacesReader(*label_files, num_classes=2)
    assert fewer.undeclared == {3: int((_label_map() == 3).sum())} and set(fewer.labels) == {0, 1}
    assert f"3 ({fewer.undeclared[3]} px)" in fewer.summary()
    with pytest.raises(UserError):
        OpenSurfacesReader(*label_files, num_classes=5, class_names=["x"])
    images, labels = label_files
    _write(images / "a.png", np.zeros((10, 10, 3), np.uint8))  # no longer the map's size
    reader = OpenSurfacesReader(images, labels)
    with pytest.raises(UserError, match="a.png"):
        reader[0]


# ----------------------------------------------------------------------------- both

@pytest.fixture(scope="module")
def demo(make_demo_data):
    return make_demo_data(1, 6, 3)


def test_readers_agree_on_sample_format(demo):
    split = demo / "val"
    coco = CocoReader(split / "images", split / "instances.json")
    maps = OpenSurfacesReader(split / "images", split / "labels", class_names=CLASS_NAMES)
    assert coco.class_names == maps.class_names == CLASS_NAMES
    assert len(coco) == len(maps) > 0
    for index in range(len(coco)):
        one, other = coco[index], maps[index]
        assert one.keys() == other.keys() == {"image", "mask", "label", "area", "image_id",
                                              "segment_id"}
        for key in ("image", "mask"):
            assert one[key].dtype == other[key].dtype == np.uint8
            assert one[key].shape == other[key].shape
            assert (one[key] == other[key]).all()
        assert one["mask"].ndim == 2 and one["image"].shape == one["mask"].shape + (3,)
        for key in ("label", "area", "image_id"):
            assert type(one[key]) is type(other[key]) is int and one[key] == other[key]


# ----------------------------------------------------------------------------- real data

def test_real_opensurfaces_samples():
    folder = SEED_DATA / "opensurfaces-example" / "TrainVal_Set"
    if not folder.is_dir():
        pytest.skip(f"no seed data at {folder}")
    reader = OpenSurfacesReader(folder / "Images", folder / "Annotations", train=False)
    values = sorted({int(label) + 1 for label in reader.labels})  # label value = label + 1
    assert values == [3, 4, 9, 14, 16, 19, 22, 24, 26, 36]
    for image_index, image in enumerate(reader.images):
        segments = reader.image_segments[image_index]
        names = sorted({reader.class_names[reader.labels[i]] for i in segments})
        print(f"OpenSurfaces image {image['id']}: {len(segments)} segments ({', '.join(names)})")
    sample = reader[len(reader) - 1]
    assert sample["mask"].sum() == sample["area"] and sample["image"].shape[2] == 3
    assert reader.class_names[:4] == ["Brick", "Cardboard", "Carpet / rug", "Ceramic"]
