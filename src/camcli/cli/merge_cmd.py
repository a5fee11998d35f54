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

    All shards must have finished (rerun an interrupted one with --resume), else nothing is written.

    Example: camcli merge boxes.jsonl cams/
    """
    from camcli.console import info
    from camcli.errors import write_error
    from camcli.runs.merge import merge_jsonl, merge_outdir

    for t in targets:
        try:
            n = (
                merge_outdir(t, keep_parts=keep_parts)
                if t.is_dir()
                else merge_jsonl(t, keep_parts=keep_parts)
            )
        except OSError as exc:
            raise write_error(exc, t, resumable=False) from None
        info(f"merge: {n} records into {t / 'manifest.jsonl' if t.is_dir() else t}", quiet)
    return 0
