"""Scenes of the demo dataset (roilib/demo.py writes them): deterministic from a generator.

Each scene's background is split by a random wavy line at a random angle into "water" (blue,
rippled) and "road" (grey, blotchy). On it lie 3-6 objects of different classes (so a
mask-blind classifier is near chance), never touching (>= 2 px apart, so each label-map
component is one instance), with log-uniform areas from ~30 to ~6000 px (hive and kennel:
~30 to ~600 px):

    apple red disk, lime green disk, tile blue square, brick orange 2:1 rectangle,
    ring yellow annulus, sail white triangle, boat / car brown ellipse, hive / kennel purple disk.

Boat and car are the NEAR-CONTEXT PAIR: the same shape, size, colour and noise distributions;
a boat (with a margin around it) lies entirely in water, a car entirely on road. Only the
surroundings tell them apart, which is what attention maps keep and blacking out loses.

Hive and kennel are the FAR-CONTEXT PAIR: the same shape, size, colour and noise
distributions, each in a patch of sand. Only the ground beyond the sand tells them apart: up to
FAR_REACH px from the object's centre it is meadow (dark green) around a hive and ice (pale
cyan) around a kennel. The sand's radius is random, from just beyond the crop baseline's box
(the object's box grown by half its size on each side: a square of half-side max(w, h) around
its centre) to FAR_INNER_MAX px; the ground lies within FAR_REACH px, so inside every evaluation
window of 128 px or more. A scene holds at most one of the two, placed first (its ground is
painted under the other objects; boats and cars keep to open water and road).
"""
import math

import cv2
import numpy as np

from roilib.demo_shapes import shape_mask

CLASS_NAMES = ["apple", "lime", "tile", "brick", "ring", "sail", "boat", "car", "hive", "kennel"]
CONTEXT_PAIR = {"boat": "water", "car": "road"}       # near context: the surroundings
FAR_CONTEXT_PAIR = {"hive": "meadow", "kennel": "ice"}   # far context: the ground beyond the sand
# Object colours (RGB); the classes of a pair share theirs on purpose.
COLOURS = {"apple": (205, 35, 35), "lime": (70, 190, 50), "tile": (40, 60, 220),
           "brick": (235, 135, 25), "ring": (235, 220, 50), "sail": (240, 240, 240),
           "boat": (125, 80, 40), "car": (125, 80, 40),
           "hive": (140, 70, 175), "kennel": (140, 70, 175)}
GROUND_COLOURS = {"sand": (200, 180, 130), "meadow": (50, 110, 45), "ice": (160, 215, 235)}
AREA_RANGE = (30, 6000)     # target segment areas (px), log-uniform
# The far pair stays small enough that its sand can end well inside FAR_REACH.
FAR_AREA_RANGE = (30, 600)
FAR_INNER_MAX = 44          # the sand around a far-pair object ends at most this far (px)...
FAR_REACH = 60              # ...and the telling ground beyond it reaches this far from its centre
MIN_GROUND = 1500           # px of telling ground inside the image at least
SIZE_RANGE = (160, 224)     # image sides (px)
SEGMENTS_PER_IMAGE = (3, 6)
GAP = 2                     # min pixels between objects
SPLIT_CODES = {"train": 1, "val": 2, "example": 3}   # one seed stream per purpose


def _wavy_split(rng, height, width):
    """True where water: one side of a wavy line at a random angle near the centre."""
    angle = rng.uniform(0, 2 * math.pi)
    centre_x = width * rng.uniform(0.35, 0.65)
    centre_y = height * rng.uniform(0.35, 0.65)
    amplitude, period = rng.uniform(0, 12), rng.uniform(80, 200)
    phase = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    across = (x - centre_x) * math.cos(angle) + (y - centre_y) * math.sin(angle)
    along = -(x - centre_x) * math.sin(angle) + (y - centre_y) * math.cos(angle)
    return across + amplitude * np.sin(2 * math.pi * along / period + phase) < 0


