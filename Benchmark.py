"""Measure training, evaluation and prediction speed on this machine, in one run.

    python Benchmark.py                          # CPU: a few minutes
    python Benchmark.py --PARTS=a,c --STEPS=20   # only some parts

(a) model only: forward + backward + AdamW step on tensors already on the device (img/s)
(b) end to end: the real Train.py loop on the demo data at the same geometry; ratio (b)/(a)
(c) side-branch cost: forward of AttentionNet with stem attention vs. the plain ResNet
(d) evaluation: segments/s of EvaluateAccuracy's batched path vs. one segment per forward
(e) prediction: RunPrediction.py latency for one image with 8 masks, model load included and not
(f) dataset scale (not in the default PARTS: minutes, ~1 GB of disk): COCO-train-sized and
    OpenSurfaces-sized synthetic data (tools/make_scale_data.py); cold start (no index cache)
    and warm start of each reader, main-process memory, and the summed private memory (USS)
    of main + SCALE_WORKERS DataLoader workers after batch 10 and batch SCALE_BATCHES.
    python Benchmark.py --PARTS=f --SCALE_DATA=/tmp/scale   # reuses data made there before
Prints a table and writes it to logs/benchmark/<device>.md and .json.
"""
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from AttentionNet import AttentionNet
from Datasets import open_dataset
from roilib import cli
from roilib.benchutil import inputs, report, row, timed
from roilib.errors import UserError
from roilib.evaluation import SegmentWindows, forward_windows, predict_dataset
from roilib.paths import REPO
from roilib.runtime import amp_dtype, autocast, precision_name, resolve_device
from roilib.windows import cut_windows, parse_window

# ---- parameters: edit here, or override as --NAME=value ----
PARTS = "a,b,c,d,e"         # [list of a|b|c|d|e|f] which measurements to run
ARCH = "resnet50"           # [resnet18|resnet34|resnet50|resnet101|resnet152] the architecture measured (the paper's)
CONFIG_ARCH = "resnet18"    # [""|resnet18|resnet34|resnet50|resnet101|resnet152] also measured in (a): the configured default of Train.py ("" = skip)
BATCH = 8                   # [>=1] training batch for (a) and (b)
SIZE = 224                  # [>=32] training crop side for (a) and (b)
STEPS = 8                   # [>=1] timed steps in (a) (after WARMUP); (b) runs 4 * STEPS + warm-up
WARMUP = 3                  # [>=0] untimed steps first (allocations, autotuning)
EVAL_IMAGES = 24            # [>=1] demo validation images used in (d)
EVAL_SIZE = "480x640"       # also time (d) at this HxW with 8 masks on one image (synthetic)
EVAL_WINDOW = "160x160"     # [HxW] evaluation window in (d) (the demo run's: Train.py's MAX_SIZE)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 where the device runs it natively (the scripts' default)
CHANNELS_LAST = True        # channels-last memory format (the scripts' default)
COMPILE = False             # also torch.compile the model in (a) (GPU)
WORKERS = 2                 # [>=0] DataLoader workers in (b)
SCALE_DATA = ""             # (f) folder of tools/make_scale_data.py ("" = temporary); made if absent
SCALE_IMAGES = 118287       # [>=1] (f) COCO images when making the data (train2017's count)
SCALE_MAPS = 25000          # [>=1] (f) label maps when making the data (OpenSurfaces' ~25k)
SCALE_WORKERS = 4           # [>=0] (f) DataLoader workers; their USS is summed with the main process's
SCALE_BATCHES = 1000        # [>=10] (f) batches of 32 crops of 224² read before the last memory reading
OUT = "logs/benchmark"      # [nonempty] where the table is written
# ---- end of parameters ----


def main():
    params = cli.parse_parameters(globals(), __file__)
    check_parameters()
    device = resolve_device(DEVICE)
    dtype = amp_dtype(device, AMP)
    torch.backends.cudnn.benchmark = True
    parts = {p.strip() for p in PARTS.split(",")}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"benchmark on {name}, torch {torch.__version__}, default precision {precision_name(dtype)}, "
          f"{'channels_last' if CHANNELS_LAST else 'contiguous'}", flush=True)
    rows = []
    if "a" in parts or "b" in parts:
        rows += part_a(device, dtype)
    if "b" in parts:
        rows += part_b(device, rows)
    if "c" in parts:
        rows += part_c(device, dtype)
    if "d" in parts:
        rows += part_d(device, dtype)
    if "e" in parts:
        rows += part_e(device)
    if "f" in parts:
        rows += part_f()
    report(rows, params, name, device, out_folder())


