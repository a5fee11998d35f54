"""Advisory locks on outputs: one camcli run writes a folder or a records file at a time
(``DIR/.camcli.lock``, ``.FILE.lock``; ``fcntl.flock``, dropped by the kernel when the process
ends). torch-free."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import IO, Any

from camcli.atomic import open_nofollow


class BusyError(OSError):
    """Another process holds the lock of an output (``errno`` EBUSY)."""


class RunLock:
    """An advisory lock (``fcntl.flock``) on ``path``, a lock file camcli creates and removes:
    one run writes an output at a time. The kernel drops the lock when its process ends, so a
    killed run never blocks the next one.

    Args:
        path: the lock file, e.g. ``DIR/.camcli.lock`` or ``.FILE.lock``.
        shared: a shared lock (several shard runs of one folder); an exclusive lock excludes
            every other holder.

    Raises:
        BusyError: another process holds it (its pid, when known, is in the message).
        OSError: the lock file cannot be created (it is opened without following links).
    """

    def __init__(self, path: str | os.PathLike, *, shared: bool = False) -> None:
        import fcntl

        self.path = Path(path)
        self.shared = shared
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        for _ in range(20):
            fh = open_nofollow(self.path, "a")
            try:
                fcntl.flock(fh.fileno(), op)
            except BlockingIOError:
                fh.close()
                raise self._busy() from None
            except BaseException:
                fh.close()
                raise
            # A holder may have removed the file as we opened it: lock the file that is there.
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.lstat(self.path))
            except OSError:
                same = False
            if same:
                break
            fh.close()
        else:  # pragma: no cover - a file removed and recreated 20 times in a row
            raise self._busy()
        self._fh: IO[Any] | None = fh  # empty: no data block, even on a full disk

    def _busy(self) -> BusyError:
        return BusyError(errno.EBUSY, "another camcli run is writing it", str(self.path))

    def release(self) -> None:
        """Remove the lock file (when no one else holds it) and release the lock."""
        import fcntl

        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if self.shared:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another shard still holds it
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(fh.fileno()), os.lstat(self.path)):
                    self.path.unlink()
        finally:
            fh.close()
