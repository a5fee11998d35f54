"""`camcli eval`: classification and localization metrics against ground truth.

From ``bbox`` records or an ILSVRC / Kaggle submission: top-1/top-5 classification and
localization error (ILSVRC definition) and GT-known localization; from saved maps: BoxAcc curves,
MaxBoxAccV1/V2, the best tau and PxAP. A table on a terminal, one JSON object with ``--output``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camcli.cli.eval_table import print_metrics_table, warn_mismatches
from camcli.errors import CamcliError, Exit, UsageError

if TYPE_CHECKING:
    from collections.abc import Collection

    import numpy as np


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    ctx: typer.Context,
    gt: Annotated[
        str,
        typer.Option(
            "--gt",
            help="Ground truth: a folder of ILSVRC/VOC XML files, Kaggle LOC_val_solution.csv, "
            "a CSV path,label,xmin,ymin,xmax,ymax (a row per box) or JSON Lines.",
            show_default=False,
        ),
    ],
    boxes: Annotated[
        list[str] | None,
        typer.Option(
            "--boxes",
            help="JSON Lines records of `camcli bbox` (or `predict`), or -; repeat it to score "
            "several files together (the parts of a sharded run).",
        ),
    ] = None,
    maps: Annotated[
        str | None,
        typer.Option("--maps", help="Folder of maps saved by `camcli cam --save-maps` (*.npz)."),
    ] = None,
    submission: Annotated[
        str | None,
        typer.Option("--submission", help="An ILSVRC CLS-LOC or Kaggle localization file."),
    ] = None,
    submission_format: Annotated[
        str, typer.Option("--submission-format", help="auto, ilsvrc or kaggle.")
    ] = "auto",
    gt_format: Annotated[
        str, typer.Option("--gt-format", help="auto, xml, kaggle, csv or jsonl.")
    ] = "auto",
    synsets: Annotated[
        str | None,
        typer.Option(
            "--synsets",
            help="WNID mapping: devkit meta.mat or map_clsloc.txt, or Kaggle "
            "LOC_synset_mapping.txt (needed for WNID labels and submissions).",
        ),
    ] = None,
    categories: Annotated[
        str | None,
        typer.Option(
            "--categories", help="Class names, one per line in class-index order, or imagenet1k."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Registry model whose class names to use.")
    ] = None,
    masks: Annotated[
        str | None,
        typer.Option(
            "--masks", help="Folder of <name>.png masks (and <name>_ignore.png) for PxAP."
        ),
    ] = None,
    blacklist: Annotated[
        str | None,
        typer.Option(
            "--blacklist",
            help="Images left out of localization figures (devkit blacklist: image numbers, or "
            "names), one per line.",
        ),
    ] = None,
    iou: Annotated[
        float, typer.Option("--iou", min=0.0, max=1.0, help="IoU for a correct box.")
    ] = 0.5,
    taus: Annotated[
        str, typer.Option("--taus", help="Map thresholds START:STOP:STEP (stop excluded) or a,b,c.")
    ] = "0:1:0.01",
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-t",
            min=0.0,
            max=1.0,
            help="tau of GT-known localization from --maps (bbox's paper box at this tau).",
        ),
    ] = 0.2,
    subset: Annotated[
        bool,
        typer.Option(
            "--subset",
            help="Score only the GT images that have a prediction (the others are still "
            "counted and listed as missing).",
        ),
    ] = False,
    wsol_boxes: Annotated[
        bool,
        typer.Option(
            "--wsol-boxes/--tight-boxes",
            help="MaxBoxAcc boxes as wsolevaluation draws them (x+w, y+h, clipped), or tight.",
        ),
    ] = True,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the metrics as one JSON object to FILE, or - for stdout. Without it: a "
            "table on a terminal, JSON otherwise.",
        ),
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot",
            help="Draw BoxAcc against tau into FILE, as PNG whatever its name; a FIFO or "
            "/dev/stdout works (--maps).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Processes scoring maps (default: cores, max 8)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or progress.")] = False,
) -> int:
    """Score predictions against ground truth.

    Example: camcli eval --gt val_xml/ --boxes boxes.jsonl --synsets LOC_synset_mapping.txt
    --blacklist ILSVRC2015_clsloc_validation_blacklist.txt
    """
    from camcli.cli.run import check_targets
    from camcli.evaluate.groundtruth import read_ground_truth
    from camcli.evaluate.labels import load_label_map
    from camcli.evaluate.mapjobs import default_map_workers
    from camcli.evaluate.report import eval_result

    check_targets(output, plot)  # a folder, block device or socket: now, not after the work
    _check_source(boxes, maps, submission, plot, submission_format)
    _check_plot_target(plot, output)
    _refuse_unused(ctx, maps=maps, submission=submission, categories=categories)
    tau_grid = _tau_grid(taus)
    _check_inputs(boxes, submission, blacklist, masks)
    truth = read_ground_truth(gt, gt_format)
    labels = load_label_map(synsets=synsets, categories=categories, model=model)
    bar = None
    if maps is not None:
        from camcli.cli.run import progress_bar

        bar = progress_bar(len(truth), quiet, "eval")
    try:
        result = eval_result(
            truth,
            labels,
            boxes=boxes,
            maps=maps,
            submission=submission,
            submission_format=submission_format,
            masks=masks,
            blacklist=blacklist,
            iou=iou,
            taus=tau_grid,
            subset=subset,
            wsol_boxes=wsol_boxes,
            workers=default_map_workers() if workers is None else workers,
            progress=(lambda: bar.advance(bar.task)) if bar else None,
            threshold=threshold,
        )
    finally:
        if bar:
            bar.stop()
    return report(result, output=output, plot=plot, quiet=quiet, gt=gt)


def _check_source(
    boxes: list[str] | None,
    maps: str | None,
    submission: str | None,
    plot: str | None,
    submission_format: str,
) -> None:
    """Exactly one prediction source; --plot only with --maps, to a file (not ``-``); a known
    submission format."""
    from camcli.evaluate.report import SOURCE_KEYS

    given = [k for k, v in zip(SOURCE_KEYS, (boxes, maps, submission)) if v is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --boxes, --maps or --submission")
    if plot is not None and maps is None:
        raise UsageError("--plot draws BoxAcc curves, which need --maps")
    if plot == "-":
        raise UsageError("--plot -: give a file name (/dev/stdout writes the PNG to stdout)")
    if submission_format not in ("auto", "ilsvrc", "kaggle"):
        raise UsageError(f"--submission-format {submission_format!r}: use auto, ilsvrc or kaggle")


_STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def _check_plot_target(plot: str | None, output: str | None) -> None:
    """The PNG of --plot never shares a file with the metrics: not stdout when they go there
    (no ``--output``, or ``--output -``), not the ``--output`` file."""
    if plot is None:
        return
    if output in (None, "-"):
        if _is_stdout(plot):
            raise UsageError(
                f"--plot {plot}: that is stdout, where the metrics go too: give the plot "
                "another file, or the metrics a file with --output"
            )
    elif _same_file(plot, output) or (
        os.path.abspath(plot) == os.path.abspath(output) and not os.path.exists(plot)
    ):
        raise UsageError(f"--plot {plot} and --output {output} name the same file: give two")


def _is_stdout(path: str) -> bool:
    """Whether ``path`` names this process's stdout: by name, or the same file as fd 1
    (``/dev/null`` aside: writing both there loses nothing)."""
    if os.path.normpath(path) in _STDOUT_NAMES:
        return True
    try:
        st, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino) and not _is_devnull(path)


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one existing file other than ``/dev/null``."""
    try:
        return os.path.samefile(a, b) and not _is_devnull(a)
    except (OSError, ValueError):
        return False


