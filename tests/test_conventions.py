"""Label maps of every convention, read as they are on disk: CamVid (0 is a class, 11 void),
PASCAL VOC (palette PNG, 0 background, 255 void), ADE20K (0 unlabelled) and Cityscapes
(non-contiguous labelIds, label files named differently). None turns a void value into a
class; a value nobody declared is counted and reported; the checkpoint keeps the convention."""
import os

import cv2
import numpy as np
import pytest
import torch

from Datasets import CAMVID_CLASSES, label_convention, open_dataset
from helpers import ROOT, TINY, run_in_process, run_script
from roilib.errors import UserError
from roilib.labelconvention import LabelConvention

CAMVID = os.path.join(ROOT, "..", "shared", "datasets", "camvid")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Index caches go to the test's folder, never beside shared data."""
    monkeypatch.setenv("ROI_ATTENTION_CACHE", str(tmp_path / "cache"))


def write_set(folder, maps, image_name="{}.png", label_name="{}.png", palette=False):
    """images/ and labels/ under `folder`, one textured image per label map."""
    from PIL import Image
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, values in enumerate(maps):
        for path in (images / image_name.format(f"f{i}"), labels / label_name.format(f"f{i}")):
            path.parent.mkdir(parents=True, exist_ok=True)   # a name may hold a subfolder
        cv2.imwrite(str(images / image_name.format(f"f{i}")),
                    rng.integers(0, 255, (*values.shape, 3), dtype=np.uint8))
        picture = Image.fromarray(values.astype(np.uint8), mode="P" if palette else "L")
        if palette:
            picture.putpalette([0, 0, 0, 128, 0, 0] + [64, 128, 200] * 254)
        picture.save(labels / label_name.format(f"f{i}"))
    return str(images), str(labels)


def camvid_map(shift=0):
    """0 Sky on top, 3 Road below, a 9 Pedestrian, 11 void everywhere else."""
    values = np.full((64, 64), 11, np.uint8)
    values[:20] = 0
    values[40:] = 3
    values[25:35, 10 + shift:16 + shift] = 9
    return values


def segments_by_value(reader):
    """{label-map value: [areas of its segments]}."""
    found = {}
    for segment in reader.segments:
        found.setdefault(reader.category_ids[segment.label], []).append(segment.area)
    return found


def test_camvid_convention_keeps_sky_and_drops_void(tmp_path):
    images, labels = write_set(tmp_path, [camvid_map()])
    reader = open_dataset("camvid", "train", images, labels)
    assert reader.class_names == CAMVID_CLASSES and reader.category_ids == list(range(11))
    assert segments_by_value(reader) == {0: [20 * 64], 3: [24 * 64], 9: [60]}
    assert [s.label for s in reader.segments] == [0, 3, 9] and reader.undeclared == {}
    assert (reader[0]["mask"] == (camvid_map() == 0)).all()
    # the old default convention would have lost Sky and made void a class: not so here
    plain = open_dataset("labelmap", "train", images, labels, class_names=CAMVID_CLASSES)
    assert 0 not in segments_by_value(plain) and 11 in segments_by_value(plain)


def test_voc_palette_with_void_border(tmp_path):
    values = np.zeros((40, 40), np.uint8)
    values[5:15, 5:15] = 1            # aeroplane
    values[20:35, 20:35] = 15         # person
    values[19, 19:36] = 255           # void border
    values[20:35, 19] = 255
    images, labels = write_set(tmp_path, [values], image_name="{}.jpg", palette=True)
    names = [f"voc{i}" for i in range(1, 21)]
    convention = label_convention({"IGNORE": "255"}, "labelmap")
    reader = open_dataset("labelmap", "val", images, labels, train=False, class_names=names,
                          convention=convention)
    assert segments_by_value(reader) == {1: [100], 15: [225]} and reader.undeclared == {}
    assert reader.labels.tolist() == [0, 14] and reader.category_ids == list(range(1, 21))