def _background(rng, water):
    """Blue rippled water and grey blotchy road, with per-pixel noise."""
    height, width = water.shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    tilt = rng.uniform(-0.4, 0.4)
    ripple = np.sin(2 * math.pi * (y + tilt * x) / rng.uniform(5, 9) + rng.uniform(0, 6.3))
    water_rgb = (np.array([45, 95, 165], np.float32) + rng.uniform(-10, 10, 3)
                 + ripple[..., None] * np.array([8, 12, 16], np.float32))
    blotch = cv2.GaussianBlur(rng.standard_normal((height, width), np.float32), (0, 0), 3)
    road_rgb = (np.float32(110 + rng.uniform(-10, 10)) + 40 * blotch)[..., None]
    image = np.where(water[..., None], water_rgb, road_rgb)
    image += 5 * rng.standard_normal((height, width, 3), np.float32)
    return image


def _try_place(shape, surround, region, occupied, rng, tries=40):
    """Random window where the padded shape fits the image and misses the other objects
    (and their gap) and, for a context class, where ``surround`` lies in ``region``."""
    height, width = occupied.shape
    span_y, span_x = height - shape.shape[0], width - shape.shape[1]
    if span_y < 0 or span_x < 0:
        return None
    for y, x in zip(rng.integers(0, span_y + 1, tries), rng.integers(0, span_x + 1, tries)):
        window = (slice(y, y + shape.shape[0]), slice(x, x + shape.shape[1]))
        if occupied[window][shape].any():
            continue
        if region is not None and not region[window][surround].all():
            continue
        return window
    return None


def _place_one(rng, kind, area, open_ground, occupied):
    """(window, padded shape, {}) for one object, shrunk until it fits; None if it never
    does. A near-context object goes where ``open_ground`` is its ground all around it."""
    context = CONTEXT_PAIR.get(kind)
    while area >= 0.8 * AREA_RANGE[0]:
        # A context object keeps a ring of its surroundings visible around it.
        margin = max(4, round(0.2 * math.sqrt(area))) if context else GAP
        shape = shape_mask(kind, area, rng, margin)
        if shape is not None:
            region = surround = None
            if context:
                region = open_ground[context]
                disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)
                surround = cv2.dilate(shape.astype(np.uint8), disk).astype(bool)
            window = _try_place(shape, surround, region, occupied, rng)
            if window is not None:
                return window, shape, {}
        area *= 0.7
    return None


def _place_far(rng, kind, area, occupied):
    """(window, padded shape, {ground: bool map}) for a far-pair object: its sand, and beyond
    it the ground that tells the pair apart; shrunk until both fit; None if they never do."""
    while area >= 0.8 * FAR_AREA_RANGE[0]:
        shape = shape_mask(kind, area, rng, GAP)
        if shape is not None:
            window = _try_place(shape, None, None, occupied, rng)
            grounds = window and _far_grounds(rng, window, shape, occupied.shape)
            if grounds:
                return window, shape, {"sand": grounds[0], FAR_CONTEXT_PAIR[kind]: grounds[1]}
        area *= 0.7
    return None


def _far_grounds(rng, window, shape, image_hw):
    """(sand, telling ground) bool maps around an object at ``window``: the sand covers the
    crop baseline's whole view (its square's corners, 3 px to spare for interpolation and
    jitter) and ends at a random radius up to FAR_INNER_MAX; the telling ground reaches
    FAR_REACH. None when too little of it lies in the image, or the sand cannot end in time."""
    centre_x, centre_y, near = _near_box(window, shape)
    lowest = math.sqrt(2) * near + 3
    if lowest > FAR_INNER_MAX:
        return None
    inner = rng.uniform(lowest, FAR_INNER_MAX)
    y, x = np.mgrid[0:image_hw[0], 0:image_hw[1]].astype(np.float32)
    distance = np.hypot(x + 0.5 - centre_x, y + 0.5 - centre_y)
    sand, telling = distance < inner, (distance >= inner) & (distance < FAR_REACH)
    return (sand, telling) if telling.sum() >= MIN_GROUND else None


def _near_box(window, shape):
    """(centre x, centre y, half-side) of the crop baseline's view of the object: its box
    grown by half its size on each side and squared (masks_to_boxes_with_context, margin 0.5)."""
    x, y, w, h = cv2.boundingRect(shape.astype(np.uint8))
    centre_x = window[1].start + x + w / 2
    centre_y = window[0].start + y + h / 2
    return centre_x, centre_y, max(w, h)


