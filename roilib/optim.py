"""The optimiser and the learning-rate schedule of a training run.

The schedule is a plain function of the step (`learning_rate`), applied by the training loop
before each optimiser step: no scheduler object, no state of its own to save or restore. A
resumed run therefore takes a changed LR as it is, and its step alone says where it is.

The shape: a linear warm-up, then a cosine from LR down to FINAL_FACTOR x LR over the STEPS the
run began with (`schedule_steps`). Steps added later by raising STEPS on resume run at
FINAL_FACTOR x LR: the learning rate never jumps back up. The warm-up is at most
WARMUP_FRACTION of the schedule (`warmup_steps`), so that a short run still decays.
"""
import math

import torch

FINAL_FACTOR = 0.01
WARMUP_FRACTION = 0.1


def make_optimizer(model, lr, weight_decay):
    """AdamW; no weight decay on biases and norm layers (the usual ResNet recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=False)


def warmup_steps(requested, schedule_steps):
    """The warm-up a schedule of `schedule_steps` runs: the requested one, capped at
    WARMUP_FRACTION of the schedule (a run that is all warm-up ends at its peak LR and never
    settles: 100 steps with a warm-up of 100 learned one class)."""
    return min(int(requested), int(schedule_steps * WARMUP_FRACTION))


def lr_factor(step, warmup, schedule_steps):
    """The LR of optimiser step `step` (0 = the first) as a fraction of the peak: linear
    warm-up over `warmup` steps, cosine decay to FINAL_FACTOR at `schedule_steps`, then
    FINAL_FACTOR."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, schedule_steps - warmup))
    return FINAL_FACTOR + (1 - FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_notes(step, steps, stop_at, schedule_steps, warmup, requested_warmup, lr, names):
    """What a (resumed) run is told about its schedule before it trains: steps beyond the
    cosine, a shortened warm-up, nothing left to run. `names` maps "steps", "stop_at" and
    "warmup" to the caller's parameter names, so that the notes say what to change."""
    notes = []
    if steps > schedule_steps and step < steps:
        notes.append(f"steps {max(step, schedule_steps) + 1}-{steps} run at the learning-rate "
                     f"schedule's end value, {FINAL_FACTOR:g} x LR = {FINAL_FACTOR * lr:.2e} "
                     f"(the cosine spans the first {schedule_steps} steps; see docs/training.md, Resuming)")
    if warmup < requested_warmup:
        notes.append(f"warm-up: {warmup} steps, not {names['warmup']}={requested_warmup}: at most a "
                     f"tenth of the {schedule_steps}-step schedule, so that the learning rate decays")
    if step >= steps:
        notes.append(f"already trained {step} steps ({names['steps']}={steps}); raise --{names['steps']} "
                     f"to go on at {FINAL_FACTOR:g} x LR")
    elif stop_at and step >= stop_at:
        notes.append(f"already at step {step}, past {names['stop_at']}={stop_at}: no step to run")
    return notes


def set_learning_rate(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
