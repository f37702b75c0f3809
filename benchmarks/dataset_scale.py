"""(f) dataset scale: COCO-train-sized and OpenSurfaces-sized synthetic data
(tools/make_scale_data.py); each reader's cold start (no index cache) and warm start in a fresh
process (tools/scale_probe.py), its main-process memory, and the summed private memory (USS) of
the main process and its DataLoader workers over a run of batches."""
import json
import os
import subprocess
import sys
import tempfile
import time

from roilib.benchutil import row
from roilib.errors import UserError
from roilib.paths import REPO

MIB = 2 ** 20


def check_data_folder(data):
    """`data` is reused (it holds made data), or made: absent or empty, since the maker writes
    only into a folder of its own. Anything else is refused before any measuring."""
    if not data or os.path.exists(os.path.join(data, "coco", "instances.json")):
        return
    if os.path.exists(data) and (not os.path.isdir(data) or os.listdir(data)):
        raise UserError(f"{data}: holds no data of tools/make_scale_data.py and is not empty; "
                        "the data is made only in a new or empty folder")


def make_data(data, images, maps):
    """tools/make_scale_data.py into `data`, unless it is there already."""
    if os.path.exists(os.path.join(data, "coco", "instances.json")):
        return
    start = time.perf_counter()
    make = [sys.executable, os.path.join(REPO, "tools", "make_scale_data.py"),
            f"--out={data}", f"--images={images}", f"--maps={maps}"]
    subprocess.run(make, check=True, capture_output=True)
    print(f"(f) data made in {time.perf_counter() - start:.0f} s: {data}", flush=True)


def scale_probe(kind, data, cache, workers, batches=0):
    """One reader start in a fresh process -> the probe's figures (a dict)."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "scale_probe.py"), kind, data,
           f"--workers={workers}", f"--batches={batches}"]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, ROI_ATTENTION_CACHE=cache))
    if done.returncode != 0:
        raise RuntimeError(f"scale probe failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(data, images, maps, workers, batches):
    """`data`: the folder to make or reuse ("" = a temporary one)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = data or os.path.join(tmp, "data")
        make_data(data, images, maps)
        cache = os.path.join(tmp, "cache")  # empty: the first start of each reader is cold
        coco_cold = scale_probe("coco", data, cache, workers)
        coco_warm = scale_probe("coco", data, cache, workers, batches=batches)
        maps_cold = scale_probe("maps", data, cache, workers)
        maps_warm = scale_probe("maps", data, cache, workers)
    return coco_rows(coco_cold, coco_warm) + map_rows(maps_cold, maps_warm)


def _memory(probe):
    return (probe["rss_after"] - probe["rss_before"]) / MIB


def coco_rows(cold, warm):
    readings = sorted(warm["uss"], key=int)
    first, last = readings[0], readings[-1]   # one reading when the run is EARLY_BATCH long
    coco = f"COCO {cold['images']} images, {cold['segments']} segments"
    workers = f"USS main + {warm['workers']} workers"
    return [row("f", f"{coco}: cold start (index built)", cold["start_s"], "s"),
            row("f", "  cold start, CPU time (user + system)", cold["start_cpu_s"], "s"),
            row("f", f"{coco}: warm start (index cached)", warm["start_s"], "s"),
            row("f", "  main-process memory for the dataset, after a cold start", _memory(cold), "MiB"),
            row("f", "  main-process memory for the dataset, after a warm start", _memory(warm), "MiB"),
            row("f", f"  {workers} after batch {first}", warm["uss"][first] / MIB, "MiB"),
            row("f", f"  {workers} after batch {last}", warm["uss"][last] / MIB, "MiB"),
            row("f", f"  USS growth from batch {first} to {last}",
                (warm["uss"][last] - warm["uss"][first]) / MIB, "MiB")]


def map_rows(cold, warm):
    return [row("f", f"label maps, {cold['images']} maps: cold start (all scanned)", cold["start_s"], "s"),
            row("f", "  cold start, CPU time (user + system, all threads)", cold["start_cpu_s"], "s"),
            row("f", "label maps: warm start (index cached)", warm["start_s"], "s"),
            row("f", "  main-process memory for the dataset, after a warm start", _memory(warm), "MiB")]
