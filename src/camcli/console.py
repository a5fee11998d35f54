"""The one output sink for people: rich messages and tables on stderr, tables on stdout.

Data (JSON Lines records) goes through :mod:`camcli.data.records`; everything a person reads
goes through here, so ``NO_COLOR``, escaping of markup and undecodable file names are handled
once. torch-free.
"""

from __future__ import annotations

import os
from functools import cache


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
