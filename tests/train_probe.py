"""Train.py with test probes, run by torchrun in tests/test_train.py (`torchrun ... train_probe.py
--NAME=value ...`). Environment variables:

    PROBE_LOG=folder        each process appends "step height width indices" per batch to
                            folder/rank<N>.txt
    PROBE_FAIL=rank:step    that process's data loader raises a UserError at that step
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import roilib.sampler  # noqa: E402
from roilib.errors import UserError  # noqa: E402

RANK = os.environ.get("RANK", "0")
collate = roilib.sampler.collate_batch
batches = 0


def probed_collate(samples):
    """Train.py's collate (looked up when Train.py builds its loader), with the probes."""
    global batches
    batches += 1
    if os.environ.get("PROBE_FAIL") == f"{RANK}:{batches}":
        raise UserError(f"injected failure on rank {RANK} at step {batches}")
    batch = collate(samples)
    if os.environ.get("PROBE_LOG"):
        _, _, height, width = batch["images"].shape
        with open(os.path.join(os.environ["PROBE_LOG"], f"rank{RANK}.txt"), "a") as f:
            f.write(f"{batches} {height} {width} {' '.join(map(str, batch['segment_ids']))}\n")
    return batch


roilib.sampler.collate_batch = probed_collate
sys.argv[0] = os.path.join(ROOT, "Train.py")
runpy.run_path(sys.argv[0], run_name="__main__")
