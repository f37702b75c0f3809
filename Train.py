"""Train AttentionNet to classify the region of an image given by an ROI mask.

    python Train.py                                  # the demo dataset, a few minutes on a CPU
    python Train.py --DATASET=coco --ARCH=resnet50 --WEIGHTS=imagenet --RUN=coco_r50 ...
    torchrun --nproc_per_node=4 Train.py --DATASET=coco ...          # several GPUs (DDP)

Writes logs/<RUN>/: config.json, train_log.csv, TensorBoard events, last.pt, best.pt (best
validation mean class accuracy) and step_N.pt snapshots. Running again with the same RUN
resumes from last.pt (model, optimiser, step, data order); --RESUME=False starts afresh and
moves the old run aside (nothing is deleted).
"""
import math
import os
import shutil
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from AttentionNet import AttentionNet
from Datasets import open_dataset
from roilib import cli
from roilib.checkpoint import load_checkpoint, remove_stale_temporaries
from roilib.errors import UserError
from roilib.evaluation import predict_dataset
from roilib.metrics import summarize
from roilib.paths import REPO
from roilib.runlog import RunLogger, Window
from roilib.runtime import Distributed, amp_dtype, autocast, resolve_device
from roilib.sampler import VaryingSizeBatchSampler, make_train_loader
from roilib.skipped import SkippedFiles
from roilib.windows import WINDOW_RULE, parse_window, training_window

# ---- parameters: edit here, or override as --NAME=value ----
DATASET = "demo"            # demo | coco | opensurfaces
TRAIN_IMAGES = ""           # training image folder ("" = the DATASET's default layout, see README)
TRAIN_ANNOTATIONS = ""      # coco: instances JSON; opensurfaces: label-map folder ("" = default)
VAL_IMAGES = ""             # validation image folder ("" = default)
VAL_ANNOTATIONS = ""        # validation instances JSON or label-map folder ("" = default)
CLASS_NAMES = None          # label maps only: comma-separated names in value order (None = the 45 OpenSurfaces materials)
MIN_AREA = 1                # segments smaller than this (pixels) are not used
ARCH = "resnet18"           # resnet18 | resnet34 | resnet50 (the paper's) | resnet101 | resnet152
WEIGHTS = None              # None (random init) | imagenet | path to a torchvision ResNet state_dict
MODE = "attention"          # attention | crop+attention | blackout | crop | channel | none (baselines)
ATTENTION = "stem"          # merge points: stem, layer1..layer4, comma-separated, or all
MERGE = "add"               # add | mul | muladd
RUN = "demo"                # run name: outputs go to LOG_DIR/RUN/
LOG_DIR = "logs"            # folder of all runs (relative paths: to this repository)
RESUME = True               # resume from LOG_DIR/RUN/last.pt if it exists
STEPS = 1200                # optimiser steps in total (the learning-rate schedule spans them)
STOP_AT = 0                 # stop (with last.pt saved) after this step, e.g. to fit a job's time limit; 0 = STEPS
LR = 2e-3                   # peak learning rate (AdamW)
WEIGHT_DECAY = 0.05         # AdamW weight decay (not applied to norms and biases)
WARMUP_STEPS = 100          # linear warm-up, then cosine decay to 1% of LR
MIN_SIZE = 96               # training crops: height and width drawn in [MIN_SIZE, MAX_SIZE],
MAX_SIZE = 160              #   rounded to multiples of 32
MAX_PIXELS = 400000         # pixels per batch (batch size = MAX_PIXELS // (H*W), at most MAX_BATCH)
MAX_BATCH = 32              # samples per batch at most (per process)
JITTER = "0.8,1.25"         # training scale jitter: native scale times a log-uniform factor in [low,high] ("1,1" = none)
CROP_MARGIN = None          # MODE=crop, crop+attention: context around the mask's box, as a fraction of its size on each side (None = the mode's: 0.5, 1.5)
BALANCED = True             # class-balanced sampling (class -> image -> segment) or by frequency
FLIP = True                 # random horizontal flips
WORKERS = 2                 # DataLoader worker processes (training and validation)
DEVICE = "auto"             # auto | cpu | cuda | cuda:N
AMP = True                  # bf16 autocast on GPUs and on CPUs with native bf16 (else float32)
CHANNELS_LAST = True        # channels-last memory format (faster convolutions)
COMPILE = False             # torch.compile the model (GPU; slow first steps)
SEED = 0                    # seeds the weights and the data order
LOG_EVERY = 20              # progress line and train_log.csv row every N steps
VAL_EVERY = 400             # validate (and update best.pt) every N steps and at the end
VAL_MAX_IMAGES = 0          # validate on the first N images only (0 = all)
WINDOW = ""                 # evaluation window HxW, stored in the checkpoint for EvaluateAccuracy/RunPrediction ("" = MAX_SIZExMAX_SIZE)
SAVE_EVERY = 200            # write last.pt every N steps
SNAPSHOT_EVERY = 0          # keep step_N.pt every N steps (0 = never)
# ---- end of parameters ----



