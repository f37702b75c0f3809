"""Export a trained AttentionNet for use without this repository.

ONNX: one file, <checkpoint>.onnx, whose graph takes uint8 images [B,3,H,W] (RGB) and uint8 masks
[B,1,H,W] (nonzero = ROI) of any batch and size, normalises them inside and returns logits
[B,K]. Its metadata holds the class names, category ids and the evaluation window with its
rule (roilib/windows.py), so a consumer needs no other file.

safetensors: a folder with model.safetensors (weights only) and config.json (the model config
and the checkpoint's plain data), read by roilib.checkpoint.load_model_state with no pickle.
"""
import copy
import json
import os
import re
import warnings

import numpy as np
import torch

from roilib.checkpoint import RELEASE_CONFIG, RELEASE_WEIGHTS, first_line, require, write_safetensors
from roilib.crops import MEAN_COLOUR
from roilib.errors import UserError
from roilib.outputs import atomic_path, write_json, writing
from roilib.windows import WINDOW_RULE, model_window

INPUT_NAMES = ["images", "masks"]
OUTPUT_NAMES = ["logits"]
MIN_SIDE = 32            # AttentionNet refuses smaller images
TOLERANCE = 1e-3         # max abs difference of the logits, onnxruntime vs PyTorch float32
INPUTS_DOC = ("images: uint8 [B,3,H,W] RGB 0..255; masks: uint8 [B,1,H,W], nonzero = ROI; "
              f"any B >= 1 and H, W >= {MIN_SIDE}; one window per mask (see window, window_rule)")
ANSI_COLOUR = r"\x1b\[[0-9;]*m"   # the exporter colours its messages
OUTPUT_DOC = "logits: float32 [B,K] (softmax over K gives the class probabilities)"


# ---- what a consumer needs besides the weights -------------------------------------------
def release_info(state):
    """The plain data of a checkpoint's state that travels with an exported model."""
    return {"format": state.get("format"), "config": dict(state["config"]),
            "window": list(model_window(state)), "window_rule": WINDOW_RULE,
            "padding_rgb": list(MEAN_COLOUR), "params": state.get("params"),
            "label_convention": state.get("label_convention"), "step": state.get("step")}


def onnx_metadata(state):
    """metadata_props of the .onnx file: strings only, lists and dicts as JSON."""
    info = release_info(state)
    config = info["config"]
    return {"class_names": json.dumps(config["class_names"]),
            "category_ids": json.dumps(config["category_ids"]),
            "window": json.dumps(info["window"]), "window_rule": WINDOW_RULE,
            "padding_rgb": json.dumps(info["padding_rgb"]),
            "arch": config["arch"], "mode": config["mode"], "attention": ",".join(config["attention"]),
            "merge": config["merge"], "model_config": json.dumps(config),
            "inputs": INPUTS_DOC, "output": OUTPUT_DOC}


# ---- safetensors ---------------------------------------------------------------------------
def write_release(state, folder):
    """model.safetensors + config.json in `folder` (created if needed); returns the paths."""
    with writing(folder, "the release folder"):
        os.makedirs(folder, exist_ok=True)
    weights, config = os.path.join(folder, RELEASE_WEIGHTS), os.path.join(folder, RELEASE_CONFIG)
    # {"format": "pt"} is the tag model hubs read to know the tensors are PyTorch's.
    write_safetensors(state["model"], weights, metadata={"format": "pt"})
    write_json(config, release_info(state), indent=1)
    return [weights, config]


# ---- ONNX ----------------------------------------------------------------------------------
def exportable(model):
    """A copy of `model` that torch.export keeps dynamic in batch, height and width: the mask
    pyramid as matrix products, and no running of a shared image once (its test on the batch
    size would fix the batch at the example's). The same numbers for binary masks."""
    twin = copy.deepcopy(model).eval()
    twin.share_image = False
    for branch in twin.branches.values():
        branch.pyramid = mask_pyramid_level_by_matmul
    return twin


def mask_pyramid_level_by_matmul(masks, size):
    """AttentionNet.mask_pyramid_level for binary masks as two matrix products over the same bins
    as adaptive pooling. torch.export cannot keep adaptive pooling to a size that depends on the
    input's height and width (it fixes them at the example's); this form stays dynamic."""
    rows = _pooling_bins(masks.shape[-2], size[0], masks.device)
    cols = _pooling_bins(masks.shape[-1], size[1], masks.device)
    sums = rows @ masks @ cols.T
    cells = rows.sum(1, keepdim=True) * cols.sum(1)
    return torch.cat([sums / cells, (sums > 0).to(masks.dtype)], dim=1)


def _pooling_bins(n_in, n_out, device):
    """[n_out, n_in] 0/1 matrix: input index j lies in output bin i. Bins span
    [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)), as in F.adaptive_avg_pool2d."""
    i = torch.arange(n_out, device=device).unsqueeze(1)
    j = torch.arange(n_in, device=device).unsqueeze(0)
    start = i * n_in // n_out
    end = ((i + 1) * n_in + n_out - 1) // n_out
    return ((j >= start) & (j < end)).float()


