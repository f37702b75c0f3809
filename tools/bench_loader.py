"""Throughput of the training data pipeline alone (read, crop, collate; no model).

    python tools/bench_loader.py [--root Test/demo] [--size 224] [--batches 60]

Builds the demo dataset if needed, then times 224×224 training batches through
``make_train_loader`` with 0 and 2 workers, for both readers (COCO json and label maps).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from CocoReader import CocoReader  # noqa: E402
from OpenSurfacesReader import OpenSurfacesReader  # noqa: E402
from roilib.sampler import VaryingSizeBatchSampler, make_train_loader  # noqa: E402
from roilib.demo import CLASS_NAMES, ensure_demo  # noqa: E402


def samples_per_second(dataset, workers, size, batch, batches):
    sampler = VaryingSizeBatchSampler(dataset.labels, size, size, size * size * batch, batch,
                                      image_of_segment=dataset.image_of_segment)
    stream = iter(make_train_loader(dataset, sampler, workers))
    next(stream)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(next(stream)["labels"].numel() for _ in range(batches))
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.join("Test", "demo"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    ensure_demo(args.root)
    split = os.path.join(args.root, "train")
    readers = {
        "coco": CocoReader(os.path.join(split, "images"), os.path.join(split, "instances.json")),
        "labelmap": OpenSurfacesReader(os.path.join(split, "images"),
                                       os.path.join(split, "labels"), class_names=CLASS_NAMES),
    }
    print(f"loader throughput, {args.size}x{args.size} crops, batches of {args.batch}, "
          f"{os.cpu_count()} CPUs")
    for name, dataset in readers.items():
        for workers in args.workers:
            rate = samples_per_second(dataset, workers, args.size, args.batch, args.batches)
            print(f"  {name:9s} workers={workers}: {rate:7.0f} samples/s")


if __name__ == "__main__":
    main()