def main():
    params = cli.parse_parameters(globals(), __file__)
    cfg = SimpleNamespace(**params)
    jitter = parse_jitter(cfg.JITTER)
    window = parse_window(cfg.WINDOW) if cfg.WINDOW else training_window(cfg.MAX_SIZE)
    dist = Distributed()
    device = resolve_device(cfg.DEVICE, dist.local_rank)
    dist.start(device)
    try:
        train(cfg, params, jitter, window, dist, device)
    finally:
        dist.stop()


def train(cfg, params, jitter, window, dist, device):
    torch.manual_seed(cfg.SEED)
    run_dir = os.path.join(cfg.LOG_DIR if os.path.isabs(cfg.LOG_DIR) else os.path.join(REPO, cfg.LOG_DIR), cfg.RUN)
    state = find_resume_state(run_dir, cfg.RESUME, dist)
    train_set = open_dataset(cfg.DATASET, "train", cfg.TRAIN_IMAGES, cfg.TRAIN_ANNOTATIONS, train=True,
                             class_names=cfg.CLASS_NAMES, min_area=cfg.MIN_AREA)
    val_set = open_dataset(cfg.DATASET, "val", cfg.VAL_IMAGES, cfg.VAL_ANNOTATIONS, train=False,
                           class_names=cfg.CLASS_NAMES, min_area=cfg.MIN_AREA)
    if val_set.class_names != train_set.class_names:
        raise UserError("the validation set's classes differ from the training set's")
    model = build_model(cfg, train_set, state, run_dir)
    dtype = amp_dtype(device, cfg.AMP)
    model.to(device, memory_format=torch.channels_last if cfg.CHANNELS_LAST else torch.preserve_format)
    optimizer = make_optimizer(model, cfg.LR, cfg.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.WARMUP_STEPS, cfg.STEPS))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step = 0
    if state is not None:
        step = restore_training_state(state, optimizer, scheduler, scaler, run_dir)
    best = (state or {}).get("best_metric", -1.0)
    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.COMPILE:
        net = torch.compile(net)

    sampler = VaryingSizeBatchSampler(
        train_set.labels, cfg.MIN_SIZE, cfg.MAX_SIZE, cfg.MAX_PIXELS, cfg.MAX_BATCH,
        balanced=cfg.BALANCED, seed=cfg.SEED, start_step=step, rank=dist.rank,
        world_size=dist.world_size, image_of_segment=train_set.image_of_segment)
    train_set.flip, train_set.jitter = cfg.FLIP, jitter
    logger = RunLogger(run_dir, params, train_set, dist, device, dtype, resumed_step=step if state else None)
    logger.announce(train_set, val_set, model, step)
    logger.print(f"evaluation window: {window[0]}x{window[1]} ({WINDOW_RULE})")
    if step >= cfg.STEPS:
        logger.print(f"already trained {step} steps (STEPS={cfg.STEPS}); raise --STEPS to go on")
        return

    def save(name, **metrics):
        if dist.is_main:
            check_finite(model, step, cfg.LR)
            model.save(os.path.join(run_dir, name), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), step=step,
                       best_metric=best, metrics=metrics, params=params, window=list(window))

    loader = iter(make_train_loader(train_set, sampler, cfg.WORKERS))
    net.train()
    meter = Window()
    skipped = SkippedFiles()
    stop_at = min(cfg.STOP_AT or cfg.STEPS, cfg.STEPS)
    while step < stop_at:
        batch = next(loader)
        skipped.add(batch["skipped"])
        images = batch["images"].to(device, non_blocking=True)
        masks = batch["masks"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        if cfg.CHANNELS_LAST:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            logits = net(images, masks)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        meter.add(loss.detach(), labels.shape[0] * dist.world_size)
        if step % cfg.LOG_EVERY == 0 or step == stop_at:
            mean_loss = meter.mean_loss()      # the one sync with the device per log window
            if not math.isfinite(mean_loss):
                raise UserError(f"the loss became {mean_loss} between steps {step - meter.steps} and "
                                f"{step}; lower --LR (now {cfg.LR}) or check the data. The checkpoints in "
                                f"{run_dir} are from before and intact")
            logger.log_train(step, mean_loss, scheduler.get_last_lr()[0], meter.rate())
            logger.log_skipped(skipped)
            meter = Window()
        if step % cfg.VAL_EVERY == 0 or step == cfg.STEPS:
            save("last.pt")   # before validating: a failed validation never costs the training
            metrics = validate(model, val_set, device, dtype, dist, logger, step, window, cfg)
            improved = dist.is_main and metrics["mean_class_accuracy"] > best
            best = max(best, metrics["mean_class_accuracy"]) if dist.is_main else best
            save("last.pt", **metrics)
            if improved:
                save("best.pt", **metrics)
                logger.print(f"best.pt updated: mean class accuracy {best:.4f} at step {step}")
            meter.restart_clock()
        elif step % cfg.SAVE_EVERY == 0 or step == stop_at:
            save("last.pt")
        if cfg.SNAPSHOT_EVERY and step % cfg.SNAPSHOT_EVERY == 0:
            save(f"step_{step}.pt")
    logger.finish(step, best, skipped)


def parse_jitter(text):
    """'low,high' -> (low, high) scale factors, 0 < low <= high; '1,1' -> None (native)."""
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--JITTER={text}: expected low,high (e.g. 0.8,1.25)") from None
    if not 0 < low <= high:
        raise UserError(f"--JITTER={text}: expected 0 < low <= high")
    return None if low == high == 1 else (low, high)


def find_resume_state(run_dir, resume, dist):
    """The checkpoint to resume from, or None. Without `resume` an existing run is moved
    aside, never deleted."""
    last = os.path.join(run_dir, "last.pt")
    if dist.is_main:   # the one process that saves here, before it saves
        for name in remove_stale_temporaries(run_dir):
            print(f"removed {name}: a checkpoint write cut off by the interrupted run", flush=True)
    if resume and os.path.exists(last):
        return load_checkpoint(last)
    if not resume and os.path.isdir(run_dir) and os.listdir(run_dir):
        dist.barrier()
        if dist.is_main:
            aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(run_dir, aside)
            print(f"--RESUME=False: moved the existing run to {aside}", flush=True)
        dist.barrier()
    return None


def build_model(cfg, train_set, state, run_dir):
    if state is not None:
        last = os.path.join(run_dir, "last.pt")
        model = AttentionNet.from_state(state, last)
        expected = {"arch": cfg.ARCH, "mode": cfg.MODE, "num_classes": train_set.num_classes}
        found = {k: model.config[k] for k in expected}
        if found != expected:
            raise UserError(f"{last} holds a different model ({found}) than asked "
                            f"({expected}); use another --RUN, or --RESUME=False to start afresh")
        return model
    return AttentionNet(train_set.num_classes, arch=cfg.ARCH, mode=cfg.MODE, attention=cfg.ATTENTION,
                        merge=cfg.MERGE, weights=cfg.WEIGHTS, class_names=train_set.class_names,
                        crop_margin=cfg.CROP_MARGIN, category_ids=train_set.category_ids)


def restore_training_state(state, optimizer, scheduler, scaler, run_dir):
    """Optimiser, schedule and scaler from last.pt; returns its step."""
    last = os.path.join(run_dir, "last.pt")
    missing = [key for key in ("optimizer", "scheduler", "step") if key not in state]
    if missing:
        raise UserError(f"{last}: no training state ({', '.join(missing)} missing: not written by "
                        "Train.py); use another --RUN, or --RESUME=False to start afresh")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler") or {})
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{last}: its optimiser state does not fit this model ({error}); use "
                        "another --RUN, or --RESUME=False to start afresh") from None
    return int(state["step"])


