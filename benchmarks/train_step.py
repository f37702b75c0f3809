"""(a) model only: forward + backward + AdamW step on tensors already on the device (img/s)."""
import torch
import torch.nn.functional as F

from benchmarks.common import model_on
from roilib.benchutil import inputs, row, timed
from roilib.runtime import autocast, precision_name


def train_step_rate(bench, dtype, arch, batch, size, compile_model=False):
    """Images per second of one training step at `dtype` (None: float32)."""
    model = model_on(bench.device, arch, bench.channels_last).train()
    net = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, masks = inputs(batch, size, size, bench.device, channels_last=bench.channels_last)
    labels = torch.arange(batch, device=bench.device) % 80

    def step():
        with autocast(bench.device, dtype):
            logits = net(images, masks)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = timed(step, bench.device, bench.steps, bench.warmup + (5 if compile_model else 0))
    return batch / seconds


def measure(bench, archs, batch, size, compile_model):
    """Each arch in float32 and, where the device has one, the default lower precision; the
    float32 row of an arch comes first (part b divides by it)."""
    rows = []
    for arch in archs:
        precisions = [None] + ([bench.dtype] if bench.dtype is not None else [])
        rates = {}
        for p in precisions:
            rates[p] = train_step_rate(bench, p, arch, batch, size)
            rows.append(row("a", f"model only, train step, {arch} {batch}x{size}², {precision_name(p)}",
                            rates[p], "img/s"))
        if bench.dtype is not None:
            rows.append(row("a", f"  {arch}: {precision_name(bench.dtype)} / float32",
                            rates[bench.dtype] / rates[None], "x"))
        if compile_model:
            rate = train_step_rate(bench, bench.dtype, arch, batch, size, compile_model=True)
            rows.append(row("a", f"model only, train step, {arch}, {precision_name(bench.dtype)}, torch.compile",
                            rate, "img/s"))
    return rows
