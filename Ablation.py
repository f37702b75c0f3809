"""Reproduce the paper's comparisons in one command: where and how to merge the ROI mask, the
baselines (background blacked out, crop, mask as 4th channel, mask ignored) and the hybrid
crop+attention (the crop's box, with the mask merged by attention).

    python Ablation.py                       # demo data, ResNet-18, 13 variants x 2 seeds, 2 CPU cores: ~35 min
    python Ablation.py --VARIANTS=stem,blackout --SEEDS=0,1,2 --STEPS=1000

Every variant is trained by Train.py and evaluated by EvaluateAccuracy.py (run as they are, with
--NAME=value overrides) on the same data, budget and seeds. Writes logs/ablation/<NAME>/:
results.csv, results.json, results.png, and runs/<variant>-s<seed>/ for each run. Running it
again skips the runs already evaluated and resumes interrupted ones.
"""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

from roilib import cli
from roilib.paths import REPO
from roilib.errors import UserError
from roilib.outputs import atomic_write, save_figure
from roilib.runtime import resolve_device
from roilib.sampler import check_sizes

# ---- parameters: edit here, or override as --NAME=value ----
NAME = "demo"               # [nonempty] results go to LOG_DIR/<NAME>/
LOG_DIR = "logs/ablation"   # [nonempty] folder of all ablations (relative paths: to this repository)
VARIANTS = "all"            # comma-separated names from the table below, or all
SEEDS = "0,1"               # [nonempty] seeds: each variant is trained once per seed
DATASET = "demo"            # [demo|coco|opensurfaces] dataset (with the paths below, "" = default layout)
TRAIN_IMAGES = ""           # training image folder
TRAIN_ANNOTATIONS = ""      # training instances JSON or label-map folder
VAL_IMAGES = ""             # evaluation image folder
VAL_ANNOTATIONS = ""        # evaluation instances JSON or label-map folder
ARCH = "resnet18"           # backbone of every variant
WEIGHTS = None              # None | imagenet | path (same start for every variant)
STEPS = 200                 # [>=1] training steps per run
LR = 2e-3                   # [>0] peak learning rate
MIN_SIZE = 96               # [>=32] training crop sizes (see Train.py)
MAX_SIZE = 128              # [>=32]   (evaluation then uses MAX_SIZExMAX_SIZE windows, see Train.py)
MAX_PIXELS = 300000         # [>=1024] pixels per batch
MAX_BATCH = 32              # [>=1] samples per batch at most
WORKERS = 2                 # [>=0] DataLoader workers per run
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 autocast where the device runs it natively (False: float32)
CONTEXT_CLASSES = "boat,car"   # near pair: classes that differ only by their surroundings (demo data)
FAR_CONTEXT_CLASSES = "hive,kennel"   # far pair: classes that differ only by a cue outside the crop's box
# ---- end of parameters ----

# name -> Train.py overrides; the paper's comparison (merge add unless named).
VARIANT_TABLE = {
    "stem": {"MODE": "attention", "ATTENTION": "stem", "MERGE": "add"},
    "layer1": {"MODE": "attention", "ATTENTION": "layer1", "MERGE": "add"},
    "layer2": {"MODE": "attention", "ATTENTION": "layer2", "MERGE": "add"},
    "layer3": {"MODE": "attention", "ATTENTION": "layer3", "MERGE": "add"},
    "layer4": {"MODE": "attention", "ATTENTION": "layer4", "MERGE": "add"},
    "all": {"MODE": "attention", "ATTENTION": "all", "MERGE": "add"},
    "stem-mul": {"MODE": "attention", "ATTENTION": "stem", "MERGE": "mul"},
    "stem-muladd": {"MODE": "attention", "ATTENTION": "stem", "MERGE": "muladd"},
    "blackout": {"MODE": "blackout"},
    "crop": {"MODE": "crop"},
    "crop+attention": {"MODE": "crop+attention", "ATTENTION": "stem", "MERGE": "add"},
    "channel": {"MODE": "channel"},
    "none": {"MODE": "none"},
}
SHARED = ("DATASET", "TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS", "ARCH",
          "WEIGHTS", "STEPS", "LR", "MIN_SIZE", "MAX_SIZE", "MAX_PIXELS", "MAX_BATCH", "WORKERS", "DEVICE", "AMP")
