"""AttentionNet: classify the region of an image marked by a binary ROI mask.

Eppel, "Classifying a specific image region using convolutional nets with an ROI mask as
input" (2018). A ResNet (the paper's) or an EfficientNet is the main branch
(roilib/backbones.py); a side branch turns the ROI mask into
attention maps that are added to and/or multiplied with feature maps (best: right after the
first convolution), so the net looks at the region but still sees its surroundings.

    model = AttentionNet(num_classes=80, arch="resnet50", weights="imagenet")
    model = AttentionNet(num_classes=11, arch="tf_efficientnet_lite0", weights="imagenet")  # offline
    logits = model(images, masks)       # images [B,3,H,W] RGB 0..255, masks [B,1,H,W] in {0,1}
    model.save("model.pt"); model = AttentionNet.from_checkpoint("model.pt")
    model = AttentionNet.from_pretrained("release/")   # Export.py --FORMAT=safetensors

The same constructor builds the baselines of the paper's comparison (mode="blackout", "crop",
"channel", "none") and a hybrid, "crop+attention": the context box around the mask resampled to
the input as "crop" does (small segments magnified), with the mask resampled alike and merged
by the attention branch (so the net knows which pixels of the box are the region). Every
variant shares one code path for training and evaluation.
"""
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from roilib.backbones import (ARCHS, build_backbone, last_channels, parts_of, run_stage,
                              with_mask_channel)
from roilib.checkpoint import (load_model_state, load_released_folder, model_checkpoint,
                               model_from_state, save_checkpoint)

MODES = ("attention", "blackout", "crop", "crop+attention", "channel", "none")
ATTENTION_MODES = ("attention", "crop+attention")   # the modes with a mask side branch
# Context around the mask's box in the crop modes, as a fraction of its size on each side.
# The crop alone keeps it small: a wider box takes in other objects and, without the mask,
# the net cannot tell which one is meant. With the mask merged, a wider box costs only
# magnification: at 1.5 the box is 4x the segment's size, so a segment narrower than a quarter
# of the input (24-40 px at 96-160 px inputs, about the demo's segments under 1k px) is still
# magnified, and the box holds the context up to 1.5 segment sizes away on every side.
DEFAULT_CROP_MARGINS = {"crop": 0.5, "crop+attention": 1.5}
# Context beyond 20 box sizes on each side is the whole image for any segment worth a crop;
# an unbounded margin overflows the crop's coordinates.
MAX_CROP_MARGIN = 20
MERGE_POINTS = ("stem", "layer1", "layer2", "layer3", "layer4")
MERGES = ("add", "mul", "muladd")


def parse_attention(spec):
    """'stem', 'layer1,layer3', 'all' or a list -> merge points in network order."""
    if isinstance(spec, str):
        spec = MERGE_POINTS if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    points = tuple(p for p in MERGE_POINTS if p in set(spec))
    unknown = set(spec) - set(MERGE_POINTS)
    if unknown or not points:
        raise ValueError(f"attention must name merge points among {', '.join(MERGE_POINTS)} or 'all', got {spec!r}")
    return points


def mask_pyramid_level(masks, size):
    """Resize [B,1,H,W] masks to a feature map's size as two channels: coverage (the fraction of
    each cell inside the ROI) and presence (any ROI pixel in the cell). Presence keeps a 2x2-pixel
    segment visible even at stride 32, where bilinear sampling would simply miss it."""
    coverage = F.adaptive_avg_pool2d(masks, size)
    presence = F.adaptive_max_pool2d(masks, size)
    return torch.cat([coverage, presence], dim=1)


class MaskAttention(nn.Module):
    """Side branch for one merge point: ROI mask -> attention map merged into the feature map.
    Initialised so that it has exactly no effect at the start (add: 0, mul: 1)."""

    def __init__(self, channels, merge):
        super().__init__()
        self.merge = merge
        self.pyramid = mask_pyramid_level   # roilib/export.py swaps in a form that exports dynamic
        self.mul = self._conv(channels, bias=1.0) if merge in ("mul", "muladd") else None
        self.add = self._conv(channels, bias=0.0) if merge in ("add", "muladd") else None

    @staticmethod
    def _conv(channels, bias):
        conv = nn.Conv2d(2, channels, kernel_size=3, padding=1, bias=True)
        nn.init.zeros_(conv.weight)
        nn.init.constant_(conv.bias, bias)
        return conv

    def attention_input(self, x, masks):
        return self.pyramid(masks, x.shape[-2:]).to(x.dtype)

    def forward(self, x, masks):
        m = self.attention_input(x, masks)
        if self.mul is not None:
            x = x * self.mul(m)
        if self.add is not None:
            x = x + self.add(m)
        return x


