"""Readers at scale: the compact index gives the same samples as before, its disk cache is
trusted only when it fits, and annotations that are wrong the ways real files are wrong are
dropped and counted."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import CocoReader as coco_reader_module  # noqa: E402
from CocoReader import CocoReader  # noqa: E402
from LabelMapReader import LabelMapReader  # noqa: E402
from roilib.segmentation import checked  # noqa: E402
from roilib.crops import crop_sample  # noqa: E402
from roilib.dataset import Segment, make_sample  # noqa: E402
from roilib.demo import CLASS_NAMES, make_demo  # noqa: E402
from roilib.imageio import read_image  # noqa: E402
from roilib.indexcache import CACHE_ENV  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
ROOT = Path(__file__).resolve().parents[1]
CROPS = [(224, 224), (96, 160), (64, 320)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "demo"
    make_demo(root, seed=7, n_train=10, n_val=2)
    return root / "train"


@pytest.fixture(autouse=True)
def cache_folder(tmp_path, monkeypatch):
    """Each test's caches in its own folder (the default, beside the data, is tested too)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _pycocotools(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _crops(reader, index, image, mask, segment, image_id):
    """Training crops of one segment the way ``__getitem__`` makes them, from a reference
    (image, mask): the reader's crop must equal them bit for bit."""
    sample = make_sample(image, mask, segment, image_id)
    for number, (height, width) in enumerate(CROPS):
        seed = 7919 * index + number
        rng = np.random.default_rng(seed)
        flip = rng.random() < 0.5
        expected = crop_sample(sample, height, width, rng, flip, reader.jitter)
        got = reader[(index, height, width, seed)]
        assert (got["image"] == expected["image"]).all() and \
            (got["mask"] == expected["mask"]).all()
        assert got["label"] == expected["label"] and got["area"] == expected["area"]


# ----------------------------------------------------------------------------- same samples

@pytest.mark.parametrize("start", ["cold", "warm"])
def test_coco_crops_match_pycocotools(demo, start):
    """Masks re-derived with pycocotools itself (ordering: images by id, annotations by id),
    cropped with the same seeds, equal the reader's crops bit for bit, cold and warm."""
    files = (demo / "images", demo / "instances.json")
    reader = CocoReader(*files)
    if start == "warm":
        reader = CocoReader(*files)
        assert reader.invalid == {"bad polygon": 0, "bad RLE": 0, "unknown image": 0}
    coco = _pycocotools(files[1])
    expected = [(image_id, ann) for image_id in sorted(coco.imgs)
                for ann in sorted(coco.imgToAnns[image_id], key=lambda a: a["id"])]
    assert len(reader) == len(expected) > 20
    for index, (image_id, ann) in enumerate(expected):
        mask = coco.annToMask(ann)
        record = coco.imgs[image_id]
        image = read_image(files[0] / record["file_name"])
        box = tuple(int(round(v)) for v in mask_utils.toBbox(coco.annToRLE(ann)))
        segment = Segment(reader.segments[index].image_index, ann["id"],
                          sorted(coco.cats).index(ann["category_id"]), int(mask.sum()), box)
        assert reader.segments[index] == segment
        assert reader.images[segment.image_index]["id"] == image_id
        _crops(reader, index, image, mask, segment, image_id)


@pytest.mark.parametrize("start", ["cold", "warm"])
def test_label_map_crops_match_connected_components(demo, start):
    files = (demo / "images", demo / "labels")
    reader = LabelMapReader(*files, class_names=CLASS_NAMES)
    if start == "warm":
        reader = LabelMapReader(*files, class_names=CLASS_NAMES)
    index = 0
    for image_index, record in enumerate(reader.images):
        label_map = cv2.imread(record["label_path"], cv2.IMREAD_UNCHANGED)
        image = read_image(record["path"])
        for value in np.unique(label_map[label_map > 0]):
            count, ids, stats, _ = cv2.connectedComponentsWithStats(
                (label_map == value).astype(np.uint8), connectivity=8)
            for k in range(1, count):
                segment = Segment(image_index, reader.segments[index].segment_id,
                                  int(value) - 1, int(stats[k, 4]), tuple(stats[k, :4]))
                assert reader.segments[index] == segment
                _crops(reader, index, image, (ids == k).astype(np.uint8), segment,
                       record["id"])
                index += 1
    assert index == len(reader) > 20


