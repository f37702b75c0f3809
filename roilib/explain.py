"""Where the model looked, as heat maps over evaluation windows (what the net saw).

    panels = explain_regions(model, image, regions, window)   # RGB pictures per region
    write_image(path, explanation_strip(panels[0]))           # window | attention | Grad-CAM
    sheet = explained_overlay(model, canvas, image, regions, window)   # strips tiled under it
    images, masks = cut_windows(image, regions, window)        # or the maps themselves:
    attention = attention_map(model, images, masks)            # [S,H,W] in [0, 1]
    cam = grad_cam(model, images, masks)                       # [S,H,W] in [0, 1]

attention_map: what the mask's side branch adds to the feature map at its merge point (for the
default additive merge exactly A(mask), for a multiplicative one x·M(mask) - x), averaged over
channels in absolute value. grad_cam: Grad-CAM (Selvaraju et al. 2017) of a class at layer4,
the last feature map before pooling. Both are scaled to the window and to a maximum of 1, so
they show where, not how much. A user compares them: attention on the region and Grad-CAM
on its surroundings means the class came from the context.

Drawing on photos (draw_regions, heat_overlay): regions outlined and labelled, evaluation
windows, heat maps. A label is drawn as text on a filled box of its region's colour, black or
white text (whichever contrasts), with a dark border: readable on any photo, unlike text in the
outline's own colour, which vanishes on a background of that colour. Outlines and boxes run over
a dark edge for the same reason.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from roilib.errors import UserError
from roilib.progress import progress_bar
from roilib.windows import cut_windows

# The modes whose feature maps lie over the window; the crop modes resample a box of it.
WINDOW_MODES = ("attention", "blackout", "channel", "none")
GAP = 4   # white pixels between pictures
FONT = cv2.FONT_HERSHEY_SIMPLEX


def explain_regions(model, image, regions, window):
    """Per region (a BoxMask of the RGB `image`), RGB uint8 pictures of the window's size:
    {"window": the window as the net saw it, "attention": it under the attention map (None for
    a model without a mask branch), "grad_cam": it under Grad-CAM of the predicted class},
    each with the region's edge in white."""
    images, masks = cut_windows(image, regions, window)
    device = next(model.parameters()).device
    images, masks = images.to(device), masks.to(device)
    attention = attention_map(model, images, masks) if len(model.branches) else None
    cams = grad_cam(model, images, masks)
    panels = []
    for i in range(len(regions)):
        rgb = np.ascontiguousarray(images[i].permute(1, 2, 0).cpu().numpy())
        outline = masks[i, 0].cpu().numpy()
        panels.append({"window": rgb, "grad_cam": heat_overlay(rgb, cams[i], outline=outline),
                       "attention": None if attention is None else
                       heat_overlay(rgb, attention[i], outline=outline)})
    return panels


def explanation_strip(panel, gap=GAP):
    """One picture of an explain_regions panel: the window, then its heat maps, side by side."""
    pictures = [panel[key] for key in ("window", "attention", "grad_cam") if panel[key] is not None]
    spacer = np.full((pictures[0].shape[0], gap, 3), 255, np.uint8)
    return np.hstack([part for picture in pictures for part in (picture, spacer)][:-1])


