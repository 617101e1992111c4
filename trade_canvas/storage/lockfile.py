"""The SQLite store's lock file: one server per database file, and the next one names the first.

SQLite has one writer per file and no way to tell other processes about new candles, so two
servers on one file would duplicate feeds and leave each other's subscribers unserved. ``serve``
therefore holds ``flock(<DB_PATH>.lock)`` for its whole life with its pid written inside; a
second server fails at boot naming that pid. ``flock`` locks die with the process (kill -9
included), so a stale file never blocks a restart. Tools that only read or copy the file
(``store copy``, ``backfill``) do not take the lock.
"""

from __future__ import annotations

import fcntl
import os

from trade_canvas.errors import ConfigError


class LockFile:
    """A held ``flock`` on ``<db_path>.lock``; released by ``release()`` or the process's end."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Unlock and close (the file stays; its content is only advisory)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def hold_lock(db_path: str) -> LockFile:
    """Lock ``db_path``'s lock file for this process and write our pid into it.

    Raises:
        ConfigError: another process holds the lock (its pid is named when known).
    """
    path = os.path.abspath(db_path) + ".lock"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "a process whose pid is not written yet"
        raise ConfigError(
            f"TRADE_CANVAS_DB_PATH={db_path} is in use by another server ({who}, lock file "
            f"{path}): the SQLite store serves one process. Stop that server, point this one at "
            "another file, or use the Postgres store (TRADE_CANVAS_ENABLE_PG_STORE=1) to run "
            "several processes"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return LockFile(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
