"""(c) side-branch cost: forward of AttentionNet with stem attention vs. the plain ResNet."""
import torch

from benchmarks.common import model_on
from roilib.benchutil import inputs, row, timed
from roilib.runtime import autocast, precision_name

ROUNDS = 3   # interleaved: a noisy machine slows both models alike


def measure(bench, arch, batch, size):
    images, masks = inputs(batch, size, size, bench.device, channels_last=bench.channels_last)
    models = {"none": model_on(bench.device, arch, bench.channels_last, "none").eval(),
              "stem": model_on(bench.device, arch, bench.channels_last).eval()}
    with torch.no_grad():
        models["stem"].branches["stem"].add.weight.normal_()   # a trained-looking branch

    def forward(model):
        with torch.inference_mode(), autocast(bench.device, bench.dtype):
            model(images, masks)
    times = {k: [] for k in models}
    for _ in range(ROUNDS):
        for k, m in models.items():
            times[k].append(timed(lambda: forward(m), bench.device, max(bench.steps // 2, 3), 1))
    plain, stem = min(times["none"]), min(times["stem"])
    what = f"forward {arch} {batch}x{size}², {precision_name(bench.dtype)}"
    return [row("c", f"{what}, plain ResNet", batch / plain, "img/s"),
            row("c", f"{what}, stem attention", batch / stem, "img/s"),
            row("c", "  side-branch cost: time(stem) / time(plain)", stem / plain, "x")]
