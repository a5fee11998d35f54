"""The one atomic writer: a file appears whole under its name, or not at all.

Every file camcli writes (overlays, maps, records, manifests, submissions, checkpoints, downloaded
weights) is written to a temporary name beside its target, ``.<name>.camcli-tmp<pid>-<thread>``,
and renamed into place with :func:`os.replace` once complete; a failure or an interrupt removes
the temporary file. An output folder's start-up removes stray temporary files of a killed run by
matching :data:`TMP_RE`. torch-free.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".camcli-tmp"
#: ``.<name>.camcli-tmp<pid>-<thread id>``: a file being written; ``name`` is the target's name
#: (cut to :data:`TMP_NAME_MAX` characters).
TMP_RE = re.compile(r"^\.(?P<name>.*)" + re.escape(TMP_MARK) + r"\d+-\d+$", re.DOTALL)
TMP_NAME_MAX = 120  # characters of the target's name kept in a temporary name (NAME_MAX 255)


def tmp_path_for(path: Path) -> Path:
    """The temporary name ``path`` is written under (same folder, so the rename is atomic)."""
    return path.with_name(
        f".{path.name[:TMP_NAME_MAX]}{TMP_MARK}{os.getpid()}-{threading.get_ident()}"
    )


class AtomicFile:
    """A file object writing to a temporary name beside ``path``, renamed onto it on
    :meth:`commit`, removed on :meth:`abort`.

    Used as a context manager it commits when the block ends normally and aborts on any
    exception (``KeyboardInterrupt`` included), re-raising it.

    Args:
        path: the target.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``"w"``.
        fsync: flush the data to disk before the rename (records, checkpoints, downloads).

    Raises:
        OSError: the folder cannot be created or the file cannot be opened (nothing is left).
    """

    def __init__(
        self, path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
        fsync: bool = False,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.tmp = tmp_path_for(self.path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[Any] = open(self.tmp, mode, encoding=encoding)  # noqa: SIM115
        self.closed = False

    def commit(self) -> None:
        """Flush (and fsync), close and rename onto the target; aborts on failure."""
        if self.closed:
            return
        try:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Close and remove the temporary file; the target is left as it was."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`)."""
    with AtomicFile(path, fsync=fsync) as fh:
        fh.write(data)


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)`` (uncompressed), atomically."""
    import numpy as np

    with AtomicFile(path) as fh:
        np.savez(fh, **arrays)
