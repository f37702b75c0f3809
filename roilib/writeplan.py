"""Every script's outputs checked before any work: never over one of its inputs, never over
another output, never over a file of a run or a release that it does not own.

A script declares what it reads (files and folders: images, annotations, mask folders,
checkpoints, released folders) and every file it will write, then calls ``check_writes``
once, before the work; a clash is one line naming both paths. Paths are compared as the
file system sees them (``os.path.samefile``, ``realpath``): a symlink or a hard link to an
input is that input.
"""
import fnmatch
import os

from roilib.checkpoint import RELEASE_CONFIG, RELEASE_WEIGHTS
from roilib.errors import BadValue

# The files of a Train.py run folder that are written under fixed names.
RUN_FILES = ("config.json", "train_log.csv", "last.pt", "best.pt")
# What makes a folder a Train.py run or a released model (Export.py), and the files that
# belong to it: only the script that owns such a folder writes these.
OWNED_FOLDERS = {
    "run": {"marks": ("last.pt", "train_log.csv"), "owner": "Train.py",
            "files": RUN_FILES + ("step_*.pt", "events.out.tfevents.*")},
    "release": {"marks": (RELEASE_WEIGHTS,), "owner": "Export.py",
                "files": (RELEASE_CONFIG, RELEASE_WEIGHTS)},
}


def check_writes(writes, reads=(), folders=(), owns=(), moved=()):
    """Refuse, before any work, a planned write that would destroy something.

    writes: [(label, path)] every file the script will write (label: e.g. "--OUT", or an
    argument name that the script names: errors.BadValue);
    reads: paths of the files and folders it reads (missing or empty ones are ignored);
    folders: [(label, path)] folders it will create or write into;
    owns: kinds of OWNED_FOLDERS whose files the script writes itself (Train.py: "run");
    moved: [(label, folder)] folders the script moves aside whole (a fresh start): no input
    may lie in one.
    """
    for label, folder in folders:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise BadValue("is an existing file, not a folder; choose a folder", **{label: folder})
    inputs = [read_file for path in reads if path and os.path.exists(path)
              for read_file in _read_files(path)]
    for label, folder in moved:
        held = [read for read, _ in inputs if os.path.exists(folder) and inside(read, folder)]
        if held:
            raise BadValue(f"would be moved aside, and it holds the input {held[0]}; choose another "
                           "folder", **{label: folder})
    seen = {}
    for label, path in writes:
        _check_one(label, path, inputs, owns)
        key = os.path.realpath(path)
        if key in seen:
            raise BadValue(f"is also {seen[key]}'s output; choose another path", **{label: path})
        seen[key] = label


def folder_kind(folder):
    """'run', 'release' or None: whose files `folder` holds (see OWNED_FOLDERS)."""
    for kind, spec in OWNED_FOLDERS.items():
        if any(os.path.isfile(os.path.join(folder, mark)) for mark in spec["marks"]):
            return kind
    return None


def _read_files(path):
    """(path, is_folder) pairs read from `path`: a run or a released folder is read as its
    own files only (results may be written next to them); any other folder as a whole."""
    kind = folder_kind(path) if os.path.isdir(path) else None
    if kind is None:
        return [(path, os.path.isdir(path))]
    return [(os.path.join(path, name), False) for name in os.listdir(path)
            if _is_owned(kind, name)]


def _check_one(label, path, inputs, owns):
    if os.path.isdir(path):
        raise BadValue("is an existing folder; give a file path", **{label: path})
    for read, is_folder in inputs if os.path.lexists(path) else ():   # a new file replaces nothing
        if is_folder and inside(path, read):
            raise BadValue(f"would replace a file in the input folder {read}; choose another path",
                           **{label: path})
        if not is_folder and _same(path, read):
            raise BadValue(f"is the input {read} (the same file); choose another path", **{label: path})
    folder = os.path.dirname(os.path.realpath(path))
    kind = folder_kind(folder) if os.path.isdir(folder) else None
    if kind and kind not in owns and _is_owned(kind, os.path.basename(path)):
        spec = OWNED_FOLDERS[kind]
        raise BadValue(f"would replace the {kind}'s own file in {folder} (written by {spec['owner']}); "
                       "choose another path", **{label: path})


def _is_owned(kind, name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in OWNED_FOLDERS[kind]["files"])


def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def inside(path, folder):
    """Whether `path`, links resolved, lies in `folder` (a "../x" does not)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder
