"""camcli's own JSON Lines files: one writer and one reader.

Records are one JSON object per line, UTF-8; file names with undecodable bytes are kept as
surrogate escapes. torch-free.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from camcli.atomic import AtomicFile, open_nofollow
from camcli.errors import write_error


def dumps(record: dict) -> str:
    """One JSON line, UTF-8 text. Paths with undecodable bytes (surrogate escapes) are written
    as ``\\udcXX`` escapes, which keeps the line valid UTF-8 and lets
    ``os.fsencode(json.loads(line)["image"])`` give the original bytes back.

    Raises:
        ValueError: ``non-finite number in a record ...``: NaN and infinities are never written.
    """
    kw = {"separators": (", ", ": "), "default": _json_default}
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, **kw)
    except ValueError as exc:  # NaN or inf: never written (invalid JSON for other tools)
        raise ValueError(f"non-finite number in a record, not written ({exc})") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(record, ensure_ascii=True, allow_nan=False, **kw)
    return text


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
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
        self._atomic: AtomicFile | None = None
        self._fh: IO[str]
        if self.target is None:
            self._fh = sys.stdout
        elif append:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open_nofollow(self.target, "a")
        else:
            self._atomic = AtomicFile(
                self.target, "w", encoding="utf-8", fsync=True, stream_ok=True
            )
            self._fh = self._atomic.file

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
        if self._atomic is not None:
            self._atomic.commit() if commit else self._atomic.abort()
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An interrupted run keeps the complete lines written so far.
        self.close(commit=True)


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON Lines file.

    Attributes:
        number: 1-based line number in the file.
        text: the line without its line break (undecodable bytes as surrogate escapes).
        value: the parsed JSON object (a dict), or None when the line is bad.
        error: None, or why the line is bad: ``"not JSON (<reason>)"`` (e.g. a line cut by a
            kill) or ``"not a JSON object"``.
    """

    number: int
    text: str
    value: dict | None
    error: str | None

    def where(self, path: object) -> str:
        """``"<path> line <n>"``, for one-line messages."""
        return f"{path} line {self.number}"


class _NonFinite(ValueError):
    """A ``NaN`` / ``Infinity`` token: not JSON (RFC 8259), and never in a camcli record."""


def _no_constant(token: str):
    raise _NonFinite(f"non-finite number {token} (not valid JSON)")


def iter_jsonl(source: str | os.PathLike | IO[str], *, bom: bool = False) -> Iterator[JsonLine]:
    """The one reader of camcli's JSON Lines files (records, manifests, shard parts).

    Every non-blank line comes back as a :class:`JsonLine`; a line that is not a JSON object
    (or holds a ``NaN`` / ``Infinity`` token, which JSON does not have) is returned with
    ``error`` set, never dropped silently and never raised here. The one policy
    for bad lines, applied by the callers: a file being resumed (manifest, partial records)
    skips them, so that image is done again; a file being read as input (``merge`` parts,
    ``eval --boxes``) fails naming the file and line (or reports the line and goes on where the
    command documents that).

    Args:
        source: a path, ``"-"`` for standard input, or an open text file.
        bom: accept (and drop) a UTF-8 byte-order mark, for files made by other tools.

    Raises:
        OSError: the file cannot be opened or read.
    """
    if isinstance(source, (str, os.PathLike)) and str(source) == "-":
        fh: IO[str] = sys.stdin
        own = False
    elif isinstance(source, (str, os.PathLike)):
        enc = "utf-8-sig" if bom else "utf-8"
        fh = open(source, encoding=enc, errors="surrogateescape")  # noqa: SIM115
        own = True
    else:
        fh, own = source, False
    try:
        for n, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                value = json.loads(line, parse_constant=_no_constant)
            except _NonFinite as exc:
                yield JsonLine(n, line, None, str(exc))
                continue
            except ValueError as exc:
                msg = getattr(exc, "msg", None) or str(exc)
                yield JsonLine(n, line, None, f"not JSON ({msg})")
                continue
            if not isinstance(value, dict):
                yield JsonLine(n, line, None, "not a JSON object")
                continue
            yield JsonLine(n, line, value, None)
    finally:
        if own:
            fh.close()
