"""Plumbing shared by the commands: inputs, session, record streaming, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from camcli.output import CamcliError, Exit, JsonlWriter, info, print_predictions_table


def resolve_inputs(inputs: list[str]):
    from camcli import io

    if inputs.count("-") > 1:
        raise CamcliError("'-' (paths on stdin) may be given once")
    items = io.discover(inputs)
    if not items:
        raise CamcliError(
            f"no images found in {' '.join(inputs)}: give image files, folders holding "
            f"{', '.join(sorted(io.IMAGE_EXTENSIONS))} files, or - with paths on stdin",
            Exit.NO_INPUT,
        )
    return items


def open_session(model, weights, **kw):
    from camcli.api import Session

    return Session.open(model, weights, **kw)


def progress_bar(total: int, quiet: bool, what: str):
    """A rich progress bar on a terminal's stderr; None otherwise."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from camcli.output import stderr_console

    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    p.start()
    p.task = p.add_task(what, total=total)  # type: ignore[attr-defined]
    return p


def stream_records(
    records: Iterable[dict],
    session,
    items,
    *,
    output: str | None,
    table: bool,
    quiet: bool,
    what: str,
) -> int:
    from camcli import api

    bar = progress_bar(len(items), quiet, what)
    collected: list[dict] = []
    writer = None if table else JsonlWriter(output)
    try:
        for rec in records:
            if table:
                collected.append(rec)
            else:
                writer.write(rec)
            if "error" in rec and not quiet and (table or output not in (None, "-")):
                info(f"{rec['image']}: {rec['error']}")
            if bar:
                bar.advance(bar.task)
    finally:
        if bar:
            bar.stop()
        if writer:
            writer.close()
    if table:
        print_predictions_table(collected)
    st = session.stats
    info(f"{what}: {st['ok']} done, {st['failed']} failed", quiet or not sys.stderr.isatty())
    return api.exit_code(st)
