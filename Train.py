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
import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from AttentionNet import AttentionNet
from Datasets import label_convention, open_dataset, resolve_paths
from roilib import cli
from roilib.errors import Diverged, FolderClash, Interrupted, ResumeError, UserError
from roilib.optim import lr_factor, make_optimizer, schedule_notes, set_learning_rate, warmup_steps
from roilib.run import ResumeRules, Run, due
from roilib.sampler import VaryingSizeBatchSampler, batch_pixels, check_sizes, make_train_loader, parse_jitter
from roilib.windows import check_memory, parse_window, training_window

# ---- parameters: edit here, or override as --NAME=value ----
DATASET = "demo"            # [demo|coco|opensurfaces|camvid|cocojson|labelmap] a named dataset (default layout, class names, label-map convention) or your own data in COCO JSON or label maps (paths given; see README)
TRAIN_IMAGES = ""           # training image folder ("" = the DATASET's default layout, see README)
TRAIN_ANNOTATIONS = ""      # instances JSON (COCO format) or label-map folder ("" = default)
VAL_IMAGES = ""             # validation image folder ("" = default)
VAL_ANNOTATIONS = ""        # validation instances JSON or label-map folder ("" = default)
CLASS_NAMES = None          # [None|names] label maps only: comma-separated names in value order (None = the DATASET's; labelmap: needed unless CLASS_VALUES)
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

# How a resumed run treats each parameter (roilib/run.py): FIXED ones define the model,
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
# Parameters added after runs were stored, with the value those runs had in effect.
ADDED = {"BACKGROUND": "", "IGNORE": "", "CLASS_VALUES": "", "LABEL_NAMES": ""}
DATA_PATHS = ("TRAIN_IMAGES", "TRAIN_ANNOTATIONS", "VAL_IMAGES", "VAL_ANNOTATIONS")


def main():
    params = cli.parse_parameters(globals(), __file__)
    cfg = SimpleNamespace(**params)
    try:
        with Run(params, run_folder(cfg.LOG_DIR, cfg.RUN, cfg.RESUME), cfg.RESUME, cfg.DEVICE, cfg.AMP,
                 ResumeRules(FIXED, CHANGEABLE, as_read)) as run:
            train(cfg, run)
    except Interrupted as stop:   # what Ctrl-C left, and how to go on from it
        again = "the same command" if cfg.RESUME else "the same command without --RESUME=False"
        raise stop.advised(f"{again} resumes from it") from None


def train(cfg, run):
    torch.manual_seed(cfg.SEED)
    with run.together():   # a bad value stops the run now, not after hours of training
        jitter, window = check_settings(cfg, run.device)
    run.claim(inputs(vars(cfg)))   # its files never over its inputs; one writer: the folder's lock
    with run.together():   # what can fail on one process alone stops all of them at once
        train_set, val_set = open_data(cfg)
        model = (run.resume(AttentionNet.from_state, {"arch": cfg.ARCH, "mode": cfg.MODE, "num_classes":
                                                     train_set.num_classes}, train_set.class_names)
                 or new_model(cfg, train_set))
        model.to(run.device, memory_format=torch.channels_last if cfg.CHANNELS_LAST else torch.preserve_format)
        optimizer = make_optimizer(model, cfg.LR, cfg.WEIGHT_DECAY)
        scaler = torch.amp.GradScaler(run.device.type, enabled=run.dtype == torch.float16)
        warmup, cosine = schedule(cfg, run.state)
        stop_at = min(cfg.STOP_AT or cfg.STEPS, cfg.STEPS)
        step = run.start(model, optimizer, scaler, train_set, val_set, window, (warmup, cosine), cfg.STEPS,
                         stop_at, settings_line(cfg))
        for note in schedule_notes(step, cfg.STEPS, cfg.STOP_AT, cosine, warmup, cfg.WARMUP_STEPS, cfg.LR,
                                   {"steps": "STEPS", "stop_at": "STOP_AT", "warmup": "WARMUP_STEPS"}):
            run.print(note)
    if step >= stop_at:
        return
    net = torch.compile(run.parallel(model)) if cfg.COMPILE else run.parallel(model)   # DDP on several
    loader = iter(train_loader(cfg, train_set, jitter, step, run.dist))
    net.train()
    while step < stop_at:
        with run.together():   # a loader error here must not leave the others in DDP's all-reduce
            batch = next(loader)
        images, masks, labels = (batch[k].to(run.device, non_blocking=True) for k in ("images", "masks", "labels"))
        with run.autocast():
            logits = net(images, masks)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        lr = cfg.LR * lr_factor(step, warmup, cosine)
        set_learning_rate(optimizer, lr)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        run.record(loss.detach(), labels.shape[0], batch["skipped"])
        if due(step, cfg.LOG_EVERY) or step == stop_at:
            run.log(step, lr)
        if cfg.VAL_EVERY and (due(step, cfg.VAL_EVERY) or step == cfg.STEPS):
            run.validate(step, val_set, cfg.MAX_BATCH, cfg.WORKERS, cfg.VAL_MAX_IMAGES or None)
        elif due(step, cfg.SAVE_EVERY) or step == stop_at:
            run.save("last.pt", step)
        if due(step, cfg.SNAPSHOT_EVERY):
            run.save(f"step_{step}.pt", step)
    run.finish(step)


