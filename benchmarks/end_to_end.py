"""(b) end to end: the real Train.py loop (reader, sampler, DataLoader workers, transfer, step)
on the demo data at the geometry of (a); the ratio (b)/(a) says what the data path costs."""
import csv
import os
import statistics
import subprocess
import sys
import tempfile

from roilib.benchutil import row
from roilib.paths import REPO
from roilib.runlog import RATE_FIELD

LOG_WINDOWS = 4   # timed progress windows; one more before them holds the start-up


def train_rates(bench, arch, batch, size, workers, amp, compile_model):
    """img/s of Train.py's progress lines after the first, at a fixed crop size."""
    steps = bench.steps
    with tempfile.TemporaryDirectory() as logs:
        args = [f"--ARCH={arch}", f"--MIN_SIZE={size}", f"--MAX_SIZE={size}", f"--MAX_BATCH={batch}",
                f"--MAX_PIXELS={batch * size * size}", f"--STEPS={(LOG_WINDOWS + 1) * steps}",
                f"--LOG_EVERY={steps}", "--VAL_EVERY=1000000", "--VAL_MAX_IMAGES=1", "--SAVE_EVERY=1000000",
                f"--LOG_DIR={logs}", "--RUN=bench", f"--WORKERS={workers}", f"--DEVICE={bench.device}",
                f"--AMP={amp}", f"--CHANNELS_LAST={bench.channels_last}", f"--COMPILE={compile_model}",
                "--WARMUP_STEPS=1"]
        done = subprocess.run([sys.executable, os.path.join(REPO, "Train.py"), *args], cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"Train.py failed: {done.stderr.strip()[-500:]}")
        with open(os.path.join(logs, "bench", "train_log.csv"), newline="") as f:
            rates = [float(r[RATE_FIELD]) for r in csv.DictReader(f) if r[RATE_FIELD]]
    return rates[1:]


def measure(bench, arch, batch, size, workers, amp, compile_model, model_rows):
    """`model_rows`: part (a)'s rows, whose float32 and default-precision rates of `arch` give
    the ratios."""
    rate = statistics.median(train_rates(bench, arch, batch, size, workers, amp, compile_model))
    rows = [row("b", f"end to end, Train.py, {arch} {batch}x{size}², defaults, {workers} workers", rate, "img/s")]
    model_only = [r for r in model_rows if r["part"] == "a" and arch in r["what"] and r["unit"] == "img/s"]
    if model_only:
        rows.append(row("b", "  (b) / (a) at the same precision", rate / model_only[-1]["value"], "x"))
        rows.append(row("b", "  (b) / (a) float32", rate / model_only[0]["value"], "x"))
    return rows
