"""Outputs are never clobbered or misdirected, and errors are named for what they are."""
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from AttentionNet import AttentionNet
from helpers import ROOT, run_in_process
from roilib.checkpoint import load_checkpoint, save_checkpoint
from roilib.errors import UserError
from roilib.imageio import read_mask, write_image

# pycocotools trips numpy 2's __array__(copy=...) deprecation: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from roilib.demo import CLASS_NAMES
    path = tmp_path_factory.mktemp("model") / "model.pt"
    AttentionNet(len(CLASS_NAMES), arch="resnet18", class_names=CLASS_NAMES).save(path, window=[64, 64])
    return path


def test_limit_refused_leaves_the_old_results(checkpoint, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval.json").write_text('{"old": true}')
    code, printed = run_in_process("EvaluateAccuracy.py", [
        f"--CHECKPOINT={checkpoint}", "--DATASET=demo", f"--IMAGES={data}/val/images",
        f"--ANNOTATIONS={data}/val/instances.json", f"--OUT={out}", "--LIMIT=-1"], capsys, monkeypatch)
    assert code == 2 and "--LIMIT=-1: expected" in printed.err
    assert json.loads((out / "eval.json").read_text()) == {"old": True}


def test_class_names_that_differ_are_refused(data, tmp_path, capsys, monkeypatch):
    from roilib.demo import CLASS_NAMES
    boat, car = CLASS_NAMES.index("boat"), CLASS_NAMES.index("car")
    names = list(CLASS_NAMES)
    names[boat], names[car] = "car", "boat"                                      # two swapped
    checkpoint = tmp_path / "swapped.pt"
    AttentionNet(len(names), arch="resnet18", class_names=names).save(checkpoint, window=[64, 64])
    args = [f"--CHECKPOINT={checkpoint}", "--DATASET=demo", f"--IMAGES={data}/val/images",
            f"--ANNOTATIONS={data}/val/instances.json", f"--OUT={tmp_path}/eval", "--WORKERS=0"]
    code, printed = run_in_process("EvaluateAccuracy.py", args, capsys, monkeypatch)
    assert code == 2
    assert f"class {boat} is 'car' in the model but 'boat'" in printed.err and "MATCH_BY_INDEX" in printed.err
    assert not (tmp_path / "eval" / "eval.json").exists()
    code, printed = run_in_process("EvaluateAccuracy.py", args + ["--MATCH_BY_INDEX=True", "--LIMIT=1"],
                                   capsys, monkeypatch)
    assert code == 0 and "matching classes by index" in printed.out
    assert (tmp_path / "eval" / "eval.json").exists()


def test_overlay_over_an_input_is_refused(checkpoint, tmp_path, capsys, monkeypatch):
    image = tmp_path / "image.png"
    shutil.copy(os.path.join(ROOT, "Test", "example.png"), image)
    before = image.read_bytes()
    mask = os.path.join(ROOT, "Test", "example_mask1.png")
    common = [f"--CHECKPOINT={checkpoint}", f"--IMAGE={image}", f"--MASKS={mask}", "--DEVICE=cpu"]
    code, printed = run_in_process("RunPrediction.py", common + [f"--OVERLAY={image}"], capsys, monkeypatch)
    assert code == 2 and "--OVERLAY=" in printed.err and "input" in printed.err
    assert image.read_bytes() == before
    code, printed = run_in_process("RunPrediction.py", common + [f"--OVERLAY={tmp_path}/o.gif"], capsys, monkeypatch)
    assert code == 2 and "unknown image extension .gif" in printed.err


def test_overlay_format_follows_its_extension(checkpoint, tmp_path, capsys, monkeypatch):
    mask = os.path.join(ROOT, "Test", "example_mask1.png")
    code, _ = run_in_process("RunPrediction.py", [
        f"--CHECKPOINT={checkpoint}", f"--IMAGE={ROOT}/Test/example.png", f"--MASKS={mask}",
        "--DEVICE=cpu", f"--OVERLAY={tmp_path}/overlay.jpg"], capsys, monkeypatch)
    assert code == 0 and (tmp_path / "overlay.jpg").read_bytes()[:2] == b"\xff\xd8"      # JPEG, not PNG bytes


def test_a_save_failing_with_a_runtime_error_is_named_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"cannot write checkpoint \(disk full\?"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_memory_error_while_loading_says_out_of_memory(checkpoint, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(torch, "load", no_memory)
    with pytest.raises(UserError, match="out of memory while loading") as error:
        load_checkpoint(checkpoint)
    assert "corrupt" not in str(error.value)


def test_jpeg_mask_is_thresholded_at_half_its_maximum(tmp_path, capsys):
    mask = np.zeros((64, 80), np.uint8)
    cv2.circle(mask, (40, 32), 15, 255, -1)
    path = tmp_path / "mask.jpg"
    write_image(path, mask)
    decoded = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert np.unique(decoded).size > 2                        # the lossy save blurred the edge
    read = read_mask(path)
    assert (read == (decoded > decoded.max() / 2)).all()
    assert abs(int(read.sum()) - int((mask > 0).sum())) <= 0.03 * (mask > 0).sum()
    assert (decoded > 0).sum() > 1.05 * (mask > 0).sum()      # 'nonzero = inside' would grow it
    assert "grey levels (a lossy JPEG?)" in capsys.readouterr().err


def test_stop_at_message_does_not_point_at_a_missing_best(data, tmp_path):
    from helpers import TINY, run_script
    out = run_script("Train.py", *TINY, f"--TRAIN_IMAGES={data}/train/images",
                     f"--TRAIN_ANNOTATIONS={data}/train/instances.json", f"--VAL_IMAGES={data}/val/images",
                     f"--VAL_ANNOTATIONS={data}/val/instances.json", f"--LOG_DIR={tmp_path}", "--RUN=r",
                     "--STEPS=10", "--STOP_AT=2", "--DEVICE=cpu", here=True).stdout
    assert not (tmp_path / "r" / "best.pt").exists()
    assert "best.pt" not in out.splitlines()[-1] and "last.pt" in out.splitlines()[-1]


def test_swapped_size_names_exif_rotation(tmp_path):
    from roilib.imageio import write_png
    write_png(tmp_path / "mask.png", np.ones((30, 40), np.uint8))
    with pytest.raises(UserError, match="width and height swapped.*EXIF"):
        read_mask(tmp_path / "mask.png", (40, 30))


# ----------------------------------------------------------------------------- one atomic write

def test_every_writer_goes_through_the_one_temporary_scheme(tmp_path, monkeypatch):
    """Checkpoints, safetensors, JSON, index caches and plain files all write to
    temporary_path's name, which the one stale-temporary cleaner recognises."""
    from roilib import indexcache
    from roilib.checkpoint import write_safetensors
    from roilib.outputs import atomic_write, remove_stale_temporaries, temporary_path, write_json
    replaced, real_replace = [], os.replace

    def recording_replace(src, dst):
        replaced.append((os.fspath(src), os.fspath(dst)))
        shutil.copy(src, os.fspath(src) + ".copy")        # what a kill at this moment leaves
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", recording_replace)
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    write_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    write_json(tmp_path / "eval.json", {"a": 1})
    indexcache._save(str(tmp_path / "index.npz"), "{}", {"x": np.zeros(3)})
    with atomic_write(tmp_path / "log.csv") as f:
        f.write("step\n")
    monkeypatch.undo()
    names = ["last.pt", "model.safetensors", "eval.json", "index.npz", "log.csv"]
    assert [os.path.basename(dst) for _, dst in replaced] == names
    assert all(src == temporary_path(dst) for src, dst in replaced)
    for src, _ in replaced:                                 # as a killed writer leaves them
        os.rename(src + ".copy", src)
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(f".{n}.tmp{os.getpid()}" for n in names)
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_write_json_is_always_valid_json_and_keeps_the_old_file(tmp_path):
    from roilib.outputs import write_json
    path = tmp_path / "out.json"
    write_json(path, [{"score": 0.5}])
    with pytest.raises(UserError, match="out.json: not written .*the previous file there"):
        write_json(path, [{"score": float("nan")}])
    assert json.loads(path.read_text()) == [{"score": 0.5}]
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_full_disk_is_called_so(tmp_path, monkeypatch):
    import errno
    from roilib.outputs import write_json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(UserError, match="r.json: cannot write \\(disk full: No space left"):
        write_json(tmp_path / "r.json", {})
    assert os.listdir(tmp_path) == []


def test_image_sizes_a_format_cannot_hold_are_refused_before_the_work(monkeypatch):
    """JPEG and WebP's side limits (OpenCV's encoders), and a size OpenCV would not read back,
    each refused with the way out; a PNG of the same side, or a bmp, goes through."""
    from roilib.imageio import check_image_size
    check_image_size("out.jpg", 65500, 10)
    with pytest.raises(UserError) as caught:
        check_image_size("out.jpg", 65501, 10)
    assert re.search(r"out\.jpg: .* beyond what JPEG holds \(65500 px a side\); write a \.png, or fewer$",
                     str(caught.value.advised("fewer")))
    with pytest.raises(UserError, match=r"beyond what WebP holds \(16383 px a side\)"):
        check_image_size("out.webp", 10, 16384)
    check_image_size("out.png", 65501, 10)
    check_image_size("out.bmp", 65501, 10)
    monkeypatch.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(UserError) as caught:
        check_image_size("out.png", 40, 30)
    assert re.search(r"out\.png: it could not be read back, image too large .*; fewer$", str(caught.value.advised("fewer")))
    with pytest.raises(UserError, match="cannot encode"):   # the limits are OpenCV's own
        write_image("/nonexistent/never.webp", np.zeros((10, 16384, 3), np.uint8))
