"""One start of a reader in a fresh process: start-up time, memory, and optionally the
private memory of DataLoader workers over a run of training batches. Prints one JSON line.

    python tools/scale_probe.py coco /tmp/scale --workers 4 --batches 1000
    python tools/scale_probe.py maps /tmp/scale

(Benchmark.py part f runs it on data from tools/make_scale_data.py, cold and warm; the
cache folder comes from $ROI_ATTENTION_CACHE.) Memory: RSS of the main process before and
after the reader is built; USS (private memory: what a process would give back on exit) of
the main process plus its workers, summed, after batch 10 and after the last batch.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from CocoReader import CocoReader  # noqa: E402
from OpenSurfacesReader import OpenSurfacesReader  # noqa: E402
from roilib.sampler import VaryingSizeBatchSampler, make_train_loader  # noqa: E402

GIB = 2 ** 30
EARLY_BATCH = 10  # USS growth is measured from here: the first batches allocate buffers


def rss_bytes(pid="self"):
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS")


def uss_bytes(pid):
    """Private memory of a process: psutil's USS, or the kernel's smaps_rollup."""
    try:
        import psutil
        return psutil.Process(pid).memory_full_info().uss
    except ImportError:
        pass
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def children(pid):
    """Direct child processes (DataLoader workers), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def summed_uss():
    """(USS of main + children, number of children)."""
    pids = children(os.getpid())
    return uss_bytes(os.getpid()) + sum(uss_bytes(p) for p in pids), len(pids)


def open_reader(kind, root):
    if kind == "coco":
        return CocoReader(os.path.join(root, "coco", "train"),
                          os.path.join(root, "coco", "instances.json"))
    return OpenSurfacesReader(os.path.join(root, "maps", "images"),
                              os.path.join(root, "maps", "labels"))


def loader_memory(reader, workers, batches, size=224, batch=32):
    """Summed USS after batch EARLY_BATCH and after the last one."""
    sampler = VaryingSizeBatchSampler(reader.labels, size, size, size * size * batch, batch,
                                      image_of_segment=reader.image_of_segment)
    stream = iter(make_train_loader(reader, sampler, workers))
    result = {}
    for number in range(1, batches + 1):
        next(stream)
        if number in (min(EARLY_BATCH, batches), batches):
            result[number], result["workers"] = summed_uss()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("coco", "maps"))
    parser.add_argument("root", help="folder written by tools/make_scale_data.py")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=0, help="0: start-up only")
    args = parser.parse_args(argv)
    before = rss_bytes()
    start, cpu = time.perf_counter(), time.process_time()
    reader = open_reader(args.kind, args.root)
    # CPU seconds too: on a shared machine the wall-clock time also counts others' work
    result = {"start_s": time.perf_counter() - start,
              "start_cpu_s": time.process_time() - cpu, "segments": len(reader),
              "images": len(reader.images), "rss_before": before, "rss_after": rss_bytes()}
    if args.batches:
        memory = loader_memory(reader, args.workers, args.batches)
        result["workers"] = memory.pop("workers")
        result["uss"] = {str(k): v for k, v in memory.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