def _is_devnull(path: str) -> bool:
    try:
        return os.path.samefile(path, os.devnull)
    except (OSError, ValueError):
        return False


def _refuse_unused(
    ctx: typer.Context | None, *, maps: str | None, submission: str | None, categories: str | None
) -> None:
    """Options that would do nothing in this run are a usage error (exit 2), not ignored."""
    from camcli.cli.options import refuse_unused

    if maps is None:
        refuse_unused(
            ctx,
            ("taus", "wsol_boxes", "masks", "workers"),
            "without --maps (they set how saved maps are scored)",
        )
    else:
        refuse_unused(ctx, ("iou",), "with --maps (MaxBoxAcc uses its own IoU 0.5 / 0.3, 0.5, 0.7)")
    if submission is None:
        refuse_unused(ctx, ("submission_format",), "without --submission")
    if categories is not None:
        refuse_unused(ctx, ("model",), "with --categories (the class names come from --categories)")


def _tau_grid(taus: str) -> np.ndarray:
    """The --taus grid; a malformed one is a usage error."""
    from camcli.evaluate.taus import parse_taus

    try:
        return parse_taus(taus)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_inputs(
    boxes: list[str] | None, submission: str | None, blacklist: str | None, masks: str | None
) -> None:
    """Stdin read at most once; every input file and the --masks folder exist (exit 3)."""
    if boxes is not None and boxes.count("-") > 1:
        raise UsageError("--boxes - (records on stdin) may be given once")
    for flag, path in (
        *(("--boxes", b) for b in boxes or ()),
        ("--submission", submission),
        ("--blacklist", blacklist),
    ):
        if path not in (None, "-") and not Path(path).is_file():
            raise CamcliError(f"{flag} {path}: no such file", Exit.NO_INPUT)
    if masks is not None and not Path(masks).is_dir():
        raise CamcliError(f"--masks {masks}: not a folder", Exit.NO_INPUT)


