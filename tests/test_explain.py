"""roilib/explain.py: heat maps over evaluation windows, and the drawing on photos."""
import numpy as np
import pytest
import torch

from AttentionNet import AttentionNet
from helpers import EXAMPLE_IMAGE, EXAMPLE_MASKS
from roilib.crops import BoxMask, box_mask
from roilib.errors import UserError
from roilib.explain import (GAP, attention_map, draw_label, draw_regions, explain_regions, explained_layout,
                            explained_overlay, explanation_strip, grad_cam, heat_overlay)
from roilib.imageio import read_image, read_mask
from roilib.windows import cut_windows

WINDOW = (64, 64)


@pytest.fixture(scope="module")
def windows():
    image = read_image(EXAMPLE_IMAGE)
    return cut_windows(image, [box_mask(read_mask(p)) for p in EXAMPLE_MASKS], WINDOW)


@pytest.fixture(scope="module")
def trained(example_checkpoint):
    return AttentionNet.from_checkpoint(example_checkpoint)


def test_maps_are_window_sized_and_scaled(trained, windows):
    images, masks = windows
    for maps in (attention_map(trained, images, masks), grad_cam(trained, images, masks)):
        assert maps.shape == (4, *WINDOW)
        assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)


def test_attention_map_is_what_the_branch_adds(windows):
    images, masks = windows
    torch.manual_seed(0)
    model = AttentionNet(3, arch="resnet18").eval()
    assert not attention_map(model, images, masks).any()    # zero-initialised: adds nothing
    with torch.no_grad():
        model.branches["stem"].add.bias.fill_(0.0)
        model.branches["stem"].add.weight.zero_()
        model.branches["stem"].add.weight[:, 1, 1, 1] = 1.0  # A(mask) = presence of the mask
    maps = attention_map(model, images, masks)
    inside = masks[:, 0].numpy() > 0
    assert maps[inside].mean() > 0.9 and maps[~inside].mean() < 0.2


def test_grad_cam_follows_the_class_and_keeps_the_mode(trained, windows):
    images, masks = windows
    trained.train()
    first = grad_cam(trained, images[:1], masks[:1], classes=[0])
    other = grad_cam(trained, images[:1], masks[:1], classes=[3])
    assert trained.training
    trained.eval()
    assert not np.allclose(first, other)


def test_heat_maps_refused_where_they_do_not_apply(windows):
    images, masks = windows
    with pytest.raises(UserError, match="has no mask branch"):
        attention_map(AttentionNet(3, arch="resnet18", mode="blackout").eval(), images, masks)
    with pytest.raises(UserError, match="resampled from the window"):
        grad_cam(AttentionNet(3, arch="resnet18", mode="crop").eval(), images, masks)


def test_explain_regions_pictures(trained):
    image = read_image(EXAMPLE_IMAGE)
    panels = explain_regions(trained, image, [box_mask(read_mask(EXAMPLE_MASKS[1]))], WINDOW)
    assert len(panels) == 1
    for key in ("window", "attention", "grad_cam"):
        assert panels[0][key].shape == (*WINDOW, 3) and panels[0][key].dtype == np.uint8
    assert (panels[0]["grad_cam"] == 255).all(axis=2).any()     # the region's edge in white
    strip = explanation_strip(panels[0])
    assert strip.shape == (WINDOW[0], 3 * WINDOW[1] + 2 * 4, 3)
    assert np.array_equal(strip[:, -WINDOW[1]:], panels[0]["grad_cam"])


def test_explained_overlay_tiles_strips_batch_by_batch(trained):
    """Strips in reading order, as many a row as the photo is wide, computed `batch` regions at
    a time with the same pictures as all at once; the sheet's size is explained_layout's."""
    image = np.hstack([read_image(EXAMPLE_IMAGE)] * 3)          # 669 px: room for 3 strips of 200
    width = image.shape[1]
    masks = [np.hstack([read_mask(p)] + [np.zeros_like(read_mask(p))] * 2) for p in EXAMPLE_MASKS]
    masks.append(np.roll(masks[0], image.shape[1] // 3, axis=1))  # 5 regions: 2 rows of 3
    regions = [box_mask(m) for m in masks]
    canvas = np.zeros_like(image)
    sheet = explained_overlay(trained, canvas, image, regions, WINDOW, batch=2)
    strips = [explanation_strip(p) for p in explain_regions(trained, image, regions, WINDOW)]
    strip_h, strip_w = strips[0].shape[:2]
    assert explained_layout(image.shape[:2], 5, WINDOW, trained) == sheet.shape[:2] + (3,)
    assert sheet.shape == (image.shape[0] + 2 * (GAP + strip_h), width, 3)
    assert not sheet[:image.shape[0]].any()                     # the canvas, untouched
    for i, strip in enumerate(strips):
        top = image.shape[0] + GAP + (i // 3) * (strip_h + GAP)
        left = (i % 3) * (strip_w + GAP)
        placed = sheet[top:top + strip_h, left:left + strip_w].astype(int)
        assert np.abs(placed - strip).max() <= 2                 # batch size: float order only
    assert (sheet[-strip_h:, 2 * (strip_w + GAP):] == 255).all()  # the empty 6th place is white


def test_label_contrasts_with_its_box():
    for colour, ink in (((255, 230, 40), (0, 0, 0)), ((30, 20, 200), (255, 255, 255))):
        canvas = np.full((40, 120, 3), 128, np.uint8)
        draw_label(canvas, "boat 0.63", (5, 30), colour, 0.4)
        filled = (canvas == colour).all(axis=2)
        assert filled.sum() > 100                             # a filled box of the colour
        ys, xs = np.nonzero(filled)
        inside = canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1]   # within its border
        near_ink = (np.abs(inside.astype(int) - ink).max(axis=2) < 80).sum()
        assert near_ink > 20                                  # text in the contrasting ink


def test_label_stays_inside_the_photo():
    canvas = np.zeros((50, 60, 3), np.uint8)
    mask = np.zeros((50, 60), np.uint8)
    mask[0:10, 50:60] = 1                                    # a region in the top-right corner
    drawn = draw_regions(canvas, [box_mask(mask)], ["a long label text"])
    assert drawn[:5].any() and drawn[:, :5].any()            # the box moved left, not cut off


def test_regions_outlined_and_windows_boxed():
    canvas = np.zeros((100, 100, 3), np.uint8)
    region = BoxMask(np.ones((20, 20), np.uint8), 40, 40)
    drawn = draw_regions(canvas, [region], ["x"], boxes=[(10, 10, 90, 90)])
    assert drawn[50, 40].any() and not drawn[50, 50].any()   # the edge, not the inside
    assert drawn[50, 10].any() and drawn[50, 89].any()       # the window's sides


def test_heat_overlay_colours():
    image = np.full((10, 10, 3), 128, np.uint8)
    heat = np.zeros((10, 10))
    heat[5, 5] = 1
    out = heat_overlay(image, heat)
    assert out[5, 5, 0] > out[5, 5, 2] and out[0, 0, 2] > out[0, 0, 0]   # hot red, cold blue