def test_segments_of_an_image_by_annotation_id_whatever_their_kind(tmp_path):
    """Polygons and RLEs of one image interleave by id, as pycocotools' order has them."""
    blob = np.zeros((60, 80), np.uint8)
    blob[40:50, 5:25] = 1
    files = _coco_file(tmp_path, [
        {"id": 150, "segmentation": [[50, 5, 70, 5, 60, 20]]},
        {"id": 50, "iscrowd": 1, "segmentation": {"size": [60, 80],
                                                   "counts": _uncompressed(blob)}},
        {"id": 120, "segmentation": {"size": [60, 80], "counts": _rle_counts(1 - blob)}}])
    reader = CocoReader(*files, include_crowd=True)
    assert [s.segment_id for s in reader.segments] == [50, 100, 120, 150]
    coco = _pycocotools(files[1])
    for index, segment in enumerate(reader.segments):
        assert (reader[index]["mask"] == coco.annToMask(coco.anns[segment.segment_id])).all()


def _uncompressed(mask):
    flat = mask.ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    return ([0] if flat[0] else []) + np.diff(bounds).tolist()


def test_index_views(demo):
    reader = CocoReader(demo / "images", demo / "instances.json")
    assert isinstance(reader.segments[0], Segment) and reader.segments[-1] == \
        reader.segments[len(reader) - 1] and reader.segments[:2] == list(reader.segments)[:2]
    assert all(type(v) is int for v in reader.segments[0][:4])
    with pytest.raises(IndexError):
        reader.segments[len(reader)]
    assert sum(len(s) for s in reader.image_segments) == len(reader)
    for image_index, segments in enumerate(reader.image_segments):
        assert (reader.image_of_segment[segments] == image_index).all()
    record = reader.images[0]
    assert set(record) == {"path", "id", "file_name", "height", "width"}
    assert os.path.isfile(record["path"]) and type(record["id"]) is int
    assert not hasattr(reader, "coco")  # pycocotools' object is gone after indexing


# ----------------------------------------------------------------------------- the cache

def test_cache_is_used_and_rebuilt_when_its_key_changes(demo, tmp_path, cache_folder,
                                                        monkeypatch):
    split = tmp_path / "split"
    os.symlink(demo / "images", tmp_path / "images")
    split.mkdir()
    annotations = split / "instances.json"
    annotations.write_bytes((demo / "instances.json").read_bytes())
    builds = []
    real_build = coco_reader_module.build_coco_index
    monkeypatch.setattr(coco_reader_module, "build_coco_index",
                        lambda *args: builds.append(args) or real_build(*args))
    first = CocoReader(tmp_path / "images", annotations)
    again = CocoReader(tmp_path / "images", annotations)
    assert len(builds) == 1 and len(first) == len(again)
    CocoReader(tmp_path / "images", annotations, min_area=50)  # other settings: own file
    assert len(builds) == 2 and len(list(cache_folder.glob("*.npz"))) == 2
    os.utime(annotations, ns=(0, 10 ** 18))  # touched: a new mtime, the same content
    assert len(CocoReader(tmp_path / "images", annotations)) == len(first)
    assert len(builds) == 2
    data = json.loads(annotations.read_text())
    data["annotations"] = data["annotations"][:5]
    annotations.write_text(json.dumps(data))
    assert len(CocoReader(tmp_path / "images", annotations)) == 5 and len(builds) == 3


def test_missing_images_are_checked_at_every_start(demo, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(os.listdir(demo / "images"))
    for name in names:
        os.link(demo / "images" / name, images / name)
    full = CocoReader(images, demo / "instances.json")
    os.remove(images / names[0])
    reader = CocoReader(images, demo / "instances.json")  # from the cache
    assert reader.missing_images == 1 and len(reader.images) == len(full.images) - 1
    gone = full.image_segments[0]
    assert len(reader) == len(full) - len(gone)
    assert reader.segments[0].bbox == full.segments[len(gone)].bbox
    assert reader.segments[0].image_index == 0
    assert (reader[0]["mask"] == full[len(gone)]["mask"]).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "inconsistent"])