def test_ade20k_zero_is_unlabelled(tmp_path):
    values = np.zeros((30, 30), np.uint8)
    values[:10] = 1      # wall
    values[20:] = 150    # the last of ADE20K's 150 classes
    images, labels = write_set(tmp_path, [values], image_name="{}.jpg")
    reader = open_dataset("labelmap", "val", images, labels, train=False,
                          class_names=[f"ade{i}" for i in range(1, 151)])
    assert segments_by_value(reader) == {1: [300], 150: [300]}
    assert reader.labels.tolist() == [0, 149] and reader.undeclared == {}


def test_cityscapes_ids_and_file_names_in_city_folders(tmp_path):
    """As Cityscapes is on disk: leftImg8bit/<split>/<city>/*_leftImg8bit.png beside
    gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    values = np.zeros((32, 48), np.uint8)   # 0 unlabelled
    values[:8] = 7            # road
    values[10:20, :10] = 26   # car
    values[10:20, 20:30] = 4  # static: declared void
    values[25:, 40:] = 33     # bicycle, but not among the classes given: undeclared
    other = np.full((32, 48), 8, np.uint8)   # sidewalk, in another city
    images, labels = write_set(tmp_path, [values, other], image_name="aachen/{}_leftImg8bit.png",
                               label_name="aachen/{}_gtFine_labelIds.png")
    os.makedirs(os.path.join(images, "bonn"))
    os.rename(os.path.join(images, "aachen", "f1_leftImg8bit.png"), os.path.join(images, "bonn", "f1_leftImg8bit.png"))
    os.makedirs(os.path.join(labels, "bonn"))
    os.rename(os.path.join(labels, "aachen", "f1_gtFine_labelIds.png"),
              os.path.join(labels, "bonn", "f1_gtFine_labelIds.png"))
    # an image without its label file is counted, not paired with another's (not even one
    # of the same name in another city)
    cv2.imwrite(os.path.join(images, "bonn", "f0_leftImg8bit.png"), np.zeros((32, 48, 3), np.uint8))
    params = {"IGNORE": "1,2,3,4", "CLASS_VALUES": "7,8,26",
              "LABEL_NAMES": "_leftImg8bit.png,_gtFine_labelIds.png"}

    def read():
        return open_dataset("labelmap", "val", images, labels, train=False,
                            class_names=["road", "sidewalk", "car"],
                            convention=label_convention(params, "labelmap"))
    reader = read()
    assert segments_by_value(reader) == {7: [8 * 48], 26: [100], 8: [32 * 48]}
    assert reader.labels.tolist() == [0, 2, 1] and reader.missing_labels == 1
    assert reader.images[0]["id"] == "aachen/f0" and reader.images[0]["label_path"] == os.path.join(
        labels, "aachen/f0_gtFine_labelIds.png")
    assert reader.images[1]["path"] == os.path.join(images, "bonn/f1_leftImg8bit.png")
    assert reader.undeclared == {33: 7 * 8} and "33 (56 px)" in reader.summary()
    # a label map changed inside a city folder is seen by the cached index
    cv2.imwrite(os.path.join(labels, "bonn", "f1_gtFine_labelIds.png"), np.full((32, 48), 26, np.uint8))
    assert segments_by_value(read()) == {7: [8 * 48], 26: [100, 32 * 48]}


def test_your_own_data_is_named_by_its_format(tmp_path, make_demo_data, capsys, monkeypatch):
    """DATASET=labelmap and DATASET=cocojson: your own label maps or COCO JSON, read as the
    named datasets in that format are, with the paths given (they have no default folders)
    and, for label maps, the class names (a label map names none)."""
    images, labels = write_set(tmp_path, [camvid_map()])
    with pytest.raises(UserError, match="label maps name no classes.*CLASS_NAMES"):
        open_dataset("labelmap", "train", images, labels)
    reader = open_dataset("labelmap", "train", images, labels, class_names=["a", "b", "c"],
                          convention=label_convention({"CLASS_VALUES": "3,9,11"}, "labelmap"))
    assert segments_by_value(reader) == {3: [24 * 64], 9: [60], 11: [20 * 64 - 60]}
    demo = make_demo_data(1, 6, 3)
    own = open_dataset("cocojson", "val", f"{demo}/val/images", f"{demo}/val/instances.json", train=False)
    named = open_dataset("coco", "val", f"{demo}/val/images", f"{demo}/val/instances.json", train=False)
    assert own.class_names == named.class_names and len(own) == len(named) > 0
    for dataset in ("labelmap", "cocojson"):
        code, out = run_in_process("Train.py", [f"--DATASET={dataset}", f"--LOG_DIR={tmp_path}/logs",
                                                "--DEVICE=cpu"], capsys, monkeypatch)
        assert code == 2 and f"--DATASET={dataset}: your own data has no default folders" in out.err
        assert not os.path.exists(tmp_path / "logs")


@pytest.mark.parametrize("params, words", [
    ({"BACKGROUND": "0,1"}, "BACKGROUND=0,1"), ({"IGNORE": "x"}, "IGNORE=x"),
    ({"LABEL_NAMES": ".png"}, "IMAGE_ENDING,LABEL_ENDING"), ({"CLASS_VALUES": "-1"}, ">= 0")])
def test_bad_convention_is_one_line(params, words):
    with pytest.raises(UserError, match=words):
        label_convention(params, "labelmap")


@pytest.mark.parametrize("stored", [[0], {"background": "0"}, {"ignore": [-1]}, {"x": 1},
                                    {"label_names": [".png"]}])
def test_unreadable_stored_convention_is_one_line(stored):
    with pytest.raises(UserError, match="convention is not readable"):
        label_convention({}, "camvid", stored, "c.pt")


@pytest.mark.parametrize("keywords, count, labels", [
    # keywords, classes -> the label of each value 0..13 and of 300 (-1: not a class)
    ({}, 3, [-1, 0, 1, 2] + [-1] * 11),
    ({"background": None, "ignore": [11]}, 11, list(range(11)) + [-1] * 4),
    ({"ignore": [2, 255]}, 3, [-1, 0, -1, 1, 2] + [-1] * 10),
    ({"class_values": [7, 8, 11, 13]}, 4, [-1] * 7 + [0, 1, -1, -1, 2, -1, 3, -1]),
    ({"background": None, "class_values": [5, 0]}, 2, [1, -1, -1, -1, -1, 0] + [-1] * 9)])
def test_every_value_has_its_label_or_none(keywords, count, labels):
    rule = LabelConvention(count, **keywords)
    values = np.array(list(range(14)) + [300])
    assert rule.labels_of(values).tolist() == labels
    assert [int(rule.labels_of(v)) for v in values] == labels  # one value alike
    counts = np.bincount(values, minlength=301)
    classes, undeclared = rule.split(counts)
    void = set(rule.ignore) | {rule.background}
    assert classes.tolist() == [v for v, label in zip(values, labels) if label >= 0]
    assert undeclared.tolist() == [[v, 1] for v, label in zip(values, labels)
                                   if label < 0 and v not in void]


def test_class_value_may_not_be_void(tmp_path):
    images, labels = write_set(tmp_path, [camvid_map()])
    with pytest.raises(UserError, match="none of them background or ignore"):
        open_dataset("camvid", "val", images, labels, class_names=["a", "b"],
                     convention=label_convention({"CLASS_VALUES": "3,11"}, "camvid"))


def test_convention_is_part_of_the_index_cache_key(tmp_path):
    images, labels = write_set(tmp_path, [camvid_map()])
    assert 0 in segments_by_value(open_dataset("camvid", "val", images, labels))
    # same folder, other convention: scanned again, not the cached index of the first
    other = open_dataset("camvid", "val", images, labels,
                         convention=label_convention({"BACKGROUND": "0"}, "camvid"))
    assert 0 not in segments_by_value(other) and set(segments_by_value(other)) == {3, 9}


def test_checkpoint_keeps_the_convention_and_refuses_another(tmp_path, capsys, monkeypatch):
    train = write_set(tmp_path / "train", [camvid_map(), camvid_map(20)])
    val = write_set(tmp_path / "val", [camvid_map(10)])
    run_script("Train.py", *TINY, "--DATASET=camvid", f"--TRAIN_IMAGES={train[0]}",
               f"--TRAIN_ANNOTATIONS={train[1]}", f"--VAL_IMAGES={val[0]}",
               f"--VAL_ANNOTATIONS={val[1]}", f"--LOG_DIR={tmp_path}/logs", "--RUN=c",
               "--STEPS=2", "--VAL_EVERY=0", "--DEVICE=cpu", here=True)
    checkpoint = tmp_path / "logs" / "c" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["label_convention"] == {"background": None, "ignore": [11],
                                         "class_values": list(range(11)), "label_names": None}
    # evaluation reads the maps the way training did, with no parameter repeated
    code, out = run_in_process("EvaluateAccuracy.py", [
        f"--CHECKPOINT={checkpoint}", "--WORKERS=0", "--DEVICE=cpu", f"--OUT={tmp_path}/eval"],
        capsys, monkeypatch)
    assert code == 0 and "3 segments in 1 images" in out.out
    code, out = run_in_process("EvaluateAccuracy.py", [
        f"--CHECKPOINT={checkpoint}", "--BACKGROUND=0", "--DEVICE=cpu"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in out.err
    assert "--BACKGROUND=0" in out.err and "background None" in out.err
    # prediction on a label map reads it the same way: Sky (0) is a region, void (11) none
    values = camvid_map(10)
    values[50:54, 50:54] = 12                       # a value CamVid does not have
    cv2.imwrite(str(tmp_path / "map.png"), values)
    code, out = run_in_process("RunPrediction.py", [
        f"--CHECKPOINT={checkpoint}", f"--IMAGE={val[0]}/f0.png", f"--LABEL_MAP={tmp_path}/map.png",
        "--JSON=True", "--DEVICE=cpu"], capsys, monkeypatch)
    assert code == 0, out.err
    import json
    regions = json.loads(out.out)["segments"]
    assert [(r["labelled"], r["area"]) for r in regions] == [("Sky", 20 * 64), ("Road", 24 * 64 - 16),
                                                             ("Pedestrian", 60)]
    assert regions[0]["mask"] == "Sky #1 (1280 px at 0,0)" and "12 (16 px)" in out.err


@pytest.mark.skipif(not os.path.isdir(CAMVID), reason="../shared/datasets/camvid is absent")
def test_real_camvid_val_reads_as_on_disk():
    images, labels = os.path.join(CAMVID, "val"), os.path.join(CAMVID, "valannot")
    reader = open_dataset("camvid", "val", images, labels, train=False, min_area=64)
    assert len(reader.images) == 101 and reader.missing_labels == 0 and reader.undeclared == {}
    assert set(reader.labels.tolist()) == set(range(11))   # every class, Sky (0) included
    assert reader.segments[0].area >= 64


def test_component_size_table():
    """tools/component_sizes.py: segments per class at each threshold, pixels below `keep`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "component_sizes", os.path.join(ROOT, "tools", "component_sizes.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = tool.size_table(np.array([0, 0, 1]), np.array([10, 100, 70]), ["a", "b"], [1, 64], 64)
    assert rows == [["a", 2, 1, "9.09%"], ["b", 1, 1, "0.00%"], ["all", 3, 2, "5.56%"]]


def test_an_unreadable_label_map_is_skipped_and_counted_at_every_start(tmp_path, capfd):
    """One corrupt map of many does not stop a start: it is left out, said and counted, and a
    later start (from the cached index, no rescan) still counts it until the file changes."""
    images, labels = write_set(tmp_path, [camvid_map(), camvid_map(5), camvid_map(10)])
    with open(os.path.join(labels, "f1.png"), "r+b") as f:
        f.seek(40)
        f.write(b"\0" * 64)                            # corrupt past its header
    reader = open_dataset("camvid", "train", images, labels)
    assert [image["id"] for image in reader.images] == ["f0", "f2"] and len(reader) == 6
    assert "skipped a label map that cannot be read" in capfd.readouterr().err
    line = f"unreadable label maps skipped: 1 (first: {os.path.join(labels, 'f1.png')})"
    assert line in reader.summary()
    again = open_dataset("camvid", "train", images, labels)
    assert "skipped a label map" not in capfd.readouterr().err and line in again.summary()
    cv2.imwrite(os.path.join(labels, "f1.png"), camvid_map(5))   # mended: read again
    assert len(open_dataset("camvid", "train", images, labels)) == 9
