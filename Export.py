"""Export a trained model for use without this repository: ONNX (checked against PyTorch) or a
safetensors release folder (the layout a model hub expects).

    python Export.py --CHECKPOINT=logs/demo/best.pt                      # -> logs/demo/best.onnx
    python Export.py --CHECKPOINT=logs/demo/best.pt --FORMAT=safetensors # -> logs/demo/best/
    python Export.py --CHECKPOINT=logs/demo/best.pt --OUT=best.onnx --CHECK_ONLY=True

ONNX: uint8 images [B,3,H,W] and masks [B,1,H,W] in, logits [B,K] out, any B, H, W; the class
names and the evaluation window are in the file's metadata. After writing it, onnxruntime and
PyTorch float32 run the same inputs at three geometries and batch sizes; a difference above
TOLERANCE exits with an error. The safetensors folder loads with AttentionNet.from_pretrained,
and every script's --CHECKPOINT accepts it.
"""
import os
import time

import torch

from AttentionNet import AttentionNet
from roilib import cli
from roilib.checkpoint import RELEASE_CONFIG, RELEASE_WEIGHTS, load_model_state
from roilib.errors import UserError
from roilib.export import (check_parity, export_onnx, format_parity, onnx_metadata, open_onnx,
                           parity_geometries, parity_inputs, read_onnx_metadata, require_parity,
                           write_release)
from roilib.paths import find_checkpoint
from roilib.windows import MAX_SIDE, check_memory, model_window
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
CHECKPOINT = "logs/demo/best.pt"   # [nonempty] trained model: a .pt checkpoint or a released folder
FORMAT = "onnx"             # [onnx|safetensors] onnx (one .onnx file with metadata) | safetensors (folder: model.safetensors + config.json)
OUT = ""                    # output .onnx file or folder ("" = next to the checkpoint: best.pt -> best.onnx or best/)
OPSET = 18                  # [18..99] ONNX opset version
CHECK = True                # after export: onnx vs PyTorch (onnx); bitwise-equal logits after reloading (safetensors)
CHECK_ONLY = False          # onnx: check the existing OUT against CHECKPOINT, do not export
GEOMETRIES = ""             # parity check sizes, comma-separated HxW ("" = the window, a larger one, one not a multiple of 32)
BATCHES = "1,8"             # parity check batch sizes, comma-separated
TOLERANCE = 1e-3            # [1e-12..1000] largest allowed max abs difference of the logits
# ---- end of parameters ----


def main():
    cfg = cli.parse_config(globals(), __file__)   # FORMAT's choices are declared in the block
    checkpoint = find_checkpoint(cfg.CHECKPOINT)
    state = load_model_state(checkpoint)
    model = AttentionNet.from_state(state, checkpoint).float().eval()
    out = cfg.OUT or default_out(checkpoint, cfg.FORMAT)
    check_outputs(checkpoint, out, cfg.FORMAT, cfg.CHECK_ONLY)
    if cfg.FORMAT == "onnx":
        export_and_check_onnx(model, state, out, cfg)
    else:
        release(model, state, checkpoint, out, cfg.CHECK)


def default_out(checkpoint, fmt):
    stem = os.path.splitext(os.path.normpath(checkpoint))[0]
    if fmt == "onnx":
        return stem + ".onnx"
    if os.path.isdir(checkpoint):
        raise UserError(f"{checkpoint} is already a released folder; give --OUT=folder for a copy")
    return stem


def check_outputs(checkpoint, out, fmt, check_only):
    """Before the export: never over the checkpoint, a run's files or another model's release
    (a release is replaced only in this checkpoint's own folder: best.pt -> best/)."""
    if fmt == "onnx":
        check_writes([] if check_only else [("--OUT", out)], [checkpoint])
        return
    own = (not os.path.isdir(checkpoint)
           and os.path.realpath(out) == os.path.realpath(default_out(checkpoint, fmt)))
    check_writes([("--OUT", os.path.join(out, name)) for name in (RELEASE_CONFIG, RELEASE_WEIGHTS)],
                 [checkpoint], folders=[("--OUT", out)], owns=("release",) if own else ())


def export_and_check_onnx(model, state, out, cfg):
    window = model_window(state)
    sizes = parse_sizes(cfg.GEOMETRIES) if cfg.GEOMETRIES else parity_geometries(window)
    batches = batch_sizes(cfg.BATCHES)
    check_memory(f"--BATCHES={cfg.BATCHES} (sizes {', '.join(f'{h}x{w}' for h, w in sizes)})",
                 max(batches) * max(h * w for h, w in sizes))
    if not cfg.CHECK_ONLY:
        start = time.perf_counter()
        export_onnx(model, out, window, onnx_metadata(state), cfg.OPSET)
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    if not (cfg.CHECK or cfg.CHECK_ONLY):
        return
    session = open_onnx(out)
    meta = read_onnx_metadata(session, out)
    print(f"metadata: window {meta['window']}, {len(model.class_names or [])} class names, "
          f"arch {meta.get('arch')}, mode {meta.get('mode')}")
    rows = check_parity(model, session, sizes, batches)
    print("onnxruntime vs PyTorch float32 (logits):")
    print(format_parity(rows))
    require_parity(rows, out, cfg.TOLERANCE)
    print(f"parity ok: max |diff| {max(r['max_abs_diff'] for r in rows):.2e} <= {cfg.TOLERANCE:g}")


def release(model, state, checkpoint, out, check):
    paths = write_release(state, out)
    print(f"wrote {', '.join(paths)}")
    if check:
        check_release(model, out, model_window(state))


def check_release(model, folder, window):
    """The released folder rebuilds a model whose logits equal the checkpoint's, bit for bit."""
    reloaded = AttentionNet.from_pretrained(folder).eval()
    images, masks = parity_inputs(2, *window)
    with torch.inference_mode():
        if not torch.equal(model(images, masks), reloaded(images, masks)):
            raise UserError(f"{folder}: the reloaded model's logits differ from the checkpoint's")
    print(f"round trip ok: logits bitwise equal after AttentionNet.from_pretrained({folder!r})")


def parse_sizes(text):
    """'HxW,...' -> [(H, W), ...]: any sides of at least 32 (parity sizes need not be multiples
    of 32)."""
    sizes = []
    for size in (t for t in text.split(",") if t.strip()):
        parts = size.lower().strip().split("x")
        if len(parts) != 2 or not all(p.isdigit() and 32 <= int(p) <= MAX_SIDE for p in parts):
            raise UserError(f"--GEOMETRIES={text}: expected HxW sizes from 32 to {MAX_SIDE}, comma-separated")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def batch_sizes(text):
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--BATCHES={text}: expected positive integers, comma-separated")
    return sizes


if __name__ == "__main__":
    cli.run(main)