def masks_to_boxes_with_context(masks, margin, out_hw):
    """Bounding box of each mask, grown by `margin` of its size on every side and widened to the
    output's aspect ratio (no distortion). Returns [B,5] rows (batch index, x0, y0, x1, y1)."""
    b = masks.shape[0]
    # masks_to_boxes gives inclusive pixel indices; +1 makes x1, y1 the far edges.
    x0, y0, x1, y1 = torchvision.ops.masks_to_boxes(masks[:, 0] > 0).float().unbind(1)
    x1, y1 = x1 + 1, y1 + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw = ((x1 - x0) * (1 + 2 * margin)).clamp(min=8)
    bh = ((y1 - y0) * (1 + 2 * margin)).clamp(min=8)
    aspect = out_hw[1] / out_hw[0]
    bw, bh = torch.maximum(bw, bh * aspect), torch.maximum(bh, bw / aspect)
    index = torch.arange(b, device=masks.device, dtype=torch.float32)
    return torch.stack([index, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)


class AttentionNet(nn.Module):
    """Backbone main branch + ROI-mask side branch (or one of the baselines), see module doc.
    `mean` and `std` (0..1 RGB) normalise the images; None: the backbone's (ImageNet's for the
    ResNets, timm's for the EfficientNets)."""

    def __init__(self, num_classes, arch="resnet50", mode="attention", attention="stem", merge="add",
                 weights=None, class_names=None, crop_margin=None, category_ids=None, mean=None, std=None):
        super().__init__()
        parts = parts_of(arch)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if category_ids is not None and len(category_ids) != num_classes:
            raise ValueError(f"{len(category_ids)} category ids for {num_classes} classes")
        points = parse_attention(attention) if mode in ATTENTION_MODES else ()
        if crop_margin is None:
            crop_margin = DEFAULT_CROP_MARGINS.get(mode, 0.5)
        if not isinstance(crop_margin, (int, float)) or not 0 <= crop_margin <= MAX_CROP_MARGIN:
            raise ValueError(f"crop_margin must be in [0, {MAX_CROP_MARGIN}], got {crop_margin!r}")
        mean, std = _normalisation(parts, arch, mean, std)
        self.config = {"arch": arch, "num_classes": int(num_classes), "mode": mode,
                       "attention": list(points), "merge": merge, "crop_margin": float(crop_margin),
                       "class_names": list(class_names) if class_names is not None else None,
                       # the dataset's own ids of the classes (COCO: 1..90; label maps: values)
                       "category_ids": [int(i) for i in category_ids] if category_ids is not None else None,
                       "mean": list(mean), "std": list(std)}
        self.parts = parts   # how to run the backbone piece by piece (holds no weights)
        self.share_image = True
        self.backbone = net = build_backbone(arch, weights)
        head = getattr(net, parts.classifier)
        setattr(net, parts.classifier, nn.Linear(head.in_features, num_classes))
        if mode == "channel":
            setattr(net, parts.first_conv_name, with_mask_channel(self.first_conv))
        channels = {"stem": self.first_conv.out_channels}
        channels.update({p: last_channels(g) for p, g in zip(MERGE_POINTS[1:], parts.stages(net))})
        self.branches = nn.ModuleDict({p: MaskAttention(channels[p], merge) for p in points})
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def first_conv(self):
        """The backbone's first convolution: the stem merge point follows it."""
        return getattr(self.backbone, self.parts.first_conv_name)

    @property
    def last_stage(self):
        """The module whose output is pooled for the classifier (Grad-CAM's layer)."""
        return self.parts.stages(self.backbone)[-1][-1]

    @property
    def class_names(self):
        return self.config["class_names"]

    @property
    def num_classes(self):
        return self.config["num_classes"]

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, images, masks):
        """images: [B,3,H,W] (or [1,3,H,W] shared by all masks) RGB 0..255, uint8 or float;
        masks: [B,1,H,W] or [B,H,W], nonzero = ROI. Returns logits [B, num_classes]."""
        masks = self._check_inputs(images, masks)
        batch = masks.shape[0]
        x = self.normalize(images)
        mode = self.config["mode"]
        # In eval mode an image shared by many masks runs once up to the first merge point
        # (roilib/export.py turns this off: the test on the batch size would fix it).
        share = (self.share_image and x.shape[0] == 1 and batch > 1 and not self.training
                 and mode in ("attention", "none"))
        if not share:
            x = x.expand(batch, -1, -1, -1)
        if mode == "blackout":
            x = x * masks                      # normalised 0 == the mean colour
        elif mode == "crop":
            x = self._crop(x, masks)[0]
        elif mode == "crop+attention":
            x, masks = self._crop(x, masks)   # the branches then see the mask in the box
        elif mode == "channel":
            x = torch.cat([x, masks.to(x.dtype)], dim=1)
        return self._main_branch(x, masks, batch)

    def _main_branch(self, x, masks, batch):
        net, parts = self.backbone, self.parts
        x = self._merge("stem", self.first_conv(x), masks, batch)
        x = parts.after_stem(net, x)
        for name, stage in zip(MERGE_POINTS[1:], parts.stages(net)):
            x = self._merge(name, run_stage(stage, x), masks, batch)
        # Global average pooling as a mean: the same numbers as adaptive pooling to 1x1, and
        # torch.export keeps it dynamic down to a 1x1 feature map.
        return getattr(net, parts.classifier)(x.mean(dim=(2, 3))).expand(batch, -1)

    def _merge(self, point, x, masks, batch):
        if point not in self.branches:
            return x
        if x.shape[0] != batch:
            x = x.expand(batch, -1, -1, -1)
        return self.branches[point](x, masks)

    def normalize(self, images):
        x = (images.float() - self.mean) / self.std
        if self.first_conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _crop(self, x, masks):
        """The context box of each mask resampled to the input size: (images, masks); the
        masks become coverage in [0, 1], sampled exactly as the image is."""
        out_hw = tuple(x.shape[-2:])
        boxes = masks_to_boxes_with_context(masks, self.config["crop_margin"], out_hw)

        def resample(t):
            return torchvision.ops.roi_align(t, boxes.to(t.dtype), output_size=out_hw,
                                             spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return resample(x), resample(masks.to(x.dtype)).clamp(0, 1)

    @staticmethod
    def _check_inputs(images, masks):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W] RGB, got shape {tuple(images.shape)}")
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks must be [B,1,H,W] or [B,H,W], got shape {tuple(masks.shape)}")
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"mask size {tuple(masks.shape[-2:])} differs from image size {tuple(images.shape[-2:])}")
        if min(images.shape[-2:]) < 32:
            raise ValueError(f"images must be at least 32x32, got {tuple(images.shape[-2:])}")
        if images.shape[0] not in (1, masks.shape[0]):
            raise ValueError(f"{images.shape[0]} images for {masks.shape[0]} masks (give one image per mask, or one for all)")
        if masks.dtype.is_floating_point:
            return masks.clamp(0, 1)
        return (masks > 0).float()

    # ---- prediction ------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images, masks, topk=5):
        """Probabilities and top-k classes for each mask: a dict with "probs" [B,K],
        "topk_probs" and "topk_indices" [B,k], and "topk_names" (lists) when names are known."""
        was_training = self.training
        self.eval()
        try:
            probs = self(images, masks).float().softmax(dim=-1)
        finally:
            self.train(was_training)
        top_p, top_i = probs.topk(min(topk, self.num_classes), dim=-1)
        out = {"probs": probs, "topk_probs": top_p, "topk_indices": top_i}
        if self.class_names is not None:
            out["topk_names"] = [[self.class_names[i] for i in row] for row in top_i.tolist()]
        return out

    # ---- checkpoints (the file formats and their checks live in roilib/checkpoint.py) -------
    def save(self, path, **extra):
        """Write {"format", "model", "config", **extra} atomically: a crash mid-write leaves any
        previous file at `path` intact."""
        save_checkpoint(model_checkpoint(self.state_dict(), self.config, **extra), path)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu"):
        """Rebuild the model from a checkpoint alone (architecture, classes, names, mode, merge
        points all come from the file), or from a released folder (see from_pretrained)."""
        return cls.from_state(load_model_state(path, map_location), path)

    @classmethod
    def from_pretrained(cls, folder, map_location="cpu"):
        """Rebuild the model from a folder written by `Export.py --FORMAT=safetensors`
        (model.safetensors + config.json): no pickle is read, so any such folder is safe to load."""
        return cls.from_state(load_released_folder(folder, map_location), folder)

    @classmethod
    def from_state(cls, state, path="checkpoint"):
        """The model of a loaded checkpoint or released folder (load_model_state's dict)."""
        return model_from_state(state, path, lambda config: cls(weights=None, **config)).eval()   # loaded to predict


def _normalisation(parts, arch, mean, std):
    """(mean, std) as 3-tuples of floats in (0, 1]: the given ones, else the backbone's."""
    default_mean, default_std = parts.normalisation(arch)
    mean = tuple(float(v) for v in (default_mean if mean is None else mean))
    std = tuple(float(v) for v in (default_std if std is None else std))
    if len(mean) != 3 or len(std) != 3 or not all(0 <= v <= 1 for v in mean) or not all(0 < v <= 1 for v in std):
        raise ValueError(f"mean and std must be 3 values in [0, 1] and (0, 1], got {mean} and {std}")
    return mean, std