def explained_layout(image_hw, count, window, model):
    """(height, width, columns) of an explained overlay: the photo (`image_hw`), then `count`
    strips tiled under it in rows no wider than the photo (one strip a row at least). Known
    before any work, so that an overlay too large to write is refused before the heat maps."""
    pictures = 3 if len(model.branches) else 2
    strip_h, strip_w = window[0], pictures * window[1] + (pictures - 1) * GAP
    columns = max(1, min(count, (image_hw[1] + GAP) // (strip_w + GAP)))
    rows = -(-count // columns)
    return (image_hw[0] + rows * (GAP + strip_h), max(image_hw[1], columns * (strip_w + GAP) - GAP),
            columns)


def explained_overlay(model, canvas, image, regions, window, batch=32, progress=False):
    """`canvas` (the photo with its regions drawn) with an explanation strip per region of
    `image` tiled under it, in reading order. Heat maps are computed `batch` regions at a time:
    memory holds the sheet and one batch, whatever the number of regions. `progress`: a bar."""
    height, width, columns = explained_layout(canvas.shape[:2], len(regions), window, model)
    sheet = np.full((height, width, 3), 255, np.uint8)
    sheet[:canvas.shape[0], :canvas.shape[1]] = canvas
    with progress_bar(len(regions), "explain", "region", progress) as bar:
        for start in range(0, len(regions), batch):
            part = regions[start:start + batch]
            for i, panel in enumerate(explain_regions(model, image, part, window), start):
                strip = explanation_strip(panel)
                top = canvas.shape[0] + GAP + (i // columns) * (strip.shape[0] + GAP)
                left = (i % columns) * (strip.shape[1] + GAP)
                sheet[top:top + strip.shape[0], left:left + strip.shape[1]] = strip
            bar.update(len(part))
    return sheet


def attention_map(model, images, masks, point=None):
    """[S,H,W] float numpy: the side branch's change to the feature map at `point` (default:
    its first merge point), per window, mean |change| over channels, scaled to [0, 1]."""
    check_explainable(model)
    if not len(model.branches):
        raise UserError(f"no attention map: a model of mode '{model.config['mode']}' has no mask branch")
    point = point or next(iter(model.branches))
    if point not in model.branches:
        raise UserError(f"no attention branch at {point} (this model merges at "
                        f"{', '.join(model.branches)})")
    captured = {}

    def keep_change(module, inputs, output):
        captured["change"] = (output - inputs[0]).float()

    handle = model.branches[point].register_forward_hook(keep_change)
    try:
        with torch.inference_mode():
            model(images, masks)
    finally:
        handle.remove()
    return _to_window(captured["change"].abs().mean(1, keepdim=True), images.shape[-2:])


def grad_cam(model, images, masks, classes=None):
    """[S,H,W] float numpy: Grad-CAM at the last stage of `classes` (one index per window; default the
    predicted class), scaled to [0, 1]."""
    check_explainable(model)
    captured = {}

    def keep_output(module, inputs, output):
        captured["features"] = output

    handle = model.last_stage.register_forward_hook(keep_output)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            logits = model(images, masks)
            if classes is None:
                classes = logits.argmax(1)
            score = logits.gather(1, torch.as_tensor(classes).view(-1, 1).to(logits.device)).sum()
            features = captured["features"]
            gradients, = torch.autograd.grad(score, features)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
    return _to_window(cam, images.shape[-2:])


def check_explainable(model):
    """A one-line UserError for a model whose heat maps would not lie over its window."""
    mode = model.config["mode"]
    if mode not in WINDOW_MODES:
        raise UserError(f"no heat maps for a model of mode '{mode}': its feature maps lie over a "
                        "box resampled from the window, not over the window")


def _to_window(maps, size):
    """[S,1,h,w] -> [S,H,W] numpy, bilinear to the window, each map divided by its maximum."""
    maps = F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return (maps.clamp(min=0) / peak).cpu().numpy()


def region_colour(i):
    """The i-th region's colour (RGB): hues 47 degrees apart, saturated and bright."""
    hsv = np.uint8([[[(i * 47) % 180, 230, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_regions(image, regions, labels, boxes=None):
    """A copy of `image` (RGB) with each region (a BoxMask, roilib.crops) outlined in its own
    colour and its label on a contrasting box above it; `boxes`: (x0, y0, x1, y1) per region
    (e.g. the evaluation windows, roilib.windows.window_box) drawn as thin rectangles."""
    canvas = np.ascontiguousarray(image.copy())
    scale = max(0.4, min(canvas.shape[:2]) / 600)
    thickness = max(1, round(scale * 2.5))
    for i, region in enumerate(regions):
        colour = region_colour(i)
        contours, _ = cv2.findContours(region.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(region.x, region.y))
        cv2.drawContours(canvas, contours, -1, (0, 0, 0), thickness + 2, cv2.LINE_AA)   # dark edge
        cv2.drawContours(canvas, contours, -1, colour, thickness, cv2.LINE_AA)
        if boxes is not None:
            draw_box(canvas, boxes[i], colour, max(1, thickness // 2))
    for i, (region, label) in enumerate(zip(regions, labels)):   # labels over every outline
        ys = np.flatnonzero(region.mask.any(axis=1))
        top_x = region.x + int(np.flatnonzero(region.mask[ys[0]])[0])
        draw_label(canvas, label, (top_x, region.y + int(ys[0])), region_colour(i), scale)
    return canvas


def draw_box(canvas, box, colour, thickness=1):
    """A rectangle (x0, y0, x1, y1 in pixels, floats allowed) with a dark edge under it, so
    that it shows on light and dark photos alike; parts outside the photo are clipped."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, thickness, cv2.LINE_AA)


def draw_label(canvas, text, anchor, colour, scale=0.4):
    """`text` on a filled box of `colour` whose bottom-left is at `anchor` (moved inside the
    photo where it would leave it), in black or white, whichever contrasts with `colour`."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    pad = max(2, round(3 * scale))
    box_w, box_h = width + 2 * pad, height + baseline + 2 * pad
    x = min(max(anchor[0], 0), max(canvas.shape[1] - box_w, 0))
    y = min(max(anchor[1] - box_h, 0), max(canvas.shape[0] - box_h, 0))
    cv2.rectangle(canvas, (x, y), (x + box_w - 1, y + box_h - 1), colour, cv2.FILLED)
    cv2.rectangle(canvas, (x, y), (x + box_w - 1, y + box_h - 1), (0, 0, 0), 1)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(canvas, text, (x + pad, y + pad + height), FONT, scale, ink, 1, cv2.LINE_AA)


def heat_overlay(image, heat, alpha=0.5, outline=None):
    """`image` (RGB uint8) blended with `heat` (H×W in [0, 1], the image's size) in a
    blue-to-red colour map; `outline`: an H×W mask whose edge is drawn in white on top."""
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image, 1 - alpha, cv2.cvtColor(colours, cv2.COLOR_BGR2RGB), alpha, 0)
    if outline is not None:
        contours, _ = cv2.findContours(np.uint8(outline > 0), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(blended, contours, -1, (255, 255, 255), 1, cv2.LINE_AA)
    return blended
