"""The embedded demo dataset: synthetic scenes, deterministic from a seed, in both formats.

    python -m roilib.demo --out Test/demo --seed 0

writes
    <root>/{train,val}/images/NNNNN.png   RGB scenes, 160-224 px, not square
    <root>/{train,val}/instances.json     COCO instances (RLE, categories 1..K)
    <root>/{train,val}/labels/NNNNN.png   label maps: pixel = class + 1, 0 = background
    <root>/demo.json                      seed, version, classes, context pair, counts

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
import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roilib.imageio import write_png
from roilib.outputs import write_json

VERSION = 3  # bump whenever the generated data changes: ensure_demo then rebuilds
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
SPLIT_CODES = {"train": 1, "val": 2, "example": 3}


# ----------------------------------------------------------------------------- scenes

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


def _outline(kind, area, angle):
    """Polygon (N×2 float, centred at 0) of a shape of about ``area`` px; a ring is its
    outer outline with an inner one to cut out."""
    if kind in ("apple", "lime", "hive", "kennel"):
        return _ellipse(math.sqrt(area / math.pi), 1.0, angle), None
    if kind in ("boat", "car"):
        return _ellipse(math.sqrt(area * 2 / math.pi), 0.5, angle), None
    if kind == "ring":
        outer = math.sqrt(area / (math.pi * (1 - 0.55 ** 2)))
        return _ellipse(outer, 1.0, angle), _ellipse(0.55 * outer, 1.0, angle)
    if kind == "tile":
        side = math.sqrt(area)
        return _rotate([(-1, -1), (1, -1), (1, 1), (-1, 1)], side / 2, side / 2, angle), None
    if kind == "brick":
        long_side = math.sqrt(2 * area)
        return _rotate([(-1, -1), (1, -1), (1, 1), (-1, 1)], long_side / 2, long_side / 4,
                       angle), None
    side = math.sqrt(4 * area / math.sqrt(3))  # sail: equilateral triangle
    corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    return _rotate(corners, side / math.sqrt(3), side / math.sqrt(3), angle), None


def _ellipse(radius, ratio, angle, points=48):
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return _rotate(np.stack([np.cos(t), np.sin(t)], 1), radius, radius * ratio, angle)


def _rotate(unit_points, half_w, half_h, angle):
    points = np.asarray(unit_points, np.float64) * (half_w, half_h)
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _fixed_point(points, offset):
    """Polygon for cv2.fillPoly with shift=4: 1/16-pixel precision keeps small shapes true."""
    return np.round((points + offset) * 16).astype(np.int32)[None]


def _shape_mask(kind, area, rng, pad):
    """Tight bool mask of one shape (one 8-connected component), padded by ``pad``."""
    outer, inner = _outline(kind, area, rng.uniform(0, 2 * math.pi))
    offset = np.ceil(np.abs(outer).max()) + pad + 1
    size = int(2 * offset) + 1
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, _fixed_point(outer, offset), 1, cv2.LINE_8, shift=4)
    if inner is not None:
        cv2.fillPoly(canvas, _fixed_point(inner, offset), 0, cv2.LINE_8, shift=4)
    if cv2.connectedComponents(canvas, connectivity=8)[0] != 2:
        return None  # empty or broken (a tiny ring): not one instance
    x, y, w, h = cv2.boundingRect(canvas)
    return np.pad(canvas[y:y + h, x:x + w].astype(bool), pad)


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
        shape = _shape_mask(kind, area, rng, margin)
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
        shape = _shape_mask(kind, area, rng, GAP)
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


# ----------------------------------------------------------------------------- writing

def _annotation(ann_id, image_id, label, mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1,
            "segmentation": {"size": list(mask.shape), "counts": rle["counts"].decode()},
            "area": int(mask.sum()), "bbox": list(cv2.boundingRect(mask.astype(np.uint8))),
            "iscrowd": 0}


def _write_split(folder, split, seed, count):
    """Write one split in both formats; returns its counts for demo.json."""
    images, annotations = [], []
    per_class = [0] * len(CLASS_NAMES)
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for image_id in range(1, count + 1):
        image, objects = make_scene(np.random.default_rng([seed, SPLIT_CODES[split], image_id]))
        name = f"{image_id:05d}.png"
        label_map = np.zeros(image.shape[:2], np.uint8)
        # Annotation ids in class order: both readers then list an image's segments alike.
        for label, mask in sorted(objects, key=lambda obj: obj[0]):
            label_map[mask] = label + 1
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
            per_class[label] += 1
        write_png(os.path.join(folder, "images", name), image)
        write_png(os.path.join(folder, "labels", name), label_map)
        images.append({"id": image_id, "file_name": name, "height": image.shape[0],
                       "width": image.shape[1]})
    categories = [{"id": k + 1, "name": name, "supercategory": "demo"}
                  for k, name in enumerate(CLASS_NAMES)]
    coco = {"info": {"description": f"roilib demo v{VERSION}, seed {seed}, {split}"},
            "images": images, "annotations": annotations, "categories": categories}
    write_json(os.path.join(folder, "instances.json"), coco)
    return {"images": count, "segments": len(annotations), "per_class": per_class}


def _params(seed, n_train, n_val):
    return {"version": VERSION, "seed": int(seed), "n_train": int(n_train),
            "n_val": int(n_val)}


def make_demo(root, seed=0, n_train=600, n_val=200):
    """(Re)build the demo dataset at ``root``: written to a temporary sibling folder, then
    renamed into place, so a killed run never leaves half a dataset. Returns demo.json."""
    root = os.path.abspath(root)
    tmp = f"{root}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        info = dict(_params(seed, n_train, n_val), class_names=CLASS_NAMES,
                    context_pair=CONTEXT_PAIR, far_context_pair=FAR_CONTEXT_PAIR, splits={})
        for split, count in (("train", n_train), ("val", n_val)):
            info["splits"][split] = _write_split(os.path.join(tmp, split), split, seed, count)
        write_json(os.path.join(tmp, "demo.json"), info)
        _swap_in(tmp, root, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _swap_in(tmp, root, info):
    """Replace ``root`` by ``tmp`` (a rename cannot replace a non-empty folder: move the
    old one aside first). Another process finishing the same dataset first is fine."""
    old = None
    if os.path.exists(root):
        old = f"{root}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if _read_info(root) is None or not _same(_read_info(root), info):
            raise
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _read_info(root):
    try:
        with open(os.path.join(root, "demo.json"), encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def _same(info, params):
    return all(info.get(key) == value for key, value in _params(
        params["seed"], params["n_train"], params["n_val"]).items())


def ensure_demo(root, seed=0, n_train=600, n_val=200):
    """Build the demo dataset at ``root`` unless it is there already with this version,
    seed and size. Returns demo.json's content."""
    info = _read_info(root)
    if info is not None and _same(info, _params(seed, n_train, n_val)):
        return info
    return make_demo(root, seed, n_train, n_val)


