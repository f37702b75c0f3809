"""The model's properties: zero effect at init, mask dependence, small segments, checkpoints,
channels_last/bf16, gradients. resnet18 at small sizes keeps the suite fast."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

from AttentionNet import (DEFAULT_CROP_MARGINS, AttentionNet, MaskAttention, MERGE_POINTS,
                          mask_pyramid_level)
from roilib.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTENTION_SETS = list(MERGE_POINTS) + ["all", "stem,layer3"]


def plain_resnet(model):
    """The torchvision ResNet carrying the same weights as `model`'s main branch."""
    net = getattr(torchvision.models, model.config["arch"])(num_classes=model.num_classes)
    state = model.backbone.state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :3]      # "channel" mode has a 4th input
    net.load_state_dict(state)
    return net.eval()


def inputs(batch=3, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=g)
    masks = (torch.rand(batch, 1, h, w, generator=g) > 0.7).to(torch.uint8)
    return images, masks


def normalised(images):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def randomise_branches(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("branches.") or (name == "backbone.conv1.weight" and p.shape[1] == 4):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("merge", ["add", "mul", "muladd"])
@pytest.mark.parametrize("attention", ATTENTION_SETS)
def test_zero_effect_at_init(attention, merge):
    torch.manual_seed(0)
    model = AttentionNet(7, arch="resnet18", attention=attention, merge=merge).eval()
    images, masks = inputs()
    with torch.no_grad():
        expected = plain_resnet(model)(normalised(images))
        for m in (masks, torch.ones_like(masks), 1 - masks):
            diff = (model(images, m) - expected).abs().max().item()
            assert diff < 1e-4, (attention, merge, diff)


@pytest.mark.parametrize("merge", ["add", "mul", "muladd"])
@pytest.mark.parametrize("attention", ["stem", "all"])
def test_zero_effect_at_init_crop_attention(attention, merge):
    """crop+attention starts as exactly the crop baseline with the same margin and weights."""
    torch.manual_seed(0)
    model = AttentionNet(7, arch="resnet18", mode="crop+attention", attention=attention,
                         merge=merge).eval()
    crop = AttentionNet(7, arch="resnet18", mode="crop",
                        crop_margin=model.config["crop_margin"]).eval()
    crop.backbone.load_state_dict(model.backbone.state_dict())
    images, masks = inputs()
    square = torch.zeros_like(masks)
    square[..., 20:30, 40:52] = 1
    with torch.no_grad():
        for m in (masks, square, 1 - square):
            diff = (model(images, m) - crop(images, m)).abs().max().item()
            assert diff < 1e-4, (attention, merge, diff)


def test_crop_modes_margins_and_resampled_mask():
    """Each crop mode has its own default margin; crop+attention resamples the mask with
    the image: a square of side s becomes the central 1/(1 + 2*margin) of the input."""
    assert AttentionNet(3, arch="resnet18", mode="crop").config["crop_margin"] == 0.5
    model = AttentionNet(3, arch="resnet18", mode="crop+attention")
    assert model.config["crop_margin"] == DEFAULT_CROP_MARGINS["crop+attention"] == 1.5
    assert AttentionNet(3, arch="resnet18", mode="crop+attention", crop_margin=1).config["crop_margin"] == 1.0
    with pytest.raises(ValueError, match="crop_margin"):
        AttentionNet(3, arch="resnet18", mode="crop", crop_margin=-1)
    x = torch.rand(1, 3, 96, 96)
    mask = torch.zeros(1, 1, 96, 96)
    mask[..., 30:50, 20:40] = 1                           # 20x20 px -> an 80 px box -> 24 px
    image, resampled = model._crop(x, mask)
    assert image.shape == x.shape and resampled.shape == mask.shape
    assert resampled.min() >= 0 and resampled.max() <= 1
    inside = resampled[0, 0] > 0.5
    rows, cols = inside.any(1).nonzero()[:, 0], inside.any(0).nonzero()[:, 0]
    assert rows.tolist() == cols.tolist() == list(range(36, 60))
    assert resampled.sum().item() == pytest.approx(24 * 24, rel=0.02)


def test_zero_effect_channel_mode_and_resnet50():
    images, masks = inputs(batch=2, h=64, w=64)
    for arch, mode in (("resnet18", "channel"), ("resnet50", "attention")):
        torch.manual_seed(0)
        model = AttentionNet(5, arch=arch, mode=mode).eval()
        with torch.no_grad():
            diff = (model(images, masks) - plain_resnet(model)(normalised(images))).abs().max().item()
        assert diff < 1e-4, (arch, mode, diff)


@pytest.mark.parametrize("mode,attention,merge", [
    ("attention", "stem", "add"), ("attention", "layer2", "mul"), ("attention", "all", "muladd"),
    ("channel", "stem", "add"), ("blackout", "stem", "add"), ("crop", "stem", "add"),
    ("crop+attention", "stem", "add")])
def test_logits_depend_on_mask(mode, attention, merge):
    torch.manual_seed(0)
    model = AttentionNet(7, arch="resnet18", mode=mode, attention=attention, merge=merge).eval()
    randomise_branches(model)
    images, _ = inputs(batch=1)
    a = torch.zeros(1, 1, 64, 96)
    b = torch.zeros(1, 1, 64, 96)
    a[..., 5:20, 5:30] = 1
    b[..., 40:60, 60:90] = 1
    with torch.no_grad():
        assert (model(images, a) - model(images, b)).abs().max().item() > 1e-3


def same_box_masks(h=64, w=96):
    """Two masks with the same bounding box: its upper-left and its lower-right triangle."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    box = (rows >= 16) & (rows < 48) & (cols >= 24) & (cols < 56)
    upper_left = box & (rows - 16 <= 31 - (cols - 24))
    lower_right = box & (rows - 16 >= 31 - (cols - 24))
    return upper_left.float()[None, None], lower_right.float()[None, None]


def test_crop_attention_knows_the_pixels_in_its_box():
    """The crop sees only the box, so two regions with the same box look alike to it; with the
    mask merged, crop+attention tells them apart."""
    torch.manual_seed(0)
    images, _ = inputs(batch=1)
    a, b = same_box_masks()
    for mode, differs in (("crop", False), ("crop+attention", True)):
        model = AttentionNet(7, arch="resnet18", mode=mode).eval()
        randomise_branches(model)
        with torch.no_grad():
            diff = (model(images, a) - model(images, b)).abs().max().item()
        assert (diff > 1e-3) == differs, (mode, diff)


def test_none_mode_ignores_mask():
    model = AttentionNet(4, arch="resnet18", mode="none").eval()
    images, masks = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(images, masks), model(images, 1 - masks))


def test_small_segment_survives_stride_32():
    """A 2x2 mask at 224x224 still changes the layer4 (7x7) attention map; bilinear misses it."""
    mask = torch.zeros(1, 1, 224, 224)
    mask[..., 100:102, 100:102] = 1
    empty = torch.zeros_like(mask)
    branch = MaskAttention(8, "add")
    torch.nn.init.normal_(branch.add.weight)
    feature = torch.zeros(1, 8, 7, 7)
    with torch.no_grad():
        delta = (branch(feature, mask) - branch(feature, empty)).abs().max().item()
    assert delta > 0.1
    assert mask_pyramid_level(mask, (7, 7))[:, 1].max().item() == 1.0
    # the naive alternative the design warns about
    assert F.interpolate(mask, size=(7, 7), mode="bilinear", align_corners=False).max().item() == 0.0


def test_shared_image_equals_repeated_image():
    """One image with many masks (evaluation batching) gives the same logits as repeating it."""
    torch.manual_seed(0)
    for mode, attention in (("attention", "stem"), ("attention", "layer3"), ("crop+attention", "stem")):
        model = AttentionNet(5, arch="resnet18", mode=mode, attention=attention).eval()
        randomise_branches(model)
        images, masks = inputs(batch=4)
        with torch.no_grad():
            shared = model(images[:1], masks)
            repeated = model(images[:1].expand(4, -1, -1, -1), masks)
        torch.testing.assert_close(shared, repeated, atol=1e-4, rtol=1e-4)


def test_non_square_and_odd_sizes():
    model = AttentionNet(3, arch="resnet18", attention="all", merge="muladd").eval()
    randomise_branches(model)
    for h, w in ((32, 32), (45, 77), (130, 33)):
        images, masks = inputs(batch=2, h=h, w=w)
        with torch.no_grad():
            assert model(images, masks[:, 0]).shape == (2, 3)


def test_bad_inputs_are_clear():
    model = AttentionNet(3, arch="resnet18").eval()
    images, masks = inputs()
    with pytest.raises(ValueError, match="mask size"):
        model(images, masks[..., :32])
    with pytest.raises(ValueError, match="at least 32"):
        model(images[..., :16, :16], masks[..., :16, :16])
    with pytest.raises(ValueError, match="attention must name"):
        AttentionNet(3, arch="resnet18", attention="layer9")


def test_predict_topk_and_names():
    model = AttentionNet(4, arch="resnet18", class_names=["a", "b", "c", "d"])
    images, masks = inputs(batch=2)
    out = model.predict(images, masks, topk=3)
    assert model.training                      # predict restores the mode it found
    assert out["probs"].shape == (2, 4)
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(2))
    assert out["topk_indices"].shape == (2, 3)
    assert (out["topk_probs"][:, :-1] >= out["topk_probs"][:, 1:]).all()
    for names, idx in zip(out["topk_names"], out["topk_indices"].tolist()):
        assert names == [["a", "b", "c", "d"][i] for i in idx]


def test_checkpoint_round_trip_in_another_process(tmp_path):
    torch.manual_seed(0)
    model = AttentionNet(3, arch="resnet18", attention="stem,layer2", merge="muladd",
                         class_names=["cat", "dog", "fish"]).eval()
    randomise_branches(model)
    images, masks = inputs(batch=2)
    torch.save({"images": images, "masks": masks}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(images, masks)
    model.save(tmp_path / "model.pt", step=12)
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1])\n"
        "from AttentionNet import AttentionNet\n"
        "m = AttentionNet.from_checkpoint(sys.argv[2]).eval()\n"
        "d = torch.load(sys.argv[3], weights_only=True)\n"
        "with torch.no_grad(): torch.save(m(d['images'], d['masks']), sys.argv[4])\n"
        "print(','.join(m.class_names), m.config['attention'], m.config['merge'])\n")
    out = subprocess.run([sys.executable, "-c", script, ROOT, str(tmp_path / "model.pt"),
                          str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "cat,dog,fish ['stem', 'layer2'] muladd"
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    assert torch.equal(logits, expected)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 12
    assert sorted(os.listdir(tmp_path)) == ["inputs.pt", "logits.pt", "model.pt"]  # no temp left


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    model = AttentionNet(2, arch="resnet18")
    path = tmp_path / "evil.pt"
    torch.save({"model": model.state_dict(), "config": model.config, "payload": Exploit()}, path)
    with pytest.raises(UserError, match="refused"):
        AttentionNet.from_checkpoint(path)


def test_unreadable_checkpoints_are_clear(tmp_path):
    with pytest.raises(UserError, match="not found"):
        AttentionNet.from_checkpoint(tmp_path / "missing.pt")
    model = AttentionNet(2, arch="resnet18")
    model.save(tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        AttentionNet.from_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an AttentionNet checkpoint"):
        AttentionNet.from_checkpoint(tmp_path / "other.pt")



def test_checkpoint_of_another_format_or_model_is_refused(tmp_path):
    model = AttentionNet(2, arch="resnet18", class_names=["a", "b"])
    model.save(tmp_path / "good.pt", step=7)
    state = torch.load(tmp_path / "good.pt", weights_only=True)
    assert state["format"] == 1 and state["step"] == 7 and state["config"]["class_names"] == ["a", "b"]
    for found, age in ((2, "a newer"), (0, "an older"), (None, "an older")):
        torch.save({**state, "format": found}, tmp_path / "other.pt")
        with pytest.raises(UserError, match=f"format {found} is from {age} version"):
            AttentionNet.from_checkpoint(tmp_path / "other.pt")
    torch.save({**state, "config": {**state["config"], "num_classes": 3}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: checkpoint does not match this version of AttentionNet"):
        AttentionNet.from_checkpoint(tmp_path / "other.pt")
    torch.save({**state, "config": {**state["config"], "colour": "red"}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not match.*colour"):
        AttentionNet.from_checkpoint(tmp_path / "other.pt")
    with pytest.raises(UserError, match="good.pt: not a folder.*from_checkpoint"):
        AttentionNet.from_pretrained(str(tmp_path / "good.pt"))

def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = AttentionNet(2, arch="resnet18")
    path = tmp_path / "last.pt"
    model.save(path, step=1)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match="No space left"):
        model.save(path, step=2)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_local_weights_file(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = AttentionNet(6, arch="resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    with pytest.raises(UserError, match="not a state_dict of resnet50"):
        AttentionNet(6, arch="resnet50", weights=str(tmp_path / "r18.pth"))


def test_imagenet_weights_offline_message(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth.*checkpoints"):
        AttentionNet(3, arch="resnet18", weights="imagenet")


@pytest.mark.parametrize("mode", ["attention", "channel", "crop", "crop+attention", "blackout"])
def test_channels_last_and_bf16_autocast(mode):
    torch.manual_seed(0)
    model = AttentionNet(5, arch="resnet18", mode=mode, attention="stem,layer4", merge="muladd").eval()
    randomise_branches(model)
    images, masks = inputs(batch=2)
    with torch.no_grad():
        reference = model(images, masks)
        model = model.to(memory_format=torch.channels_last)
        cl = model(images.contiguous(memory_format=torch.channels_last), masks)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(images, masks)
    torch.testing.assert_close(cl, reference, atol=1e-3, rtol=1e-3)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    assert (bf16.float() - reference).abs().max().item() < 0.1 * reference.abs().max().item() + 0.05


@pytest.mark.parametrize("mode,merge", [("attention", "add"), ("attention", "mul"),
                                        ("attention", "muladd"), ("channel", "add"),
                                        ("crop+attention", "add"), ("crop+attention", "muladd")])
def test_gradients_reach_side_branch(mode, merge):
    torch.manual_seed(0)
    model = AttentionNet(4, arch="resnet18", mode=mode, attention="all", merge=merge).train()
    images, masks = inputs(batch=4)
    loss = F.cross_entropy(model(images, masks), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    if mode == "channel":
        grads = {"mask channel": model.backbone.conv1.weight.grad[:, 3]}
    else:
        grads = {n: p.grad for n, p in model.branches.named_parameters() if n.endswith("weight")}
        assert len(grads) == 5 * (2 if merge == "muladd" else 1)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum().item() > 0, name


@pytest.mark.parametrize("mode", ["attention", "crop+attention"])
def test_branch_learns_to_use_mask(mode):
    """A few SGD steps on a task only the mask's pixels can solve (same image, same box, label =
    which triangle of the box) reduce the loss: the zero-initialised branch does learn."""
    torch.manual_seed(0)
    model = AttentionNet(2, arch="resnet18", mode=mode, attention="stem").train()
    images = torch.full((8, 3, 64, 96), 128, dtype=torch.uint8)
    upper_left, lower_right = same_box_masks()
    masks = torch.cat([upper_left.expand(4, -1, -1, -1), lower_right.expand(4, -1, -1, -1)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(model(images, masks), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
