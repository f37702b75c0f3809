"""What every part shares: how to measure (device, precision, memory format, repetitions) and
the model under test."""
from dataclasses import dataclass

import torch

from AttentionNet import AttentionNet


@dataclass(frozen=True)
class Bench:
    device: torch.device
    dtype: object            # the default precision: torch.bfloat16, or None for float32
    channels_last: bool      # the models' and inputs' memory format
    steps: int               # timed repetitions
    warmup: int              # untimed repetitions first


def model_on(device, arch, channels_last, mode="attention"):
    """An 80-class AttentionNet with stem attention, seeded, on `device`."""
    torch.manual_seed(0)
    model = AttentionNet(80, arch=arch, mode=mode, attention="stem").to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model
