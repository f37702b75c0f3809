"""On-disk cache of a reader's index: one uncompressed .npz of numpy arrays per dataset.

A reader's index (numpy arrays only, see roilib/compactindex.py) takes a long first start
to build (COCO train2017: ~30 s, OpenSurfaces: minutes) and a second to load. It is keyed on
what it depends on: the annotation file's path, size, mtime, ctime and inode (for label maps,
the folders' file lists with the same per file), the reader's settings and INDEX_VERSION.
ctime is what catches an edit in place whose mtime was put back (``rsync -t``, a restore):
no write can keep it. Any change rebuilds it (an ``incremental`` reader gets the stale arrays
to reuse what did not change); a cache that cannot be read, comes from another version or
holds arrays that do not pass the reader's check is rebuilt with a one-line notice, never
trusted. A cache is a file anyone can replace: each array's header is checked against the
bytes the file holds before anything is allocated.

Where it lives (the first that can be written):
  1. ``$ROI_ATTENTION_CACHE`` (a folder) when set; ``ROI_ATTENTION_CACHE=off`` disables it;
     naming a file is refused with one line;
  2. a ``.cache/`` folder beside the annotation file (label maps: beside the label folder);
  3. ``~/.cache/roi-attention/``.
Nothing is ever written inside a folder that cannot be written (a read-only dataset).

Processes that start together (torchrun ranks, several jobs) take an exclusive lock
(``fcntl.flock`` on ``<cache>.lock``): one builds and writes the file atomically (temporary
file + rename), the others wait, then read it. No torch.distributed needed.
"""
import hashlib
import json
import math
import os
import stat
import sys
import zipfile

import numpy as np

from roilib.errors import UserError
from roilib.outputs import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders still never see half a file
    fcntl = None

INDEX_VERSION = 3  # 2: label maps indexed per file (stat, digest, shape); 3: unreadable maps kept
CACHE_ENV = "ROI_ATTENTION_CACHE"
_KEY = "__key__"
_FORMAT = "roi-attention index"
_FORMAT_FIELDS = ("format", "version", "kind")
_REUSABLE = _FORMAT_FIELDS + ("settings",)


def file_identity(path):
    """What says a file is unchanged, cheaply (no read of its content)."""
    status = os.stat(path)
    return {"path": os.path.abspath(path), "size": status.st_size,
            "mtime_ns": status.st_mtime_ns, "ctime_ns": status.st_ctime_ns,
            "inode": status.st_ino}


def stat_row(status):
    """(size, mtime, ctime, inode) of an ``os.stat`` result: what says a file is unchanged."""
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def content_digest(path):
    """A cheap content hash (8 bytes of BLAKE2b as an int64) of a file whose stat changed:
    a touched or copied file keeps its index entries, an edited one does not."""
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return int(np.frombuffer(digest.digest(), np.int64)[0])


def folder_identity(folder, with_stat=True, names=None):
    """Digest of the names of the files under a folder (see walk_files), and each one's
    ``stat_row`` when ``with_stat``; ``names`` (a callable on a name) keeps only some files."""
    digest = hashlib.sha1()
    found = walk_files(folder, names)
    for name, entry in found:
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        if with_stat:
            digest.update(":".join(map(str, stat_row(_entry_stat(entry)))).encode() + b"\0")
    return {"path": os.path.abspath(folder), "files": len(found), "digest": digest.hexdigest()}


def walk_files(folder, names=None):
    """[(path relative to ``folder`` with "/", os.DirEntry)] of the files in it and in its
    subfolders (Cityscapes keeps one per city), each folder by name; hidden entries (a
    ``.cache``) are left out and a folder reached twice through links is read once.
    ``names`` (a callable on a file name) keeps only some files."""
    found, seen = [], set()

    def walk(path, prefix):
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if _is_folder(entry):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif names is None or names(entry.name):
                    found.append((prefix + entry.name, entry))

    walk(folder, "")
    return found


def _is_folder(entry):
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entry_stat(entry):
    """A folder entry's stat; a dangling link or a link loop has the link's own (the reader
    then skips and counts its file), so a changed link still changes the identity."""
    try:
        return entry.stat()
    except OSError:
        return entry.stat(follow_symlinks=False)


def regular_file_stat(path, broken):
    """``os.stat`` of ``path`` where it is a regular file, else None; a broken symbolic link
    (dangling, or a loop) is also added to ``broken`` as "path (reason)"."""
    try:
        status = os.stat(path)
    except OSError as error:
        if os.path.islink(path):
            broken.append(f"{path} ({error.strerror})")
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def is_file_entry(entry):
    """Whether a folder entry is a file; a link loop is not (its reader skips and counts it)."""
    try:
        return entry.is_file()
    except OSError:
        return False


