"""Robustness and safety: a mistake in the input costs one clear line (exit code 2, one
"error: ..." line naming the file and the problem, no traceback); unreadable images inside a
dataset are skipped, counted and reported while training and evaluation go on; a killed run
resumes exactly and never leaves an unreadable checkpoint; untrusted files stay data.

Script-level cases run the real scripts in subprocesses: the short ones all at once from the
`runs` fixture (several at a time), the training runs in their own tests."""
import csv
import json
import re
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from AttentionNet import AttentionNet
from roilib.checkpoint import save_checkpoint
from roilib.outputs import remove_stale_temporaries
from CocoReader import CocoReader
from OpenSurfacesReader import OpenSurfacesReader
from roilib import runlog
from roilib.cli import user_message
from roilib.dataset import MAX_SUBSTITUTES
from roilib.evaluation import SegmentWindows
from roilib.sampler import VaryingSizeBatchSampler, make_train_loader
from roilib.demo import CLASS_NAMES
from roilib.errors import UserError
from roilib.evaluation import predict_dataset
from roilib.imageio import read_image, read_label_map, write_png
from helpers import ROOT, TINY, read_csv, run_script

# pycocotools trips numpy 2's __array__(copy=...) deprecation: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
# Subprocesses run side by side: one thread each keeps them from fighting over the cores.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
CODE = "__import__('os').system('touch {}')"   # what an eval() of a name would run


# ----------------------------------------------------------------------------- data

def encode(path, array):
    """Write `array` (BGR/BGRA/gray, 8 or 16 bit) in the format of `path`'s suffix."""
    ok, data = cv2.imencode(Path(path).suffix, array)
    assert ok
    Path(path).write_bytes(data.tobytes())
    return path


