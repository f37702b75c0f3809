"""Train AttentionNet to classify the region of an image given by an ROI mask.

    python Train.py                                  # the demo dataset, a few minutes on a CPU
    python Train.py configs/coco_r50.py --STEPS=100000              # a recipe file, then overrides
    torchrun --nproc_per_node=4 Train.py configs/coco_r50.py         # several GPUs (DDP)

Writes logs/<RUN>/: config.json, train_log.csv, TensorBoard events, last.pt, best.pt (best
validation mean class accuracy) and step_N.pt snapshots. Running again with the same RUN
resumes from last.pt (model, optimiser, step, data order): parameters that define the model or
the data must match the checkpoint's, changed ones such as LR are applied and announced (see
docs/training.md, "Resuming"). --RESUME=False starts afresh and moves the old run aside (nothing is deleted).
"""
import math
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from AttentionNet import AttentionNet
from Datasets import label_convention, open_dataset, resolve_paths
from roilib import cli
from roilib.checkpoint import load_checkpoint
from roilib.distributed import Distributed
from roilib.errors import UserError
from roilib.evaluation import validate
from roilib.optim import (FINAL_FACTOR, check_finite, lr_factor, make_optimizer, require_training_state,
                          restore_training_state, schedule_notes, set_learning_rate, warmup_steps)
from roilib.paths import REPO
from roilib.runlock import claim_run_folder
from roilib.runlog import STARTUP_FILES, LossMeter, RunLogger
from roilib.runtime import amp_dtype, autocast, resolve_device
from roilib.sampler import VaryingSizeBatchSampler, batch_pixels, check_sizes, make_train_loader
from roilib.skipped import SkippedFiles
from roilib.trainparams import check_class_names, check_weights, due, parse_jitter, resume_changes
from roilib.windows import WINDOW_RULE, check_memory, parse_window, training_window
from roilib.writeplan import RUN_FILES, check_writes