def test_damaged_or_foreign_cache_is_rebuilt_with_one_line(demo, cache_folder, capfd,
                                                           damage):
    files = (demo / "images", demo / "instances.json")
    expected = [tuple(s) for s in CocoReader(*files).segments]
    [cache] = cache_folder.glob("*.npz")
    if damage == "garbage":
        cache.write_bytes(b"not a zip file at all")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:len(cache.read_bytes()) // 2])
    elif damage == "foreign":
        np.savez(cache, __key__=np.frombuffer(b'{"format": "other"}', np.uint8))
    else:  # the right key, arrays that do not fit together
        with np.load(cache) as data:
            arrays = dict(data)
        arrays["segment_id"] = arrays["segment_id"][:-1]
        with open(cache, "wb") as file:
            np.savez(file, **arrays)
    capfd.readouterr()
    reader = CocoReader(*files)
    err = capfd.readouterr().err
    assert [tuple(s) for s in reader.segments] == expected
    assert len(err.strip().splitlines()) == 1 and "rebuilding" in err and str(cache) in err
    capfd.readouterr()
    CocoReader(*files)  # rewritten: no notice
    assert capfd.readouterr().err == ""


def test_default_cache_beside_the_data_or_home_when_read_only(demo, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "instances.json").write_bytes((demo / "instances.json").read_bytes())
    CocoReader(demo / "images", dataset / "instances.json")
    assert len(list((dataset / ".cache").glob("instances.json.coco-*.npz"))) == 1
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "instances.json").write_bytes((demo / "instances.json").read_bytes())
    readonly.chmod(0o555)
    try:
        reader = CocoReader(demo / "images", readonly / "instances.json")
    finally:
        readonly.chmod(0o755)
    assert sorted(os.listdir(readonly)) == ["instances.json"]  # nothing written there
    home = tmp_path / "home" / ".cache" / "roi-attention"
    assert len(list(home.glob("instances.json.coco-*.npz"))) == 1 and len(reader) > 0


def test_label_map_cache_follows_the_folders(demo, tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in sorted(os.listdir(demo / "labels"))[:3]:
        os.link(demo / "labels" / name, labels / name)
        os.link(demo / "images" / name, images / name)
    first = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    label_map = cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED)
    os.remove(labels / name)
    label_map[:10, :10] = 1  # a new component: the map changes size and mtime
    cv2.imwrite(str(labels / name), label_map)
    changed = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert len(changed) != len(first)
    os.remove(labels / name)
    fewer = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert fewer.missing_labels == 1 and len(fewer.images) == 2


def test_one_process_builds_the_others_wait_and_read(demo, tmp_path):
    """Three processes start at once on a cold cache (torchrun ranks): one builds."""
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "import CocoReader as m; real = m.build_coco_index;"
        "m.build_coco_index = lambda *a: (print('BUILT'), time.sleep(1), real(*a))[2];"
        "r = m.CocoReader(sys.argv[2], sys.argv[3]); print(len(r), r.summary())")
    env = dict(os.environ, **{CACHE_ENV: str(tmp_path / "shared-cache")})
    command = [sys.executable, "-c", script, str(ROOT), str(demo / "images"),
               str(demo / "instances.json")]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sum(out.count("BUILT") for out in outputs) == 1
    assert len({out.replace("BUILT\n", "") for out in outputs}) == 1


# ----------------------------------------------------------------------------- bad annotations