SUMMARY_BINS = ("<1k", "1k-2k", "2k-4k", "4k-8k")


def main():
    cli.parse_parameters(globals(), __file__)
    variants = list(VARIANT_TABLE) if VARIANTS == "all" else [v.strip() for v in VARIANTS.split(",")]
    unknown = [v for v in variants if v not in VARIANT_TABLE]
    if unknown:
        raise UserError(f"--VARIANTS: unknown {', '.join(unknown)}; known: {', '.join(VARIANT_TABLE)}")
    try:
        seeds = [int(s) for s in str(SEEDS).split(",")]
    except ValueError:
        raise UserError(f"--SEEDS={SEEDS}: expected comma-separated integers") from None
    resolve_device(DEVICE)   # a wrong device stops here, not in the first of many runs
    check_sizes(MIN_SIZE, MAX_SIZE)
    folder = os.path.join(REPO, LOG_DIR, NAME)   # an absolute LOG_DIR stays as it is
    runs = os.path.join(folder, "runs")
    start = time.perf_counter()
    total = len(variants) * len(seeds)
    print(f"ablation '{NAME}': {len(variants)} variants x {len(seeds)} seeds, {STEPS} steps each, {ARCH}; "
          f"results in {folder}", flush=True)
    results = {}
    for i, (variant, seed) in enumerate(((v, s) for v in variants for s in seeds), 1):
        print(f"[{i}/{total}] {variant} seed {seed} ({(time.perf_counter() - start) / 60:.1f} min so far)", flush=True)
        results.setdefault(variant, []).append(run_variant(variant, seed, runs))
    table = aggregate(results)
    write_results(table, results, folder)
    print(format_table(table))
    print(f"wrote results.csv, results.json, results.png in {folder}")


