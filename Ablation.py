"""Reproduce the paper's comparisons in one command: where and how to merge the ROI mask, the
baselines (background blacked out, crop, mask as 4th channel, mask ignored) and the hybrid
crop+attention (the crop's box, with the mask merged by attention).

    python Ablation.py                       # demo data, ResNet-18, 14 variants x 2 seeds, 2 CPU cores: ~35 min
    python Ablation.py --VARIANTS=stem,blackout --SEEDS=0,1,2 --STEPS=1000
    python Ablation.py --JOBS=2              # two runs at once (CPU: cores split between them; GPUs: one each)
    python Ablation.py --REPORT_ONLY=True    # while it runs, or after a stop: the tables of the runs done so far

Every variant is trained by Train.py and evaluated by EvaluateAccuracy.py (run as they are, with
--NAME=value overrides) on the same data, budget and seeds. Writes logs/ablation/<NAME>/:
results.csv, results.json, results.png, and runs/<variant>-s<seed>/ for each run. Running it
again skips the runs already evaluated and resumes interrupted ones, only where every setting
that changes what a run learns (Train.py's FIXED and LEARNING) equals this request; a run of
other settings stops it with one line (another --NAME, or --RETRAIN=True).
"""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time

import Train
from Datasets import label_convention, open_dataset
from roilib import cli
from roilib.paths import REPO
from roilib.errors import UserError
from roilib.ablation_report import OUTPUTS, aggregate, format_class_table, format_table, write_results
from roilib.runtime import resolve_device
from roilib.sampler import check_sizes
from roilib.run import differences
from roilib.writeplan import check_writes

# ---- parameters: edit here, or override as --NAME=value ----
NAME = "demo"               # [nonempty] results go to LOG_DIR/<NAME>/
LOG_DIR = "logs/ablation"   # [nonempty] folder of all ablations (relative paths: to this repository)
VARIANTS = "all"            # comma-separated names from the table below, or all
SEEDS = "0,1"               # [nonempty] seeds: each variant is trained once per seed
DATASET = "demo"            # [demo|coco|opensurfaces|camvid|cocojson|labelmap] dataset (with the paths below, "" = default layout)
TRAIN_IMAGES = ""           # training image folder
TRAIN_ANNOTATIONS = ""      # training instances JSON or label-map folder
VAL_IMAGES = ""             # evaluation image folder
VAL_ANNOTATIONS = ""        # evaluation instances JSON or label-map folder
BACKGROUND = ""             # label maps: value of unlabelled pixels, None = every value is a class ("" = the DATASET's, see Train.py)
IGNORE = ""                 # label maps: comma-separated values neither a class nor a region ("" = the DATASET's)
CLASS_VALUES = ""           # label maps: comma-separated values of the classes in class order ("" = all but BACKGROUND and IGNORE)
LABEL_NAMES = ""            # label maps: IMAGE_ENDING,LABEL_ENDING ("" = image stem + .png)
MIN_AREA = 1                # [1..1e12] segments smaller than this (pixels) are neither trained on nor evaluated
ARCH = "resnet18"           # backbone of every variant
WEIGHTS = None              # None | imagenet | path (same start for every variant)
STEPS = 200                 # [1..1e7] training steps per run
LR = 2e-3                   # [1e-12..1e30] peak learning rate
MIN_SIZE = 96               # [32..8192] training crop sizes (see Train.py)
MAX_SIZE = 128              # [32..8192]   (evaluation then uses MAX_SIZExMAX_SIZE windows, see Train.py)
MAX_PIXELS = 300000         # [1024..1e9] pixels per batch
MAX_BATCH = 32              # [1..65536] samples per batch at most
WORKERS = 2                 # [0..256] DataLoader workers per run
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
JOBS = 1                    # [1..256] runs at once: on the CPU each gets cores/JOBS torch threads; with DEVICE=auto or cuda and several GPUs, runs go to GPUs in turn
AMP = True                  # bf16 autocast where the device runs it natively (False: float32)
CONTEXT_CLASSES = "boat,car"   # near pair: classes told apart by their surroundings (demo data; "" = no column)
FAR_CONTEXT_CLASSES = "hive,kennel"   # far pair: classes told apart only by a cue outside the crop's box ("" = none)
RETRAIN = False             # a run of this NAME left with other settings: train it again (the old one is moved aside) instead of stopping
REPORT_ONLY = False         # True: write the tables from the runs evaluated so far and train nothing (interim results of a long ablation)
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
    "crop+attention-wide": {"MODE": "crop+attention", "ATTENTION": "stem", "MERGE": "add", "CROP_MARGIN": 3.0},
    "channel": {"MODE": "channel"},
    "none": {"MODE": "none"},
}
SHARED = ("DATASET", "TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS", "BACKGROUND",
          "IGNORE", "CLASS_VALUES", "LABEL_NAMES", "MIN_AREA", "ARCH",
          "WEIGHTS", "STEPS", "LR", "MIN_SIZE", "MAX_SIZE", "MAX_PIXELS", "MAX_BATCH", "WORKERS", "DEVICE", "AMP")


