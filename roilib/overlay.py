"""Drawing on photos: regions outlined and labelled, evaluation windows, heat maps.

A label is drawn as text on a filled box of its region's colour, black or white text
(whichever contrasts), with a dark border: readable on any photo, unlike text in the outline's
own colour, which vanishes on a background of that colour. Outlines and boxes run over a dark
edge for the same reason.
"""
import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


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
