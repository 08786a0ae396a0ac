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

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from fastme._atomic import make_dirs
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


NPY_HEADER_BYTES = 128  # a fixed-size .npy header, rewritten with the real shape at the end


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``NPY_HEADER_BYTES`` bytes (numpy pads its own
    headers with spaces the same way; a fixed size lets the shape be written last)."""
    text = repr(
        {
            "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
            "fortran_order": False,
            "shape": tuple(shape),
        }
    )
    room = NPY_HEADER_BYTES - 10
    return (
        b"\x93NUMPY\x01\x00"
        + room.to_bytes(2, "little")
        + text.encode("latin1").ljust(room - 1)
        + b"\n"
    )


def check_space(directory: Path, needed: int) -> None:
    """Refuse a build that cannot fit before reading the source (a full disk part-way is also
    an OSError, but after minutes of work)."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(
            f"the cache needs about {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB are free"
        )


class NpyWriter:
    """A cache's ``.npy`` file written block of rows by block of rows, its shape written last;
    plain writes, so a full disk is an ``OSError`` (never the SIGBUS of a memory-mapped write)."""

    def __init__(self, path: Path, dtype, row_shape: tuple):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self.file = open(path, "wb")
        self.file.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.close()


def build_or_reuse(
    directory: Path, fingerprint: str, build, *, name: str, files, rebuild: bool = False
) -> CTRData:
    """Open the cache ``directory`` of content ``fingerprint``, building it first with
    ``build(tmp)`` (which writes a complete cache, meta.json with ``source.fingerprint``
    included, into the empty directory ``tmp``) unless it exists already and ``rebuild`` is
    false. ``files`` are the inputs, fingerprinted again after the build: a file that changed
    meanwhile fails the build instead of publishing a cache of mixed content.

    Errors writing the cache name it and say what to do."""
    try:
        # The lock file is deleted on release, and a cache root this call created is removed
        # again when the build fails: a failed command leaves nothing behind.
        lock = file_lock(
            directory.with_name(directory.name + ".lock"),
            f"the cache {directory}",
            wait=True,
            prepare=lambda: make_dirs(directory.parent),
            on_wait=lambda who: print(
                f"{name}: waiting for {who}, which is building the cache {directory}",
                file=sys.stderr,
                flush=True,
            ),
        )
        with lock:
            if rebuild or not reusable(directory, fingerprint):
                tmp = directory.with_name(directory.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)  # left by a process that was killed
                tmp.mkdir(parents=True)
                try:
                    build(tmp)
                    if files_fingerprint(files) != fingerprint:
                        raise RuntimeError(
                            f"{', '.join(map(str, files))} changed while being "
                            f"preprocessed; run again"
                        )
                    finish_cache(tmp, directory)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            return load_cache(directory, name=name)
    except OSError as exc:
        raise OSError(
            f"cannot write the {name} cache {directory}: {exc}. Free some space there "
            f"or choose another place (cache_dir / --cache-dir / "
            f"$FASTME_CACHE_DIR)"
        ) from exc
