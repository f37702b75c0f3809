"""Write the demo dataset enlarged k times (images bicubic, label maps nearest), to check that
training and evaluation agree on scale whatever the photos' size (issue: scale-true evaluation).

    python tools/enlarge_demo.py --factor 3 --out /tmp/demo_x3
    python Train.py --TRAIN_IMAGES=/tmp/demo_x3/train/images --TRAIN_ANNOTATIONS=/tmp/demo_x3/train/labels \
        --VAL_IMAGES=/tmp/demo_x3/val/images --VAL_ANNOTATIONS=/tmp/demo_x3/val/labels --RUN=demo_x3
    python EvaluateAccuracy.py --CHECKPOINT=logs/demo_x3/last.pt

The label maps (one class per value, as the demo writes them) are what the copy holds; the demo's
class names apply because DATASET stays "demo".
"""
import argparse
import os
import sys

import cv2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roilib.demo import ensure_demo  # noqa: E402
from roilib.imageio import read_image, read_label_map, write_png  # noqa: E402
from roilib.paths import REPO  # noqa: E402


def enlarge_split(source, target, factor):
    for sub, interpolation, read in (("images", cv2.INTER_CUBIC, read_image),
                                     ("labels", cv2.INTER_NEAREST, read_label_map)):
        os.makedirs(os.path.join(target, sub), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(source, sub))):
            array = read(os.path.join(source, sub, name))
            big = cv2.resize(array, None, fx=factor, fy=factor, interpolation=interpolation)
            write_png(os.path.join(target, sub, name), big)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--demo", default=os.path.join(REPO, "Test", "demo"))
    args = parser.parse_args()
    ensure_demo(args.demo)
    for split in ("train", "val"):
        enlarge_split(os.path.join(args.demo, split), os.path.join(args.out, split), args.factor)
    print(f"wrote the demo enlarged x{args.factor} to {args.out}")


if __name__ == "__main__":
    main()
