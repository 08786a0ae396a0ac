"""Outputs that appear whole or not at all.

Every file a command writes for the user (predictions, exports, results.json, checkpoints, plots,
cache metadata) is written to a temporary file beside its target and renamed over it only once it
is complete. A command that fails, is interrupted or runs out of disk therefore never leaves a
partial file, and never empties or damages a file that was there before it started. Directories
created for an output that then failed are removed again (:func:`make_dirs`, :func:`remove_dirs`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def make_dirs(directory) -> list[Path]:
    """Create ``directory`` and its missing parents; return the ones this call created, outermost
    first, so that a command that fails can remove them again (:func:`remove_dirs`)."""
    directory = Path(directory)
    missing = []
    while not directory.is_dir() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:  # made meanwhile by another process: not ours to remove
                if not d.is_dir():
                    raise
                continue
            created.append(d)
    except BaseException:
        remove_dirs(created)
        raise
    return created


def remove_dirs(created) -> None:
    """Remove directories that :func:`make_dirs` created, innermost first, as far as they are
    empty (a directory that holds anything, another process's files included, stays)."""
    for d in reversed(list(created)):
        try:
            Path(d).rmdir()
        except OSError:
            return


@contextlib.contextmanager
def replace_on_success(path, *, make_parents: bool = False):
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` (an atomic
    rename on one file system), on an exception it is deleted and ``path`` is left as it was.

    The temporary name keeps the target's suffix, so writers that choose a format by extension
    (matplotlib, torch.export, ONNX) see the same one. The parent directory must exist, unless
    ``make_parents``: then it is created, and removed again on an exception.
    """
    path = Path(path)
    created = make_dirs(path.parent) if make_parents else []
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent
        )
    except BaseException:
        remove_dirs(created)
        raise
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.exists():  # a rename keeps the temporary file's private mode otherwise
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        remove_dirs(created)
        raise


def write_text(path, text: str, *, make_parents: bool = False) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with replace_on_success(path, make_parents=make_parents) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