def main():
    cfg = cli.parse_config(globals(), __file__, help_more=variant_help())
    variants = list(VARIANT_TABLE) if cfg.VARIANTS == "all" else [v.strip() for v in cfg.VARIANTS.split(",")]
    unknown = [v for v in variants if v not in VARIANT_TABLE]
    if unknown:
        raise UserError(f"--VARIANTS: unknown {', '.join(unknown)}; known: {', '.join(VARIANT_TABLE)}")
    try:
        seeds = [int(s) for s in str(cfg.SEEDS).split(",")]
    except ValueError:
        raise UserError(f"--SEEDS={cfg.SEEDS}: expected comma-separated integers") from None
    resolve_device(cfg.DEVICE)   # a wrong device stops here, not in the first of many runs
    stop_children_on_signals()
    check_sizes(cfg.MIN_SIZE, cfg.MAX_SIZE)
    folder = os.path.join(REPO, cfg.LOG_DIR, cfg.NAME)   # an absolute LOG_DIR stays as it is
    runs = os.path.join(folder, "runs")
    check_writes([("--NAME", os.path.join(folder, name)) for name in OUTPUTS], Train.inputs(vars(cfg)),
                 folders=[("--NAME", folder)])
    pairs = {"near pair": cfg.CONTEXT_CLASSES, "far pair": cfg.FAR_CONTEXT_CLASSES}
    check_pair_classes(pairs, cfg)
    start = time.perf_counter()
    print(f"ablation '{cfg.NAME}': {len(variants)} variants x {len(seeds)} seeds, {cfg.STEPS} steps each, "
          f"{cfg.ARCH}, {cfg.JOBS} at a time; results in {folder}", flush=True)
    jobs = [(v, s) for s in seeds for v in variants]   # seed by seed: a stopped ablation has whole seeds
    done = run_all(jobs, runs, start, cfg)
    results = {v: [done[(v, s)] for s in seeds if done[(v, s)] is not None] for v in variants}
    results = {v: evals for v, evals in results.items() if evals}
    if not results:
        raise UserError(f"--REPORT_ONLY: no run of ablation '{cfg.NAME}' has been evaluated yet")
    if cfg.REPORT_ONLY:
        print(f"interim results: {sum(map(len, results.values()))} of {len(jobs)} runs evaluated", flush=True)
    table = aggregate(results, pairs)
    shown = SHARED + ("SEEDS", "CONTEXT_CLASSES", "FAR_CONTEXT_CLASSES")
    write_results(table, results, folder, {k: getattr(cfg, k) for k in shown}, pairs)
    print(format_table(table, pairs))
    print(format_class_table(table))
    print(f"wrote results.csv, results.json, results.png in {folder}")


def check_pair_classes(pairs, cfg):
    """The context pairs name classes of the evaluation data: a misspelt or absent one would
    leave its column empty without a word."""
    names = open_dataset(cfg.DATASET, "val", cfg.VAL_IMAGES, cfg.VAL_ANNOTATIONS, train=False,
                         convention=label_convention(vars(cfg), cfg.DATASET)).class_names
    for name, classes in pairs.items():
        unknown = [c.strip() for c in classes.split(",") if c.strip() and c.strip() not in names]
        if unknown:
            option = "CONTEXT_CLASSES" if name == "near pair" else "FAR_CONTEXT_CLASSES"
            raise UserError(f"--{option}: {', '.join(unknown)} not among the data's classes; valid: "
                            f"{', '.join(map(str, names))}")