def export_onnx(model, path, window, metadata, opset=18):
    """Export the float32 CPU `model` (eval mode) with dynamic batch, height and width to
    `path` (one file, written atomically) with `metadata` as metadata_props."""
    require("onnxscript", "onnxscript")
    if model.config["mode"] in ("crop", "crop+attention"):
        raise UserError(f"mode={model.config['mode']} cannot be exported to ONNX with dynamic sizes: "
                        "ONNX RoiAlign needs a fixed output size (the crop is the input's); the other "
                        "modes can")
    height, width = window
    # Batch 2 and unequal sides: torch.export would fix a dim whose example is 1, and could
    # tie height to width if the example had them equal.
    images, masks = parity_inputs(2, height, width + 32)
    batch = torch.export.Dim("batch", min=1)
    # Up from 33, not 32: at 32 the last feature map is 1x1 and torch.export refuses a range
    # whose ends need different layouts. The graph runs at 32 just as well.
    sides = {0: batch, 2: torch.export.Dim("height", min=MIN_SIDE + 1),
             3: torch.export.Dim("width", min=MIN_SIDE + 1)}
    try:
        with warnings.catch_warnings():
            # images and masks share their dims on purpose; the exporter warns that it names
            # each dim once.
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints")
            program = torch.onnx.export(exportable(model), (images, masks), dynamo=True, input_names=INPUT_NAMES,
                                        output_names=OUTPUT_NAMES, opset_version=opset, verbose=False,
                                        dynamic_shapes={"images": sides, "masks": sides})
    except Exception as e:  # the exporter raises many types; the first line names the op
        raise UserError(f"ONNX export failed for this model (mode={model.config['mode']}): "
                        f"{type(e).__name__}: {re.sub(ANSI_COLOUR, '', first_line(e))}") from None
    program.model.metadata_props.update(metadata)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)


def open_onnx(path, threads=0):
    """An onnxruntime CPU session for `path`, or one line saying why the file cannot be run."""
    ort = require("onnxruntime", "onnxruntime")
    if not os.path.isfile(path):
        raise UserError(f"{path}: ONNX file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3   # errors only: its warnings would bury the one-line error
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's InvalidProtobuf, Fail, InvalidGraph ...
        raise UserError(f"{path}: not a readable ONNX model (corrupt or truncated: "
                        f"{first_line(e)})") from None


def read_onnx_metadata(session, path):
    meta = session.get_modelmeta().custom_metadata_map
    missing = [key for key in ("class_names", "window") if key not in meta]
    if missing:
        raise UserError(f"{path}: not an AttentionNet export (metadata lacks {', '.join(missing)})")
    return meta


# ---- parity --------------------------------------------------------------------------------
def parity_geometries(window):
    """The window itself, a larger one of another aspect, and one whose sides are not
    multiples of 32 (where the pooling bins of the mask pyramid are uneven)."""
    height, width = window
    return [(height, width), (height + 64, width + 128),
            (max(height // 2, MIN_SIDE) + 7, max(width // 2, MIN_SIDE) + 13)]


def parity_inputs(batch, height, width, seed=0):
    """Random uint8 images and one random rectangle per mask, as a segment in its window."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)
    masks = torch.zeros(batch, 1, height, width, dtype=torch.uint8)
    for i in range(batch):
        y0, x0 = (int(torch.randint(0, n // 2, (), generator=g)) for n in (height, width))
        y1 = y0 + int(torch.randint(4, height - y0 + 1, (), generator=g))
        x1 = x0 + int(torch.randint(4, width - x0 + 1, (), generator=g))
        masks[i, 0, y0:y1, x0:x1] = 1
    return images, masks


def check_parity(model, session, geometries, batches):
    """onnxruntime vs the float32 PyTorch `model` on the same inputs: one row per geometry and
    batch size with the max abs difference of the logits and the top-1 agreement."""
    rows = []
    for height, width in geometries:
        for batch in batches:
            images, masks = parity_inputs(batch, height, width, seed=height * 1000 + width + batch)
            with torch.inference_mode():
                expected = model(images, masks).numpy()
            got = session.run(OUTPUT_NAMES, {"images": images.numpy(), "masks": masks.numpy()})[0]
            rows.append({"height": height, "width": width, "batch": batch,
                         "max_abs_diff": float(np.abs(got - expected).max()),
                         "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean())})
    return rows


def format_parity(rows):
    lines = [f"  {'H x W':>10} {'batch':>6} {'max |diff|':>11} {'top-1 agree':>12}"]
    lines += [f"  {r['height']:>4} x {r['width']:<4}{r['batch']:>6} {r['max_abs_diff']:>11.2e} "
              f"{100 * r['top1_agreement']:>11.0f}%" for r in rows]
    return "\n".join(lines)


def require_parity(rows, path, tolerance=TOLERANCE):
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    if not worst["max_abs_diff"] <= tolerance:   # also catches NaN
        raise UserError(f"{path}: onnxruntime differs from PyTorch by {worst['max_abs_diff']:.3g} "
                        f"(> {tolerance:g}) at {worst['height']}x{worst['width']}, batch {worst['batch']}; "
                        "do not deploy this file")