def check_parameters():
    """Values only used late, checked before minutes of measuring instead of after."""
    if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", EVAL_SIZE):
        raise UserError(f"--EVAL_SIZE={EVAL_SIZE}: expected HxW, e.g. 480x640")
    try:
        os.makedirs(out_folder(), exist_ok=True)
    except OSError as error:
        raise UserError(f"{out_folder()}: cannot create the output folder "
                        f"({error.strerror or error})") from None


def out_folder():
    return OUT if os.path.isabs(OUT) else os.path.join(REPO, OUT)


def model_on(device, arch, mode="attention", channels_last=CHANNELS_LAST):
    torch.manual_seed(0)
    model = AttentionNet(80, arch=arch, mode=mode, attention="stem").to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


# ---- (a) model only ------------------------------------------------------------------------
def train_step_rate(device, dtype, arch, compile_model=False):
    model = model_on(device, arch).train()
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, masks = inputs(BATCH, SIZE, SIZE, device, channels_last=CHANNELS_LAST)
    labels = torch.arange(BATCH, device=device) % 80

    def step():
        with autocast(device, dtype):
            logits = net(images, masks)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = timed(step, device, STEPS, WARMUP + (5 if compile_model else 0))
    return BATCH / seconds


def part_a(device, dtype):
    rows = []
    archs = [ARCH] + ([CONFIG_ARCH] if CONFIG_ARCH and CONFIG_ARCH != ARCH else [])
    for arch in archs:
        precisions = [None] + ([dtype] if dtype is not None else [])
        rates = {}
        for p in precisions:
            rates[p] = train_step_rate(device, p, arch)
            rows.append(row("a", f"model only, train step, {arch} {BATCH}x{SIZE}², {precision_name(p)}",
                            rates[p], "img/s"))
            print(rows[-1]["text"], flush=True)
        if dtype is not None:
            rows.append(row("a", f"  {arch}: {precision_name(dtype)} / float32", rates[dtype] / rates[None], "x"))
        if COMPILE:
            rate = train_step_rate(device, dtype, arch, compile_model=True)
            rows.append(row("a", f"model only, train step, {arch}, {precision_name(dtype)}, torch.compile", rate, "img/s"))
    return rows


# ---- (b) end to end --------------------------------------------------------------------------
def part_b(device, rows_a):
    """Train.py itself (sampler, workers, transfer, step) at the geometry of (a), fixed size."""
    windows, per_window = 4, STEPS
    with tempfile.TemporaryDirectory() as logs:
        args = [f"--ARCH={ARCH}", f"--MIN_SIZE={SIZE}", f"--MAX_SIZE={SIZE}", f"--MAX_BATCH={BATCH}",
                f"--MAX_PIXELS={BATCH * SIZE * SIZE}", f"--STEPS={(windows + 1) * per_window}",
                f"--LOG_EVERY={per_window}", "--VAL_EVERY=1000000", "--VAL_MAX_IMAGES=1", "--SAVE_EVERY=1000000",
                f"--LOG_DIR={logs}", "--RUN=bench", f"--WORKERS={WORKERS}", f"--DEVICE={device}",
                f"--AMP={AMP}", f"--CHANNELS_LAST={CHANNELS_LAST}", f"--COMPILE={COMPILE}", "--WARMUP_STEPS=1"]
        done = subprocess.run([sys.executable, os.path.join(REPO, "Train.py"), *args], cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"Train.py failed: {done.stderr.strip()[-500:]}")
        with open(os.path.join(logs, "bench", "train_log.csv"), newline="") as f:
            rates = [float(r["img_per_s"]) for r in csv.DictReader(f) if r["img_per_s"]]
    rate = statistics.median(rates[1:])          # the first window holds start-up
    rows = [row("b", f"end to end, Train.py, {ARCH} {BATCH}x{SIZE}², defaults, {WORKERS} workers", rate, "img/s")]
    default = [r for r in rows_a if r["part"] == "a" and ARCH in r["what"] and "img/s" == r["unit"]]
    if default:
        rows.append(row("b", "  (b) / (a) at the same precision", rate / default[-1]["value"], "x"))
        rows.append(row("b", "  (b) / (a) float32", rate / default[0]["value"], "x"))
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