# ---- parameters: edit here, or override as --NAME=value ----
DATASET = "demo"            # [demo|coco|opensurfaces|camvid] which default layout, class names and label-map convention to use (see README)
TRAIN_IMAGES = ""           # training image folder ("" = the DATASET's default layout, see README)
TRAIN_ANNOTATIONS = ""      # coco: instances JSON; opensurfaces: label-map folder ("" = default)
VAL_IMAGES = ""             # validation image folder ("" = default)
VAL_ANNOTATIONS = ""        # validation instances JSON or label-map folder ("" = default)
CLASS_NAMES = None          # [None|names] label maps only: comma-separated names in value order (None = the DATASET's; else the 45 OpenSurfaces materials)
BACKGROUND = ""             # label maps: value of unlabelled pixels, None = every value is a class ("" = the DATASET's: 0, camvid None)
IGNORE = ""                 # label maps: comma-separated values neither a class nor a region, e.g. 255 ("" = the DATASET's: none, camvid 11)
CLASS_VALUES = ""           # label maps: comma-separated values of the classes in class order, e.g. Cityscapes ids ("" = all values in order but BACKGROUND and IGNORE)
LABEL_NAMES = ""            # label maps: IMAGE_ENDING,LABEL_ENDING, e.g. _leftImg8bit.png,_gtFine_labelIds.png ("" = image stem + .png)
MIN_AREA = 1                # [1..1e12] segments smaller than this (pixels) are not used
ARCH = "resnet18"           # [resnet18|resnet34|resnet50|resnet101|resnet152|tf_efficientnet_lite0|tf_efficientnet_lite1|tf_efficientnet_lite2|tf_efficientnet_lite3|tf_efficientnet_lite4|efficientnet_b0|efficientnet_b1|efficientnet_b2|efficientnet_b3] backbone (resnet50: the paper's; EfficientNets through timm)
WEIGHTS = None              # None (random init) | imagenet (offline for tf_efficientnet_lite0/1/2: see README) | path to a state_dict of the backbone
MODE = "attention"          # [attention|crop+attention|blackout|crop|channel|none] attention, crop+attention, or one of the paper's baselines
ATTENTION = "stem"          # [list of stem|layer1|layer2|layer3|layer4|all] merge points of the attention branch
MERGE = "add"               # [add|mul|muladd] how attention maps merge with the feature map
RUN = "demo"                # [nonempty] run name: outputs go to LOG_DIR/RUN/
LOG_DIR = "logs"            # [nonempty] folder of all runs (relative paths: to this repository)
RESUME = True               # resume from LOG_DIR/RUN/last.pt if it exists
STEPS = 1200                # [1..1e9] optimiser steps in total (the LR cosine spans those of the run's start; steps added on resume run at 1% of LR)
STOP_AT = 0                 # [0..1e9] stop (with last.pt saved) after this step, e.g. to fit a job's time limit; 0 = STEPS
LR = 2e-3                   # [1e-12..1e30] peak learning rate (AdamW; a diverging run stops with "the loss became nan")
WEIGHT_DECAY = 0.05         # [0..10] AdamW weight decay (not applied to norms and biases)
WARMUP_STEPS = 100          # [0..1e9] linear warm-up (at most a tenth of STEPS), then cosine decay to 1% of LR
MIN_SIZE = 96               # [32..8192] training crops: height and width drawn in [MIN_SIZE, MAX_SIZE],
MAX_SIZE = 160              # [32..8192]   rounded to multiples of 32
MAX_PIXELS = 400000         # [1024..1e9] pixels per batch (batch size = MAX_PIXELS // (H*W), at most MAX_BATCH)
MAX_BATCH = 32              # [1..65536] samples per batch at most (per process; all processes draw the same geometry)
JITTER = "0.8,1.25"         # training scale jitter: native scale times a log-uniform factor in [low,high] ("1,1" = none)
CROP_MARGIN = None          # [None|0..20] MODE=crop, crop+attention: context around the mask's box, as a fraction of its size on each side (None = the mode's: 0.5, 1.5)
BALANCED = True             # class-balanced sampling (class -> image -> segment) or by frequency
FLIP = True                 # random horizontal flips
WORKERS = 2                 # [0..256] DataLoader worker processes (training and validation)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 autocast on GPUs and on CPUs with native bf16 (else float32)
CHANNELS_LAST = True        # channels-last memory format (faster convolutions)
COMPILE = False             # torch.compile the model (GPU; slow first steps)
SEED = 0                    # [0..4294967295] seeds the weights and the data order
LOG_EVERY = 20              # [0..1e9] progress line and train_log.csv row every N steps (0 = at the end only)
VAL_EVERY = 400             # [0..1e9] validate (and update best.pt) every N steps and at the end (0 = never)
VAL_MAX_IMAGES = 0          # [0..1e12] validate on the first N images only (0 = all)
WINDOW = ""                 # [""|HxW] evaluation window HxW, stored in the checkpoint for EvaluateAccuracy/RunPrediction ("" = MAX_SIZExMAX_SIZE)
SAVE_EVERY = 200            # [0..1e9] write last.pt every N steps (0 = at the end only; also before each validation)
SNAPSHOT_EVERY = 0          # [0..1e9] keep step_N.pt every N steps (0 = never)
# ---- end of parameters ----

# How a resumed run treats each parameter (roilib/trainparams.py): FIXED ones define the model,
# the data or the schedule's shape and must match last.pt's; CHANGEABLE ones take effect and
# are announced; the folder (FOLDER) is not compared.
FIXED = ("DATASET", "TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS",
         "CLASS_NAMES", "BACKGROUND", "IGNORE", "CLASS_VALUES", "LABEL_NAMES", "MIN_AREA", "ARCH",
         "WEIGHTS", "MODE", "ATTENTION", "MERGE", "WARMUP_STEPS", "MIN_SIZE", "MAX_SIZE",
         "MAX_PIXELS", "MAX_BATCH", "JITTER", "CROP_MARGIN", "BALANCED", "FLIP", "SEED", "WINDOW")
# LEARNING: changeable, yet they change what the run learns (Ablation.py reuses a run only
# when FIXED and LEARNING equal its request).
LEARNING = ("STEPS", "STOP_AT", "LR", "WEIGHT_DECAY", "AMP")
CHANGEABLE = LEARNING + ("WORKERS", "DEVICE", "CHANNELS_LAST", "COMPILE", "LOG_EVERY", "VAL_EVERY",
                         "VAL_MAX_IMAGES", "SAVE_EVERY", "SNAPSHOT_EVERY")
FOLDER = ("LOG_DIR", "RUN", "RESUME")
# What to do about a last.pt that cannot be resumed from.
RESUME_WAY_OUT = "start afresh with --RESUME=False (the old run is moved aside) or choose another --RUN"
# Parameters added after runs were stored, with the value those runs had in effect.
ADDED = {"BACKGROUND": "", "IGNORE": "", "CLASS_VALUES": "", "LABEL_NAMES": ""}
DATA_PATHS = ("TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS")