def check_settings(cfg, device):
    """(jitter, window), once the settings that can be checked before reading data are."""
    check_sizes(cfg.MIN_SIZE, cfg.MAX_SIZE)
    if cfg.WEIGHTS not in (None, "none", "imagenet") and not os.path.isfile(cfg.WEIGHTS):
        raise UserError(f"--WEIGHTS={cfg.WEIGHTS}: expected None, imagenet or the path of a state_dict "
                        "of the backbone (no such file)")
    window = parse_window(cfg.WINDOW) if cfg.WINDOW else training_window(cfg.MAX_SIZE)
    check_memory(f"--MAX_SIZE={cfg.MAX_SIZE} --MAX_PIXELS={cfg.MAX_PIXELS} --MAX_BATCH={cfg.MAX_BATCH} "
                 f"(windows of {window[0]}x{window[1]})",
                 max(batch_pixels(cfg.MAX_SIZE, cfg.MAX_PIXELS, cfg.MAX_BATCH),
                     cfg.MAX_BATCH * window[0] * window[1]), device)
    return parse_jitter(cfg.JITTER), window


def open_data(cfg):
    """(training set, validation set), with the same classes."""
    convention = label_convention(vars(cfg), cfg.DATASET)
    train_set, val_set = (open_dataset(cfg.DATASET, split, images, annotations, train=split == "train",
                                       class_names=cfg.CLASS_NAMES, min_area=cfg.MIN_AREA, convention=convention)
                          for split, images, annotations in (("train", cfg.TRAIN_IMAGES, cfg.TRAIN_ANNOTATIONS),
                                                              ("val", cfg.VAL_IMAGES, cfg.VAL_ANNOTATIONS)))
    if val_set.class_names != train_set.class_names:
        raise UserError("the validation set's classes differ from the training set's")
    return train_set, val_set


def new_model(cfg, train_set):
    return AttentionNet(train_set.num_classes, arch=cfg.ARCH, mode=cfg.MODE, attention=cfg.ATTENTION,
                        merge=cfg.MERGE, weights=cfg.WEIGHTS, class_names=train_set.class_names,
                        crop_margin=cfg.CROP_MARGIN, category_ids=train_set.category_ids)


def schedule(cfg, state):
    """(warm-up, cosine steps). The cosine spans the STEPS the run began with; steps added later
    run at its end value. A resumed run keeps its schedule's shape (runs saved before the cap:
    uncapped)."""
    if state is None:
        return warmup_steps(cfg.WARMUP_STEPS, cfg.STEPS), cfg.STEPS
    return (state.get("warmup_steps", cfg.WARMUP_STEPS),
            state.get("schedule_steps", state["params"].get("STEPS", cfg.STEPS)))


def train_loader(cfg, train_set, jitter, step, dist):
    """Batches from `step` on: this process's share, one geometry per step on all of them."""
    sampler = VaryingSizeBatchSampler(
        train_set.labels, cfg.MIN_SIZE, cfg.MAX_SIZE, cfg.MAX_PIXELS, cfg.MAX_BATCH,
        balanced=cfg.BALANCED, seed=cfg.SEED, start_step=step, rank=dist.rank,
        world_size=dist.world_size, image_of_segment=train_set.image_of_segment)
    train_set.flip, train_set.jitter = cfg.FLIP, jitter
    return make_train_loader(train_set, sampler, cfg.WORKERS)


def settings_line(cfg):
    memory = "channels_last" if cfg.CHANNELS_LAST else "contiguous"
    return (f"weights={cfg.WEIGHTS}, {memory}, {cfg.WORKERS} workers, crops {cfg.MIN_SIZE}-"
            f"{cfg.MAX_SIZE}px, <= {cfg.MAX_BATCH} per batch")


def run_folder(log_dir, run, resume):
    """LOG_DIR/RUN. --RESUME=False moves an existing run folder aside, so there RUN must name a
    folder inside LOG_DIR: `.`, `..` or a path outside would move LOG_DIR or more."""
    logs = log_dir if os.path.isabs(log_dir) else os.path.join(os.path.dirname(os.path.abspath(__file__)), log_dir)
    run_dir = os.path.normpath(os.path.join(logs, run))
    real_logs, real_run = os.path.realpath(logs), os.path.realpath(run_dir)
    if not resume and (real_run == real_logs or os.path.commonpath([real_logs, real_run]) != real_logs):
        raise UserError(f"--RUN={run} names {real_run}, not a folder inside --LOG_DIR ({real_logs}), "
                        "which --RESUME=False would move aside; give a run name such as --RUN=demo2")
    return run_dir


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


# What a refusal says in this script's words (roilib.cli.run): its parameters' names for the
# values the library names, and the way out of each kind of error.
NAMES = {"device": "DEVICE", "min_size": "MIN_SIZE", "max_size": "MAX_SIZE", "jitter": "JITTER", "run": "RUN"}
RESUME_WAY_OUT = "start afresh with --RESUME=False (the old run is moved aside) or choose another --RUN"
ADVICE = {ResumeError: RESUME_WAY_OUT, FolderClash: "choose another --RUN", Diverged: "lower --LR or check the data"}

if __name__ == "__main__":
    cli.run(main, NAMES, ADVICE)