def cache_folders(source):
    """Candidate cache folders for an index of ``source``, in order of preference."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen:
        if chosen.lower() == "off":
            return []
        if os.path.exists(chosen) and not os.path.isdir(chosen):
            raise UserError(f"{CACHE_ENV}={chosen} names a file, not a folder: set it to a "
                            f"folder for the index caches, or to off")
        return [chosen]
    beside = os.path.join(os.path.dirname(os.path.abspath(source)), ".cache")
    return [beside, os.path.join(os.path.expanduser("~"), ".cache", "roi-attention")]


def cache_name(source, kind, settings):
    """One file per (source path, kind, settings): a changed source overwrites its file."""
    what = json.dumps([os.path.abspath(source), kind, settings], sort_keys=True)
    digest = hashlib.sha1(what.encode()).hexdigest()[:16]
    return f"{os.path.basename(os.path.normpath(source))}.{kind}-{digest}.npz"


def cached_index(source, kind, identity, settings, build, check, announce=None,
                 incremental=False):
    """The index of ``source``: read from the cache, or built (``build()`` -> dict of
    arrays), written there and returned. ``check(arrays)`` raises ValueError on an index
    that does not hang together. ``announce``: a line printed before a (slow) build.
    ``incremental``: ``build(previous)`` gets the checked arrays of a cache of the same
    format and settings made for other files (None if there is none), to reuse parts."""
    key = json.dumps({"format": _FORMAT, "version": INDEX_VERSION, "kind": kind,
                      "identity": identity, "settings": settings}, sort_keys=True)
    name = cache_name(source, kind, settings)
    build_from = build if incremental else (lambda previous: build())
    for folder in cache_folders(source):
        path = os.path.join(folder, name)
        arrays, _ = _load(path, key, check, quiet=True)  # no lock: the file is never partial
        if arrays is not None:
            return arrays
        lock = _open_lock(folder, path)
        if lock is None:
            continue  # not writable: try the next folder
        with lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            # built meanwhile by the process holding it?
            arrays, previous = _load(path, key, check, stale=incremental)
            if arrays is None:
                arrays = _build(build_from, previous, check, announce, path)
                _save(path, key, arrays)
            return arrays
    return _build(build_from, None, check, announce, None)


def _build(build, previous, check, announce, path):
    if announce and previous is None:
        where = f"; cached in {path}" if path else "; no writable cache folder"
        notice(f"{announce}{where}")
    arrays = build(previous)
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


def _load(path, key, check, quiet=False, stale=False):
    """(arrays, None) of a valid cache file with this key; else (None, previous), with a
    notice unless ``quiet`` when it is foreign or damaged. ``previous``: with ``stale``, the
    checked arrays of a cache of our format and settings keyed on other files, else None."""
    if not os.path.exists(path):
        return None, None
    try:
        with zipfile.ZipFile(path) as archive:
            members = npz_arrays(archive, os.path.getsize(path))
            name, stored = next(members, ("", None))  # np.savez keeps the order: key first
            stored = stored.tobytes().decode() if name == _KEY else ""
            reuse = stale and _same_format(stored, key, _REUSABLE)
            if stored != key and not reuse:
                if not quiet and not _same_format(stored, key, _FORMAT_FIELDS):
                    notice(f"{path}: index cache from another version or program; rebuilding")
                return None, None
            arrays = dict(members)
        check(arrays)
        return (None, arrays) if stored != key else (arrays, None)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) \
            as error:
        if not quiet:
            notice(f"{path}: damaged index cache ({type(error).__name__}); rebuilding")
        return None, None


def npz_arrays(archive, file_size):
    """(name, array) of each member of an uncompressed .npz (np.savez) open as a ZipFile,
    none allocated before its header is found to describe exactly the bytes its member
    holds within the file (a crafted header could ask for 1 TiB). ValueError otherwise."""
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or \
                info.compress_size != info.file_size or info.file_size > file_size:
            raise ValueError(f"{info.filename}: not a stored array")
        with archive.open(info) as member:
            if np.lib.format.read_magic(member) != (1, 0):
                raise ValueError(f"{info.filename}: unknown array format")
            shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            if dtype.hasobject or \
                    math.prod(shape) * dtype.itemsize + member.tell() != info.file_size:
                raise ValueError(f"{info.filename}: header does not fit its size")
            member.seek(0)
            yield (info.filename.removesuffix(".npy"),
                   np.lib.format.read_array(member, allow_pickle=False))


def _same_format(stored, key, fields):
    """True when ``stored`` is a key that agrees with ``key`` on ``fields``: our key for
    other files/settings (a stale cache: rebuilt silently), or, on _REUSABLE, one whose
    arrays an incremental build may reuse."""
    try:
        stored, key = json.loads(stored), json.loads(key)
    except ValueError:
        return False
    return isinstance(stored, dict) and all(stored.get(k) == key[k] for k in fields)


def _save(path, key, arrays):
    """Write atomically; a cache that cannot be written costs a notice, not the run."""
    try:
        with atomic_write(path, "wb", what="the index cache") as file:
            np.savez(file, **{_KEY: np.frombuffer(key.encode(), np.uint8)}, **arrays)
    except UserError as error:
        notice(f"{error}; the next start builds it again")


def notice(line):
    print(line, file=sys.stderr, flush=True)
