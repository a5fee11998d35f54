"""``camcli report``: one self-contained static HTML page of a run.

Reads any combination of a ``cam`` output folder (``manifest.jsonl`` + overlays + ``run.json``),
``bbox`` / ``predict`` records (JSON Lines) and ``eval --output`` JSON files, optionally ground
truth (``--gt``, any format ``eval`` reads), and writes ``OUT/index.html`` plus
``OUT/thumbs/``: JPEG thumbnails (made once, reused by later reports of the same files) of each
image and each overlay. The page holds its rows as one JSON blob rendered by a small inline
script (sort, filter, pages, a viewer for the full-resolution files); it loads nothing from the
network. Full-resolution images are linked by their path relative to ``OUT``.

This module renders the page (Jinja2 template, SVG BoxAcc curve) and writes the folder
(:func:`write_report`); the rows come from :mod:`camcli.api.report_data` (pure, torch-free), the
thumbnails from :mod:`camcli.api.report_thumbs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from camcli import atomic
from camcli.api.report_data import IOU, ReportInputs, Row, build_rows, class_table, load_inputs
from camcli.api.report_thumbs import THUMB_SIZE, make_thumbnails
from camcli.atomic import write_atomic
from camcli.console import shown
from camcli.errors import CamcliError, Exit, NoInputError, UsageError, write_error
from camcli.runs.locks import BusyError, RunLock

if TYPE_CHECKING:  # torch-free at run time: camcli.api.progress imports the predict job
    from camcli.api.progress import Progress

__all__ = [
    "ReportResult",
    "boxacc_svg",
    "render_html",
    "write_report",
]

#: the lock file of a report folder (the one ``cam``/``bbox --draw`` take on their output folder)
LOCK = ".camcli.lock"


class _Links:
    """Paths as URLs relative to the report folder (percent-encoded bytes); the relative path
    of each folder is worked out once."""

    def __init__(self, out: Path) -> None:
        self.out = os.path.abspath(out)
        self.dirs: dict[str, str] = {}

    def __call__(self, path: str | os.PathLike) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        rel = self.dirs.get(folder)
        if rel is None:
            rel = os.path.relpath(folder, self.out).replace(os.sep, "/")
            self.dirs[folder] = rel = "" if rel == "." else rel + "/"
        return quote(os.fsencode(rel + name), safe="/")


# ---- page -------------------------------------------------------------------------------------


def boxacc_svg(result: dict, width: int = 420, height: int = 260) -> dict | None:
    """The BoxAcc-vs-tau curves of an eval result as SVG polylines.

    Args:
        result: an ``eval --maps`` result (``taus``, ``boxacc`` ``{"v1": [...], "v2":
            {"0.3": [...], ...}}``, one value per tau).

    Returns:
        ``{"width", "height", "pad", "curves": [{"name", "points"}...], "ticks"}`` (points: a
        polyline ``points`` attribute, SVG user units) or None without curves.
    """
    taus, acc = result.get("taus"), result.get("boxacc")
    if not taus or not isinstance(acc, dict):
        return None
    pad = 36
    w, h = width - 2 * pad, height - 2 * pad

    def pts(ys):
        return " ".join(
            f"{pad + float(t) * w:.1f},{pad + (1 - float(y)) * h:.1f}"
            for t, y in zip(taus, ys)
            if y is not None
        )

    curves = []
    if acc.get("v1"):
        curves.append({"name": "IoU 0.5 (V1)", "points": pts(acc["v1"])})
    v2 = acc.get("v2") or {}
    if isinstance(v2, dict):  # {"0.3": [...], "0.5": [...], "0.7": [...]}
        for thr, ys in v2.items():
            curves.append({"name": f"IoU {thr} (V2)", "points": pts(ys)})
    else:
        for j, ys in enumerate(v2):
            curves.append({"name": f"V2 #{j + 1}", "points": pts(ys)})
    ticks = [{"v": v / 4, "x": pad + v / 4 * w, "y": pad + (1 - v / 4) * h} for v in range(5)]
    return {"width": width, "height": height, "pad": pad, "w": w, "h": h, "curves": curves,
            "ticks": ticks}  # fmt: skip


_EVAL_KEYS = (
    ("top1_cls_error", "top-1 classification error", True),
    ("top5_cls_error", "top-5 classification error", True),
    ("top1_loc_error", "top-1 localization error", True),
    ("top5_loc_error", "top-5 localization error", True),
    ("gt_known_loc", "GT-known localization", True),
    ("maxboxacc_v1", "MaxBoxAccV1", True),
    ("best_tau", "best tau (V1)", False),
    ("maxboxacc_v2", "MaxBoxAccV2", True),
    ("pxap", "PxAP", True),
    ("n_images", "images", False),
    ("n_missing", "missing", False),
    ("n_failed", "failed", False),
)


def _eval_view(path: Path, res: dict) -> dict:
    figs = []
    for key, label, frac in _EVAL_KEYS:
        if key in res and res[key] is not None:
            v = res[key]
            figs.append([label, f"{100 * v:.2f} %" if frac else str(v)])
    per_class = res.get("per_class") if isinstance(res.get("per_class"), list) else None
    return {"path": shown(path), "figures": figs, "curve": boxacc_svg(res), "per_class": per_class}


def _js(v) -> str:
    """A run.json value as JSON text for the page's tables (shown as text, HTML-escaped); one
    that holds a non-finite number (a hand-edited run.json) as Python writes it."""
    try:
        return json.dumps(v, allow_nan=False, default=str)
    except ValueError:
        return str(v)


def _run_view(folder: Path, run: dict) -> dict:
    opts = run.get("options") if isinstance(run.get("options"), dict) else {}
    counts = run.get("counts") if isinstance(run.get("counts"), dict) else {}
    # "running" (a run killed outright), "interrupted", "failed": the run did not finish
    keep = ("command", "camcli", "torch", "model", "weights", "weights_sha256", "num_classes",
            "device", "batch_size", "wall_time_s", "running", "interrupted", "failed")  # fmt: skip
    return {
        "path": shown(folder),
        "fields": [
            [
                k,
                str(run[k]) if isinstance(run[k], str) else _js(run[k]),
            ]
            for k in keep
            if k in run
        ],  # fmt: skip
        "options": [[k, _js(v)] for k, v in opts.items()],
        "counts": counts,
        "preprocess": _js(run.get("preprocess")) if run.get("preprocess") else None,
    }


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("camcli.api", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; tojson escapes < > & ' for <script>
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["json.dumps_kwargs"] = {"separators": (",", ":"), "sort_keys": False}
    return env


def render_html(rows_json: list[dict], context: dict) -> str:
    """The page: ``templates/report.html.j2`` with the rows as a JSON blob.

    Args:
        rows_json: the page's rows (keys of :class:`Row` in brackets).
        context: ``title``, ``runs``, ``evals``, ``classes``, ``counts``, ``iou``, ``has_gt``.

    Returns:
        The HTML text.
    """
    return _env().get_template("report.html.j2").render(rows=rows_json, **context)


@dataclass
class ReportResult:
    """What :func:`write_report` did.

    Attributes:
        index: the page written.
        rows: images on the page; failed: of them, failed records.
        thumbs_made, thumbs_reused, thumbs_failed: thumbnails written, found from an earlier
            report, not made (source missing or undecodable).
        bad_lines: lines of the inputs that were not records (skipped).
    """

    index: Path
    rows: int
    failed: int
    thumbs_made: int
    thumbs_reused: int
    thumbs_failed: int
    bad_lines: list[str]


def write_report(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    gt: str | None = None,
    gt_format: str = "auto",
    synsets: str | None = None,
    iou: float | None = None,
    thumb_size: int = THUMB_SIZE,
    workers: int | None = None,
    title: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write ``out/index.html`` and ``out/thumbs/`` for the given runs.

    ``out`` is locked (``out/.camcli.lock``, :class:`camcli.runs.locks.RunLock`) while it is
    written, and confined (:func:`camcli.atomic.confine`): every folder below it is opened
    without following links, and a link planted at ``index.html`` or a thumbnail is replaced,
    never written through.

    Args:
        runs: cam folders, records files and eval JSON files (see :func:`load_inputs`).
        out: the report folder (created; earlier thumbnails in it are reused).
        gt: ground truth for GT boxes, IoU and wrong-class flags (formats of ``eval --gt``).
        gt_format: ``auto``, ``xml``, ``kaggle``, ``csv`` or ``jsonl``.
        synsets: a synsets file for WNID labels of ``gt``.
        iou: the IoU a top-1 box needs not to count as missed; None: :data:`IOU` (0.5). A
            value given when nothing has ground truth (no ``gt`` and no record's own
            ``"gt"``) is refused.
        thumb_size: the longest side of thumbnails, pixels.
        workers: threads making thumbnails (default: CPUs, at most 16).
        title: the page title (default: the runs' names).
        progress: told the number of thumbnails to make (``start``) and each one made.
        warn: called with one line per skipped input line (default: nothing).

    Returns:
        A :class:`ReportResult`.

    Raises:
        ReportInputError, NoInputError: see :func:`load_inputs`; NoInputError also when the
            runs hold no image and no eval result.
        GtError: unreadable ground truth.
        CamcliError: (exit 2) another run holds ``out``'s lock; UsageError: ``iou`` given without
            ground truth.
        LinkError: a folder or file below ``out`` is a symbolic link where a folder is needed
            (nothing is written through it; ``filename`` names it).
        WriteError: (exit 5) the lock file cannot be created.
        OSError: the report cannot be written.
    """
    inputs = load_inputs(runs)
    for line in inputs.bad_lines:
        if warn:
            warn(f"skipped {line}")
    truth = labels = None
    if gt is not None:
        from camcli.evaluate.groundtruth import read_ground_truth
        from camcli.evaluate.labels import load_label_map

        truth = read_ground_truth(gt, gt_format)
        labels = load_label_map(synsets=synsets)
    given_iou, iou = iou is not None, IOU if iou is None else iou
    rows = build_rows(inputs, truth, labels, iou=iou)
    if not rows and not inputs.evals:
        raise NoInputError("no image records and no eval result in " + ", ".join(map(str, runs)))
    if given_iou and truth is None and not any(r.gt_classes or r.gt_boxes for r in rows):
        raise UsageError(
            "--iou does nothing without ground truth (no --gt, and no record carries its own "
            '"gt"): drop it or give --gt'
        )
    outp = Path(out)
    try:
        outp.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CamcliError(
            f"--out {outp}: exists and is not a folder; choose another --out", Exit.USAGE
        ) from None
    except OSError as exc:
        raise write_error(exc, outp, resumable=False) from None
    try:
        lock = RunLock(outp / LOCK)
    except BusyError as exc:
        raise CamcliError(
            f"{outp}: {exc.strerror}; wait for it to finish or choose another output folder",
            Exit.USAGE,
        ) from None
    except OSError as exc:
        raise write_error(exc, outp, resumable=False) from None
    atomic.confine(outp)
    try:
        return _write_locked(
            inputs, rows, runs, outp, iou=iou, thumb_size=thumb_size, workers=workers,
            title=title, progress=progress,
        )  # fmt: skip
    finally:
        atomic.release(outp)
        lock.release()


