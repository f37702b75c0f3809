"""One run folder, one writer: an exclusive lock on <run folder>/.lock for as long as a Train.py
process runs there. The OS drops a flock when its process ends, however it ends, so a killed
run never leaves a stale lock behind."""
import fcntl
import fnmatch
import os
import shutil
import time

from roilib.errors import UserError
from roilib.outputs import remove_stale_temporaries, writing

LOCK_NAME = ".lock"


class RunLock:
    """Holds the lock of one run folder (created if needed) until release() or exit."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.created = not os.path.isdir(run_dir)   # by this process: it may remove it again
        with writing(run_dir, "the run folder", "check the run folder's path"):
            os.makedirs(run_dir, exist_ok=True)
            self.file = open(os.path.join(run_dir, LOCK_NAME), "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise UserError(f"{run_dir} is in use by another Train.py (pid {holder}); wait for it to "
                            "end, stop it, or use another run folder") from None
        with writing(self.file.name, "the run's lock"):
            self.file.seek(0)
            self.file.truncate()
            self.file.write(f"{os.getpid()}\n")
            self.file.flush()

    def release(self):
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def discard_if_unused(self, run_files):
        """Release the lock; a folder this process created that holds only the lock and files
        matching `run_files` (glob patterns: the records a run opens before its first step) is
        removed, so that a run which failed before any checkpoint leaves nothing behind.
        Anything else in it (a checkpoint, a user's file) keeps the folder as it is."""
        self.release()
        if not self.created:
            return
        patterns = (LOCK_NAME, *run_files)
        try:
            names = os.listdir(self.run_dir)
            if all(any(fnmatch.fnmatch(n, p) for p in patterns) for n in names):
                for name in names:
                    os.remove(os.path.join(self.run_dir, name))
                os.rmdir(self.run_dir)
        except OSError:
            pass   # kept: a later start reads a folder without checkpoint as a new run


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
    print(f"starting afresh: moved the existing run to {aside}", flush=True)
    return fresh
