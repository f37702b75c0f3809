"""The demo generator: deterministic, both formats agree, and the scenes keep their promises
(distinct classes per image, objects apart, boats on water and cars on road, hives and kennels
told apart only by ground outside the crop box and inside the evaluation window)."""
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from CocoReader import CocoReader  # noqa: E402
from LabelMapReader import LabelMapReader  # noqa: E402
import torch  # noqa: E402

from AttentionNet import masks_to_boxes_with_context  # noqa: E402
from roilib import demo as demo_module  # noqa: E402
from roilib.demo import CLASS_NAMES, FAR_CONTEXT_PAIR, ensure_demo, make_demo  # noqa: E402
from roilib.demo_example import EXAMPLE_CLASSES, write_example  # noqa: E402
from roilib.imageio import read_image, read_label_map, read_mask  # noqa: E402
from helpers import image_masks  # noqa: E402
from roilib.windows import cut_windows  # noqa: E402

# pycocotools trips numpy 2's __array__(copy=...) deprecation: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def demo(make_demo_data):
    return make_demo_data(0, 20, 5)


def _readers(split):
    return (CocoReader(split / "images", split / "instances.json", train=False),
            LabelMapReader(split / "images", split / "labels", class_names=CLASS_NAMES,
                               train=False))


def test_layout_and_info(demo):
    info = json.loads((demo / "demo.json").read_text())
    assert info["version"] == demo_module.VERSION and info["seed"] == 0
    assert info["class_names"] == CLASS_NAMES and info["context_pair"] == {
        "boat": "water", "car": "road"}
    assert info["far_context_pair"] == {"hive": "meadow", "kennel": "ice"}
    files = _files(demo)
    for split, count in (("train", 20), ("val", 5)):
        assert info["splits"][split]["images"] == count
        assert f"{split}/instances.json" in files
        assert sum(f.startswith(f"{split}/images/") for f in files) == count
        assert sum(f.startswith(f"{split}/labels/") for f in files) == count
    assert not [p for p in os.listdir(demo.parent) if ".tmp-" in p or ".old-" in p]


def test_deterministic(demo, tmp_path):
    again = tmp_path / "again"
    make_demo(again, seed=0, n_train=20, n_val=5)
    assert _files(again) == _files(demo)
    for name in _files(demo):
        assert (again / name).read_bytes() == (demo / name).read_bytes(), name
    other = tmp_path / "other"
    make_demo(other, seed=1, n_train=20, n_val=5)
    assert (other / "train" / "images" / "00001.png").read_bytes() != \
        (demo / "train" / "images" / "00001.png").read_bytes()
    assert (other / "train" / "instances.json").read_bytes() != \
        (demo / "train" / "instances.json").read_bytes()


@pytest.mark.parametrize("split", ["train", "val"])
def test_formats_describe_the_same_segments(demo, split):
    coco, maps = _readers(demo / split)
    assert [im["id"] for im in coco.images] == [im["id"] for im in maps.images]
    assert [len(s) for s in coco.image_segments] == [len(s) for s in maps.image_segments]
    assert coco.labels.tolist() == maps.labels.tolist()
    assert [s.area for s in coco.segments] == [s.area for s in maps.segments]
    assert [s.bbox for s in coco.segments] == [s.bbox for s in maps.segments]
    for index in range(0, len(coco), 7):
        assert (coco[index]["mask"] == maps[index]["mask"]).all()


def test_scene_promises(demo):
    coco, _ = _readers(demo / "train")
    areas = np.array([s.area for s in coco.segments])
    assert areas.min() < 100 and areas.max() > 3000  # small and large segments
    assert len(set(coco.labels.tolist())) == len(CLASS_NAMES)
    ring = np.ones((9, 9), np.uint8)
    for image_index, segments in enumerate(coco.image_segments):
        assert 3 <= len(segments) <= 6
        labels = coco.labels[segments].tolist()
        assert len(set(labels)) == len(labels)  # different classes
        image = coco.load_image(image_index)
        masks = image_masks(coco, image_index, image.shape[:2])
        grown = [cv2.dilate(m, np.ones((3, 3), np.uint8)) for m in masks]
        assert (np.sum(grown, axis=0) <= 1).all()  # >= 2 px between objects
        for label, mask in zip(labels, masks):
            if CLASS_NAMES[label] not in ("boat", "car"):
                continue
            around = image[(cv2.dilate(mask, ring) > 0) & (mask == 0)].astype(int)
            blue = around[:, 2] - around[:, 0]  # water is blue, road is grey
            if CLASS_NAMES[label] == "boat":
                assert np.median(blue) > 60
            else:
                assert np.abs(np.median(blue)) < 25


def _ground_pixels(image):
    """{ground: bool map} of the pixels in the colour of a far pair's telling ground (meadow:
    dark green; ice: pale cyan); no object, water or road has them."""
    r, g, b = (image[..., c].astype(int) for c in range(3))
    return {"meadow": (g - r > 35) & (g - b > 35) & (g < 145),
            "ice": (b - r > 45) & (g > 180) & (r > 110) & (r < 195)}