def report(
    result: dict,
    *,
    output: str | None = None,
    plot: str | None = None,
    quiet: bool = False,
    gt: str = "",
    table_on_stderr: bool = False,
) -> int:
    """Warnings, table / JSON and plot for an evaluation result; returns the exit code
    (0; 1 when images are missing or failed; raises exit 3 when nothing matched).

    ``output``: a file for the JSON object, ``-`` for stdout, None for a table on a terminal
    (JSON otherwise). ``bbox --gt`` calls it with ``table_on_stderr=True``: its stdout carries
    records, so the table goes to stderr and JSON only to an ``output`` file.
    """
    from camcli.data.records import dumps
    from camcli.evaluate.report import check_matched, exit_status

    check_matched(result, gt)
    if not quiet:
        warn_mismatches(result)
    if plot is not None:
        from camcli.evaluate.plot import boxacc_png

        _write_file(Path(plot), boxacc_png(result))
    text = dumps(result) + "\n"
    if table_on_stderr:
        if output not in (None, "-"):
            _write_file(Path(output), text.encode("utf-8"))
        if not quiet:
            print_metrics_table(result, stderr=True)
    elif output == "-" or (output is None and not sys.stdout.isatty()):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        if output is not None:
            _write_file(Path(output), text.encode("utf-8"))
        if sys.stdout.isatty() or output is None:
            print_metrics_table(result)
    return exit_status(result)


def _write_file(path: Path, data: bytes) -> None:
    """Write ``path`` atomically; a failure is a one-line write error naming it (exit 5)."""
    from camcli.atomic import write_atomic
    from camcli.errors import write_error

    try:
        write_atomic(path, data, stream_ok=True)
    except OSError as exc:
        raise write_error(exc, path, resumable=False) from None


def report_for_records(
    records: list[dict],
    gt: str | Path,
    synsets: str | Path | None = None,
    *,
    categories: str | None = None,
    iou: float = 0.5,
    blacklist: str | None = None,
    output: str | None = None,
    quiet: bool = False,
    warned: Collection[str] = (),
) -> dict | None:
    """What ``camcli bbox --gt GT`` runs at the end: score the run's records against ``gt`` and
    print warnings and the table on stderr (stdout carries the records); JSON to ``output`` when
    it is a file. Never ends the bbox run: a problem with the ground truth becomes a warning.
    ``warned``: GT labels bbox warned about before the run (not the model's classes), left out
    of the "labels no prediction uses" line (which is left out when no other label is in it).
    Returns the result, or None when it could not be computed."""
    from camcli.console import warn
    from camcli.evaluate.report import records_result

    try:
        result = records_result(
            records, gt, synsets, categories=categories, iou=iou, blacklist=blacklist
        )
        shown = result
        if warned and result.get("unknown_labels"):
            said = set(warned)
            rest = [x for x in result["unknown_labels"] if x not in said]
            shown = {**result, "unknown_labels": rest}
        report(shown, output=output, quiet=quiet, gt=str(gt), table_on_stderr=True)
    except CamcliError as exc:
        warn(f"--gt {gt}: no metrics ({exc})")
        return None
    return result