def _coco_file(tmp_path, annotations, images=None):
    """A small instances file over one 60x80 image (written) with these annotations."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / "a.png"), np.full((60, 80, 3), 90, np.uint8))
    square = [10, 10, 30, 10, 30, 30, 10, 30]
    data = {"images": images or [{"id": 1, "file_name": "a.png", "height": 60, "width": 80}],
            "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
            "annotations": [{"id": 100, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "segmentation": [square]}]
            + [dict({"image_id": 1, "category_id": 2, "iscrowd": 0}, **a) for a in annotations]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # NaN and Infinity as JSON allows them (Python's)
    return folder, path


def _rle_counts(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return rle["counts"].decode()


@pytest.mark.parametrize("coordinate", [float("nan"), 1e9, -1e9, float("inf"), "7", None])
def test_polygon_with_absurd_coordinate_is_dropped_and_counted(tmp_path, coordinate):
    """pycocotools would allocate ~23 GB for 1e9: the polygon never reaches it."""
    bad = [40, 40, 60, 40, coordinate, 55]
    reader = CocoReader(*_coco_file(tmp_path, [{"id": 7, "segmentation": [bad]}]))
    assert len(reader) == 1 and reader.invalid["bad polygon"] == 1
    assert list(reader.invalid_ids["bad polygon"]) == [7]
    assert "invalid annotations dropped: 1 bad polygon (id 7)" in reader.summary()


def test_polygon_just_outside_the_image_is_kept(tmp_path):
    reader = CocoReader(*_coco_file(tmp_path, [
        {"id": 7, "segmentation": [[-3.5, -2, 85, 0, 82.5, 64]]}]))
    assert len(reader) == 2 and reader.invalid["bad polygon"] == 0


@pytest.mark.parametrize("counts", [[100, 50], [-10, 4810], [4800, 10, -10], [1.5, 4798.5]])
def test_uncompressed_rle_that_does_not_cover_the_image_is_dropped(tmp_path, counts):
    reader = CocoReader(*_coco_file(tmp_path, [
        {"id": 8, "segmentation": {"size": [60, 80], "counts": counts}},
        {"id": 9, "segmentation": {"size": [60, 80], "counts": [1000, 200, 3600]}}]))
    assert [s.segment_id for s in reader.segments] == [9, 100]
    assert reader.invalid["bad RLE"] == 1 and "1 bad RLE (id 8)" in reader.summary()
    assert reader[0]["mask"].sum() == 200


def test_invalid_compressed_rle_is_dropped_and_valid_ones_kept(tmp_path):
    disk = np.zeros((60, 80), np.uint8)
    cv2.circle(disk, (40, 30), 12, 1, -1)
    good = _rle_counts(disk)
    assert checked({"size": [60, 80], "counts": good}, 60, 80)["counts"] == good.encode()
    bad = {"cut off": good[:-1] + "h",  # continuation bit on the last character
           "wrong total": _rle_counts(disk[:, :40]),
           "not RLE characters": "\x01\x02zz~",
           "non-ASCII": good + "é"}
    annotations = [{"id": 20 + n, "segmentation": {"size": [60, 80], "counts": counts}}
                   for n, counts in enumerate(bad.values())]
    annotations.append({"id": 30, "segmentation": {"size": [60, 80], "counts": good}})
    reader = CocoReader(*_coco_file(tmp_path, annotations))
    assert reader.invalid["bad RLE"] == len(bad)
    assert sorted(reader.invalid_ids["bad RLE"]) == [20, 21, 22, 23]
    index = [s.segment_id for s in reader.segments].index(30)
    assert (reader[index]["mask"] == disk).all()


def test_duplicate_annotation_ids_keep_their_own_masks(tmp_path):
    """pycocotools keys annotations by id: both would get the last one's mask."""
    left, right = [5, 5, 20, 5, 20, 20, 5, 20], [50, 30, 70, 30, 70, 50, 50, 50]
    reader = CocoReader(*_coco_file(tmp_path, [
        {"id": 5, "category_id": 1, "segmentation": [left]},
        {"id": 5, "category_id": 2, "segmentation": [right]}]))
    first, second = reader[0], reader[1]
    assert first["segment_id"] == second["segment_id"] == 5
    assert (first["label"], second["label"]) == (0, 1)  # file order among equal ids
    assert cv2.boundingRect(first["mask"])[0] == 5 and cv2.boundingRect(second["mask"])[0] == 50


