"""`camcli merge`: join the parts written by `--shard I/N` runs into the unsharded outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("merge")(merge)


def merge(
    targets: Annotated[
        list[Path],
        typer.Argument(
            help="What the shards were asked to write: a --output FILE (its parts "
            "FILE-stem.shard-I-of-N.suffix lie beside it) or a --out / --draw DIR (its "
            "manifest.shard-I-of-N.jsonl files).",
            show_default=False,
        ),
    ],
    keep_parts: Annotated[
        bool, typer.Option("--keep-parts", help="Leave the shard parts in place.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr.")] = False,
) -> int:
    """Join shard outputs: records in the order of the unsharded run, byte for byte.

    All shards must have finished (rerun an interrupted one with --resume), and every part is
    checked (records, input counts, run json) before anything is written.

    Example: camcli merge boxes.jsonl cams/
    """
    from camcli.console import info, plural
    from camcli.errors import write_error
    from camcli.runs.merge import plan_jsonl, plan_outdir

    # every target checked whole before anything is written
    plans = [plan_outdir(t) if t.is_dir() else plan_jsonl(t) for t in targets]
    for t, plan in zip(targets, plans, strict=True):
        try:
            n = plan.write(keep_parts=keep_parts)
        except OSError as exc:
            raise write_error(exc, t, resumable=False) from None
        info(f"merge: {plural(n, 'record')} into {plan.path}", quiet)
    return 0