def _write_locked(
    inputs: ReportInputs,
    rows: list[Row],
    runs: Sequence[str | os.PathLike],
    outp: Path,
    *,
    iou: float,
    thumb_size: int,
    workers: int | None,
    title: str | None,
    progress: Progress | None,
) -> ReportResult:
    """:func:`write_report` once ``outp`` is locked and confined."""

    thumb_of, failed_thumbs, todo, reused = make_thumbnails(
        rows, outp, thumb_size, workers, progress
    )

    def thumb(s):
        return None if s is None or s in failed_thumbs else thumb_of.get(s)

    href = _Links(outp)
    page_rows = [_row_json(i, r, thumb, href) for i, r in enumerate(rows)]
    classes = sorted({r.preds[0][0] for r in rows if r.preds} | {g for r in rows
                      for g in r.gt_labels[:1]})  # fmt: skip
    counts = {
        "images": len(rows),
        "failed": sum(r.error is not None for r in rows),
        "with_gt": sum(bool(r.gt_classes or r.gt_boxes) for r in rows),
        "wrong_class": sum(r.wrong_class is True for r in rows),
        "box_missed": sum(r.box_missed is True for r in rows),
    }
    context = {
        "title": shown(
            title or "camcli report: " + ", ".join(Path(r).name or str(r) for r in runs)
        ),
        "runs": [_run_view(f, j) for f, _r, j in inputs.cam_dirs if j],
        "sources": [shown(f) for f, _r, _j in inputs.cam_dirs]
        + [shown(f) for f, _r in inputs.records],
        "evals": [_eval_view(p, e) for p, e in inputs.evals],
        "classes": classes,
        "class_table": class_table(rows, iou),
        "counts": counts,
        "iou": iou,
        "has_gt": counts["with_gt"] > 0,
        "thumb_size": thumb_size,
    }
    html = render_html(page_rows, context)
    index = outp / "index.html"
    write_atomic(index, html.encode("utf-8", "surrogateescape"))
    return ReportResult(
        index=index,
        rows=len(rows),
        failed=counts["failed"],
        thumbs_made=len(todo) - len(failed_thumbs & set(todo)),
        thumbs_reused=reused,
        thumbs_failed=len(failed_thumbs),
        bad_lines=inputs.bad_lines,
    )


def _row_json(i: int, r: Row, thumb, href: _Links) -> dict:
    d: dict = {"i": i, "n": r.image}
    if r.error is not None:
        d["e"] = r.error
        return d
    if r.width is not None:
        d["w"], d["h"] = r.width, r.height
    d["p"] = r.preds
    src_ok = r.source is not None and os.path.exists(r.source)
    d["t"] = thumb(r.source)
    d["f"] = href(r.source) if src_ok else None
    d["o"] = [[o[0], o[1], thumb(o[2]), href(o[2])] for o in r.overlays]
    if r.boxes:
        d["b"] = r.boxes
    if r.gt_labels or r.gt_boxes:
        d["gl"], d["gb"] = r.gt_labels, r.gt_boxes
    for key, v in (("u", r.iou), ("gu", r.gt_known_iou)):
        if v is not None:
            d[key] = round(v, 4)
    if r.wrong_class is not None:
        d["wc"] = r.wrong_class
    if r.box_missed is not None:
        d["bm"] = r.box_missed
    return d
