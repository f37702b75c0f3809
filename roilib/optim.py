"""Train.py's optimiser and learning-rate schedule, and how a resumed run takes a changed LR or
weight decay.

The schedule: linear warm-up, then a cosine from LR down to FINAL_FACTOR x LR over the STEPS
the run began with. Steps added later by raising STEPS on resume run at FINAL_FACTOR x LR:
the learning rate never jumps back up.
"""
import math

import torch

from roilib.errors import UserError

FINAL_FACTOR = 0.01


def make_optimizer(model, lr, weight_decay):
    """AdamW; no weight decay on biases and norm layers (the usual ResNet recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=False)


def lr_factor(step, warmup_steps, steps):
    """Linear warm-up over `warmup_steps`, cosine decay to FINAL_FACTOR at `steps`, then
    FINAL_FACTOR."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return FINAL_FACTOR + (1 - FINAL_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer, warmup_steps, schedule_steps):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, schedule_steps))


def require_training_state(state, last):
    missing = [key for key in ("optimizer", "scheduler", "step", "params") if key not in state]
    if missing:
        raise UserError(f"{last}: no training state ({', '.join(missing)} missing: not written by "
                        "Train.py); use another --RUN, or --RESUME=False to start afresh")


def restore_training_state(state, optimizer, scheduler, scaler, last):
    """Optimiser, schedule and scaler from last.pt (see require_training_state); returns its step."""
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler") or {})
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{last}: its optimiser state does not fit this model ({error}); use "
                        "another --RUN, or --RESUME=False to start afresh") from None
    return int(state["step"])


def set_hyperparameters(optimizer, scheduler, lr, weight_decay, step):
    """This run's LR and weight decay over the ones loaded with the optimiser state; a no-op
    to the bit when they are unchanged."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, lmbda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = lr, lr * lmbda(step)
    optimizer.param_groups[0]["weight_decay"] = weight_decay   # group 1 (norms, biases): none
