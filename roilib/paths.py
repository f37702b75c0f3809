"""Where things are: the repository, the user's paths, and a trained model."""
import glob
import os

from roilib.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_path(path):
    """A path as given when it exists (or, for a glob, matches); else relative to the
    repository, so the scripts' default paths work from any folder."""
    if os.path.isabs(path) or glob.glob(path):
        return path
    return os.path.join(REPO, path)


def find_checkpoint(path):
    """A trained model's path (see find_path), or one line saying how to get one."""
    found = find_path(path)
    if not os.path.exists(found):
        raise UserError(f"{path}: no trained model there; run `python Train.py` first (a few "
                        "minutes on a CPU with the demo data) or pass --CHECKPOINT=path")
    return found
