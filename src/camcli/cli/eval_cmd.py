"""`camcli eval`: classification and localization metrics against ground truth.

From ``bbox`` records or an ILSVRC / Kaggle submission: top-1/top-5 classification and
localization error (ILSVRC definition) and GT-known localization; from saved maps: BoxAcc curves,
MaxBoxAccV1/V2, the best tau and PxAP. A table on a terminal, one JSON object with ``--output``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from camcli.errors import CamcliError, Exit

SOURCE_KEYS = ("boxes", "maps", "submission")

# (key, label, is a fraction) in table order
_ROWS = (
    ("top1_cls_error", "top-1 classification error", True),
    ("top5_cls_error", "top-5 classification error", True),
    ("top1_loc_error", "top-1 localization error", True),
    ("top5_loc_error", "top-5 localization error", True),
    ("gt_known_loc", "GT-known localization", True),
    ("maxboxacc_v1", "MaxBoxAccV1 (IoU 0.5, largest box)", True),
    ("best_tau", "best tau (V1)", False),
    ("maxboxacc_v2", "MaxBoxAccV2 (IoU 0.3/0.5/0.7, all boxes)", True),
    ("pxap", "PxAP", True),
    ("n_images", "images", False),
    ("n_loc_images", "images scored for localization", False),
    ("n_blacklisted", "blacklisted (localization only)", False),
    ("n_missing", "missing", False),
    ("n_failed", "failed (counted wrong)", False),
    ("n_unreadable", "unreadable records / GT files (skipped)", False),
    ("n_missing_gt_class", "no map of the GT class (counted wrong)", False),
    ("n_unmatched", "predictions matching no GT image", False),
)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
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
        str | None, typer.Option("--plot", help="Draw BoxAcc against tau into FILE.png (--maps).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Processes scoring maps [default: cores, max 8]."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No warnings or progress.")] = False,
) -> int:
    """Score predictions against ground truth.

    Example: camcli eval --gt val_xml/ --boxes boxes.jsonl --synsets LOC_synset_mapping.txt
    --blacklist ILSVRC2015_clsloc_validation_blacklist.txt
    """
    from camcli.evaluate.groundtruth import read_ground_truth
    from camcli.evaluate.labels import load_label_map
    from camcli.evaluate.mapjobs import default_map_workers
    from camcli.evaluate.maps import evaluate_maps
    from camcli.evaluate.matching import order_result
    from camcli.evaluate.predictions import read_box_records
    from camcli.evaluate.scoring import evaluate_records, evaluate_submission
    from camcli.evaluate.taus import parse_taus

    given = [k for k, v in zip(SOURCE_KEYS, (boxes, maps, submission)) if v is not None]
    if len(given) != 1:
        raise CamcliError("give exactly one of --boxes, --maps or --submission")
    if plot is not None and maps is None:
        raise CamcliError("--plot draws BoxAcc curves, which need --maps")
    if plot is not None and Path(plot).suffix.lower() != ".png":
        raise CamcliError(f"--plot {plot}: give a .png file name")
    if submission_format not in ("auto", "ilsvrc", "kaggle"):
        raise CamcliError(f"--submission-format {submission_format!r}: use auto, ilsvrc or kaggle")
    try:
        tau_grid = parse_taus(taus)
    except ValueError as exc:
        raise CamcliError(str(exc)) from None
    if boxes is not None and boxes.count("-") > 1:
        raise CamcliError("--boxes - (records on stdin) may be given once")
    for flag, path in (
        *(("--boxes", b) for b in boxes or ()),
        ("--submission", submission),
        ("--blacklist", blacklist),
    ):
        if path not in (None, "-") and not Path(path).is_file():
            raise CamcliError(f"{flag} {path}: no such file", Exit.NO_INPUT)
    if masks is not None and not Path(masks).is_dir():
        raise CamcliError(f"--masks {masks}: not a folder", Exit.NO_INPUT)

    truth = read_ground_truth(gt, gt_format)
    labels = load_label_map(synsets=synsets, categories=categories, model=model)
    unreadable = list(truth.skipped)
    if boxes is not None:
        recs = [r for b in boxes for r in read_box_records(b, bad=unreadable)]
        if not recs:
            raise CamcliError(
                f"--boxes {' '.join(boxes)}: no readable record"
                + (f" ({unreadable[-1]})" if unreadable else ""),
                Exit.NO_INPUT,
            )
        result = evaluate_records(
            recs,
            truth,
            labels,
            iou=iou,
            blacklist=blacklist,
            subset=subset,
        )
    elif submission is not None:
        result = evaluate_submission(
            submission,
            truth,
            labels,
            fmt=submission_format,
            iou=iou,
            blacklist=blacklist,
            subset=subset,
        )
    else:
        from camcli.cli.run import progress_bar

        bar = progress_bar(len(truth), quiet, "eval")
        try:
            result = evaluate_maps(
                maps,
                truth,
                labels,
                taus=tau_grid,
                masks_dir=masks,
                blacklist=blacklist,
                subset=subset,
                wsol_boxes=wsol_boxes,
                workers=default_map_workers() if workers is None else workers,
                progress=(lambda: bar.advance(bar.task)) if bar else None,
            )
        finally:
            if bar:
                bar.stop()
    if unreadable:
        result["unreadable"] = unreadable
        result["n_unreadable"] = len(unreadable)
    result = order_result({"source": given[0], **result})
    return report(result, output=output, plot=plot, quiet=quiet, gt=gt)


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
    from camcli.atomic import write_atomic
    from camcli.data.records import dumps

    if len(result.get("missing", [])) >= result.get("n_gt_images", result["n_images"]):
        first = result.get("unmatched", [])[:1]
        hint = f" (first prediction: {first[0]!r})" if first else ""
        raise CamcliError(
            f"no prediction matches an image of the ground truth {gt}{hint}: images are matched "
            "by file name without extension",
            Exit.NO_INPUT,
        )
    if not quiet:
        warn_mismatches(result)
    if plot is not None:
        import io as _io

        buf = _io.BytesIO()
        boxacc_plot(result).save(buf, format="PNG")
        write_atomic(Path(plot), buf.getvalue())
    text = dumps(result) + "\n"
    if table_on_stderr:
        if output not in (None, "-"):
            write_atomic(Path(output), text.encode("utf-8"))
        if not quiet:
            print_metrics_table(result, stderr=True)
    elif output == "-" or (output is None and not sys.stdout.isatty()):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        if output is not None:
            write_atomic(Path(output), text.encode("utf-8"))
        if sys.stdout.isatty() or output is None:
            print_metrics_table(result)
    subset = result.get("n_images", 0) < result.get("n_gt_images", 0)
    bad = (
        result.get("n_failed", 0)
        or (result.get("n_missing", 0) and not subset)
        or result.get("n_unreadable", 0)
    )
    return Exit.SOME_FAILED if bad else Exit.OK


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
) -> dict | None:
    """What ``camcli bbox --gt GT`` runs at the end: score the run's records against ``gt`` and
    print warnings and the table on stderr (stdout carries the records); JSON to ``output`` when
    it is a file. Never ends the bbox run: a problem with the ground truth becomes a warning.
    Returns the result, or None when it could not be computed."""
    from camcli.console import warn
    from camcli.evaluate.groundtruth import read_ground_truth
    from camcli.evaluate.labels import load_label_map
    from camcli.evaluate.matching import order_result
    from camcli.evaluate.scoring import evaluate_records

    try:
        truth = read_ground_truth(str(gt))
        labels = load_label_map(synsets=str(synsets) if synsets else None, categories=categories)
        result = evaluate_records(records, truth, labels, iou=iou, blacklist=blacklist)
        result = order_result({"source": "boxes", **result})
        report(result, output=output, quiet=quiet, gt=str(gt), table_on_stderr=True)
    except CamcliError as exc:
        warn(f"--gt {gt}: no metrics ({exc})")
        return None
    return result


def _names(xs: list, n: int = 5) -> str:
    shown = ", ".join(
        f"{x.get('image')} ({x.get('error')})" if isinstance(x, dict) else str(x) for x in xs[:n]
    )
    return shown + (f", ... ({len(xs) - n} more)" if len(xs) > n else "")


def warn_mismatches(result: dict) -> None:
    """One warning line per kind of image that was not scored as predicted."""
    from camcli.console import warn

    for why in result.get("unreadable") or []:
        warn(f"{why} (skipped)")
    miss = result.get("missing") or []
    if miss:
        subset = result.get("n_images", 0) < result.get("n_gt_images", 0)
        counted = "left out by --subset" if subset else "counted wrong"
        warn(f"{len(miss)} ground-truth images have no prediction ({counted}): {_names(miss)}")
    if result.get("unmatched"):
        warn(
            f"{len(result['unmatched'])} predictions match no ground-truth image (ignored): "
            f"{_names(result['unmatched'])}"
        )
    if result.get("failed"):
        warn(
            f"{len(result['failed'])} predictions are errors (counted wrong): "
            f"{_names(result['failed'])}"
        )
    if result.get("n_duplicates"):
        warn(f"{result['n_duplicates']} predictions repeat an image already scored (ignored)")
    if result.get("missing_gt_class"):
        warn(
            f"{len(result['missing_gt_class'])} map files hold no map of the image's GT class "
            f"(counted wrong; save maps with the GT class): {_names(result['missing_gt_class'])}"
        )
    if result.get("n_renormalised"):
        warn(f"{result['n_renormalised']} maps were outside [0, 1] and were min-max normalised")
    if result.get("unknown_labels"):
        warn(
            f"ground-truth labels no prediction uses (counted wrong): "
            f"{_names(result['unknown_labels'])}; pass --synsets or --categories to check them"
        )
    if result.get("n_missing_gt_known"):
        warn(
            f"{result['n_missing_gt_known']} records carry no GT-known box for the GT class "
            "(counted wrong in gt_known_loc)"
        )
    if result.get("pxap_error"):
        warn(result["pxap_error"])


def print_metrics_table(result: dict, title: str = "evaluation", *, stderr: bool = False) -> None:
    """The headline figures (percentages) and counts as a rich table on stdout (or stderr)."""
    from rich.table import Table

    from camcli.console import stderr_console, stdout_console

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    subset = result.get("n_images", 0) < result.get("n_gt_images", 0)
    for key, label, frac in _ROWS:
        if key not in result:
            continue
        v = result[key]
        if key == "n_missing":
            label += " (left out, --subset)" if subset else " (counted wrong)"
        if frac:
            table.add_row(label, f"{100 * v:.2f} %")
        else:
            table.add_row(label, f"{v:g}" if isinstance(v, float) else str(v))
        if key == "maxboxacc_v2":
            for d, acc in (result.get("maxboxacc_v2_by_iou") or {}).items():
                tau = (result.get("best_tau_v2") or {}).get(d, float("nan"))
                table.add_row(f"  IoU {d}: MaxBoxAcc (best tau {tau:g})", f"{100 * acc:.2f} %")
    (stderr_console() if stderr else stdout_console()).print(table)


# --------------------------------------------------------------------------------------------
# The BoxAcc plot, drawn with PIL
# --------------------------------------------------------------------------------------------

_COLORS = {"v1": (0, 0, 0), "0.3": (31, 119, 180), "0.5": (214, 39, 40), "0.7": (44, 160, 44)}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def boxacc_plot(result: dict, size: tuple[int, int] = (900, 560)):
    """A PIL image of BoxAcc (%) against tau: V1 (largest box, IoU 0.5) and V2 per IoU, with
    each curve's best tau marked. ``result`` needs ``taus`` and ``boxacc``."""
    from PIL import Image, ImageDraw

    if not result.get("taus") or not result.get("boxacc"):
        raise CamcliError("--plot: no BoxAcc curves to draw (no image was scored on a map)")
    taus = list(result["taus"])
    curves = [("v1", "V1: largest box, IoU 0.5", result["boxacc"]["v1"])]
    for d, c in result["boxacc"]["v2"].items():
        curves.append((d, f"V2: all boxes, IoU {d}", c))
    w, h = size
    left, right, top, bottom = 80, 250, 50, 70
    pw, ph = w - left - right, h - top - bottom
    img = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(img)
    f_small, f_mid = _font(13), _font(16)
    x_lo, x_hi = 0.0, 1.0

    def px(t: float, v: float) -> tuple[float, float]:
        return left + (t - x_lo) / (x_hi - x_lo) * pw, top + (1.0 - v) * ph

    for k in range(11):
        gx, gy = left + k * pw / 10, top + k * ph / 10
        dr.line([(gx, top), (gx, top + ph)], fill=(225, 225, 225))
        dr.line([(left, gy), (left + pw, gy)], fill=(225, 225, 225))
        dr.text((gx, top + ph + 8), f"{k / 10:.1f}", fill="black", font=f_small, anchor="mt")
        dr.text((left - 8, gy), f"{100 - 10 * k}", fill="black", font=f_small, anchor="rm")
    dr.rectangle([left, top, left + pw, top + ph], outline="black")
    dr.text((left + pw / 2, h - 22), "tau (map threshold)", fill="black", font=f_mid, anchor="mm")
    ylab = Image.new("RGB", (200, 24), "white")
    ImageDraw.Draw(ylab).text((100, 12), "BoxAcc (%)", fill="black", font=f_mid, anchor="mm")
    img.paste(ylab.rotate(90, expand=True), (12, top + ph // 2 - 100))
    title = f"BoxAcc vs tau: MaxBoxAccV1 {100 * result.get('maxboxacc_v1', 0):.2f} %"
    if "maxboxacc_v2" in result:
        title += f", MaxBoxAccV2 {100 * result['maxboxacc_v2']:.2f} %"
    dr.text((left + pw / 2, 22), title, fill="black", font=f_mid, anchor="mm")
    for n, (key, label, ys) in enumerate(curves):
        color = _COLORS.get(key, (120, 120, 120))
        pts = [px(t, v) for t, v in zip(taus, ys)]
        if len(pts) > 1:
            dr.line(pts, fill=color, width=3 if key == "v1" else 2)
        if ys:
            b = max(range(len(ys)), key=lambda i: (ys[i], -i))
            bx, by = pts[b]
            dr.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline=color, width=2)
        ly = top + 10 + 26 * n
        dr.line([(left + pw + 15, ly), (left + pw + 45, ly)], fill=color, width=3)
        best = f" ({100 * max(ys):.1f} %)" if ys else ""
        dr.text((left + pw + 52, ly), label + best, fill="black", font=f_small, anchor="lm")
    if "best_tau" in result:
        bx, _ = px(result["best_tau"], 0)
        for y in range(top, top + ph, 8):
            dr.line([(bx, y), (bx, min(y + 4, top + ph))], fill=(90, 90, 90))
        dr.text(
            (bx + 4, top + 4),
            f"best tau {result['best_tau']:g}",
            fill=(90, 90, 90),
            font=f_small,
            anchor="la",
        )
    return img