def variant_help():
    """The VARIANTS table as --help shows it: each name with the Train.py settings it runs."""
    width = max(map(len, VARIANT_TABLE))
    rows = [f"  {name:<{width}}  {' '.join(f'--{k}={v}' for k, v in overrides.items())}"
            for name, overrides in VARIANT_TABLE.items()]
    return "\nVARIANTS (name: Train.py settings; the rest as set above):\n" + "\n".join(rows)


def run_all(jobs, runs, start, cfg):
    """Run (variant, seed) jobs, cfg.JOBS at a time; -> {(variant, seed): eval result}. After a
    failure no new run starts, the running ones finish (their work is kept), then it is raised."""
    slots = job_slots(cfg.JOBS, cfg.DEVICE)
    free = list(range(len(slots)))
    results, failure = {}, None
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
        pending = {}
        queue = list(enumerate(jobs, 1))
        while queue or pending:
            while queue and free and failure is None:
                i, (variant, seed) = queue.pop(0)
                slot = free.pop(0)
                say(f"[{i}/{len(jobs)}] {variant} seed {seed}{slots[slot]['label']} "
                    f"({(time.perf_counter() - start) / 60:.1f} min so far)")
                future = pool.submit(run_variant, variant, seed, runs, cfg, **slots[slot]["run"])
                pending[future] = (slot, (variant, seed))
            if not pending:
                break
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                slot, key = pending.pop(future)
                free.append(slot)
                try:
                    results[key] = future.result()
                except UserError as error:
                    failure = failure or error
    if failure is not None:
        raise failure
    return results


def job_slots(jobs, device):
    """What each of `jobs` concurrent runs gets: a GPU of its own where several are visible and
    DEVICE does not name one, else the same device and (on the CPU) an equal share of the cores."""
    if jobs == 1:
        return [{"label": "", "run": {}}]
    import torch
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") and torch.cuda.is_available() else 0
    if gpus > 1:
        return [{"label": f" on cuda:{j % gpus}", "run": {"device": f"cuda:{j % gpus}"}} for j in range(jobs)]
    on_cpu = resolve_device(device).type == "cpu"
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {"OMP_NUM_THREADS": str(threads)} if on_cpu and "OMP_NUM_THREADS" not in os.environ else {}
    label = f" ({env['OMP_NUM_THREADS']} torch threads)" if env else ""
    return [{"label": label, "run": {"env": env}} for _ in range(jobs)]


