"""On-disk cache of a reader's index: one uncompressed .npz of numpy arrays per dataset.

A reader's index (numpy arrays only, see roilib/compactindex.py) takes a long first start
to build (COCO train2017: ~30 s, OpenSurfaces: minutes) and a second to load. It is keyed on
what it depends on: the annotation file's path, size, mtime, ctime and inode (for label maps,
the folders' file lists with sizes and mtimes), the reader's settings and INDEX_VERSION.
Any change rebuilds it; a cache that cannot be read or comes from another version is
rebuilt with a one-line notice, never trusted.

Where it lives (the first that can be written):
  1. ``$ROI_ATTENTION_CACHE`` (a folder) when set; ``ROI_ATTENTION_CACHE=off`` disables it;
  2. a ``.cache/`` folder beside the annotation file (label maps: beside the label folder);
  3. ``~/.cache/roi-attention/``.
Nothing is ever written inside a folder that cannot be written (a read-only dataset).

Processes that start together (torchrun ranks, several jobs) take an exclusive lock
(``fcntl.flock`` on ``<cache>.lock``): one builds and writes the file atomically (temporary
file + rename), the others wait, then read it. No torch.distributed needed.
"""
import hashlib
import json
import os
import sys
import zipfile

import numpy as np

from roilib.errors import UserError
from roilib.outputs import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders still never see half a file
    fcntl = None

INDEX_VERSION = 1
CACHE_ENV = "ROI_ATTENTION_CACHE"
_KEY = "__key__"
_FORMAT = "roi-attention index"


def file_identity(path):
    """What says a file is unchanged, cheaply (no read of its content)."""
    status = os.stat(path)
    return {"path": os.path.abspath(path), "size": status.st_size,
            "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns,
            "inode": status.st_ino}


def folder_identity(folder, with_stat=True, names=None):
    """Digest of a folder's file names (and sizes and mtimes when ``with_stat``); ``names``
    (a callable on a name) keeps only some files."""
    digest = hashlib.sha1()
    count = 0
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if names is not None and not names(entry.name):
                continue
            digest.update(entry.name.encode("utf-8", "surrogateescape") + b"\0")
            if with_stat:
                status = entry.stat()
                digest.update(f"{status.st_size}:{status.st_mtime_ns}\0".encode())
            count += 1
    return {"path": os.path.abspath(folder), "files": count, "digest": digest.hexdigest()}


def cache_folders(source):
    """Candidate cache folders for an index of ``source``, in order of preference."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen:
        return [] if chosen.lower() == "off" else [chosen]
    beside = os.path.join(os.path.dirname(os.path.abspath(source)), ".cache")
    return [beside, os.path.join(os.path.expanduser("~"), ".cache", "roi-attention")]


def cache_name(source, kind, settings):
    """One file per (source path, kind, settings): a changed source overwrites its file."""
    what = json.dumps([os.path.abspath(source), kind, settings], sort_keys=True)
    digest = hashlib.sha1(what.encode()).hexdigest()[:16]
    return f"{os.path.basename(os.path.normpath(source))}.{kind}-{digest}.npz"


def cached_index(source, kind, identity, settings, build, check, announce=None):
    """The index of ``source``: read from the cache, or built (``build()`` -> dict of
    arrays), written there and returned. ``check(arrays)`` raises ValueError on an index
    that does not hang together. ``announce``: a line printed before a (slow) build."""
    key = json.dumps({"format": _FORMAT, "version": INDEX_VERSION, "kind": kind,
                      "identity": identity, "settings": settings}, sort_keys=True)
    name = cache_name(source, kind, settings)
    for folder in cache_folders(source):
        path = os.path.join(folder, name)
        arrays = _load(path, key, check, quiet=True)  # no lock: the file is never partial
        if arrays is not None:
            return arrays
        lock = _open_lock(folder, path)
        if lock is None:
            continue  # not writable: try the next folder
        with lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            arrays = _load(path, key, check)  # built meanwhile by the process holding it?
            if arrays is None:
                arrays = _build(build, check, announce, path)
                _save(path, key, arrays)
            return arrays
    return _build(build, check, announce, None)


def _build(build, check, announce, path):
    if announce:
        where = f"; cached in {path}" if path else "; no writable cache folder"
        notice(f"{announce}{where}")
    arrays = build()
    check(arrays)
    return arrays


def _open_lock(folder, path):
    if not _writable(folder):
        return None
    try:
        os.makedirs(folder, exist_ok=True)
        return open(path + ".lock", "a")
    except OSError:
        return None


def _writable(folder):
    """Writable as the mode bits say, not only for us: root may write anywhere, but a folder
    without write bits is a read-only dataset, not to be written into."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return os.access(existing, os.W_OK) and bool(os.stat(existing).st_mode & 0o222)


def _load(path, key, check, quiet=False):
    """The arrays of a valid cache file with this key; None (with a notice unless ``quiet``)
    when it is absent, stale, foreign or damaged."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = data[_KEY].tobytes().decode() if _KEY in data.files else ""
            if stored != key:
                if not quiet and not _same_format(stored, key):
                    notice(f"{path}: index cache from another version or program; rebuilding")
                return None
            arrays = {name: data[name] for name in data.files if name != _KEY}
        check(arrays)
        return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) \
            as error:
        if not quiet:
            notice(f"{path}: damaged index cache ({type(error).__name__}); rebuilding")
        return None


def _same_format(stored, key):
    """True when ``stored`` is our key for other files/settings (a stale cache: rebuilt
    silently); False for another format or version."""
    try:
        stored, key = json.loads(stored), json.loads(key)
    except ValueError:
        return False
    return isinstance(stored, dict) and all(stored.get(k) == key[k]
                                            for k in ("format", "version", "kind"))


def _save(path, key, arrays):
    """Write atomically; a cache that cannot be written costs a notice, not the run."""
    try:
        with atomic_write(path, "wb", what="the index cache") as file:
            np.savez(file, **{_KEY: np.frombuffer(key.encode(), np.uint8)}, **arrays)
    except UserError as error:
        notice(f"{error}; the next start builds it again")


def notice(line):
    print(line, file=sys.stderr, flush=True)