def _paint_ground(rng, image, region, colour):
    """A ground of the far pair: its colour, a per-scene shade, soft blotches and pixel noise."""
    height, width = region.shape
    blotch = cv2.GaussianBlur(rng.standard_normal((height, width), np.float32), (0, 0), 2)
    shade = np.asarray(colour, np.float32) + rng.uniform(-8, 8, 3).astype(np.float32)
    ground = shade + 30 * blotch[..., None] + 5 * rng.standard_normal((height, width, 3), np.float32)
    image[region] = ground[region]


def _random_targets(rng):
    """[(label, area)]: 3-6 distinct classes, largest first (packs better), followed by the
    other classes as fallbacks for those that do not fit; and how many are wanted."""
    wanted = int(rng.integers(SEGMENTS_PER_IMAGE[0], SEGMENTS_PER_IMAGE[1] + 1))
    labels = rng.permutation(len(CLASS_NAMES))
    fractions = rng.uniform(0, 1, len(labels))
    areas = [_log_uniform(fraction, _area_range(CLASS_NAMES[label]))
             for label, fraction in zip(labels.tolist(), fractions)]
    targets = list(zip(labels.tolist(), areas))
    return sorted(targets[:wanted], key=lambda t: -t[1]) + targets[wanted:], wanted


def _area_range(kind):
    return FAR_AREA_RANGE if kind in FAR_CONTEXT_PAIR else AREA_RANGE


def _log_uniform(fraction, value_range):
    low, high = np.log(value_range)
    return float(np.exp(low + fraction * (high - low)))


def _is_far(target):
    return CLASS_NAMES[target[0]] in FAR_CONTEXT_PAIR


def _far_first(targets, wanted):
    """The wanted targets with at most one of the far pair, placed first (its ground goes
    under every other object); the fallbacks without it."""
    chosen, fallbacks = targets[:wanted], targets[wanted:]
    far = [t for t in chosen if _is_far(t)][:1]
    return (far + [t for t in chosen if not _is_far(t)]
            + [t for t in fallbacks if not _is_far(t)])


def _place_objects(rng, water, image, targets, wanted):
    """Paint objects until ``wanted`` are placed; returns [(label, bool mask)]."""
    occupied = np.zeros_like(water)
    open_ground = {"water": water.copy(), "road": ~water}   # where boats and cars may go
    gap_kernel = np.ones((2 * GAP + 1, 2 * GAP + 1), np.uint8)
    placed = []
    for label, area in targets:
        if len(placed) == wanted:
            break
        kind = CLASS_NAMES[label]
        if kind in FAR_CONTEXT_PAIR:
            result = _place_far(rng, kind, area, occupied)
        else:
            result = _place_one(rng, kind, area, open_ground, occupied)
        if result is None:
            continue
        window, shape, grounds = result
        mask = np.zeros_like(water)
        mask[window] = shape
        occupied[window] |= cv2.dilate(shape.astype(np.uint8), gap_kernel).astype(bool)
        for ground, region in grounds.items():
            _paint_ground(rng, image, region, GROUND_COLOURS[ground])
            for free in open_ground.values():
                free &= ~region
        _paint(rng, image, mask, COLOURS[kind])
        placed.append((label, mask))
    return placed


def _paint(rng, image, mask, colour):
    """Object colour: a per-object shade plus per-pixel noise."""
    shade = np.asarray(colour, np.float32) + rng.uniform(-12, 12, 3).astype(np.float32)
    image[mask] = shade + 8 * rng.standard_normal((int(mask.sum()), 3), np.float32)


def make_scene(rng, targets=None, wanted=None):
    """One scene: (uint8 H×W×3 RGB image, [(label, bool mask)])."""
    height, width = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    water = _wavy_split(rng, height, width)
    image = _background(rng, water)
    if targets is None:
        targets, wanted = _random_targets(rng)
    targets = _far_first(targets, wanted or len(targets))
    objects = _place_objects(rng, water, image, targets, wanted or len(targets))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), objects
