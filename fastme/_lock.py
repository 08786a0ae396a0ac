"""Advisory file locks (``fcntl.flock``) for what two processes must not write at once: a data
cache being built, a run directory being trained into.

The lock belongs to an open file, so the operating system releases it when the process ends,
however it ends: a crashed or killed run never leaves a stale lock behind. The lock file itself is
left in place (deleting it would let a third process lock a different file of the same name).
Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on the supported platforms
    fcntl = None

_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _holder(handle) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f"pid {pid}" if pid else "another process"


@contextlib.contextmanager
def file_lock(path, what: str, *, wait: bool = False, on_wait=None):
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    ``what`` names the locked thing in the error. With ``wait`` a held lock is waited for
    (``on_wait(holder)`` is called first, e.g. to say so); without it :class:`LockedError` is
    raised at once. Re-entrant within one process. Creating the lock file is also the first write
    into its directory, so an unwritable directory fails here, before any work is done.
    """
    key = str(Path(path).resolve())
    if key in _HELD or fcntl is None:
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
        return
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            if not wait:
                raise LockedError(f"{what} is in use by {holder} (lock file {path})") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