def make_optimizer(model, lr, weight_decay):
    """AdamW; no weight decay on biases and norm layers (the usual ResNet recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=False)


def lr_factor(step, warmup_steps, steps):
    """Linear warm-up over `warmup_steps`, then cosine decay to 1% of LR at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def validate(model, val_set, device, dtype, dist, logger, step, window, cfg):
    """Rank 0 evaluates every segment in its window; the other ranks wait. Returns the
    summary metrics."""
    metrics = {}
    if dist.is_main:
        out = predict_dataset(model, val_set, device, dtype, window=window, max_batch=cfg.MAX_BATCH,
                              workers=cfg.WORKERS, limit=cfg.VAL_MAX_IMAGES or None,
                              progress=sys.stderr.isatty())
        if len(out["labels"]) == 0:
            raise UserError(f"validation at step {step}: no image could be read "
                            f"({out['skipped'].summary()}); the checkpoints saved before are intact")
        if out["skipped"]:
            logger.print(f"validation: {out['skipped'].summary()}")
        full = summarize(out["labels"], out["preds"], out["areas"], val_set.class_names, out["topk"])
        metrics = {k: full[k] for k in ("accuracy", "mean_class_accuracy", "count")}
        logger.log_val(step, metrics, out["segments_per_s"])
    dist.barrier()
    model.train()
    return metrics


def check_finite(model, step, lr):
    """Never write a broken model over a good checkpoint."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError(f"the weights hold NaN/inf at step {step}: not saving; lower --LR (now {lr}). "
                        "The checkpoints already written are intact")


if __name__ == "__main__":
    cli.run(main)