def damage(path, kind):
    """Replace an image file by a broken one; returns the words its error must contain."""
    path = Path(path)
    image = cv2.imread(str(path))
    if kind == "text":
        path.write_text("this is not an image")
        return "not an image"
    if kind == "truncated jpeg":  # JPEG bytes under the old name: decoded by content
        data = cv2.imencode(".jpg", image)[1].tobytes()
        path.write_bytes(data[:len(data) * 3 // 5])
        return "truncated JPEG"
    if kind == "truncated png":
        data = cv2.imencode(".png", image)[1].tobytes()
        path.write_bytes(data[:len(data) * 3 // 5])
        return "corrupt/truncated"
    if kind == "corrupt png":  # bytes overwritten early in the image data
        data = bytearray(cv2.imencode(".png", image)[1].tobytes())
        data[100:120] = b"x" * 20
        path.write_bytes(bytes(data))
        return "corrupt/truncated"
    if kind == "corrupt jpeg":  # bytes overwritten in its Huffman tables
        data = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
        data[200:220] = b"x" * 20
        path.write_bytes(bytes(data))
        return "corrupt/truncated"
    if kind == "wrong size":  # readable, but not the size its annotation says
        encode(path, cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
        return "instances.json says"
    raise ValueError(kind)


def copy_split(data, split, dst):
    """A copy of a demo split (images, labels, instances.json) to damage."""
    shutil.copytree(data / split, dst)
    return dst


def damaged_split(data, split, dst, kinds):
    """A copy of a demo split with its first images broken in the given ways.
    Returns (folder, {image path: words its error must contain})."""
    folder = copy_split(data, split, dst)
    names = sorted(os.listdir(folder / "images"))
    broken = {}
    for name, kind in zip(names, kinds):
        broken[str(folder / "images" / name)] = damage(folder / "images" / name, kind)
    return folder, broken


def segments_per_image(folder):
    reader = CocoReader(folder / "images", folder / "instances.json", train=False)
    return {image["path"]: len(segments) for image, segments in
            zip(reader.images, reader.image_segments)}


@pytest.fixture(scope="module")
def files(data, tmp_path_factory):
    """Every bad (and odd but valid) input the script-level cases use, as format fields."""
    d = tmp_path_factory.mktemp("files")
    image_path = data / "val" / "images" / "00001.png"
    image = cv2.imread(str(image_path))
    height, width = image.shape[:2]
    labels = read_label_map(data / "val" / "labels" / "00001.png")
    region = labels == labels.max()
    f = {"dir": str(d), "image": str(image_path), "val_images": str(data / "val" / "images"),
         "val_json": str(data / "val" / "instances.json"), "train_images": str(data / "train" / "images"),
         "train_json": str(data / "train" / "instances.json")}
    mask = region.astype(np.uint8) * 255
    f["mask"] = str(encode(d / "mask255.png", mask))
    several = np.zeros((height, width), np.uint8)
    several[region] = np.where(np.arange(region.sum()) % 3 == 0, 7, 200)  # 7 and 200 inside
    several[0, 0] = 1  # and a lone 1 outside the region
    f["several"] = str(encode(d / "several_values.png", several))
    encode(d / "mask16.png", region.astype(np.uint16) * 65535)
    encode(d / "image16.png", image.astype(np.uint16) * 257)
    encode(d / "rgba.png", np.dstack([image, np.full((height, width), 90, np.uint8)]))
    tiny = np.zeros((20, 24), np.uint8)
    tiny[5:15, 6:18] = 1
    encode(d / "tiny_gray.png", np.full((20, 24), 120, np.uint8))
    encode(d / "tiny_mask.png", tiny)
    (d / "text.png").write_text("this is a text file saved as .png")
    for name, source, kind in (("cut.jpg", image_path, "truncated jpeg"),
                               ("cut.png", image_path, "truncated png"),
                               ("cut_mask.png", f["mask"], "truncated png")):
        shutil.copy(source, d / name)
        damage(d / name, kind)
    encode(d / "small_mask.png", mask[: height // 2, : width // 2])
    encode(d / "empty_mask.png", np.zeros((height, width), np.uint8))
    (d / "a_file").write_text("a regular file where a folder is expected")
    (d / "bad.json").write_text('{"images": [')
    # label maps holding a value beyond the demo's classes
    bad_maps = copy_split(data, "val", d / "bad_maps")
    big = read_label_map(bad_maps / "labels" / "00002.png")
    big[big == big.max()] = 200
    write_png(bad_maps / "labels" / "00002.png", big)
    # checkpoints: a fresh model for the demo's classes, one for 3 classes, one without
    # training state, a text file, and one carrying code
    torch.manual_seed(0)
    model = AttentionNet(len(CLASS_NAMES), arch="resnet18", class_names=CLASS_NAMES)
    model.save(d / "model.pt")
    AttentionNet(3, arch="resnet18").save(d / "three.pt")
    AttentionNet(3, arch="resnet18").save(d / "logs_three" / "r" / "last.pt", step=1)
    model.save(d / "logs_plain" / "r" / "last.pt")
    (d / "text.pt").write_text("not a checkpoint")
    save_with_payload(model, d / "evil.pt", d / "marker")
    f.update(checkpoint=str(d / "model.pt"), marker=str(d / "marker"))
    # a dataset whose names look like code
    names = make_code_like_dataset(data, d / "code_names", d / "marker_names")
    AttentionNet(len(names), arch="resnet18", class_names=names).save(d / "code_names.pt")
    f["skip_split"], f["skipped"] = damaged_split(
        data, "val", d / "skip", ["text", "truncated jpeg", "wrong size"])
    return f


class CreatesFile:
    """Unpickling it calls open(path, "w"), which creates the file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def save_with_payload(model, path, marker):
    torch.save({"format": 1, "model": model.state_dict(), "config": model.config,
                "payload": CreatesFile(marker)}, path)


def make_code_like_dataset(data, folder, marker):
    """The demo val split with class names and a file name that are Python code creating
    `marker` (absolute) or the file touched_by_file_name (in the working folder)."""
    copy_split(data, "val", folder)
    coco = json.loads((folder / "instances.json").read_text())
    coco["categories"][0]["name"] = CODE.format(marker)
    coco["categories"][1]["name"] = f'eval("{CODE.format(marker)}")'
    record = coco["images"][0]
    new_name = CODE.format("touched_by_file_name") + ".png"
    os.rename(folder / "images" / record["file_name"], folder / "images" / new_name)
    record["file_name"] = new_name
    (folder / "instances.json").write_text(json.dumps(coco))
    return [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


# ----------------------------------------------------------------------------- script runs

PREDICT = ("RunPrediction.py", "--CHECKPOINT={checkpoint}", "--IMAGE={image}", "--MASKS={mask}",
           "--DEVICE=cpu", "--JSON=True")
EVALUATE = ("EvaluateAccuracy.py", "--CHECKPOINT={checkpoint}", "--DATASET=demo",
            "--IMAGES={val_images}", "--ANNOTATIONS={val_json}", "--OUT={dir}/eval",
            "--WORKERS=0", "--DEVICE=cpu", "--WINDOW=64x64")
TRAIN = ("Train.py", *TINY, "--TRAIN_IMAGES={train_images}", "--TRAIN_ANNOTATIONS={train_json}",
         "--VAL_IMAGES={val_images}", "--VAL_ANNOTATIONS={val_json}", "--LOG_DIR={dir}/logs",
         "--RUN=r", "--STEPS=2", "--DEVICE=cpu")
ABLATION = ("Ablation.py", "--LOG_DIR={dir}/ablation", "--VARIANTS=stem", "--SEEDS=0", "--STEPS=2",
            "--WORKERS=0", "--DEVICE=cpu")
BENCHMARK = ("Benchmark.py", "--ARCH=resnet18", "--CONFIG_ARCH=", "--PARTS=c", "--STEPS=2",
             "--SIZE=64", "--BATCH=2", "--DEVICE=cpu", "--OUT={dir}/benchmark")

# case -> (command: a script and its --NAME=value arguments, where a later one overrides an
# earlier one; words the one-line message must hold: the file or parameter, and the problem)
ERROR_CASES = {
    # every script: an unknown parameter and a value of the wrong type
    "train: unknown parameter": (TRAIN + ("--STEP=3",), ["--STEP", "did you mean --STEPS"]),
    "train: wrong type": (TRAIN + ("--STEPS=many",), ["--STEPS=many", "expected an integer"]),
    "evaluate: unknown parameter": (EVALUATE + ("--LIMTI=2",), ["--LIMTI", "did you mean --LIMIT"]),
    "evaluate: wrong type": (EVALUATE + ("--AMP=maybe",), ["--AMP=maybe", "expected true or false"]),
    "predict: unknown parameter": (PREDICT + ("--MASK=x.png",), ["--MASK", "did you mean --MASKS"]),
    "predict: wrong type": (PREDICT + ("--TOPK=2.5",), ["--TOPK=2.5", "expected an integer"]),
    "ablation: unknown parameter": (ABLATION + ("--SEED=1",), ["--SEED", "did you mean --SEEDS"]),
    "ablation: wrong type": (ABLATION + ("--LR=fast",), ["--LR=fast", "expected a number"]),
    "benchmark: unknown parameter": (BENCHMARK + ("--PART=a",), ["--PART", "did you mean --PARTS"]),
    "benchmark: wrong type": (BENCHMARK + ("--WARMUP=1.5",), ["--WARMUP=1.5", "expected an integer"]),
    # missing paths
    "predict: missing image": (PREDICT + ("--IMAGE={dir}/nothere.png",), ["nothere.png", "not found"]),
    "predict: missing mask": (PREDICT + ("--MASKS={dir}/nomask.png",), ["nomask.png", "not found"]),
    "evaluate: missing annotations": (EVALUATE + ("--ANNOTATIONS={dir}/none.json",),
                                      ["none.json", "not found"]),
    "train: missing image folder": (TRAIN + ("--TRAIN_IMAGES={dir}/noimages",), ["noimages", "not found"]),
    "ablation: missing image folder": (ABLATION + ("--TRAIN_IMAGES={dir}/noimages",),
                                       ["Train.py failed", "noimages", "not found"]),
    # unreadable, truncated, mis-sized or empty files given directly
    "predict: text saved as .png": (PREDICT + ("--IMAGE={dir}/text.png",), ["text.png", "not an image"]),
    "predict: truncated JPEG": (PREDICT + ("--IMAGE={dir}/cut.jpg",), ["cut.jpg", "truncated JPEG"]),
    "predict: truncated PNG": (PREDICT + ("--IMAGE={dir}/cut.png",), ["cut.png", "corrupt/truncated"]),
    "predict: truncated PNG mask": (PREDICT + ("--MASKS={dir}/cut_mask.png",),
                                    ["cut_mask.png", "corrupt/truncated"]),
    "predict: mask of another size": (PREDICT + ("--MASKS={dir}/small_mask.png",),
                                      ["small_mask.png", "but the image is"]),
    "predict: empty mask": (PREDICT + ("--MASKS={dir}/empty_mask.png",), ["empty_mask.png", "empty"]),
    "predict: text saved as .pt": (PREDICT + ("--CHECKPOINT={dir}/text.pt",),
                                   ["text.pt", "not a readable checkpoint", "not a PyTorch file"]),
    "train: annotations not JSON": (TRAIN + ("--TRAIN_ANNOTATIONS={dir}/bad.json",),
                                    ["bad.json", "invalid JSON"]),
    # checkpoints that do not fit
    "evaluate: checkpoint for 3 classes": (EVALUATE + ("--CHECKPOINT={dir}/three.pt",),
                                           ["three.pt", "3 classes", f"has {len(CLASS_NAMES)}"]),
    "train: resume a 3-class last.pt": (TRAIN + ("--LOG_DIR={dir}/logs_three",),
                                        ["last.pt", "different model", "'num_classes': 3"]),
    "train: resume a last.pt without training state": (TRAIN + ("--LOG_DIR={dir}/logs_plain",),
                                                       ["last.pt", "no training state", "optimizer"]),
    "evaluate: checkpoint carrying code": (EVALUATE + ("--CHECKPOINT={dir}/evil.pt",), ["evil.pt", "refused"]),
    "predict: checkpoint carrying code": (PREDICT + ("--CHECKPOINT={dir}/evil.pt",), ["evil.pt", "refused"]),
    # outputs that cannot be written
    "train: LOG_DIR is a file": (TRAIN + ("--LOG_DIR={dir}/a_file",), ["a_file", "Not a directory"]),
    "evaluate: OUT is a file": (EVALUATE + ("--OUT={dir}/a_file/eval",), ["a_file", "Not a directory"]),
    "benchmark: OUT is a file": (BENCHMARK + ("--OUT={dir}/a_file/b",), ["a_file", "Not a directory"]),
    "predict: OVERLAY under a file": (PREDICT + ("--OVERLAY={dir}/a_file/sub/o.png",),
                                      ["a_file", "Not a directory"]),
    "benchmark: unknown part": (BENCHMARK + ("--PARTS=a,z",), ["--PARTS=a,z", "expected a comma-separated list of a, b"]),
}
# Odd but valid inputs: these must run.
OK_CASES = {
    "predict: 16-bit image; 0/255, several-valued and 16-bit masks": (
        PREDICT + ("--IMAGE={dir}/image16.png", "--MASKS={mask},{dir}/several_values.png,{dir}/mask16.png"),),
    "predict: RGBA image": (PREDICT + ("--IMAGE={dir}/rgba.png",),),
    "predict: gray image smaller than 32 px": (
        PREDICT + ("--IMAGE={dir}/tiny_gray.png", "--MASKS={dir}/tiny_mask.png"),),
    "evaluate: unreadable images": (EVALUATE + ("--IMAGES={skip_split}/images",
                                                "--ANNOTATIONS={skip_split}/instances.json",
                                                "--OUT={dir}/eval_skip"),),
    "evaluate: names that look like code": (EVALUATE + (
        "--CHECKPOINT={dir}/code_names.pt", "--IMAGES={dir}/code_names/images",
        "--ANNOTATIONS={dir}/code_names/instances.json", "--OUT={dir}/eval_names"),),
    "evaluate: label map value beyond the classes": (EVALUATE + (
        "--IMAGES={dir}/bad_maps/images", "--ANNOTATIONS={dir}/bad_maps/labels",
        "--OUT={dir}/eval_bad_maps"),),
}


def run_command(command, fields):
    script, *args = command
    return run_script(script, *[arg.format(**fields) for arg in args], check=False, here=True,
                      cwd=fields["dir"])


# The tests of these ~40 script runs take a minute: CI runs them by its second command (-m slow).
SCRIPT_RUNS = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(files):
    """case -> the CompletedProcess-like result of every case above, run in this process."""
    return {name: run_command(case[0], files) for name, case in {**ERROR_CASES, **OK_CASES}.items()}


def assert_one_line_error(result, words):
    report = f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr}"
    assert result.returncode == 2, report
    assert "Traceback" not in result.stderr + result.stdout, report
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), report
    for word in words:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"


def assert_ran(result):
    assert result.returncode == 0, f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr}"


@SCRIPT_RUNS
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_costs_one_line(runs, case):
    assert_one_line_error(runs[case], ERROR_CASES[case][1])


@SCRIPT_RUNS
def test_checkpoint_code_is_refused_and_never_runs(runs, files, tmp_path):
    assert "refused" in runs["evaluate: checkpoint carrying code"].stderr
    assert "refused" in runs["predict: checkpoint carrying code"].stderr
    assert not os.path.exists(files["marker"])
    # the control: the same payload loaded without weights_only does create its file
    model = AttentionNet(2, arch="resnet18")
    save_with_payload(model, tmp_path / "evil.pt", tmp_path / "control")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "control").exists()


def predictions(result):
    assert_ran(result)
    return json.loads(result.stdout)["segments"]


@SCRIPT_RUNS
def test_undeclared_label_value_is_counted_not_a_class(runs):
    """Value 200 is neither one of the demo's classes nor declared void: reported, left out."""
    result = runs["evaluate: label map value beyond the classes"]
    assert_ran(result)
    assert "neither a class nor declared void, left out: 200 (" in result.stdout


@SCRIPT_RUNS
def test_odd_masks_and_16_bit_files_are_accepted(runs, files):
    """Nonzero = ROI for two-valued masks: a 0/255 mask and a 16-bit mask; on a 16-bit image.
    They are the same region, so the same answer. A mask of values 1, 7 and 200 is a lossy
    save: above half its maximum (100) is inside, so the 7s and the lone 1 are not."""
    segments = predictions(runs["predict: 16-bit image; 0/255, several-valued and 16-bit masks"])
    several = cv2.imread(files["several"], cv2.IMREAD_UNCHANGED)
    region = cv2.imread(files["mask"], cv2.IMREAD_UNCHANGED) > 0
    assert [s["area"] for s in segments] == [region.sum(), np.count_nonzero(several > 100), region.sum()]
    assert segments[0]["topk"] == segments[2]["topk"]
    for segment in segments:
        assert segment["class"] in CLASS_NAMES and 0 < segment["probability"] <= 1


@SCRIPT_RUNS
@pytest.mark.parametrize("case", ["predict: RGBA image", "predict: gray image smaller than 32 px"])
def test_rgba_and_gray_images_are_read_as_rgb(runs, case):
    segments = predictions(runs[case])
    assert len(segments) == 1 and segments[0]["class"] in CLASS_NAMES


@SCRIPT_RUNS
def test_evaluation_skips_unreadable_images(runs, files):
    result = runs["evaluate: unreadable images"]
    assert_ran(result)
    broken = files["skipped"]
    first = next(iter(broken))
    assert f"skipped 3 unreadable images (first: {first}: {broken[first]}" in result.stdout
    report = json.loads(Path(files["dir"], "eval_skip", "eval.json").read_text())
    assert {entry["path"] for entry in report["skipped_images"]} == set(broken)
    for entry in report["skipped_images"]:
        assert entry["reason"].startswith(entry["path"]) and broken[entry["path"]] in entry["reason"]
    counts = segments_per_image(files["skip_split"])
    assert report["count"] == sum(counts.values()) - sum(counts[path] for path in broken)


@SCRIPT_RUNS
def test_names_from_a_dataset_stay_data(runs, files):
    """Class and file names that are Python code are read, stored and printed as text."""
    result = runs["evaluate: names that look like code"]
    assert_ran(result)
    report = json.loads(Path(files["dir"], "eval_names", "eval.json").read_text())
    names = [row["class"] for row in report["per_class"]]
    assert names[0] == CODE.format(Path(files["dir"], "marker_names"))
    assert names[1].startswith("eval(") and names[0][:23] in result.stdout  # the table cuts at 23
    assert report["count"] == sum(segments_per_image(Path(files["dir"], "code_names")).values())
    assert not Path(files["dir"], "marker_names").exists()
    assert not Path(files["dir"], "touched_by_file_name").exists()
    assert not Path(ROOT, "touched_by_file_name").exists()


# ----------------------------------------------------------------------------- readers

@pytest.mark.parametrize("kind", ["truncated png", "corrupt png", "truncated jpeg", "corrupt jpeg"])
def test_broken_image_is_one_error_and_nothing_else(data, tmp_path, capfd, kind):
    """libpng and libjpeg print their own complaints straight to fd 2: not on top of ours."""
    path = tmp_path / "broken.png"
    shutil.copy(data / "val" / "images" / "00001.png", path)
    words = damage(path, kind)
    with pytest.raises(UserError, match=f"broken.png: .*{words}"):
        read_image(path)
    assert capfd.readouterr().err == ""
    os.write(2, b"fd 2 restored\n")
    assert capfd.readouterr().err == "fd 2 restored\n"


def test_readers_name_missing_folders(data, tmp_path):
    split = data / "val"
    with pytest.raises(UserError, match="nothere.*not found"):
        CocoReader(tmp_path / "nothere", split / "instances.json")
    with pytest.raises(UserError, match="nothere.*not found"):
        OpenSurfacesReader(tmp_path / "nothere", split / "labels", class_names=CLASS_NAMES)
    with pytest.raises(UserError, match="nolabels.*not found"):
        OpenSurfacesReader(split / "images", tmp_path / "nolabels", class_names=CLASS_NAMES)


@pytest.mark.parametrize("kind", ["text", "truncated png"])
def test_unreadable_label_map_is_skipped_with_its_reason(data, tmp_path, kind, capfd):
    folder = copy_split(data, "val", tmp_path / "split")
    words = damage(folder / "labels" / "00003.png", kind)
    reader = OpenSurfacesReader(folder / "images", folder / "labels", class_names=CLASS_NAMES)
    assert re.search(f"skipped a label map that cannot be read: .*00003.png.*{words}", capfd.readouterr().err)
    assert "00003" not in [str(image["id"]).zfill(5) for image in reader.images]
    assert "unreadable label maps skipped: 1 (first: " in reader.summary()


def test_coco_counts_what_it_drops(data, tmp_path):
    """An image file that is missing, polygons of fewer than 6 numbers (or an odd count),
    and an empty RLE mask: dropped and counted, the rest read."""
    folder = copy_split(data, "val", tmp_path / "split")
    coco = json.loads((folder / "instances.json").read_text())
    before = len(coco["annotations"])
    coco["images"].append({"id": 99, "file_name": "gone.png", "height": 40, "width": 40})
    height, width = coco["images"][0]["height"], coco["images"][0]["width"]
    empty = {"size": [height, width], "counts": [height * width]}  # uncompressed RLE, all 0
    add = [(99, [[1, 1, 30, 1, 30, 30]]), (1, [[1, 1, 9, 9]]), (1, [[1, 1, 9, 1, 9, 9, 4]]),
           (1, empty)]
    for number, (image_id, segmentation) in enumerate(add):
        coco["annotations"].append({"id": 1000 + number, "image_id": image_id, "category_id": 1,
                                    "segmentation": segmentation, "iscrowd": 0})
    (folder / "instances.json").write_text(json.dumps(coco))
    reader = CocoReader(folder / "images", folder / "instances.json")
    assert len(reader) == before
    assert reader.missing_images == 1 and reader.skipped == {"crowd": 0, "degenerate": 2, "small": 1}
    assert "2 degenerate, 1 small (id 1001: no polygon of 3 or more points; id 1002: polygon " \
        "with an odd number of coordinates); missing image files: 1" in reader.summary()


def test_readers_take_16_bit_images_and_label_maps(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image = np.full((40, 50, 3), 257 * 100, np.uint16)
    encode(tmp_path / "images" / "a.png", image)
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:15], labels[20:30, 20:40] = 2, 300
    encode(tmp_path / "labels" / "a.png", labels)
    reader = OpenSurfacesReader(tmp_path / "images", tmp_path / "labels", num_classes=300)
    assert reader.labels.tolist() == [1, 299] and [s.area for s in reader.segments] == [100, 200]
    sample = reader[1]
    assert sample["image"].dtype == np.uint8 and (sample["image"] == 100).all()
    assert sample["mask"].sum() == 200


# ----------------------------------------------------------------------------- skipping

@pytest.fixture
def broken_train(data, tmp_path):
    """The demo train split with a third of its images broken in four ways."""
    kinds = ["text", "truncated jpeg", "truncated png", "wrong size"] * 2
    folder, broken = damaged_split(data, "train", tmp_path / "train", kinds)
    return CocoReader(folder / "images", folder / "instances.json"), broken


def test_training_item_replaces_an_unreadable_image(broken_train):
    reader, broken = broken_train
    index = next(i for i, s in enumerate(reader.segments)
                 if reader.images[s.image_index]["path"] in broken)
    path = reader.images[reader.segments[index].image_index]["path"]
    item = reader[(index, 64, 96, 1234)]
    (skipped_path, reason), *more = item["skipped"]
    assert skipped_path == path and reason.startswith(path) and broken[path] in reason
    assert all(p in broken for p, _ in more)
    assert item["label"] == reader.labels[index]       # a segment of the same class instead
    assert item["image"].shape == (64, 96, 3) and item["mask"].any()
    again = reader[(index, 64, 96, 1234)]             # deterministic: resumable data order
    assert again["skipped"] == item["skipped"] and (again["image"] == item["image"]).all()
    with pytest.raises(UserError) as caught:           # a plain index still stops, and says why
        reader[index]
    assert str(caught.value) == reason


def test_training_items_stop_when_no_image_can_be_read(data, tmp_path):
    folder = copy_split(data, "train", tmp_path / "train")
    for name in os.listdir(folder / "images"):
        damage(folder / "images" / name, "text")
    reader = CocoReader(folder / "images", folder / "instances.json")
    with pytest.raises(UserError, match=f"{MAX_SUBSTITUTES + 1} images in a row could not be read"):
        reader[(0, 64, 64, 1)]


def test_loader_carries_skipped_files_from_workers(broken_train):
    reader, broken = broken_train
    skipped = {}
    for workers in (0, 2):
        sampler = VaryingSizeBatchSampler(reader.labels, 64, 96, 64 * 96 * 6, 6, seed=0,
                                          image_of_segment=reader.image_of_segment)
        stream = iter(make_train_loader(reader, sampler, workers))
        skipped[workers] = [next(stream)["skipped"] for _ in range(4)]
        del stream
    assert skipped[0] == skipped[2]
    paths = {path for batch in skipped[0] for path, _ in batch}
    assert paths and paths <= set(broken)


def test_evaluation_batches_skip_an_unreadable_image(data, tmp_path):
    folder, broken = damaged_split(data, "val", tmp_path / "val", ["wrong size", "truncated png"])
    reader = CocoReader(folder / "images", folder / "instances.json", train=False)
    item = SegmentWindows(reader, (64, 64))[0]
    assert item["images"] is None and len(item["labels"]) == 0
    assert item["skipped"][0][0] == str(folder / "images" / "00001.png")
    model = AttentionNet(len(CLASS_NAMES), arch="resnet18")
    out = predict_dataset(model, reader, torch.device("cpu"), window=(64, 64), progress=False)
    assert set(out["skipped"].reasons) == set(broken)
    counts = segments_per_image(folder)
    assert len(out["labels"]) == sum(counts.values()) - sum(counts[path] for path in broken)
    assert out["skipped"].summary().startswith("skipped 2 unreadable images (first: ")


class Unreadable(torch.utils.data.Dataset):
    MESSAGE = "/data/x.png: not an image or corrupt/truncated file"

    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise UserError(self.MESSAGE)


def test_error_in_a_loader_worker_is_one_line():
    with pytest.raises(UserError) as caught:
        next(iter(DataLoader(Unreadable(), num_workers=1)))
    assert "Traceback" in str(caught.value)   # what torch hands over from the worker
    assert user_message(caught.value) == Unreadable.MESSAGE


# ----------------------------------------------------------------------------- training

def train_args(data, logs, *extra):
    return [*TINY, f"--TRAIN_IMAGES={data}/train/images",
            f"--TRAIN_ANNOTATIONS={data}/train/instances.json", f"--VAL_IMAGES={data}/val/images",
            f"--VAL_ANNOTATIONS={data}/val/instances.json", f"--LOG_DIR={logs}", "--DEVICE=cpu", *extra]


def test_training_goes_on_past_unreadable_and_missing_images(data, tmp_path):
    """A third of the training images broken, one annotated image missing, one polygon of 4
    numbers, one broken validation image: training goes on and says what it skipped."""
    kinds = ["text", "truncated jpeg", "truncated png", "wrong size"] * 2
    train, broken = damaged_split(data, "train", tmp_path / "data" / "train", kinds)
    val, broken_val = damaged_split(data, "val", tmp_path / "data" / "val", ["text"])
    coco = json.loads((train / "instances.json").read_text())
    coco["images"].append({"id": 99, "file_name": "gone.png", "height": 40, "width": 40})
    coco["annotations"] += [
        {"id": 9001, "image_id": 99, "category_id": 1, "segmentation": [[1, 1, 30, 1, 30, 30]]},
        {"id": 9002, "image_id": 24, "category_id": 2, "segmentation": [[1, 1, 9, 9]]}]
    (train / "instances.json").write_text(json.dumps(coco))
    result = run_script("Train.py", *train_args(tmp_path / "data", tmp_path / "logs", "--RUN=r",
                                                "--STEPS=4", "--VAL_EVERY=4"), here=True)
    out = result.stdout
    assert "1 degenerate" in out and "missing image files: 1" in out
    reported = [line.split(": ", 1)[1] for line in out.splitlines()
                if line.startswith("skipped an unreadable image")]
    assert reported and len(reported) == len(set(reported))
    for reason in reported:
        path = next(p for p in broken if reason.startswith(p + ":"))
        assert broken[path] in reason
    assert "done: 4 steps" in out and f"skipped {len(reported)} unreadable images (first: " \
        f"{reported[0]})" in out
    assert f"validation: skipped 1 unreadable images (first: {next(iter(broken_val))}" in out
    assert torch.load(tmp_path / "logs" / "r" / "last.pt", weights_only=True)["step"] == 4


def checkpoint_tensors(state):
    """Every tensor in a checkpoint (model and optimiser state)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from checkpoint_tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from checkpoint_tensors(value)


@pytest.mark.parametrize("log_every,words", [(1, "the loss became nan"),
                                             (100, "the weights hold NaN/inf at step 2")])
def test_non_finite_training_stops_before_saving(data, tmp_path, log_every, words):
    """LR 1e30: step 1 makes the weights huge but finite (saved), step 2 NaN. Caught by the
    loss check at a log step, or by the check before saving; either way the checkpoints on
    disk stay those of step 1."""
    result = run_script("Train.py", *train_args(data, tmp_path, "--RUN=nan", "--STEPS=6",
                                                "--LR=1e30", f"--LOG_EVERY={log_every}",
                                                "--SAVE_EVERY=1", "--VAL_EVERY=1"),
                        check=False, here=True)
    assert_one_line_error(result, [words, "intact"])
    saved = sorted((tmp_path / "nan").glob("*.pt"))
    assert [p.name for p in saved] == ["best.pt", "last.pt"]
    for path in saved:
        state = torch.load(path, weights_only=True)
        assert state["step"] == 1
        assert all(torch.isfinite(t).all() for t in checkpoint_tensors(state) if t.is_floating_point())


def test_failed_checkpoint_rename_keeps_previous_file(tmp_path, monkeypatch):
    """No permission at the final rename (test_model covers a full disk during the write)."""
    model = AttentionNet(2, arch="resnet18")
    model.save(tmp_path / "last.pt", step=1)

    def denied(*args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(UserError, match="last.pt: cannot write checkpoint.*Permission denied"):
        model.save(tmp_path / "last.pt", step=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_write_png_failure_is_one_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file.*cannot write"):
        write_png(tmp_path / "a_file" / "out.png", np.zeros((4, 4), np.uint8))


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    for name in (".last.pt.tmp4242", ".best.pt.tmp7", "notes.tmp1", "last.pt.tmp3"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    assert sorted(remove_stale_temporaries(tmp_path)) == [".best.pt.tmp7", ".last.pt.tmp4242"]
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "last.pt.tmp3", "notes.tmp1"]


def test_resume_drops_log_rows_after_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.csv"
    rows = [runlog.CSV_FIELDS, [1, 2.5, 1e-3, 10, "", ""], [2, 2.4, 1e-3, 10, "", ""],
            [2, "", "", "", 0.5, 0.4], [3, 2.3, 1e-3, 10, "", ""], [10, 2.2, 1e-3, 10, "", ""]]
    with open(log, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(log, "a") as f:
        f.write("11,2.1")                      # torn by the kill
    assert runlog.trim_log(log, 2) == 3
    assert [r["step"] for r in read_csv(log)] == ["1", "2", "2"]
    assert runlog.trim_log(log, 2) == 0
    log.write_text("")                         # killed before its header
    assert runlog.trim_log(log, 0) == 0
    assert log.read_text().splitlines() == [",".join(runlog.CSV_FIELDS)]


class TrainProcess:
    """Train.py in the background, its output read line by line."""

    def __init__(self, args):
        self.process = subprocess.Popen([sys.executable, os.path.join(ROOT, "Train.py"), *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, cwd=ROOT, env=ENV)
        self.lines = []

    def read_until(self, prefix):
        """Lines up to one starting with `prefix`; None when the process ends first."""
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line
        return None

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.lines += self.process.communicate(timeout=60)[0].splitlines()
        return self.process.returncode

    def output(self):
        return "\n".join(self.lines)


def step_of(path):
    return torch.load(path, weights_only=True)["step"] if path.exists() else 0


KILL_STEPS = 20


def kill_at_random_moment(train, run, resumed, rng):
    """SIGKILL somewhere in the step after the one after `resumed`, or in its save: the
    time of one step is measured on the spot, so any speed of machine is hit alike."""
    first = train.read_until(("resuming", "new run"))
    expected = f"resuming {run} at step {resumed}" if resumed else "new run"
    assert first and expected in first, train.output()
    assert train.read_until(f"step {resumed + 1:>6}/{KILL_STEPS}"), train.output()
    start = time.perf_counter()
    assert train.read_until(f"step {resumed + 2:>6}/{KILL_STEPS}"), train.output()
    time.sleep(rng.uniform(0, 1.2) * (time.perf_counter() - start))
    return train.kill()


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_exactly(data, tmp_path):
    """Train.py killed with SIGKILL at 6 random moments (start-up, mid-step, mid-save) and
    restarted each time: every checkpoint on disk stays readable, each restart resumes at the
    step of last.pt, the log has each step once, and the final weights and optimiser state
    are bitwise those of a run never interrupted (so the data order resumed too)."""
    args = train_args(data, tmp_path, f"--STEPS={KILL_STEPS}", "--SAVE_EVERY=1",
                      "--LOG_EVERY=1", "--VAL_EVERY=10")
    run_script("Train.py", *args, "--RUN=straight", env=ENV)
    run = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    while kills < 6 and step_of(run / "last.pt") < KILL_STEPS - 4:
        resumed = step_of(run / "last.pt")
        train = TrainProcess([*args, "--RUN=killed"])
        if kills == 0:   # during start-up: imports, data, model, first steps
            time.sleep(rng.uniform(0.5, 3.0))
            code = train.kill()
        else:
            code = kill_at_random_moment(train, run, resumed, rng)
        assert code == -signal.SIGKILL, train.output()
        kills += 1
        for path in run.glob("*.pt"):
            torch.load(path, weights_only=True)   # never half a file
        assert step_of(run / "last.pt") >= resumed
    assert kills >= 5
    with open(run / "train_log.csv", "a") as f:   # as if logged after the last save, then killed
        f.write(f"{KILL_STEPS - 1},9.99999,1.000e-03,1.0,,\n")
    train = TrainProcess([*args, "--RUN=killed"])
    done = train.read_until("done: ")
    assert done and f"{KILL_STEPS} of {KILL_STEPS} in all" in done, train.output()
    assert "train_log.csv: dropped" in train.output()
    assert train.process.wait(timeout=60) == 0
    assert not [name for name in os.listdir(run) if ".pt.tmp" in name]

    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    killed = torch.load(run / "last.pt", weights_only=True)
    assert killed["step"] == straight["step"] == KILL_STEPS
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, killed["model"][key]), key
    pairs = list(zip(checkpoint_tensors(straight["optimizer"]), checkpoint_tensors(killed["optimizer"])))
    assert pairs and all(torch.equal(a, b) for a, b in pairs)
    rows = read_csv(run / "train_log.csv")
    expected = read_csv(tmp_path / "straight" / "train_log.csv")
    assert [r["step"] for r in rows if r["loss"]] == [str(s) for s in range(1, KILL_STEPS + 1)]
    assert [(r["step"], r["loss"]) for r in rows if r["loss"]] == \
        [(r["step"], r["loss"]) for r in expected if r["loss"]]
    assert [(r["step"], r["val_accuracy"]) for r in rows if r["val_accuracy"]] == \
        [(r["step"], r["val_accuracy"]) for r in expected if r["val_accuracy"]]
