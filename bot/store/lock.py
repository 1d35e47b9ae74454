"""One serving process per SQLite data directory.

Two processes on one SQLite store would both poll Telegram (each ending the other's ``getUpdates``) and
both resume the same pending message, so a customer would get the same answer twice. ``serve`` and
``chat`` therefore hold an OS lock (``flock``) on ``<data dir>/internvl-bot.lock`` while they run. The
kernel releases it when the process ends, however it ends (``kill -9`` included), so a crash never
leaves a stale lock behind; the PID written into the file only names the holder in the error.
Several processes share work through PostgreSQL instead (README: "Several machines").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from bot.errors import StartupError

LOCK_NAME = "internvl-bot.lock"


class DataDirLock:
    """``with DataDirLock(path):`` — held for the block; a second holder gets :class:`StartupError`."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory).resolve() / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"store: another internvl-bot (pid {holder}) is already running on the data directory "
                f"{self.path.parent} (lock {self.path}); stop it first, or run several processes on "
                "PostgreSQL (README: \"Several machines\")") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LOCK_NAME", "DataDirLock"]