def test_annotation_of_an_unknown_image_is_counted(tmp_path):
    reader = CocoReader(*_coco_file(tmp_path, [
        {"id": 40, "image_id": 99, "segmentation": [[1, 1, 9, 1, 9, 9]]},
        {"id": 41, "image_id": 98, "segmentation": [[1, 1, 9, 1, 9, 9]]}]))
    assert len(reader) == 1 and reader.invalid["unknown image"] == 2
    assert sorted(reader.invalid_ids["unknown image"]) == [40, 41]
    assert "2 unknown image (ids " in reader.summary()


# ----------------------------------------------------------------------------- label maps

def test_palette_label_map_gives_indices_and_ignore_value(tmp_path):
    """PASCAL VOC: a palette PNG, 0 = background, 255 = 'void' border to ignore."""
    from PIL import Image
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    values = np.zeros((30, 40), np.uint8)
    values[2:10, 2:10] = 1
    values[15:25, 20:35] = 15
    values[14, 19:36] = 255  # void border
    palette = Image.fromarray(values, mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [64, 128, 200] * 254)
    palette.save(tmp_path / "labels" / "x.png")
    cv2.imwrite(str(tmp_path / "images" / "x.jpg"), np.zeros((30, 40, 3), np.uint8))
    assert cv2.imread(str(tmp_path / "labels" / "x.png")).ndim == 3  # cv2: colours
    reader = LabelMapReader(tmp_path / "images", tmp_path / "labels", num_classes=20,
                                ignore=255)
    assert reader.labels.tolist() == [0, 14] and [s.area for s in reader.segments] == [64, 150]
    assert reader.category_ids[:2] == [1, 2] and len(reader.category_ids) == 20
    assert (reader[1]["mask"] == (values == 15)).all()
    undeclared = LabelMapReader(tmp_path / "images", tmp_path / "labels", num_classes=20)
    assert undeclared.undeclared == {255: 17} and undeclared.labels.tolist() == [0, 14]


# ----------------------------------------------------------------------------- crafted caches

def _save_npz(path, arrays, huge=None):
    """An uncompressed .npz of ``arrays`` (key first, as the cache writes it); ``huge``: one
    member whose header claims 2**40 rows while holding 8 bytes."""
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            if name == huge:
                np.lib.format.write_array_header_1_0(buffer, {
                    "descr": "<i8", "fortran_order": False, "shape": (2 ** 40,) +
                    array.shape[1:]})
                buffer.write(b"\0" * 8)
            else:
                np.lib.format.write_array(buffer, np.asarray(array))
            archive.writestr(name + ".npy", buffer.getvalue())


def _set(name, change):
    def edit(arrays):
        arrays[name] = change(arrays[name].copy())
    return edit


def _cell(row, column, value):
    def change(array):
        array[row, column] = value
        return array
    return change


def _first(value):
    def change(array):
        array[0] = value
        return array
    return change


def _undeclared(rows):
    """The first map's undeclared rows replaced by ``rows`` (value, pixels)."""
    def edit(arrays):
        arrays["undeclared"] = np.array(rows, np.int64).reshape(-1, 2)
        arrays["map_undeclared"] = np.minimum(np.arange(len(arrays["map_undeclared"])),
                                              len(rows))
    return edit


