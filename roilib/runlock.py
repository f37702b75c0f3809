"""One run folder, one writer: an exclusive lock on <run folder>/.lock for as long as a Train.py
process runs there. The OS drops a flock when its process ends, however it ends, so a killed
run never leaves a stale lock behind."""
import fcntl
import os
import shutil
import time

from roilib.errors import UserError
from roilib.outputs import remove_stale_temporaries

LOCK_NAME = ".lock"


class RunLock:
    """Holds the lock of one run folder (created if needed) until release() or exit."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        try:
            os.makedirs(run_dir, exist_ok=True)
            self.file = open(os.path.join(run_dir, LOCK_NAME), "a+")
        except OSError as error:
            raise UserError(f"{run_dir}: cannot create the run folder ({error.strerror or error}); "
                            "check --LOG_DIR and --RUN") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"{run_dir} is in use by another Train.py (pid {holder}); wait for it to "
                            "end, stop it, or use another --RUN") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self):
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def claim_run_folder(run_dir, resume):
    """Lock `run_dir` for this process and tidy it: delete the checkpoint temporaries a killed
    run left (safe only now that no other process writes there); without `resume`, move an
    existing run aside (never delete it) and lock a fresh folder. Returns the RunLock."""
    lock = RunLock(run_dir)
    for name in remove_stale_temporaries(run_dir):
        print(f"removed {name}: a checkpoint write cut off by the interrupted run", flush=True)
    if resume or not set(os.listdir(run_dir)) - {LOCK_NAME}:
        return lock
    aside = f"{run_dir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(run_dir, aside)   # the lock moves with it, and is held until the new one is
    fresh = RunLock(run_dir)
    lock.release()
    print(f"--RESUME=False: moved the existing run to {aside}", flush=True)
    return fresh
