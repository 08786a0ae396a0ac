"""Advisory file locks (``fcntl.flock``) for what two processes must not write at once: a data
cache being built, a run directory being trained into.

The lock belongs to an open file, so the operating system releases it when the process ends,
however it ends: a crashed or killed run never leaves a held lock behind. A process that ends
normally also leaves no lock *file*: the holder deletes it while it still holds the lock, and an
acquirer, once its ``flock`` succeeds, checks that the path still names the file it locked
(``fstat`` against ``stat``) and starts again otherwise. So a process that opened the old file
just before it was deleted never believes it holds a lock that a third process, which created
a new file of the same name, holds too. (A killed process leaves its file; the next one reuses it.)
Where ``fcntl`` does not exist (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fastme._atomic import remove_dirs

try:
    import fcntl
except ImportError:  # pragma: no cover - not on the supported platforms
    fcntl = None

_HELD: dict[str, int] = {}  # lock files this process holds -> nesting depth
_ATTEMPTS = 1000  # of opening a lock file whose directory another process has just removed


class LockedError(RuntimeError):
    """Another process holds the lock."""


def _holder(handle) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f"pid {pid}" if pid else "another process"


def _names(handle, path) -> bool:
    """Whether ``path`` still names the open file ``handle`` (not deleted, not replaced)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(handle.fileno())
    return (now.st_dev, now.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def file_lock(path, what: str, *, wait: bool = False, on_wait=None, prepare=None):
    """Hold an exclusive lock on ``path`` (created if needed, deleted on release) for the ``with``
    block.

    ``what`` names the locked thing in the error. With ``wait`` a held lock is waited for
    (``on_wait(holder)`` is called first, e.g. to say so); without it :class:`LockedError` is
    raised at once. Re-entrant within one process. ``prepare()``, called before the lock file is
    opened, creates its directory and returns the directories it created
    (:func:`fastme._atomic.make_dirs`); those that are empty on release are removed with the lock
    file. Creating the lock file is also the first write into its directory, so an unwritable
    directory fails here, before any work is done.
    """
    path = Path(path)
    key = str(path.resolve())
    if key in _HELD or fcntl is None:
        created = prepare() if prepare is not None and key not in _HELD else []
        _HELD[key] = _HELD.get(key, 0) + 1
        try:
            yield
        finally:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
            remove_dirs(created)
        return
    created: list[Path] = []
    handle = None
    try:
        for attempt in range(_ATTEMPTS):
            if prepare is not None:
                created += prepare()
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # its directory was removed by its last holder: again
                if prepare is None or attempt == _ATTEMPTS - 1:
                    raise
                continue
            handle = os.fdopen(fd, "r+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(handle)
                if not wait:
                    raise LockedError(f"{what} is in use by {holder} (lock file {path})") from None
                if on_wait is not None:
                    on_wait(holder)
                    on_wait = None  # said once, however often the file changes meanwhile
                fcntl.flock(handle, fcntl.LOCK_EX)
            if _names(handle, path):
                break
            handle.close()  # its holder deleted it before letting go: lock the current one
            handle = None
        else:
            raise OSError(f"cannot lock {path}: other processes keep replacing it")
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    except BaseException:
        if handle is not None:
            handle.close()
        remove_dirs(created)
        raise
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        try:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still held: see the module docstring
            remove_dirs(created)
            fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()