# ----------------------------------------------------------------------------- example

EXAMPLE_CLASSES = ["boat", "car", "apple", "ring"]  # classes of example_mask1..4.png


def write_example(folder, seed=7):
    """Test/example.png, example_mask1..4.png (0/255) and example_labels.png (instance map:
    value k = mask k) for the prediction script; the masks are EXAMPLE_CLASSES in order.
    Returns the class name of each mask."""
    targets = [(CLASS_NAMES.index(name), area)
               for name, area in zip(EXAMPLE_CLASSES, (900, 700, 1500, 400))]
    for attempt in range(100):  # deterministic: the first seed where all four fit
        rng = np.random.default_rng([seed, SPLIT_CODES["example"], attempt])
        image, objects = make_scene(rng, targets, len(targets))
        if [label for label, _ in objects] == [label for label, _ in targets]:
            break
    else:
        raise RuntimeError("could not place the example objects")
    instances = np.zeros(image.shape[:2], np.uint8)
    write_png(os.path.join(folder, "example.png"), image)
    for number, (_, mask) in enumerate(objects, start=1):
        write_png(os.path.join(folder, f"example_mask{number}.png"), mask.astype(np.uint8) * 255)
        instances[mask] = number
    write_png(os.path.join(folder, "example_labels.png"), instances)
    return list(EXAMPLE_CLASSES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="Test/demo", help="dataset folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=600, help="training images")
    parser.add_argument("--val", type=int, default=200, help="validation images")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--example", metavar="DIR",
                        help="also write example.png and its masks into DIR")
    args = parser.parse_args(argv)
    start = time.time()
    build = make_demo if args.force else ensure_demo
    info = build(args.out, args.seed, args.train, args.val)
    counts = ", ".join(f"{split}: {c['images']} images, {c['segments']} segments"
                       for split, c in info["splits"].items())
    print(f"demo dataset v{info['version']} (seed {info['seed']}) in {args.out}: {counts} "
          f"[{time.time() - start:.1f} s]")
    if args.example:
        write_example(args.example)
        print(f"example image and masks in {args.example}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