# (reader, case) -> how the arrays of a valid cache are changed; the key stays right, so
# only the check of the arrays themselves can catch it.
CRAFTED = {
    ("labelmap", "huge header"): "segments",
    ("labelmap", "float arrays"): _set("segments", lambda a: a.astype(np.float64)),
    ("labelmap", "label out of range"): _set("segments", _cell(0, 6, 200)),
    ("labelmap", "background value"): _set("segments", _cell(0, 6, 0)),
    ("labelmap", "seed outside the image"): _set("segments", _cell(0, 7, 10 ** 6)),
    ("labelmap", "seed outside its box"): _set("segments", _cell(0, 8, -1)),
    ("labelmap", "huge segment value"): _set("segments", _cell(0, 6, 2 ** 40)),
    ("labelmap", "box outside the map"): _set("segments", _cell(0, 3, 10 ** 5)),
    ("labelmap", "bad offsets"): _set("map_segments", lambda a: a[::-1].copy()),
    ("labelmap", "offsets beyond the buffer"): _set("stems_offsets", _first(-5)),
    ("labelmap", "wrong shape"): _set("segments", lambda a: a[:, :8].copy()),
    ("labelmap", "undeclared value a class"): _undeclared([[1, 5]]),
    ("labelmap", "undeclared value the background"): _undeclared([[0, 5]]),
    ("labelmap", "undeclared value huge"): _undeclared([[2 ** 40, 5]]),
    ("labelmap", "undeclared pixels none"): _undeclared([[200, 0]]),
    ("labelmap", "undeclared offsets beyond the buffer"): _set("map_undeclared", lambda a: a + 3),
    ("labelmap", "undeclared rows of 3"): _set("undeclared", lambda a: np.zeros((0, 3), np.int64)),
    ("coco", "huge header"): "rle_data",
    ("coco", "float arrays"): _set("segment_bbox", lambda a: a.astype(np.float32)),
    ("coco", "label out of range"): _set("segment_label", _first(80)),
    ("coco", "box outside the image"): _set("segment_bbox", _cell(0, 0, 10 ** 6)),
    ("coco", "huge area"): _set("segment_area", _first(2 ** 62)),
    ("coco", "bad offsets"): _set("rle_offsets", _first(7)),
    ("coco", "offsets beyond the buffer"): _set("file_names_offsets", lambda a: a * 1000),
    ("coco", "RLE string cut off"): _set("rle_data", lambda a: np.where(a == a[-1], 111, a)
                                         .astype(np.uint8)),
    ("coco", "segments out of image order"): _set("segment_image", lambda a: a[::-1].copy()),
}


def _open_reader(kind, demo):
    if kind == "coco":
        return CocoReader(demo / "images", demo / "instances.json")
    return LabelMapReader(demo / "images", demo / "labels", class_names=CLASS_NAMES)


@pytest.mark.parametrize("kind, case", list(CRAFTED))
def test_crafted_cache_is_rebuilt_with_one_line(demo, cache_folder, capfd, kind, case):
    """A cache is a file anyone can replace: what its arrays say is checked before use."""
    expected = [tuple(s) for s in _open_reader(kind, demo).segments]
    [cache] = cache_folder.glob("*.npz")
    with np.load(cache) as data:
        arrays = dict(data)
    craft = CRAFTED[kind, case]
    if isinstance(craft, str):
        _save_npz(cache, arrays, huge=craft)
    else:
        craft(arrays)
        _save_npz(cache, arrays)
    capfd.readouterr()
    reader = _open_reader(kind, demo)
    err = capfd.readouterr().err
    assert [tuple(s) for s in reader.segments] == expected
    assert len(err.strip().splitlines()) == 1 and "damaged index cache" in err and \
        "rebuilding" in err and str(cache) in err


def test_cache_variable_naming_a_file_is_refused(demo, tmp_path, monkeypatch):
    from roilib.errors import UserError
    target = tmp_path / "a-file"
    target.write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(target))
    with pytest.raises(UserError, match=f"{CACHE_ENV}=.*a-file names a file, not a folder"):
        CocoReader(demo / "images", demo / "instances.json")
    assert target.read_text() == "x"


# ----------------------------------------------------------------------------- stale caches