def main():
    params = cli.parse_parameters(globals(), __file__)
    cfg = SimpleNamespace(**params)   # params: the dict stored with the run
    dist = Distributed()
    device = resolve_device(cfg.DEVICE, dist.local_rank, "--DEVICE")
    dist.start(device)
    try:
        with dist.together():   # a bad value stops the run now, not after hours of training
            check_sizes(cfg.MIN_SIZE, cfg.MAX_SIZE, ("MIN_SIZE", "MAX_SIZE"))
            check_weights(cfg.WEIGHTS, "--WEIGHTS")
            jitter = parse_jitter(cfg.JITTER, "--JITTER")
            window = parse_window(cfg.WINDOW) if cfg.WINDOW else training_window(cfg.MAX_SIZE)
            check_memory(f"--MAX_SIZE={cfg.MAX_SIZE} --MAX_PIXELS={cfg.MAX_PIXELS} --MAX_BATCH={cfg.MAX_BATCH} "
                         f"(windows of {window[0]}x{window[1]})",
                         max(batch_pixels(cfg.MAX_SIZE, cfg.MAX_PIXELS, cfg.MAX_BATCH),
                             cfg.MAX_BATCH * window[0] * window[1]), device)
            check_outputs(run_folder(cfg.LOG_DIR, cfg.RUN, cfg.RESUME), params)
        train(cfg, params, jitter, window, dist, device)
    finally:
        dist.stop()


def train(cfg, params, jitter, window, dist, device):
    """Every process runs this; a step that can fail on one process alone runs inside
    dist.together(), so that any error stops all processes at once (roilib/distributed.py)."""
    torch.manual_seed(cfg.SEED)
    run_dir = run_folder(cfg.LOG_DIR, cfg.RUN, cfg.RESUME)
    with dist.together():   # rank 0 alone writes the run folder: it holds the lock
        lock = claim_run_folder(run_dir, cfg.RESUME) if dist.is_main else None
    # last.pt's step once written or resumed from (named on Ctrl-C); whether a step ran
    progress = {"last.pt": None, "stepped": False}
    try:
        train_in(run_dir, progress, cfg, params, jitter, window, dist, device)
    except BaseException as error:
        if lock and not progress["stepped"]:   # failed before its first step: no folder left
            lock.discard_if_unused(STARTUP_FILES)
        if isinstance(error, KeyboardInterrupt):
            raise KeyboardInterrupt(interrupted_note(run_dir, progress["last.pt"], cfg.RESUME)) from None
        raise
    if lock:
        lock.release()


def run_folder(log_dir, run, resume):
    """LOG_DIR/RUN. --RESUME=False moves an existing run folder aside, so there RUN must name a
    folder inside LOG_DIR: `.`, `..` or a path outside would move LOG_DIR or more."""
    logs = log_dir if os.path.isabs(log_dir) else os.path.join(REPO, log_dir)
    run_dir = os.path.normpath(os.path.join(logs, run))
    real_logs, real_run = os.path.realpath(logs), os.path.realpath(run_dir)
    if not resume and (real_run == real_logs or os.path.commonpath([real_logs, real_run]) != real_logs):
        raise UserError(f"--RUN={run} names {real_run}, not a folder inside --LOG_DIR ({real_logs}), "
                        "which --RESUME=False would move aside; give a run name such as --RUN=demo2")
    return run_dir


def interrupted_note(run_dir, step, resume):
    """What Ctrl-C leaves: the last checkpoint and its step, and how to go on from it."""
    if step is None:
        return "no checkpoint was written yet, nothing to resume from"
    again = "the same command" if resume else "the same command without --RESUME=False"
    return (f"the last checkpoint is {os.path.join(run_dir, 'last.pt')} (step {step}); "
            f"{again} resumes from it")


