"""Backbone weights: torchvision's ImageNet weights (downloaded once into the torch hub cache,
with the file and folder named where the download fails) or a local state_dict file."""
import os

import torch
import torchvision

from roilib.checkpoint import first_line, load_checkpoint
from roilib.errors import UserError


def build_backbone(arch, weights):
    """A torchvision ResNet with random (None), ImageNet ("imagenet") or local-file weights."""
    builder = getattr(torchvision.models, arch)
    if weights is None or weights == "none":
        return builder(weights=None)
    if weights == "imagenet":
        return _imagenet_backbone(arch, builder)
    net = builder(weights=None)
    load_backbone_file(net, weights)
    return net


def _imagenet_backbone(arch, builder):
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return builder(weights=enum)
    except Exception as e:  # download errors come from urllib, ssl, http, hashing ...
        url = enum.url
        target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        raise UserError(f"could not get ImageNet weights for {arch} ({first_line(e)}); "
                        f"download {url} and put it at {target}, or set WEIGHTS=None") from None


def load_backbone_file(net, path):
    """Load a torchvision state_dict (possibly wrapped in {"state_dict"} or {"model"}); its
    classifier is ignored because fc is replaced for the task's classes."""
    state = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()
             if not k.removeprefix("module.").removeprefix("backbone.").startswith("fc.")}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:   # shapes differ: another arch
        raise UserError(f"{path}: not a ResNet state_dict for this arch ({first_line(e)})") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise UserError(f"{path}: not a ResNet state_dict for this arch "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
