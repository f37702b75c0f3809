"""Synthetic datasets of real size, to measure the readers' start-up and memory.

    python tools/make_scale_data.py --out /tmp/scale            # COCO train2017 size, ~1 min
    python tools/make_scale_data.py --out /tmp/small --images 50 --maps 20

Writes (deterministic from --seed):
  <out>/coco/train/        --images JPEGs of 640x480: hard links to 4 files
  <out>/coco/instances.json  --annotations polygon annotations of 8-40 points over 80
                           categories with ids spread over 1..90 (COCO's), 2 decimals
  <out>/maps/images/, <out>/maps/labels/   --maps image / label-map pairs (hard links to 3
                           1024x768 pairs; values 1..45, 0 = background), OpenSurfaces-like
Defaults are COCO train2017's counts (118,287 images, 864,133 annotations: a ~460 MiB JSON)
and OpenSurfaces' ~25k label maps. Put it on a disk with room, outside the repository.
"""
import argparse
import json
import os
import sys
import time

import cv2
import numpy as np

# COCO's 80 category ids: 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
TRAIN_IMAGES, TRAIN_ANNOTATIONS, OPENSURFACES_MAPS = 118_287, 864_133, 25_000
WIDTH, HEIGHT = 640, 480
_CHUNK = 20_000  # annotations serialised per json.dumps call


def make_coco(out, images, annotations, seed):
    """The instances JSON and its hard-linked image folder; returns their paths."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(out, "coco", "train")
    _fresh(folder)
    sources = [_write_jpeg(os.path.join(out, "coco", f"source{k}.jpg"), rng) for k in range(4)]
    names = [f"{i:012d}.jpg" for i in range(1, images + 1)]
    for k, name in enumerate(names):
        os.link(sources[k % len(sources)], os.path.join(folder, name))
    path = os.path.join(out, "coco", "instances.json")
    owners = np.sort(rng.integers(1, images + 1, annotations))  # image id per annotation
    with open(path, "w") as file:
        file.write('{"info": {"description": "synthetic, tools/make_scale_data.py"}, ')
        file.write('"images": ' + json.dumps(
            [{"id": i + 1, "file_name": n, "height": HEIGHT, "width": WIDTH}
             for i, n in enumerate(names)]))
        file.write(', "categories": ' + json.dumps(
            [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in COCO_IDS]))
        file.write(', "annotations": [')
        for start in range(0, annotations, _CHUNK):
            chunk = _annotations(rng, owners[start:start + _CHUNK], start)
            file.write((", " if start else "") + json.dumps(chunk)[1:-1])
        file.write("]}")
    return folder, path


def _annotations(rng, owners, first_id):
    """Star-shaped polygons of 8-40 points inside the image, 2 decimals like COCO's."""
    result = []
    counts = rng.integers(8, 41, owners.size)
    centres = rng.uniform((40, 40), (WIDTH - 40, HEIGHT - 40), (owners.size, 2))
    radii = rng.uniform(5, 40, owners.size)
    categories = rng.choice(COCO_IDS, owners.size)
    for k, (owner, n, centre, radius) in enumerate(zip(owners, counts, centres, radii)):
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = radius * rng.uniform(0.5, 1.0, n)
        points = np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], 1)
        polygon = np.round(points, 2).ravel().tolist()
        result.append({"id": first_id + k + 1, "image_id": int(owner),
                       "category_id": int(categories[k]), "iscrowd": 0,
                       "area": float(np.pi * radius ** 2 * 0.5),
                       "bbox": [float(centre[0] - radius), float(centre[1] - radius),
                                float(2 * radius), float(2 * radius)],
                       "segmentation": [polygon]})
    return result


def make_label_maps(out, maps, seed):
    """OpenSurfaces-sized label-map folders of hard links; returns (images, labels)."""
    rng = np.random.default_rng(seed + 1)
    images, labels = os.path.join(out, "maps", "images"), os.path.join(out, "maps", "labels")
    _fresh(images)
    _fresh(labels)
    pairs = []
    for k in range(3):
        image = _write_jpeg(os.path.join(out, "maps", f"source{k}.jpg"), rng, (768, 1024))
        label = os.path.join(out, "maps", f"source{k}.png")
        cv2.imwrite(label, _label_map(rng, 768, 1024))
        pairs.append((image, label))
    for i in range(maps):
        image, label = pairs[i % len(pairs)]
        os.link(image, os.path.join(images, f"{i + 1}.jpg"))
        os.link(label, os.path.join(labels, f"{i + 1}.png"))
    return images, labels


def _label_map(rng, height, width):
    """Rectangles and disks of material values 1..45 over background 0."""
    label_map = np.zeros((height, width), np.uint8)
    for _ in range(12):
        value = int(rng.integers(1, 46))
        x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
        if rng.random() < 0.5:
            label_map[y:y + int(rng.integers(20, 300)), x:x + int(rng.integers(20, 300))] = value
        else:
            cv2.circle(label_map, (x + 50, y + 50), int(rng.integers(10, 120)), value, -1)
    return label_map


def _write_jpeg(path, rng, shape=(HEIGHT, WIDTH)):
    noise = rng.integers(0, 256, (shape[0] // 16, shape[1] // 16, 3), dtype=np.uint8)
    cv2.imwrite(path, cv2.resize(noise, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC))
    return path


def _fresh(folder):
    os.makedirs(folder)   # inside --out, new or empty: nothing of anyone's is replaced


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (outside the repo)")
    parser.add_argument("--images", type=int, default=TRAIN_IMAGES)
    parser.add_argument("--annotations", type=int, default=None,
                        help="default: COCO train2017's ratio to --images")
    parser.add_argument("--maps", type=int, default=OPENSURFACES_MAPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        parser.error(f"--out {args.out}: exists and is not empty; the data is written only into "
                     "a new or empty folder")
    annotations = args.annotations
    if annotations is None:
        annotations = round(args.images * TRAIN_ANNOTATIONS / TRAIN_IMAGES)
    start = time.perf_counter()
    folder, path = make_coco(args.out, args.images, annotations, args.seed)
    print(f"{path}: {args.images} images, {annotations} annotations, "
          f"{os.path.getsize(path) / 2 ** 20:.0f} MiB ({time.perf_counter() - start:.0f} s)")
    if args.maps:
        images, labels = make_label_maps(args.out, args.maps, args.seed)
        print(f"{labels}: {args.maps} label maps ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