def _copy_label_maps(demo, tmp_path, count=4):
    """A small label-map dataset whose maps are written uncompressed: an edit of their
    pixels keeps their size to the byte."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in sorted(os.listdir(demo / "labels"))[:count]:
        os.link(demo / "images" / name, images / name)
        label_map = cv2.imread(str(demo / "labels" / name), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(labels / name), label_map, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    return images, labels


def _edit_keeping_size_and_mtime(path, edit):
    before = os.stat(path)
    edit(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _count_scans(monkeypatch):
    import LabelMapReader as module
    scanned = []
    real = module.read_label_map
    monkeypatch.setattr(module, "read_label_map",
                        lambda path: scanned.append(os.path.basename(path)) or real(path))
    return scanned


def test_label_map_edited_in_place_with_its_mtime_restored_is_rescanned_alone(
        demo, tmp_path, monkeypatch):
    """rsync -t or a restore from backup keeps size and mtime: ctime and a content digest
    still tell; only that map is scanned again, the others keep their entries."""
    images, labels = _copy_label_maps(demo, tmp_path)
    first = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    name = sorted(os.listdir(labels))[1]
    old_map = cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED)
    present = set(np.unique(old_map).tolist())
    value = min(present - {0})
    new_value = min(set(range(1, len(CLASS_NAMES) + 1)) - present)

    def recolour(path):  # one class's pixels become another class: same size to the byte
        new_map = old_map.copy()
        new_map[old_map == value] = new_value
        cv2.imwrite(str(path), new_map, [cv2.IMWRITE_PNG_COMPRESSION, 0])

    _edit_keeping_size_and_mtime(labels / name, recolour)
    scanned = _count_scans(monkeypatch)
    changed = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert scanned == [name]
    image = [r["label_path"] for r in changed.images].index(str(labels / name))
    before = first.labels[first.image_segments[image]].tolist()
    after = changed.labels[changed.image_segments[image]].tolist()
    assert sorted(after) == sorted(new_value - 1 if label == value - 1 else label
                                   for label in before) != sorted(before)
    monkeypatch.setenv(CACHE_ENV, "off")
    fresh = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert [tuple(s) for s in fresh.segments] == [tuple(s) for s in changed.segments]
    label_map = cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED)
    pieces = changed.box_masks(changed.image_segments[image], label_map.shape)
    for index, piece in zip(changed.image_segments[image], pieces):
        height, width = piece.mask.shape
        region = label_map[piece.y:piece.y + height, piece.x:piece.x + width]
        assert (region[piece.mask > 0] == changed.labels[index] + 1).all()


def test_touched_or_added_label_map_keeps_the_other_entries(demo, tmp_path, monkeypatch):
    images, labels = _copy_label_maps(demo, tmp_path)
    first = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    name = sorted(os.listdir(labels))[0]
    os.utime(labels / name, ns=(0, 10 ** 18))  # a touch: stat changes, content does not
    scanned = _count_scans(monkeypatch)
    touched = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert scanned == [] and [tuple(s) for s in touched.segments] == \
        [tuple(s) for s in first.segments]
    extra = sorted(os.listdir(demo / "labels"))[5]
    os.link(demo / "images" / extra, images / extra)
    os.link(demo / "labels" / extra, labels / extra)
    grown = LabelMapReader(images, labels, class_names=CLASS_NAMES)
    assert scanned == [extra] and len(grown.images) == len(first.images) + 1


def _undeclared_pixels(labels, classes):
    """{value: pixels} of the values above 0 that are not among the first `classes`, counted
    over the maps on disk."""
    counts = sum(np.bincount(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
                 for path in sorted(labels.iterdir()))
    return {v: int(counts[v]) for v in np.flatnonzero(counts) if v > classes}


def test_undeclared_counts_survive_the_incremental_index(demo, tmp_path, monkeypatch):
    """They are stored per map: a map added, or one recoloured in place, is scanned alone and
    the counts are still those of every map on disk."""
    images, labels = _copy_label_maps(demo, tmp_path)
    few = CLASS_NAMES[:3]  # values 4.. are neither a class nor void
    first = LabelMapReader(images, labels, class_names=few)
    assert first.undeclared == _undeclared_pixels(labels, 3) != {}
    extra = sorted(os.listdir(demo / "labels"))[5]
    os.link(demo / "images" / extra, images / extra)
    os.link(demo / "labels" / extra, labels / extra)
    name = sorted(os.listdir(labels))[0]
    old_map = cv2.imread(str(labels / name), cv2.IMREAD_UNCHANGED)
    _edit_keeping_size_and_mtime(labels / name, lambda path: cv2.imwrite(
        str(path), np.where(old_map > 3, 200, old_map).astype(np.uint8),
        [cv2.IMWRITE_PNG_COMPRESSION, 0]))
    scanned = _count_scans(monkeypatch)
    changed = LabelMapReader(images, labels, class_names=few)
    assert sorted(scanned) == sorted([name, extra])
    assert changed.undeclared == _undeclared_pixels(labels, 3) != first.undeclared
    assert 200 in changed.undeclared and "200 (" in changed.summary()


def test_coco_file_edited_in_place_with_its_mtime_restored_is_read_again(tmp_path):
    files = _coco_file(tmp_path, [{"id": 7, "segmentation": [[40, 40, 60, 40, 50, 55]]}])
    assert CocoReader(*files).labels.tolist() == [1, 0]  # ids 7, 100

    def relabel(path):  # category 2 -> 1: the same number of bytes
        text = path.read_text()
        path.write_text(text.replace('"category_id": 2', '"category_id": 1'))

    _edit_keeping_size_and_mtime(files[1], relabel)
    assert CocoReader(*files).labels.tolist() == [0, 0]


# ----------------------------------------------------------------------------- messages

def test_degenerate_annotations_are_named_by_id_with_their_reason(tmp_path):
    reader = CocoReader(*_coco_file(tmp_path, [
        {"id": 11, "segmentation": [[1, 2, 3, 4]]},
        {"id": 12, "segmentation": []},
        {"id": 13, "segmentation": [[1, 2, 3, 4, 5, 6, 7]]}]))
    assert reader.skipped["degenerate"] == 3 and len(reader) == 1
    summary = reader.summary()
    assert "3 degenerate" in summary
    assert "(ids 11, 12: no polygon of 3 or more points; id 13: polygon with an odd number " \
        "of coordinates)" in summary


@pytest.mark.parametrize("form", ["dict", "list of dicts", "dict beside a polygon"])
def test_kwcoco_dict_polygon_is_named_never_read(tmp_path, form):
    """kwcoco writes {"exterior": [[x, y], ...], "interiors": [...]}: not COCO."""
    kwcoco = {"exterior": [[40, 40], [60, 40], [50, 55]], "interiors": []}
    segmentation = {"dict": kwcoco, "list of dicts": [kwcoco],
                    "dict beside a polygon": [[40, 40, 60, 40, 50, 55], kwcoco]}[form]
    files = _coco_file(tmp_path, [{"id": 21 + n, "segmentation": segmentation}
                                  for n in range(7)])
    reader = CocoReader(*files)
    assert len(reader) == 1 and reader.skipped["degenerate"] == 7
    assert "(ids 21, 22, 23, 24, 25, ...: polygon given as a dict: convert with `kwcoco " \
        "conform --legacy=True`)" in reader.summary()


def test_all_annotations_in_kwcoco_form_stop_with_the_way_out(tmp_path):
    from Datasets import open_dataset
    from roilib.errors import UserError
    images, path = _coco_file(tmp_path, [])
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [{"exterior": [[10, 10], [30, 10], [30, 30]]}]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"no usable segment .*id 100: polygon given as a "
                                        r"dict: convert with `kwcoco conform --legacy=True`"):
        open_dataset("coco", "train", str(images), str(path))


def test_category_no_annotation_uses_is_said_and_kept(tmp_path):
    images, path = _coco_file(tmp_path, [])
    data = json.loads(path.read_text())
    data["categories"].insert(0, {"id": 0, "name": "background"})
    path.write_text(json.dumps(data))
    reader = CocoReader(images, path)
    assert reader.class_names == ["background", "one", "two"] and reader.labels.tolist() == [1]
    assert reader.unused_categories() == ["background (id 0)", "two (id 2)"]
    assert "; categories with no usable annotation: background (id 0), two (id 2) (kept as classes " \
        "with 0 segments, so that class ids stay stable)" in reader.summary()
    (tmp_path / "used").mkdir()
    used = CocoReader(*_coco_file(tmp_path / "used", [{"id": 7, "segmentation": [
        [40, 40, 60, 40, 50, 55]]}]))
    assert used.unused_categories() == [] and "no usable annotation" not in used.summary()
