"""Messages that say what is wrong and what to do (issue 24): a last.pt that is a folder, a
damaged checkpoint on Train's resume (with the way out), an image too large to decode (how
large), an allocation failure while building a model, a COCO image size that is not a number
of pixels, a mask file name with a comma; and what was silent: an EXIF-rotated photo, an empty
class name, a crop+attention model's attention points."""
import json
import os
import struct
import zlib

import numpy as np
import pytest

from helpers import run_in_process
from roilib import cli
from roilib.checkpoint import describe_model, load_checkpoint, model_from_state, save_checkpoint
from roilib.errors import UserError
from roilib.imageinfo import exif_notice
from roilib.imageio import read_image, read_mask
from roilib.paths import split_paths


def truncated(path):
    save_checkpoint({"step": 1, "blob": np.zeros(4096)}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def folder(path):
    os.makedirs(path)


CHECKPOINTS = [(folder, "is a folder, not a checkpoint file"), (truncated, "truncated or corrupt"),
               (lambda path: None, "checkpoint not found")]


@pytest.mark.parametrize("make,message", CHECKPOINTS, ids=["folder", "truncated", "missing"])
def test_checkpoint_messages(make, message, tmp_path):
    make(tmp_path / "last.pt")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("make", [folder, truncated], ids=["folder", "truncated"])
def test_trains_resume_from_a_damaged_last_pt_says_the_way_out(make, tmp_path, capsys, monkeypatch):
    make(tmp_path / "run" / "last.pt")
    code, out = run_in_process("Train.py", [f"--LOG_DIR={tmp_path}", "--RUN=run", "--DEVICE=cpu"],
                               capsys, monkeypatch)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "last.pt" in lines[0], out.err
    assert "--RESUME=False" in lines[0] and "another --RUN" in lines[0]


def test_an_allocation_failure_while_building_is_out_of_memory_not_a_version_mismatch():
    def build(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough "
                           "memory: you tried to allocate 1099511627776 bytes.")
    state = {"format": 1, "model": {}, "config": {}}
    with pytest.raises(UserError, match="out of memory while building the model") as error:
        model_from_state(state, "m.pt", build)
    assert "does not match" not in str(error.value)


def png_header_only(width, height):
    """A valid PNG of width x height, 1-bit grey, all zeros (small on disk)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def jpeg_header_only(width, height):
    frame = struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(frame) + 2) + frame
            + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 16 + b"\xff\xd9")


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("name,make", [("big.png", png_header_only), ("big.jpg", jpeg_header_only)])
def test_an_image_too_large_to_decode_says_so_and_how_large(name, make, reader, tmp_path):
    path = tmp_path / name
    path.write_bytes(make(40000, 40000))
    with pytest.raises(UserError, match=r"too large to decode: 40000x40000 .*1600 megapixels") as error:
        reader(path)
    assert "corrupt" not in str(error.value)


@pytest.mark.parametrize("height", ["480", 0, -3, True, 1.5, None, [480]])
def test_a_coco_image_size_that_is_not_pixels_is_named(height, data, tmp_path):
    from CocoReader import CocoReader
    coco = json.loads((data / "val" / "instances.json").read_text())
    coco["images"][0]["height"] = height
    (tmp_path / "i.json").write_text(json.dumps(coco))
    with pytest.raises(UserError, match=r"image \d+ has (height|no height)") as error:
        CocoReader(data / "val" / "images", tmp_path / "i.json")
    assert "RLE" not in str(error.value)


def test_a_coco_image_too_large_to_decode_is_named(data, tmp_path):
    from CocoReader import CocoReader
    coco = json.loads((data / "val" / "instances.json").read_text())
    coco["images"][0].update(height=10 ** 6, width=10 ** 6)
    (tmp_path / "i.json").write_text(json.dumps(coco))
    with pytest.raises(UserError, match=r"image \d+: image too large to decode: 1000000x1000000"):
        CocoReader(data / "val" / "images", tmp_path / "i.json")


@pytest.mark.parametrize("text,expected", [
    ("{d}/a,b.png", ["{d}/a,b.png"]),                         # an existing name, whole
    ("{d}/a,b.png,{d}/c.png", ["{d}/a,b.png", "{d}/c.png"]),
    ("{d}/c.png, {d}/a,b.png", ["{d}/c.png", "{d}/a,b.png"]),
    (r"{d}/x\,y.png,{d}/c.png", ["{d}/x,y.png", "{d}/c.png"]),   # escaped (need not exist yet)
    ("{d}/a,{d}/c.png", ["{d}/a", "{d}/c.png"]),
    ("{d}/*.png,", ["{d}/*.png"]),
])
def test_a_mask_name_with_a_comma(text, expected, tmp_path):
    for name in ("a,b.png", "c.png"):
        (tmp_path / name).touch()
    assert split_paths(text.format(d=tmp_path)) == [e.format(d=tmp_path) for e in expected]


def exif_jpeg(path, orientation):
    from PIL import Image
    image = Image.fromarray(np.full((64, 96, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def test_runprediction_names_an_exif_rotation_and_takes_a_mask_name_with_a_comma(tmp_path, capsys, monkeypatch):
    from AttentionNet import AttentionNet
    AttentionNet(3, arch="resnet18", class_names=["a", "b", "c"]).save(tmp_path / "m.pt", window=[64, 64])
    exif_jpeg(tmp_path / "photo.jpg", 6)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 255
    from roilib.imageio import write_png
    write_png(tmp_path / "mask,1.png", mask)
    code, out = run_in_process("RunPrediction.py", [
        f"--CHECKPOINT={tmp_path / 'm.pt'}", f"--IMAGE={tmp_path / 'photo.jpg'}",
        f"--MASKS={tmp_path / 'mask,1.png'}", "--DEVICE=cpu", "--JSON=True"], capsys, monkeypatch)
    assert code == 0, out.err
    assert [s["mask"] for s in json.loads(out.out)["segments"]] == [str(tmp_path / "mask,1.png")]
    assert "EXIF orientation 6" in out.err and "stored pixel grid" in out.err


@pytest.mark.parametrize("orientation,noticed", [(1, False), (3, True), (6, True), (8, True)])
def test_exif_notice(orientation, noticed, tmp_path):
    exif_jpeg(tmp_path / "p.jpg", orientation)
    assert bool(exif_notice(tmp_path / "p.jpg")) == noticed
    assert exif_notice(tmp_path / "nothing.png") == ""


@pytest.mark.parametrize("value,ok", [("a,b", True), (None, True), ("a,,b", False), ("a,b,", False),
                                      (",", False), ("a, ", False), ("a,a", False), ("", False)])
def test_class_names_none_empty_none_twice(value, ok):
    if ok:
        cli.check_value("CLASS_NAMES", value, "None|names")
    else:
        with pytest.raises(UserError, match="--CLASS_NAMES=.*none empty, none twice"):
            cli.check_value("CLASS_NAMES", value, "None|names")


@pytest.mark.parametrize("mode,points", [("attention", "stem,layer2"), ("crop+attention", "stem,layer2"),
                                         ("crop", "-"), ("blackout", "-")])
def test_the_model_line_names_the_attention_points_of_every_mode_that_has_them(mode, points):
    from AttentionNet import AttentionNet
    model = AttentionNet(2, arch="resnet18", mode=mode, attention="stem,layer2")
    assert f"mode={mode} attention={points} " in describe_model(model.config)


def test_progress_in_a_log_is_one_line_per_count():
    """Where stderr is a file, a bar is whole lines (no carriage returns), and the closing
    refresh does not repeat the last count."""
    import io
    from roilib.progress import progress_bar
    log = io.StringIO()
    with progress_bar(3, "classify", "region", stream=log) as bar:
        for _ in range(3):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(line.startswith("classify:") for line in lines)
    assert sum("3/3" in line for line in lines) == 1 and any("1/3" in line for line in lines)
