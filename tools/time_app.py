"""Seconds per request of App.py's work for one region: classification alone, and the page's
whole answer (classification, outline and window box, attention map, Grad-CAM).

    python tools/time_app.py                                  # a ResNet-18 in a 160x160 window
    python tools/time_app.py --checkpoint logs/demo/best.pt --threads 2

Without --checkpoint, an untrained ResNet-18 with the demo's 10 classes is timed (weights do
not change the time) at --window. Median of --repeat runs after one warm-up, on the CPU.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from App import analyse  # noqa: E402
from AttentionNet import AttentionNet  # noqa: E402
from RegionClassifier import RegionClassifier  # noqa: E402
from roilib.imageio import read_image, read_mask  # noqa: E402
from roilib.paths import find_path  # noqa: E402


def median_seconds(work, repeat):
    work()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--window", type=int, default=160)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = args.checkpoint
        if not path:
            path = os.path.join(folder, "resnet18.pt")
            AttentionNet(10, arch="resnet18").save(path, window=[args.window, args.window])
        classifier = RegionClassifier.from_pretrained(path, device="cpu")
    photo = read_image(find_path("Test/example.png"))
    mask = read_mask(find_path("Test/example_mask1.png"))
    classify = median_seconds(lambda: classifier.classify(photo, mask), args.repeat)
    page = median_seconds(lambda: analyse(classifier, photo, mask, 5), args.repeat)
    print(f"{classifier.model.config['arch']}, window {classifier.window[0]}x{classifier.window[1]}, "
          f"{args.threads} CPU threads: classify {classify:.3f} s, whole answer with heat maps "
          f"{page:.3f} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