def run_variant(variant, seed, runs):
    """Train (or resume) and evaluate one variant; reuse an evaluation of the finished run."""
    run = f"{variant}-s{seed}"
    run_dir = os.path.join(runs, run)
    eval_path = os.path.join(run_dir, "eval.json")
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            result = json.load(f)
        if result.get("step") == STEPS:
            print(f"  done before: {run}", flush=True)
            return result
    overrides = {name: globals()[name] for name in SHARED}
    overrides.update(VARIANT_TABLE[variant], SEED=seed, RUN=run, LOG_DIR=runs,
                     VAL_EVERY=STEPS, VAL_MAX_IMAGES=20, SAVE_EVERY=max(STEPS // 4, 1),
                     LOG_EVERY=max(STEPS // 10, 1))
    check_same_settings(run_dir, overrides)
    call("Train.py", overrides)
    # The final model, not best.pt: picking the best on the evaluation set would flatter it.
    call("EvaluateAccuracy.py", {"CHECKPOINT": os.path.join(run_dir, "last.pt"), "DATASET": DATASET,
                                 "IMAGES": VAL_IMAGES, "ANNOTATIONS": VAL_ANNOTATIONS,
                                 "OUT": run_dir, "DEVICE": DEVICE, "WORKERS": WORKERS, "AMP": AMP})
    with open(eval_path) as f:
        return json.load(f)


def check_same_settings(run_dir, overrides):
    """A run left by an ablation with other settings must not be resumed or reused silently."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        return
    with open(config_path) as f:
        before = json.load(f).get("params", {})
    changed = [k for k, v in overrides.items() if k in before and before[k] != v and k != "LOG_DIR"]
    if changed:
        raise UserError(f"{run_dir} was trained with other settings ({', '.join(changed)}); "
                        "use another --NAME, or delete that folder")


def call(script, overrides):
    args = [f"--{k}={'None' if v is None else v}" for k, v in overrides.items()]
    completed = subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=REPO,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-1:]
        raise UserError(f"{script} failed for {overrides.get('RUN') or overrides.get('CHECKPOINT')}: "
                        f"{tail[0] if tail else 'exit code ' + str(completed.returncode)}")
    for line in completed.stdout.splitlines():
        if line.startswith(("validation", "done", "overall")):
            print(f"  {line}", flush=True)


def pair_accuracy(per_class, classes):
    """Mean accuracy over the named classes found in the evaluation; None if none is."""
    found = [per_class[c.strip()] for c in classes.split(",")
             if c.strip() and per_class.get(c.strip()) is not None]
    return float(np.mean(found)) if found else None


def metrics_of(result):
    """The figures compared across variants, from one eval.json."""
    bins = {row["bin"]: row["mean_class_accuracy"] for row in result["by_size"]}
    per_class = {row["class"]: row["accuracy"] for row in result["per_class"]}
    figures = {"mean_class_accuracy": result["mean_class_accuracy"], "accuracy": result["accuracy"]}
    figures.update({f"size {b}": bins.get(b) for b in SUMMARY_BINS})
    figures["near pair"] = pair_accuracy(per_class, CONTEXT_CLASSES)
    figures["far pair"] = pair_accuracy(per_class, FAR_CONTEXT_CLASSES)
    return figures


def aggregate(results):
    """variant -> {figure: (mean, spread, values)}; spread = (max - min) / 2 over seeds."""
    table = {}
    for variant, runs in results.items():
        per_seed = [metrics_of(r) for r in runs]
        row = {}
        for key in per_seed[0]:
            values = [m[key] for m in per_seed if m[key] is not None]
            if values:
                row[key] = (float(np.mean(values)), float((max(values) - min(values)) / 2), values)
        table[variant] = row
    return table


def format_table(table):
    keys = ["mean_class_accuracy", "accuracy"] + [f"size {b}" for b in SUMMARY_BINS] + ["near pair", "far pair"]
    head = ["variant", "mean class acc", "accuracy"] + list(SUMMARY_BINS) + ["near pair", "far pair"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, row in table.items():
        cells = [f"{100 * row[k][0]:.1f} ± {100 * row[k][1]:.1f}" if k in row else "-" for k in keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(table, results, folder):
    os.makedirs(folder, exist_ok=True)
    keys = list(next(iter(table.values())).keys())
    with atomic_write(os.path.join(folder, "results.csv"), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant"] + [f"{k} {part}" for k in keys for part in ("mean", "spread")] + ["seeds"])
        for variant, row in table.items():
            cells = [f"{row[k][i]:.4f}" if k in row else "" for k in keys for i in (0, 1)]
            writer.writerow([variant] + cells + [len(results[variant])])
    summary = {"params": {k: globals()[k] for k in SHARED + ("SEEDS", "CONTEXT_CLASSES", "FAR_CONTEXT_CLASSES")},
               "variants": {v: {k: {"mean": m, "spread": s, "per_seed": vals} for k, (m, s, vals) in row.items()}
                            for v, row in table.items()},
               "table": format_table(table)}
    with atomic_write(os.path.join(folder, "results.json")) as f:
        json.dump(summary, f, indent=1)
    plot_results(table, os.path.join(folder, "results.png"))


def plot_results(table, path):
    """Grouped bars: mean class accuracy per variant, overall, per size bin and on the two
    context pairs."""
    from roilib.plots import pyplot
    plt = pyplot()
    keys = ["mean_class_accuracy"] + [f"size {b}" for b in SUMMARY_BINS] + ["near pair", "far pair"]
    labels = (["overall"] + [f"segments {b} px" for b in SUMMARY_BINS]
              + [f"near pair ({CONTEXT_CLASSES.replace(',', '/')})",
                 f"far pair ({FAR_CONTEXT_CLASSES.replace(',', '/')})"])
    variants = list(table)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(variants)), 4.8))
    x = np.arange(len(variants))
    for j, (key, label) in enumerate(zip(keys, labels)):
        means = [table[v].get(key, (0, 0))[0] for v in variants]
        spreads = [table[v].get(key, (0, 0))[1] for v in variants]
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, means, width, yerr=spreads, capsize=2, label=label)
    ax.set_xticks(x, variants, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean class accuracy (mean ± spread over seeds)")
    ax.set_title("ROI-mask variants: overall, by segment size, and on the context-only pairs")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: never over bars
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
