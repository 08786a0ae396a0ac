"""Outputs that appear whole or not at all.

Every file a command writes for the user (predictions, exports, results.json, checkpoints, plots,
cache metadata) is written to a temporary file beside its target and renamed over it only once it
is complete. A command that fails, is interrupted or runs out of disk therefore never leaves a
partial file, and never empties or damages a file that was there before it started.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def replace_on_success(path):
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` (an atomic
    rename on one file system), on an exception it is deleted and ``path`` is left as it was.

    The temporary name keeps the target's suffix, so writers that choose a format by extension
    (matplotlib, torch.export, ONNX) see the same one. The parent directory must exist.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}",
                               dir=path.parent)
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
        raise


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with replace_on_success(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