def run_variant(variant, seed, runs, cfg, device=None, env=None):
    """Train (or resume) and evaluate one variant; reuse an evaluation of the finished run
    (with REPORT_ONLY: that evaluation, or None if there is none). `device` overrides
    cfg.DEVICE for this run, `env` adds environment variables to its processes."""
    run = f"{variant}-s{seed}"
    run_dir = os.path.join(runs, run)
    eval_path = os.path.join(run_dir, "eval.json")
    overrides = {name: getattr(cfg, name) for name in SHARED}
    device = device or cfg.DEVICE
    overrides.update(VARIANT_TABLE[variant], SEED=seed, RUN=run, LOG_DIR=runs, DEVICE=device,
                     VAL_EVERY=cfg.STEPS, VAL_MAX_IMAGES=20, SAVE_EVERY=max(cfg.STEPS // 4, 1),
                     LOG_EVERY=max(cfg.STEPS // 10, 1))
    changed = settings_changed(run_dir, overrides)
    if changed and not cfg.RETRAIN:
        raise UserError(f"{run_dir} was trained with other settings ({'; '.join(changed)}); use "
                        "another --NAME, or --RETRAIN=True to train it again (the old run is moved aside)")
    overrides["RESUME"] = not changed   # --RETRAIN: Train.py moves the old run aside
    if not changed and os.path.exists(eval_path) and read_eval(eval_path).get("step") == cfg.STEPS:
        say(f"  done before: {run}")
        return read_eval(eval_path)
    if cfg.REPORT_ONLY:
        say(f"  not done yet: {run}")
        return None
    call("Train.py", overrides, env)
    # The final model, not best.pt: picking the best on the evaluation set would flatter it.
    call("EvaluateAccuracy.py", {"CHECKPOINT": os.path.join(run_dir, "last.pt"), "DATASET": cfg.DATASET,
                                 "IMAGES": cfg.VAL_IMAGES, "ANNOTATIONS": cfg.VAL_ANNOTATIONS,
                                 "OUT": run_dir, "DEVICE": device, "WORKERS": cfg.WORKERS, "AMP": cfg.AMP}, env)
    return read_eval(eval_path)


def settings_changed(run_dir, overrides):
    """["NAME: old -> new", ...]: the settings that change what a run learns (Train.py's FIXED
    and LEARNING, compared as resume compares them) where the run left in `run_dir` differs
    from the one Train.py would make of `overrides`; [] for no run there yet."""
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(config_path):
        return []
    stored = read_json(config_path).get("params")
    if not isinstance(stored, dict):
        raise UserError(f"{config_path}: no parameters stored (not written by Train.py); use another --NAME")
    request = cli.parse_parameters(vars(Train), Train.__file__, arguments(overrides))
    return differences(stored, request, Train.FIXED + Train.LEARNING, Train.as_read)


def read_json(path):
    """A JSON object written by a run (config.json, eval.json): one line if it is damaged
    (a bare NaN, which no run writes, included: it would reach results.json)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=not_json)
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot be read ({error}); delete it, or use another --NAME") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object; delete it, or use another --NAME")
    return data


def not_json(word):
    raise ValueError(f"{word} is not JSON")


# What the report reads of an eval.json: rows of (name, figure) and the overall figures.
EVAL_ROWS = {"per_class": ("class", "accuracy"), "by_size": ("bin", "mean_class_accuracy")}


def read_eval(path):
    """An eval.json with the figures the report reads (one of an older version lacks some)."""
    result = read_json(path)

    def figure(value):
        return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)
    rows_ok = all(isinstance(result.get(key), list) and all(
        isinstance(row, dict) and isinstance(row.get(name), str) and figure(row.get(value, ""))
        for row in result[key]) for key, (name, value) in EVAL_ROWS.items())
    if not rows_ok or not all(figure(result.get(key, "")) for key in ("accuracy", "mean_class_accuracy")):
        raise UserError(f"{path}: not an evaluation of this version (per_class, by_size or the accuracies "
                        "missing); delete it to evaluate the run again, or use another --NAME")
    return result


def arguments(overrides):
    """--NAME=value arguments of a script, as Ablation passes them on."""
    return [f"--{k}={'None' if v is None else v}" for k, v in overrides.items()]


# The scripts this process runs now (Train.py, EvaluateAccuracy.py): stopped when it is.
CHILDREN = set()
_children_lock = threading.Lock()
STOPPING = threading.Event()   # set by a signal: no script starts after it


def stop_children_on_signals():
    """SIGTERM (or SIGHUP) stops the running scripts too, then this process: an orphaned
    Train.py would go on training and hold its run against the next Ablation."""
    def stop(signum, frame):
        with _children_lock:
            STOPPING.set()
            for child in CHILDREN:
                child.terminate()
        raise SystemExit(128 + signum)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def say(line):
    """Print a line from a run's thread in one write: print's separate newline let two runs'
    lines run together."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def call(script, overrides, env=None):
    with subprocess.Popen([sys.executable, os.path.join(REPO, script), *arguments(overrides)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}) as child:
        with _children_lock:
            if STOPPING.is_set():
                child.terminate()
            CHILDREN.add(child)
        try:
            stdout, stderr = child.communicate()
        finally:
            with _children_lock:
                CHILDREN.discard(child)
    completed = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if completed.returncode != 0:
        tail = (completed.stderr.strip() or completed.stdout.strip()).splitlines()[-1:]
        raise UserError(f"{script} failed for {overrides.get('RUN') or overrides.get('CHECKPOINT')}: "
                        f"{tail[0] if tail else 'exit code ' + str(completed.returncode)}")
    name = overrides.get("RUN") or os.path.basename(os.path.dirname(overrides["CHECKPOINT"]))
    for line in completed.stdout.splitlines():
        if line.startswith(("validation", "done", "overall")):
            say(f"  {name}: {line}")


if __name__ == "__main__":
    cli.run(main, names={"device": "DEVICE", "min_size": "MIN_SIZE", "max_size": "MAX_SIZE"})
