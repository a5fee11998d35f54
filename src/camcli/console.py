"""The one output sink for people: rich messages and tables on stderr, tables on stdout.

Data (JSON Lines records) goes through :mod:`camcli.data.records`; everything a person reads
goes through here, so ``NO_COLOR``, escaping of markup and undecodable file names are handled
once. torch-free.
"""

from __future__ import annotations

import os
from functools import cache


def plural(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the words for that many: ``plural(1, "image")`` is ``1 image``, ``plural(2,
    "image")`` ``2 images``; ``many`` (default ``one + "s"``) for any count but 1."""
    return f"{n} {one if n == 1 else (one + 's' if many is None else many)}"


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
def stdout_console(width: int | None = None):
    """The console of stdout; ``width`` columns when given (else the terminal's, or 80 when
    stdout is no terminal and ``COLUMNS`` is unset)."""
    from rich.console import Console

    return Console(no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False, width=width)


# Characters a terminal acts on rather than shows: C0 controls (ESC starts escape sequences,
# BEL, CR, backspace ...), DEL, C1 controls (CSI 0x9b, OSC 0x9d, NEL 0x85), the Unicode line and
# paragraph separators and the bidirectional overrides/isolates that reorder what is shown.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_CONTROLS = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *map(ord, _BIDI))
_ESCAPE_LINE = {c: f"\\u{c:04x}" for c in _CONTROLS}
_ESCAPE_BLOCK = {c: v for c, v in _ESCAPE_LINE.items() if c not in (0x09, 0x0A)}


def shown(text: object, *, one_line: bool = True) -> str:
    """Text that is safe to print for people, as JSON records write it: control characters
    (C0 incl. ESC/BEL/CR, DEL, C1, line separators, bidi overrides) appear as ``\\u001b`` etc.,
    undecodable bytes of file names (surrogate escapes) as ``\\udcXX``.

    ``one_line`` escapes newlines and tabs too (a table cell, an error line); False keeps them
    (a multi-line report camcli wrote itself).
    """
    s = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return s.translate(_ESCAPE_LINE if one_line else _ESCAPE_BLOCK)


def _escape(text: object) -> str:
    """One line shown literally inside rich markup (paths may hold ``[...]``)."""
    from rich.markup import escape

    return escape(shown(text))


def cell(text: object) -> str:
    """A table cell: one line, control characters escaped, markup shown literally."""
    return _escape(text)


def error(message: str) -> None:
    """One line on stderr."""
    stderr_console().print(f"[bold red]error:[/] {_escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    """One line on stderr."""
    stderr_console().print(f"[yellow]warning:[/] {_escape(message)}", markup=True, highlight=False)


def info(message: str, quiet: bool = False, *, multiline: bool = False) -> None:
    """A line on stderr (``multiline``: a report camcli composed, its line breaks kept)."""
    if not quiet:
        text = shown(message, one_line=not multiline)
        stderr_console().print(text, markup=False, highlight=False)


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
