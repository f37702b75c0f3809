"""Helpers of the script-level tests (not fixtures: plain functions and constants)."""
import contextlib
import csv
import io
import os
import runpy
import subprocess
import sys

import cv2
import numpy as np

from roilib import cli, crops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny, fast training configuration (CPU, no workers).
TINY = ["--ARCH=resnet18", "--MIN_SIZE=64", "--MAX_SIZE=96", "--MAX_BATCH=6", "--MAX_PIXELS=40000",
        "--WORKERS=0", "--LOG_EVERY=2", "--WARMUP_STEPS=2"]


def run_script(script, *args, check=True, env=None, here=False, cwd=ROOT):
    """Run a top-level script with arguments; fails the test with its output if it fails.
    here=True runs it in this process: the same result without the seconds of importing torch
    and torchvision again, for a run whose process (environment, signals, exit) is not tested."""
    if here:
        assert env is None, "an environment needs a process of its own"
        out, err, before, argv = io.StringIO(), io.StringIO(), os.getcwd(), sys.argv
        try:
            os.chdir(cwd)
            sys.argv = [script, *args]
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = _exit_code(script)
        finally:
            os.chdir(before)
            sys.argv = argv
        result = subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
    else:
        result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True,
                                text=True, cwd=cwd, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _exit_code(script):
    """Run a script as __main__ in this process; its exit status as a process would have it."""
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as exit_info:
        code = exit_info.code
        return 0 if code is None else code if isinstance(code, int) else 1
    return 0


def png(width, height, colour_type=0, body=b"\0"):
    """A PNG whose header claims width x height over a tiny, truncated body (a header bomb;
    colour_type=3: a palette PNG, read by Pillow)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    palette = chunk(b"PLTE", bytes(range(6))) if colour_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + palette + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_in_process(script, args, capsys, monkeypatch):
    """(exit code, captured output) of a script run in this process: quick, since the checks
    under test come before any work."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    return _exit_code(script), capsys.readouterr()


def image_masks(reader, image_index, image_shape):
    """Full-size masks of all segments of one image of a reader, in ``image_segments`` order."""
    return [reader.segment_mask(i, image_shape) for i in reader.image_segments[image_index]]


def resize_mask(mask, size):
    """Resize a {0,1} mask to ``size`` = (w, h) so that no segment vanishes (same rule as
    the crops, see roilib.crops._binarize)."""
    width, height = size
    src_h, src_w = mask.shape
    shrink = width * height < src_w * src_h
    coverage = cv2.resize(mask.astype(np.float32), (width, height),
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x, y, box_w, box_h = cv2.boundingRect(mask.astype(np.uint8))
    if box_w == 0:
        return np.zeros((height, width), np.uint8)
    centre_x = (x + box_w / 2) * width / src_w - 0.5
    centre_y = (y + box_h / 2) * height / src_h - 0.5
    return crops._binarize(coverage, centre_x, centre_y)


def invalid_example(spec, default):
    """A value that `spec` refuses, of the default's type (for tests of every constraint)."""
    if cli._none_or_range(spec):
        spec = spec[5:]
    if spec == "nonempty":
        return ""
    if spec.endswith("names"):
        return "a,,b"
    if spec.startswith("list of ") or "|" in spec and not spec.endswith("HxW"):
        return "no-such-choice"
    if spec.endswith("HxW"):
        return "100x7"
    bound = cli.BOUND.fullmatch(spec)
    op, limit, low, high = bound.groups()
    step = 1 if isinstance(default, int) else 0.5
    # Above a range: twice its end (end + step is the end itself for a float like 1e30).
    value = {">=": lambda v: v - step, ">": lambda v: v, "<=": lambda v: v + step,
             "<": lambda v: v}[op](float(limit)) if op else abs(float(high)) * 2 + step
    return int(value) if isinstance(default, int) else value


EXAMPLE_IMAGE = os.path.join(ROOT, "Test", "example.png")
EXAMPLE_MASKS = [os.path.join(ROOT, "Test", f"example_mask{i}.png") for i in range(1, 5)]
EXAMPLE_CLASSES = ["boat", "car", "brick", "sail", "ring"]  # mask i is class i; "ring": none


def train_on_example(path, window=(64, 64), steps=8, lr=3e-3):
    """A ResNet-18 checkpoint at `path` taught, in seconds, the example's four masks as
    classes 0..3 (one more class that no mask has): a model whose answers are not uniform."""
    import torch

    from AttentionNet import AttentionNet
    from roilib.crops import box_mask
    from roilib.imageio import read_image, read_mask
    from roilib.windows import cut_windows

    image = read_image(EXAMPLE_IMAGE)
    regions = [box_mask(read_mask(p, image.shape[:2])) for p in EXAMPLE_MASKS]
    images, masks = cut_windows(image, regions, window)
    labels = torch.arange(len(regions))
    torch.manual_seed(0)
    model = AttentionNet(len(EXAMPLE_CLASSES), arch="resnet18", class_names=EXAMPLE_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images, masks), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # BatchNorm's running statistics set to those of these windows: eval mode then answers as
    # training saw them (a dozen steps are too few for the running averages to settle).
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(images, masks)
    model.save(path, window=list(window))
    return path
