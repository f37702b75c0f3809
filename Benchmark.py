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
Prints a table and writes it to logs/benchmark/<device>.md and .json. Each part is a module of
benchmarks/; this script reads its parameters once and hands each part its values.
"""
import os
import re
from types import SimpleNamespace

import torch

from benchmarks import dataset_scale, end_to_end, evaluation, prediction, side_branch, train_step
from benchmarks.common import Bench
from roilib import cli
from roilib.benchutil import report, report_paths
from roilib.errors import UserError
from roilib.imageinfo import size_problem
from roilib.paths import REPO
from roilib.runtime import amp_dtype, precision_name, resolve_device
from roilib.windows import check_memory, parse_window
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
PARTS = "a,b,c,d,e"         # [list of a|b|c|d|e|f] which measurements to run
ARCH = "resnet50"           # [resnet18|resnet34|resnet50|resnet101|resnet152|tf_efficientnet_lite0|tf_efficientnet_lite1|tf_efficientnet_lite2|tf_efficientnet_lite3|tf_efficientnet_lite4|efficientnet_b0|efficientnet_b1|efficientnet_b2|efficientnet_b3] the architecture measured (the paper's)
CONFIG_ARCH = "resnet18"    # [""|resnet18|resnet34|resnet50|resnet101|resnet152|tf_efficientnet_lite0|tf_efficientnet_lite1|tf_efficientnet_lite2|tf_efficientnet_lite3|tf_efficientnet_lite4|efficientnet_b0|efficientnet_b1|efficientnet_b2|efficientnet_b3] also measured in (a): the configured default of Train.py ("" = skip)
BATCH = 8                   # [1..65536] training batch for (a) and (b)
SIZE = 224                  # [32..8192] training crop side for (a) and (b)
STEPS = 8                   # [1..1e6] timed steps in (a) (after WARMUP); (b) runs 4 * STEPS + warm-up
WARMUP = 3                  # [0..1e6] untimed steps first (allocations, autotuning)
EVAL_IMAGES = 24            # [1..1e6] demo validation images used in (d)
EVAL_SIZE = "480x640"       # also time (d) at this HxW with 8 masks on one image (synthetic)
EVAL_WINDOW = "160x160"     # [HxW] evaluation window in (d) (the demo run's: Train.py's MAX_SIZE)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 where the device runs it natively (the scripts' default)
CHANNELS_LAST = True        # channels-last memory format (the scripts' default)
COMPILE = False             # also torch.compile the model in (a) (GPU)
WORKERS = 2                 # [0..256] DataLoader workers in (b)
SCALE_DATA = ""             # (f) folder of tools/make_scale_data.py ("" = temporary); made if absent
SCALE_IMAGES = 118287       # [1..1e7] (f) COCO images when making the data (train2017's count)
SCALE_MAPS = 25000          # [1..1e7] (f) label maps when making the data (OpenSurfaces' ~25k)
SCALE_WORKERS = 4           # [0..256] (f) DataLoader workers; their USS is summed with the main process's
SCALE_BATCHES = 1000        # [10..1e7] (f) batches of 32 crops of 224² read before the last memory reading
OUT = "logs/benchmark"      # [nonempty] where the table is written
# ---- end of parameters ----


def main(argv=None):
    params = cli.parse_parameters(globals(), __file__, argv)
    cfg = SimpleNamespace(**params)
    full_hw, window, out = check_parameters(cfg)
    device = resolve_device(cfg.DEVICE)
    check_writes([("--OUT", path) for path in report_paths(out, device)], [cfg.SCALE_DATA],
                 folders=[("--OUT", out)])
    bench = Bench(device, amp_dtype(device, cfg.AMP), cfg.CHANNELS_LAST, cfg.STEPS, cfg.WARMUP)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"benchmark on {name}, torch {torch.__version__}, default precision {precision_name(bench.dtype)}, "
          f"{'channels_last' if cfg.CHANNELS_LAST else 'contiguous'}", flush=True)
    rows = []
    for part in parts(cfg, bench, window, full_hw):
        rows += show(part(rows))
    report(rows, params, name, device, out)


def parts(cfg, bench, window, full_hw):
    """The chosen measurements in table order, each a function of the rows so far."""
    archs = [cfg.ARCH] + ([cfg.CONFIG_ARCH] if cfg.CONFIG_ARCH and cfg.CONFIG_ARCH != cfg.ARCH else [])
    chosen = {p.strip() for p in cfg.PARTS.split(",")}
    table = {
        "a": lambda rows: train_step.measure(bench, archs, cfg.BATCH, cfg.SIZE, cfg.COMPILE),
        "b": lambda rows: end_to_end.measure(bench, cfg.ARCH, cfg.BATCH, cfg.SIZE, cfg.WORKERS, cfg.AMP,
                                             cfg.COMPILE, model_rows=rows),
        "c": lambda rows: side_branch.measure(bench, cfg.ARCH, cfg.BATCH, cfg.SIZE),
        "d": lambda rows: evaluation.measure(bench, cfg.ARCH, cfg.EVAL_IMAGES, window, full_hw),
        "e": lambda rows: prediction.measure(bench, cfg.ARCH),
        "f": lambda rows: dataset_scale.measure(cfg.SCALE_DATA, cfg.SCALE_IMAGES, cfg.SCALE_MAPS,
                                                cfg.SCALE_WORKERS, cfg.SCALE_BATCHES),
    }
    if "b" in chosen:
        chosen.add("a")   # (b) is judged against (a)
    return [measure for key, measure in table.items() if key in chosen]


def show(rows):
    print("\n".join(r["text"] for r in rows), flush=True)
    return rows


def check_parameters(cfg):
    """Values only used late, checked before minutes of measuring instead of after:
    (EVAL_SIZE as (h, w), EVAL_WINDOW as (h, w), the output folder)."""
    if not re.fullmatch(r"[1-9]\d*x[1-9]\d*", cfg.EVAL_SIZE):
        raise UserError(f"--EVAL_SIZE={cfg.EVAL_SIZE}: expected HxW, e.g. 480x640")
    full_hw = tuple(int(v) for v in cfg.EVAL_SIZE.split("x"))
    if size_problem(full_hw[1], full_hw[0]):
        raise UserError(f"--EVAL_SIZE={cfg.EVAL_SIZE}: {size_problem(full_hw[1], full_hw[0])}")
    check_memory(f"--BATCH={cfg.BATCH} --SIZE={cfg.SIZE}", cfg.BATCH * cfg.SIZE ** 2)
    window = parse_window(cfg.EVAL_WINDOW, "EVAL_WINDOW")
    if "f" in {p.strip() for p in cfg.PARTS.split(",")}:
        try:
            dataset_scale.check_data_folder(cfg.SCALE_DATA)
        except UserError as error:
            raise UserError(f"--SCALE_DATA={error}") from None
    out = cfg.OUT if os.path.isabs(cfg.OUT) else os.path.join(REPO, cfg.OUT)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise UserError(f"{out}: cannot create the output folder ({error.strerror or error})") from None
    return full_hw, window, out


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE"})