# ---- (c) side-branch cost ----------------------------------------------------------------------
def part_c(device, dtype):
    images, masks = inputs(BATCH, SIZE, SIZE, device, channels_last=CHANNELS_LAST)
    models = {"none": model_on(device, ARCH, "none").eval(), "stem": model_on(device, ARCH).eval()}
    with torch.no_grad():
        models["stem"].branches["stem"].add.weight.normal_()   # a trained-looking branch

    def forward(model):
        with torch.inference_mode(), autocast(device, dtype):
            model(images, masks)
    times = {k: [] for k in models}
    for _ in range(3):            # interleaved rounds: a noisy machine hits both alike
        for k, m in models.items():
            times[k].append(timed(lambda: forward(m), device, max(STEPS // 2, 3), 1))
    plain, stem = min(times["none"]), min(times["stem"])
    rows = [row("c", f"forward {ARCH} {BATCH}x{SIZE}², {precision_name(dtype)}, plain ResNet", BATCH / plain, "img/s"),
            row("c", f"forward {ARCH} {BATCH}x{SIZE}², {precision_name(dtype)}, stem attention", BATCH / stem, "img/s"),
            row("c", "  side-branch cost: time(stem) / time(plain)", stem / plain, "x")]
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


# ---- (d) evaluation --------------------------------------------------------------------------
def part_d(device, dtype):
    dataset = open_dataset("demo", "val", train=False)
    window = parse_window(EVAL_WINDOW, "EVAL_WINDOW")
    model = model_on(device, ARCH).eval()
    batched = predict_dataset(model, dataset, device, dtype, window=window, limit=EVAL_IMAGES,
                              progress=False)
    naive_model = model_on(device, ARCH, channels_last=False).eval()
    windows = SegmentWindows(dataset, window, images=range(min(EVAL_IMAGES, len(dataset.images))))
    count, start = 0, time.perf_counter()
    with torch.no_grad():          # the original's way: float32, one segment per forward
        for item in windows:
            for image, mask in zip(item["images"], item["masks"]):
                naive_model(image[None].to(device), mask[None].to(device)).argmax(1).cpu()
                count += 1
    naive = count / (time.perf_counter() - start)
    h, w = (int(v) for v in EVAL_SIZE.split("x"))
    full = full_size_eval(device, dtype, h, w, window)
    size = f"{window[0]}x{window[1]} windows"
    rows = [row("d", f"evaluation, demo images, {size}, {ARCH}: batched ({precision_name(dtype)})",
                batched["segments_per_s"], "seg/s"),
            row("d", "evaluation, same windows: one segment per forward (float32)", naive, "seg/s"),
            row("d", "  batched / one per forward", batched["segments_per_s"] / naive, "x"),
            row("d", f"{h}x{w} image, 8 masks, {size}: batched ({precision_name(dtype)}), cutting included", full["batched"], "seg/s"),
            row("d", f"{h}x{w} image, 8 masks: one per forward (float32)", full["naive"], "seg/s"),
            row("d", f"{h}x{w} image, 8 masks: one per forward ({precision_name(dtype)})", full["single"], "seg/s"),
            row("d", f"  {h}x{w}: batched / one per forward (float32)", full["batched"] / full["naive"], "x")]
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


def full_size_eval(device, dtype, h, w, window):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = []
    for _ in range(8):
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        mask[y:y + rng.integers(8, 40), x:x + rng.integers(8, 40)] = 1
        masks.append(mask)
    fast, slow = model_on(device, ARCH).eval(), model_on(device, ARCH, channels_last=False).eval()
    cut, cut_masks = cut_windows(image, masks, window)

    def batched():
        images, window_masks = cut_windows(image, masks, window)
        with torch.inference_mode():
            forward_windows(fast, images, window_masks, device, dtype)

    def one_by_one(model, precision):
        def run():
            with torch.inference_mode():
                for i in range(len(masks)):
                    forward_windows(model, cut[i:i + 1], cut_masks[i:i + 1], device, precision)
        return run
    repeats = max(STEPS // 4, 2)
    return {"batched": 8 / timed(batched, device, repeats, 1),
            "naive": 8 / timed(one_by_one(slow, None), device, repeats, 1),
            "single": 8 / timed(one_by_one(fast, dtype), device, repeats, 1)}


# ---- (e) prediction --------------------------------------------------------------------------
def part_e(device):
    from roilib.imageio import read_label_map, write_png
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "model.pt")
        AttentionNet(8, arch=ARCH, attention="stem").save(checkpoint)
        labels = read_label_map(os.path.join(REPO, "Test", "example_labels.png"))
        masks = [(labels == v).astype(np.uint8) * 255 for v in np.unique(labels) if v]
        masks = (masks + [np.fliplr(m).copy() for m in masks])[:8]          # 8 masks
        paths = []
        for i, m in enumerate(masks):
            paths.append(os.path.join(tmp, f"mask{i}.png"))
            write_png(paths[-1], m)
        cmd = [sys.executable, os.path.join(REPO, "RunPrediction.py"), f"--CHECKPOINT={checkpoint}",
               f"--MASKS={','.join(paths)}", f"--DEVICE={device}", "--JSON=True"]
        totals = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, capture_output=True, check=True)
            totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        model = AttentionNet.from_checkpoint(checkpoint).to(device).eval()
        load = time.perf_counter() - start
        image = torch.from_numpy(np.ascontiguousarray(
            np.repeat(labels[..., None], 3, 2).astype(np.uint8))).permute(2, 0, 1)[None].to(device)
        batch = torch.from_numpy(np.stack(masks))[:, None].to(device)
        predict = timed(lambda: model.predict(image, batch), device, 5, 1)
    rows = [row("e", f"RunPrediction.py, 1 image + 8 masks, {ARCH}: whole command (Python start, load, predict)",
                1000 * statistics.median(totals), "ms"),
            row("e", "  model load from checkpoint", 1000 * load, "ms"),
            row("e", "  predict (8 masks, one batch), model loaded", 1000 * predict, "ms")]
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


# ---- (f) dataset scale ------------------------------------------------------------------------
def part_f():
    """Readers at real scale, each start in a fresh process (tools/scale_probe.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = SCALE_DATA or os.path.join(tmp, "data")
        if not os.path.exists(os.path.join(data, "coco", "instances.json")):
            start = time.perf_counter()
            make = [sys.executable, os.path.join(REPO, "tools", "make_scale_data.py"),
                    f"--out={data}", f"--images={SCALE_IMAGES}", f"--maps={SCALE_MAPS}"]
            subprocess.run(make, check=True, capture_output=True)
            print(f"(f) data made in {time.perf_counter() - start:.0f} s: {data}", flush=True)
        cache = os.path.join(tmp, "cache")  # empty: the first start of each reader is cold
        coco_cold = scale_probe("coco", data, cache)
        coco_warm = scale_probe("coco", data, cache, batches=SCALE_BATCHES)
        maps_cold = scale_probe("maps", data, cache)
        maps_warm = scale_probe("maps", data, cache)
    mib = 2 ** 20
    first, last = sorted(coco_warm["uss"], key=int)
    coco = f"COCO {coco_cold['images']} images, {coco_cold['segments']} segments"
    rows = [row("f", f"{coco}: cold start (index built)", coco_cold["start_s"], "s"),
            row("f", "  cold start, CPU time (user + system)", coco_cold["start_cpu_s"], "s"),
            row("f", f"{coco}: warm start (index cached)", coco_warm["start_s"], "s"),
            row("f", "  main-process memory for the dataset, after a cold start",
                (coco_cold["rss_after"] - coco_cold["rss_before"]) / mib, "MiB"),
            row("f", "  main-process memory for the dataset, after a warm start",
                (coco_warm["rss_after"] - coco_warm["rss_before"]) / mib, "MiB"),
            row("f", f"  USS main + {coco_warm['workers']} workers after batch {first}",
                coco_warm["uss"][first] / mib, "MiB"),
            row("f", f"  USS main + {coco_warm['workers']} workers after batch {last}",
                coco_warm["uss"][last] / mib, "MiB"),
            row("f", f"  USS growth from batch {first} to {last}",
                (coco_warm["uss"][last] - coco_warm["uss"][first]) / mib, "MiB"),
            row("f", f"label maps, {maps_cold['images']} maps: cold start (all scanned)",
                maps_cold["start_s"], "s"),
            row("f", "  cold start, CPU time (user + system, all threads)",
                maps_cold["start_cpu_s"], "s"),
            row("f", "label maps: warm start (index cached)", maps_warm["start_s"], "s"),
            row("f", "  main-process memory for the dataset, after a warm start",
                (maps_warm["rss_after"] - maps_warm["rss_before"]) / mib, "MiB")]
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


def scale_probe(kind, data, cache, batches=0):
    """One reader start in a fresh process -> the probe's figures (a dict)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "scale_probe.py"), kind, data,
           f"--workers={SCALE_WORKERS}", f"--batches={batches}"]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, ROI_ATTENTION_CACHE=cache))
    if done.returncode != 0:
        raise RuntimeError(f"scale probe failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    cli.run(main)
