"""camcli's own JSON Lines files: one writer and one reader.

Records are one JSON object per line, UTF-8; file names with undecodable bytes are kept as
surrogate escapes. torch-free.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO

from camcli.errors import write_error


def dumps(record: dict) -> str:
    """One JSON line, UTF-8 text. Paths with undecodable bytes (surrogate escapes) are written
    as ``\\udcXX`` escapes, which keeps the line valid UTF-8 and lets
    ``os.fsencode(json.loads(line)["image"])`` give the original bytes back."""
    text = json.dumps(record, ensure_ascii=False, separators=(", ", ": "), default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, separators=(", ", ": "), default=_json_default)
    return text


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class JsonlWriter:
    """JSON Lines to stdout (``-``) or a file; every record is one whole line, flushed.

    A file is written under a temporary name beside it and renamed into place on close, so the
    named file is never half-written; ``append=True`` continues an existing file instead.
    """

    def __init__(self, target: str | os.PathLike | None, *, append: bool = False) -> None:
        self.target = None if target in (None, "-") else Path(target)
        self.failed = False
        self._tmp: Path | None = None
        self._fh: IO[str]
        if self.target is None:
            self._fh = sys.stdout
        elif append:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.target, "a", encoding="utf-8")
        else:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.target.with_name(f".{self.target.name}.tmp")
            self._fh = open(self._tmp, "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        try:
            self._fh.write(dumps(record) + "\n")
            self._fh.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.failed = True
            raise write_error(exc, self.target or "stdout", resumable=False) from None

    def close(self, *, commit: bool = True) -> None:
        if self.target is None:
            if not self.failed:
                self._fh.flush()
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self._tmp is not None:
            if commit:
                os.replace(self._tmp, self.target)
            else:
                self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An interrupted run keeps the complete lines written so far.
        self.close(commit=True)
