"""Where things are: the repository, the user's paths, and a trained model."""
import glob
import os
import sys

from roilib.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_path(path):
    """A path as given when it exists (or, for a glob, matches); else relative to the
    repository, so the scripts' default paths work from any folder."""
    if os.path.isabs(path) or glob.glob(path):
        return path
    return os.path.join(REPO, path)


def find_checkpoint(path):
    """A trained model's path (see find_path), or one line saying how to get one. A missing
    best.pt next to a last.pt (a run stopped before its first validation) gives the last.pt,
    with a line on stderr that says so."""
    found = find_path(path)
    last = os.path.join(os.path.dirname(found), "last.pt")
    if not os.path.exists(found) and os.path.basename(found) == "best.pt" and os.path.isfile(last):
        print(f"{found} does not exist (the run was not validated yet); using {last}, its latest "
              "checkpoint", file=sys.stderr, flush=True)
        return last
    if not os.path.exists(found):
        raise UserError(f"{path}: no trained model there; run `python Train.py` first (a few "
                        "minutes on a CPU with the demo data) or pass --CHECKPOINT=path")
    return found