def train_in(run_dir, progress, cfg, params, jitter, window, dist, device):
    """Train in the claimed `run_dir`, noting in `progress` the first step and each last.pt."""
    with dist.together():
        last = os.path.join(run_dir, "last.pt")
        state = load_checkpoint(last, way_out=RESUME_WAY_OUT) if cfg.RESUME and os.path.exists(last) else None
        convention = label_convention(params, cfg.DATASET)
        train_set = open_dataset(cfg.DATASET, "train", cfg.TRAIN_IMAGES, cfg.TRAIN_ANNOTATIONS,
                                 train=True, class_names=cfg.CLASS_NAMES, min_area=cfg.MIN_AREA,
                                 convention=convention)
        val_set = open_dataset(cfg.DATASET, "val", cfg.VAL_IMAGES, cfg.VAL_ANNOTATIONS, train=False,
                               class_names=cfg.CLASS_NAMES, min_area=cfg.MIN_AREA,
                               convention=convention)
        if val_set.class_names != train_set.class_names:
            raise UserError("the validation set's classes differ from the training set's")
        model, changes = build_model(cfg, params, train_set, state, last)
        if state and state.get("world_size", dist.world_size) != dist.world_size:
            changes.append(f"processes: {state['world_size']} -> {dist.world_size} (the data order "
                           "differs from here on)")
        dtype = amp_dtype(device, cfg.AMP)
        model.to(device, memory_format=torch.channels_last if cfg.CHANNELS_LAST else torch.preserve_format)
        optimizer = make_optimizer(model, cfg.LR, cfg.WEIGHT_DECAY)
        # The cosine spans the STEPS the run began with; steps added later run at its end value.
        # A resumed run keeps its schedule's shape (runs saved before the cap: uncapped).
        schedule_steps = state.get("schedule_steps", state["params"].get("STEPS", cfg.STEPS)) if state else cfg.STEPS
        warmup = (state.get("warmup_steps", cfg.WARMUP_STEPS) if state
                  else warmup_steps(cfg.WARMUP_STEPS, schedule_steps))
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        step = 0
        if state is not None:
            step = restore_training_state(state, optimizer, scaler, cfg.WEIGHT_DECAY, last, RESUME_WAY_OUT)
            progress["last.pt"] = step
        stop_at = min(cfg.STOP_AT or cfg.STEPS, cfg.STEPS)
        best = (state or {}).get("best_metric", -1.0)
        schedule = {"warmup_steps": warmup, "cosine_steps": schedule_steps,
                    "final_factor": FINAL_FACTOR}
        logger = RunLogger(run_dir, params, cfg.STEPS, train_set, dist, device, dtype,
                           resumed_step=step if state else None, schedule=schedule,
                           will_train=step < stop_at, way_out=RESUME_WAY_OUT)
        logger.announce(train_set, val_set, model, step, settings_line(cfg))
        for change in changes:
            logger.print(f"changed on resume: {change}")
        for note in schedule_notes(step, cfg.STEPS, cfg.STOP_AT, schedule_steps, warmup, cfg.WARMUP_STEPS,
                                   cfg.LR, {"steps": "STEPS", "stop_at": "STOP_AT", "warmup": "WARMUP_STEPS"}):
            logger.print(note)
        logger.print(f"evaluation window: {window[0]}x{window[1]} ({WINDOW_RULE})")
    if step >= stop_at:
        return
    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.COMPILE:
        net = torch.compile(net)

    def save(name, **metrics):
        with dist.together():
            if dist.is_main:
                check_finite(model, step, f"lower --LR (now {cfg.LR})")
                model.save(os.path.join(run_dir, name), optimizer=optimizer.state_dict(),
                           scaler=scaler.state_dict(), step=step,
                           best_metric=best, metrics=metrics, params=params, window=list(window),
                           schedule_steps=schedule_steps, warmup_steps=warmup, world_size=dist.world_size,
                           label_convention=getattr(train_set, "convention", None))
        if name == "last.pt":
            progress[name] = step

    sampler = VaryingSizeBatchSampler(
        train_set.labels, cfg.MIN_SIZE, cfg.MAX_SIZE, cfg.MAX_PIXELS, cfg.MAX_BATCH,
        balanced=cfg.BALANCED, seed=cfg.SEED, start_step=step, rank=dist.rank,
        world_size=dist.world_size, image_of_segment=train_set.image_of_segment)
    train_set.flip, train_set.jitter = cfg.FLIP, jitter
    loader = iter(make_train_loader(train_set, sampler, cfg.WORKERS))
    net.train()
    meter = LossMeter()
    skipped = SkippedFiles()
    while step < stop_at:
        with dist.together():   # a loader error here must not leave the others in DDP's all-reduce
            batch = next(loader)
        skipped.add(batch["skipped"])
        images = batch["images"].to(device, non_blocking=True)
        masks = batch["masks"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = net(images, masks)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        lr = cfg.LR * lr_factor(step, warmup, schedule_steps)
        set_learning_rate(optimizer, lr)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        progress["stepped"] = True
        meter.add(loss.detach(), labels.shape[0])
        if due(step, cfg.LOG_EVERY) or step == stop_at:
            mean_loss, rate = meter.summary(dist)   # over all processes: the same everywhere
            with dist.together():
                if not math.isfinite(mean_loss):
                    raise UserError(f"the loss became {mean_loss} between steps {step - meter.steps} and "
                                    f"{step}; lower --LR (now {cfg.LR}) or check the data. The checkpoints "
                                    f"in {run_dir} are from before and intact")
                logger.log_train(step, mean_loss, lr, rate)
                logger.log_skipped(skipped)
            meter = LossMeter()
        if cfg.VAL_EVERY and (due(step, cfg.VAL_EVERY) or step == cfg.STEPS):
            save("last.pt")   # before validating: a failed validation never costs the training
            metrics = validate(model, val_set, device, dtype, dist, logger, step, window, cfg.MAX_BATCH,
                               cfg.WORKERS, cfg.VAL_MAX_IMAGES or None)
            improved = metrics["mean_class_accuracy"] > best
            best = max(best, metrics["mean_class_accuracy"])
            save("last.pt", **metrics)
            if improved:
                save("best.pt", **metrics)
                logger.print(f"best.pt updated: mean class accuracy {best:.4f} at step {step}")
            meter.restart_clock()
        elif due(step, cfg.SAVE_EVERY) or step == stop_at:
            save("last.pt")
        if due(step, cfg.SNAPSHOT_EVERY):
            save(f"step_{step}.pt")
    logger.finish(step, best, skipped)


def settings_line(cfg):
    memory = "channels_last" if cfg.CHANNELS_LAST else "contiguous"
    return (f"weights={cfg.WEIGHTS}, {memory}, {cfg.WORKERS} workers, crops {cfg.MIN_SIZE}-"
            f"{cfg.MAX_SIZE}px, <= {cfg.MAX_BATCH} per batch")


def build_model(cfg, params, train_set, state, last):
    """(model, changes): a new model, or the checkpoint's once its parameters and classes are
    found to match (`changes`: the changeable parameters that differ, to announce)."""
    if state is None:
        model = AttentionNet(train_set.num_classes, arch=cfg.ARCH, mode=cfg.MODE, attention=cfg.ATTENTION,
                             merge=cfg.MERGE, weights=cfg.WEIGHTS, class_names=train_set.class_names,
                             crop_margin=cfg.CROP_MARGIN, category_ids=train_set.category_ids)
        return model, []
    model = AttentionNet.from_state(state, last)
    expected = {"arch": cfg.ARCH, "mode": cfg.MODE, "num_classes": train_set.num_classes}
    found = {k: model.config[k] for k in expected}
    if found != expected:
        raise UserError(f"{last} holds a different model ({found}) than asked ({expected}); {RESUME_WAY_OUT}")
    require_training_state(state, last, RESUME_WAY_OUT)
    changes = resume_changes(state["params"], params, last, FIXED, CHANGEABLE, as_read, RESUME_WAY_OUT)
    check_class_names(model.class_names, train_set.class_names, last, RESUME_WAY_OUT)
    return model, changes


def check_outputs(run_dir, params):
    """Before any work: the run's files are never written over its data or weights."""
    try:
        check_writes([("--RUN", os.path.join(run_dir, name)) for name in RUN_FILES], inputs(params),
                     folders=[("--RUN", run_dir)], owns=("run",),
                     moved=[] if params["RESUME"] else [("--RUN", run_dir)])
    except UserError as clash:  # a run's way out is another run, whatever the clash
        raise UserError(f"{clash}; or {RESUME_WAY_OUT if params['RESUME'] else 'choose another --RUN'}") from None


def inputs(params):
    """The files and folders a run reads: its four data paths (as read) and WEIGHTS."""
    paths = as_read(params)
    return [paths[name] for name in DATA_PATHS] + [params["WEIGHTS"]]


def as_read(p):
    """A parameter dict as it is read: the ADDED ones a run stored before them had in effect,
    and its four data paths with defaults filled in, absolute."""
    p = {**ADDED, **p}
    if not all(isinstance(p.get(name), str) for name in ("DATASET", *DATA_PATHS)):
        return p   # stored by an older version (or edited): compared as stored, the difference named
    paths = (*resolve_paths(p["DATASET"], "train", p["TRAIN_IMAGES"], p["TRAIN_ANNOTATIONS"]),
             *resolve_paths(p["DATASET"], "val", p["VAL_IMAGES"], p["VAL_ANNOTATIONS"]))
    return dict(p, **{name: os.path.abspath(path) for name, path in zip(DATA_PATHS, paths)})


if __name__ == "__main__":
    cli.run(main)