def test_far_pair_told_apart_only_far_away(make_demo_data):
    """A hive (kennel) has meadow (ice) ground around it and no other: none of it in the crop
    baseline's box, much of it in the 128-px evaluation window. The pair shares object colour
    and size range, and never meets in one scene."""
    root = make_demo_data(0, 60, 5)
    coco, _ = _readers(root / "train")
    areas = {name: [] for name in FAR_CONTEXT_PAIR}
    for image_index, segments in enumerate(coco.image_segments):
        names = [CLASS_NAMES[label] for label in coco.labels[segments].tolist()]
        image = coco.load_image(image_index)
        grounds = _ground_pixels(image)
        present = [name for name in names if name in FAR_CONTEXT_PAIR]
        assert len(present) <= 1
        if not present:
            assert all(g.sum() < 5 for g in grounds.values())
            continue
        name = present[0]
        own = grounds[FAR_CONTEXT_PAIR[name]]
        assert all(g.sum() < 5 for ground, g in grounds.items() if ground != FAR_CONTEXT_PAIR[name])
        mask = image_masks(coco, image_index, image.shape[:2])[names.index(name)]
        x0, y0, x1, y1 = masks_to_boxes_with_context(
            torch.from_numpy(mask)[None, None], 0.5, (128, 128))[0, 1:].tolist()
        crop_view = own[max(0, int(y0) - 1):int(y1) + 2, max(0, int(x0) - 1):int(x1) + 2]
        assert crop_view.sum() < 3, "the telling ground is inside the crop baseline's box"
        windows, _ = cut_windows(image, [mask], (128, 128))
        in_window = _ground_pixels(windows[0].permute(1, 2, 0).numpy())[FAR_CONTEXT_PAIR[name]]
        assert in_window.sum() > 1000, "too little telling ground in the evaluation window"
        areas[name].append(int(mask.sum()))
    for name in FAR_CONTEXT_PAIR:
        assert len(areas[name]) >= 5
        assert min(areas[name]) < 150 and max(areas[name]) > 300  # small and medium alike


def test_ensure_demo_rebuilds_only_when_needed(tmp_path):
    root, lines = tmp_path / "d", []
    ensure_demo(root, seed=0, n_train=2, n_val=1, announce=lines.append)
    assert lines == [f"writing the demo dataset (v{demo_module.VERSION}, 2 + 1 scenes) into {root}: "
                     "once, a few seconds"]
    stamp = (root / "demo.json").stat().st_mtime_ns
    ensure_demo(root, seed=0, n_train=2, n_val=1, announce=lines.append)
    assert (root / "demo.json").stat().st_mtime_ns == stamp and len(lines) == 1
    info = json.loads((root / "demo.json").read_text())
    info["version"] = -1
    (root / "demo.json").write_text(json.dumps(info))
    ensure_demo(root, seed=0, n_train=2, n_val=1, announce=lines.append)
    assert json.loads((root / "demo.json").read_text())["version"] == demo_module.VERSION
    assert sorted(os.listdir(tmp_path)) == ["d"] and len(lines) == 2


def test_opening_the_demo_announces_its_generation(tmp_path, monkeypatch, capsys):
    import Datasets
    build = demo_module.make_demo
    monkeypatch.setattr(demo_module, "make_demo", lambda root, seed, n_train, n_val: build(root, seed, 2, 1))
    monkeypatch.setattr(Datasets, "DEMO_ROOT", str(tmp_path / "demo"))
    reader = Datasets.open_dataset("demo", "val", str(tmp_path / "demo/val/images"),
                                   str(tmp_path / "demo/val/instances.json"), train=False)
    assert len(reader) > 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"writing the demo dataset (v{demo_module.VERSION}, 600 + 200 scenes) into "
                   f"{tmp_path / 'demo'}: once, a few seconds"]


def test_killed_build_leaves_no_half_dataset(tmp_path, monkeypatch):
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        make_demo(tmp_path / "d", n_train=2, n_val=1)
    assert os.listdir(tmp_path) == []


def test_command_line(tmp_path, capsys):
    assert demo_module.main(["--out", str(tmp_path / "d"), "--train", "2", "--val", "1",
                             "--example", str(tmp_path / "ex")]) == 0
    assert "2 images" in capsys.readouterr().out
    assert (tmp_path / "d" / "demo.json").is_file() and (tmp_path / "ex" / "example.png").is_file()


def test_write_example(tmp_path):
    assert write_example(tmp_path) == EXAMPLE_CLASSES
    image = read_image(tmp_path / "example.png")
    instances = read_label_map(tmp_path / "example_labels.png")
    assert instances.shape == image.shape[:2]
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2, 3, 4]
    for number in range(1, 5):
        raw = cv2.imread(str(tmp_path / f"example_mask{number}.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(raw).tolist()) == {0, 255}
        mask = read_mask(tmp_path / f"example_mask{number}.png", image.shape[:2])
        assert (mask == (instances == number)).all()
