"""The one sink: JSON Lines on stdout or a file, rich tables and messages on stderr."""

from __future__ import annotations

import json
import os
import sys
from enum import IntEnum
from functools import cache
from pathlib import Path
from typing import IO


class Exit(IntEnum):
    """Exit codes (public API, documented in the README)."""

    OK = 0
    SOME_FAILED = 1
    USAGE = 2
    NO_INPUT = 3
    WEIGHTS = 4
    WRITE = 5  # an output could not be written (disk full, permissions); rerun with --resume
    INTERRUPTED = 130


class CamcliError(Exception):
    """An error ending the run with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = Exit.USAGE) -> None:
        super().__init__(message)
        self.code = int(code)


def write_error(exc: OSError, where: object, *, resumable: bool = True) -> CamcliError:
    """The one-line error (exit 5) of an output that could not be written."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = "free space or fix permissions, then rerun"
    return CamcliError(
        f"cannot write to {where}: {reason}; {fix}" + (" with --resume" if resumable else ""),
        Exit.WRITE,
    )


@cache
def stderr_console():
    from rich.console import Console

    return Console(
        stderr=True,
        no_color=bool(os.environ.get("NO_COLOR")) or None,
        highlight=False,
        soft_wrap=True,
    )


@cache
def stdout_console():
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def shown(text: object) -> str:
    """Text that any stream can print: undecodable bytes of file names (surrogate escapes)
    appear as ``\\udcXX``, as in JSON records."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _escape(text: object) -> str:
    """Text shown literally inside rich markup (paths may hold ``[...]``)."""
    from rich.markup import escape

    return escape(shown(text))


def error(message: str) -> None:
    """One line on stderr."""
    stderr_console().print(f"[bold red]error:[/] {_escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/] {_escape(message)}", markup=True, highlight=False)


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        stderr_console().print(shown(message), markup=False, highlight=False)


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


def print_predictions_table(records: list[dict], title: str = "predictions") -> None:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    table.add_column("image", overflow="fold")
    table.add_column("size")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("score", justify="right")
    for r in records:
        if "error" in r:
            table.add_row(_escape(r["image"]), "", "", f"[red]error: {_escape(r['error'])}[/]", "")
            continue
        for j, p in enumerate(r["predictions"]):
            table.add_row(
                _escape(r["image"]) if j == 0 else "",
                f"{r['width']}x{r['height']}" if j == 0 else "",
                str(j + 1),
                f"{_escape(p['label'])} ({p['class_index']})",
                f"{p['score']:.4f}",
            )
    stdout_console().print(table)
