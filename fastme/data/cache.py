"""The one cache mechanism behind every data source (raw Criteo/Avazu files, several raw files,
Parquet, ``.npy`` arrays to convert).

A cache directory is keyed by the *content* of its input files (:func:`file_fingerprint`) and by
the preprocessing options, never by path or modification time: a file edited in place with its
size and mtime kept (``cp -p``, ``rsync -t``) gets a cache of its own, and moving or touching a
file keeps its cache. :func:`build_or_reuse` builds it under a lock (a second process asking for
the same cache waits, then reuses the result), into a ``.partial`` directory aside that is
published by one rename only when complete and removed on any failure; the cache is validated when
it is opened (:func:`fastme.data.dataset.load_cache`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from fastme._lock import file_lock
from fastme.data.dataset import CTRData, finish_cache, load_cache, read_meta


def default_cache_root() -> Path:
    return Path(os.environ.get("FASTME_CACHE_DIR") or Path.home() / ".cache" / "fastme")


def file_fingerprint(path, block: int = 1 << 16, samples: int = 64) -> str:
    """A content fingerprint that stays cheap on an 11 GB file: the size and a hash of the first
    and last ``block`` bytes and of ``samples`` blocks spread evenly in between (about 4 MB read).
    An in-place edit that keeps the size is caught when it touches one of those blocks (any edit
    of the head or tail, or of one byte in every ~170 MB stretch); other edits need ``rebuild``."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        if size <= (samples + 2) * block:
            digest.update(f.read())
        else:
            last = size - block
            for offset in [0, *(last * i // (samples + 1) for i in range(1, samples + 1)), last]:
                f.seek(offset)
                digest.update(f.read(block))
    return digest.hexdigest()


def files_fingerprint(files) -> str:
    """One fingerprint of several files' contents, in their order (a single file's is its own)."""
    prints = [file_fingerprint(f) for f in files]
    if len(prints) == 1:
        return prints[0]
    return hashlib.blake2b("|".join(prints).encode(), digest_size=16).hexdigest()


def cache_path(cache_dir, prefix: str, fingerprint: str, options: dict) -> Path:
    """The cache directory of content ``fingerprint`` preprocessed with ``options``, under
    ``cache_dir`` (default :func:`default_cache_root`); ``prefix`` only makes it recognisable."""
    key = json.dumps({"fingerprint": fingerprint, **options}, sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / f"{prefix}-{digest}"


def reusable(directory: Path, fingerprint: str) -> bool:
    """Whether ``directory`` holds a complete cache built from content ``fingerprint``."""
    meta = read_meta(directory)
    return meta is not None and (meta.get("source") or {}).get("fingerprint") == fingerprint


def reserve(path: Path) -> None:
    """Give the (sparse, memory-mapped) file its disk blocks now: running out of space while
    writing through a memory map kills the process (SIGBUS) instead of raising an error."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate on this fs
                raise


def open_arrays(tmp: Path, num_rows: int, num_fields: int):
    """Writable memory-mapped int32 ``x.npy`` [num_rows, num_fields] and float32 ``y.npy`` in
    ``tmp``, their disk space checked and reserved first."""
    x_bytes, y_bytes = num_rows * num_fields * 4, num_rows * 4
    free = shutil.disk_usage(tmp).free
    if free < x_bytes + y_bytes:
        raise OSError(f"the cache needs {(x_bytes + y_bytes) / 1e9:.2f} GB but only "
                      f"{free / 1e9:.2f} GB are free")
    x = np.lib.format.open_memmap(tmp / "x.npy", mode="w+", dtype=np.int32,
                                  shape=(num_rows, num_fields))
    y = np.lib.format.open_memmap(tmp / "y.npy", mode="w+", dtype=np.float32, shape=(num_rows,))
    reserve(tmp / "x.npy")
    reserve(tmp / "y.npy")
    return x, y


def build_or_reuse(directory: Path, fingerprint: str, build, *, name: str, files,
                   rebuild: bool = False) -> CTRData:
    """Open the cache ``directory`` of content ``fingerprint``, building it first with
    ``build(tmp)`` (which writes a complete cache, meta.json with ``source.fingerprint``
    included, into the empty directory ``tmp``) unless it exists already and ``rebuild`` is
    false. ``files`` are the inputs, fingerprinted again after the build: a file that changed
    meanwhile fails the build instead of publishing a cache of mixed content.

    Errors writing the cache name it and say what to do."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        lock = file_lock(directory.with_name(directory.name + ".lock"), f"the cache {directory}",
                         wait=True,
                         on_wait=lambda who: print(f"{name}: waiting for {who}, which is building "
                                                   f"the cache {directory}", file=sys.stderr,
                                                   flush=True))
        with lock:
            if rebuild or not reusable(directory, fingerprint):
                tmp = directory.with_name(directory.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)  # left by a process that was killed
                tmp.mkdir(parents=True)
                try:
                    build(tmp)
                    if files_fingerprint(files) != fingerprint:
                        raise RuntimeError(f"{', '.join(map(str, files))} changed while being "
                                           f"preprocessed; run again")
                    finish_cache(tmp, directory)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            return load_cache(directory, name=name)
    except OSError as exc:
        raise OSError(f"cannot write the {name} cache {directory}: {exc}. Free some space there "
                      f"or choose another place (cache_dir / --cache-dir / "
                      f"$FASTME_CACHE_DIR)") from exc
