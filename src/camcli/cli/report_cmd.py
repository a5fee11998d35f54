"""`camcli report`: a browsable static HTML page of a run (cam folder, bbox records, eval JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from camcli.cli.options import Quiet


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    ctx: typer.Context,
    runs: Annotated[
        list[str],
        typer.Argument(
            help="A `camcli cam --out` folder, `bbox`/`predict` records (JSON Lines), an "
            "`eval --output` JSON; any combination (records of the same image are joined).",
            metavar="RUN",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder: index.html and thumbs/.")
    ] = Path("report"),
    gt: Annotated[
        str | None,
        typer.Option(
            "--gt",
            help="Ground truth (the formats of `eval --gt`): GT boxes, IoU, wrong-class and "
            "box-missed flags.",
        ),
    ] = None,
    gt_format: Annotated[
        str, typer.Option("--gt-format", help="auto, xml, kaggle, csv or jsonl.")
    ] = "auto",
    synsets: Annotated[
        str | None, typer.Option("--synsets", help="Synsets file for WNID labels in --gt.")
    ] = None,
    iou: Annotated[
        float,
        typer.Option(
            "--iou",
            min=0.0,
            max=1.0,
            help='IoU below which a top-1 box is missed (with --gt or records\' own "gt").',
        ),
    ] = 0.5,
    thumb_size: Annotated[
        int, typer.Option("--thumb-size", min=16, max=1024, help="Thumbnail size, pixels.")
    ] = 160,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Threads making thumbnails.")
    ] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    quiet: Quiet = False,
) -> int:
    """Write a self-contained HTML page of a run: thumbnails, top-k classes, overlays, boxes,
    IoU; sortable, filterable, paginated; run and eval summary. No server, nothing fetched.

    Thumbnails already made by an earlier report into the same folder are reused.

    Example: camcli report cams/ boxes.jsonl metrics.json --gt val.csv --out report/
    """
    import os

    from camcli.atomic import LinkError
    from camcli.cli.options import given, refuse_unused
    from camcli.cli.run import check_folders
    from camcli.console import info, plural, warn
    from camcli.errors import write_error

    check_folders(out)  # a file (or under one): now, not after the thumbnails
    if gt is None:
        refuse_unused(ctx, ("gt_format", "synsets"), "without --gt")
    from camcli.api.report_html import write_report

    try:
        res = write_report(
            runs,
            out,
            gt=gt,
            gt_format=gt_format,
            synsets=synsets,
            iou=iou if given(ctx, ("iou",)) else None,
            thumb_size=thumb_size,
            workers=workers,
            title=title,
            progress=_ThumbProgress(quiet),
            warn=None if quiet else warn,
        )
    except LinkError as exc:  # a link planted in the report folder: nothing written through it
        raise write_error(exc, out, resumable=False) from None
    except OSError as exc:
        # below --out, links not followed (a link there is no reason to blame an input)
        where = os.path.abspath(exc.filename) if exc.filename else None
        if where and Path(where).is_relative_to(os.path.abspath(out)):
            raise write_error(exc, exc.filename, resumable=False) from None
        raise
    if res.thumbs_failed and not quiet:
        n = plural(res.thumbs_failed, "image or overlay", "images or overlays")
        warn(f"{n} could not be read (shown without thumbnail)")
    info(
        f"report: {plural(res.rows, 'image')} ({res.failed} failed), thumbnails "
        f"{res.thumbs_made} made, "
        f"{res.thumbs_reused} reused; open {res.index}",
        quiet,
    )
    return 0


class _ThumbProgress:
    """A bar over the thumbnails to make (:class:`camcli.api.progress.Progress`)."""

    def __init__(self, quiet: bool) -> None:
        from camcli.cli.run import CliProgress

        self.bar = CliProgress("report: thumbnails", quiet)

    def start(self, todo, resumed, selected) -> None:
        self.bar.start(todo, resumed, selected)

    def record(self, rec: dict, *, on_stdout: bool = False) -> None:
        self.bar.record({"image": rec.get("image", "")}, on_stdout=True)

    def stop(self) -> None:
        self.bar.stop()
