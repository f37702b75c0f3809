"""Export.py: the ONNX graph agrees with PyTorch at several sizes and carries the metadata; the
safetensors folder reloads bit for bit with no pickle; damaged files get one-line errors."""
import json
import os
import pickle

import onnxruntime as ort
import pytest
import torch

from AttentionNet import AttentionNet
from helpers import run_script
from roilib.checkpoint import load_model_state
from roilib.errors import UserError
from roilib.export import (check_parity, export_onnx, onnx_metadata, open_onnx, parity_inputs,
                           write_release)

NAMES = ["cat", "dog", "car", "tree"]
WINDOW = [64, 96]


def run_export(*args):
    return run_script("Export.py", *args, check=False, here=True)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small resnet18 whose side branch matters: a few SGD steps on random data from the
    zero-effect initialisation, so the trained weights are not the init's round values."""
    torch.manual_seed(0)
    model = AttentionNet(len(NAMES), arch="resnet18", class_names=NAMES, category_ids=[3, 5, 7, 9])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        images, masks = parity_inputs(4, *WINDOW, seed=step)
        loss = torch.nn.functional.cross_entropy(model(images, masks), torch.arange(4) % len(NAMES))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("model") / "best.pt"
    model.save(path, window=WINDOW, params={"ARCH": "resnet18", "MAX_SIZE": 96}, step=3)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return AttentionNet.from_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def onnx_file(checkpoint, model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    export_onnx(model, path, WINDOW, onnx_metadata(load_model_state(checkpoint)))
    return path


def test_the_mask_changes_the_logits(model):
    images, masks = parity_inputs(1, *WINDOW)
    with torch.inference_mode():
        assert (model(images, masks) - model(images, 1 - masks)).abs().max() > 1e-3


def test_onnx_matches_pytorch_at_several_sizes_and_batches(model, onnx_file):
    # The window, and a size that is no multiple of 32 (uneven pooling bins), batch 1 and 3.
    rows = check_parity(model, open_onnx(onnx_file), [tuple(WINDOW), (83, 45)], [1, 3])
    assert [(r["height"], r["width"], r["batch"]) for r in rows] == [
        (64, 96, 1), (64, 96, 3), (83, 45, 1), (83, 45, 3)]
    assert max(r["max_abs_diff"] for r in rows) < 1e-3, rows


def test_onnx_inputs_outputs_and_metadata(onnx_file):
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    images, masks = session.get_inputs()
    assert (images.name, images.type, images.shape) == ("images", "tensor(uint8)", ["batch", 3, "height", "width"])
    assert (masks.name, masks.type, masks.shape) == ("masks", "tensor(uint8)", ["batch", 1, "height", "width"])
    assert session.get_outputs()[0].shape == ["batch", len(NAMES)]
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == NAMES
    assert json.loads(meta["category_ids"]) == [3, 5, 7, 9]
    assert json.loads(meta["window"]) == WINDOW and "centred on the segment" in meta["window_rule"]
    assert (meta["arch"], meta["mode"]) == ("resnet18", "attention")


def test_safetensors_round_trip_is_bitwise_and_needs_no_pickle(checkpoint, model, tmp_path, monkeypatch):
    result = run_export(f"--CHECKPOINT={checkpoint}", "--FORMAT=safetensors", f"--OUT={tmp_path / 'release'}")
    assert result.returncode == 0, result.stderr
    assert "bitwise equal" in result.stdout
    assert sorted(os.listdir(tmp_path / "release")) == ["config.json", "model.safetensors"]

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used while loading a released folder")
    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    reloaded = AttentionNet.from_pretrained(str(tmp_path / "release")).eval()
    state = load_model_state(str(tmp_path / "release"))
    assert state["window"] == WINDOW and state["params"]["MAX_SIZE"] == 96 and state["step"] == 3
    assert reloaded.config == model.config
    images, masks = parity_inputs(3, *WINDOW, seed=7)
    with torch.inference_mode():
        assert torch.equal(reloaded(images, masks), model(images, masks))


def test_export_cli_checks_an_existing_file(checkpoint, onnx_file):
    result = run_export(f"--CHECKPOINT={checkpoint}", f"--OUT={onnx_file}", "--CHECK_ONLY=True",
                        "--GEOMETRIES=40x70", "--BATCHES=2")
    assert result.returncode == 0, result.stderr
    assert "window [64, 96], 4 class names" in result.stdout
    assert "40 x 70" in result.stdout and "parity ok" in result.stdout


def test_corrupt_onnx_is_one_line(checkpoint, onnx_file, tmp_path):
    with open(onnx_file, "rb") as f:
        head = f.read(5000)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(head)                    # truncated
    result = run_export(f"--CHECKPOINT={checkpoint}", f"--OUT={bad}", "--CHECK_ONLY=True")
    assert_one_line_error(result, str(bad), "not a readable ONNX model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        open_onnx(str(bad))


def test_corrupt_release_folder_is_one_line(checkpoint, tmp_path):
    folder = tmp_path / "release"
    write_release(load_model_state(checkpoint), str(folder))
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config[: len(config) // 2])
    result = run_export(f"--CHECKPOINT={folder}", f"--OUT={tmp_path / 'm.onnx'}")
    assert_one_line_error(result, "config.json", "corrupt JSON")

    (folder / "config.json").write_text(config)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:1000])
    with pytest.raises(UserError, match="model.safetensors: not readable safetensors weights"):
        load_model_state(str(folder))
    os.remove(folder / "model.safetensors")
    with pytest.raises(UserError, match="model.safetensors missing"):
        AttentionNet.from_pretrained(str(folder))


def test_exportable_pyramid_equals_adaptive_pooling_and_leaves_the_model_alone(model):
    """The export-only mask pyramid (matrix products) gives adaptive pooling's numbers for binary
    masks at uneven sizes; the exported copy shares no switch with the model it came from."""
    from AttentionNet import mask_pyramid_level
    from roilib.export import exportable, mask_pyramid_level_by_matmul
    masks = (torch.rand(3, 1, 37, 53, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    for size in [(19, 27), (5, 7), (1, 1), (37, 53)]:
        torch.testing.assert_close(mask_pyramid_level_by_matmul(masks, size), mask_pyramid_level(masks, size))
    twin = exportable(model)
    assert not twin.share_image and model.share_image
    assert all(b.pyramid is mask_pyramid_level for b in model.branches.values())
    assert all(b.pyramid is mask_pyramid_level_by_matmul for b in twin.branches.values())
