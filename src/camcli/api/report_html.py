"""``camcli report``: one self-contained static HTML page of a run.

Reads any combination of a ``cam`` output folder (``manifest.jsonl`` + overlays + ``run.json``),
``bbox`` / ``predict`` records (JSON Lines) and ``eval --output`` JSON files, optionally ground
truth (``--gt``, any format ``eval`` reads), and writes ``OUT/index.html`` plus
``OUT/thumbs/``: JPEG thumbnails (made once, reused by later reports of the same files) of each
image and each overlay. The page holds its rows as one JSON blob rendered by a small inline
script (sort, filter, pages, a viewer for the full-resolution files); it loads nothing from the
network. Full-resolution images are linked by their path relative to ``OUT``.

Data extraction (:func:`build_rows`) is pure and torch-free; thumbnails are made by a thread pool
with Pillow's reduce-on-decode (:meth:`PIL.Image.Image.draft`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from camcli import atomic
from camcli.atomic import LinkError, write_atomic
from camcli.console import shown
from camcli.data.records import iter_jsonl
from camcli.errors import CamcliError, Exit, NoInputError, write_error

if TYPE_CHECKING:  # torch-free at run time: camcli.api.progress imports the predict job
    from camcli.api.progress import Progress

__all__ = [
    "ReportInputs",
    "ReportResult",
    "Row",
    "boxacc_svg",
    "build_rows",
    "class_table",
    "load_inputs",
    "make_thumbnail",
    "render_html",
    "write_report",
]

THUMBS = "thumbs"
#: longest side of a thumbnail, pixels
THUMB_SIZE = 160
#: the IoU a top-1 box needs not to count as missed, when none is given
IOU = 0.5
#: the lock file of a report folder (the one ``cam``/``bbox --draw`` take on their output folder)
LOCK = ".camcli.lock"


class ReportInputError(CamcliError):
    """A RUN argument that is not a cam folder, a records file or an eval JSON (exit 2)."""

    exit_code = Exit.USAGE


@dataclass
class ReportInputs:
    """What the RUN arguments hold.

    Attributes:
        cam_dirs: ``(folder, manifest records, run.json or None)`` per ``cam`` output folder.
        records: ``(file, records)`` per ``bbox`` / ``predict`` records file.
        evals: ``(file, result)`` per ``eval --output`` JSON.
        bad_lines: one-line reasons of lines that were not JSON records (skipped).
    """

    cam_dirs: list[tuple[Path, list[dict], dict | None]] = field(default_factory=list)
    records: list[tuple[Path, list[dict]]] = field(default_factory=list)
    evals: list[tuple[Path, dict]] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def _read_jsonl(path: Path, bad: list[str]) -> list[dict]:
    out = []
    for line in iter_jsonl(path, bom=True):
        rec = line.value
        if rec is None or not isinstance(rec.get("image"), str):
            bad.append(f"{line.where(str(path))}: {line.error or 'a record needs an image path'}")
            continue
        out.append(rec)
    return out


def load_inputs(runs: Sequence[str | os.PathLike]) -> ReportInputs:
    """Sort the RUN arguments into cam folders, records files and eval results.

    A folder must hold ``manifest.jsonl`` (``run.json`` is optional); a file whose content is
    one JSON object without an ``"image"`` key is an eval result; any other file is read as
    JSON Lines records.

    Args:
        runs: the paths.

    Returns:
        The :class:`ReportInputs`.

    Raises:
        ReportInputError: (exit 2) a folder without a manifest.
        NoInputError: (exit 3) a path that does not exist.
        OSError: a file that cannot be read.
    """
    inp = ReportInputs()
    for r in runs:
        p = Path(r)
        if p.is_dir():
            man = p / "manifest.jsonl"
            if not man.is_file():
                raise ReportInputError(
                    f"{p}: no manifest.jsonl; give a `camcli cam --out` folder, a records file "
                    "or an eval JSON"
                )
            run_json = None
            if (p / "run.json").is_file():
                try:
                    run_json = json.loads((p / "run.json").read_text(encoding="utf-8"))
                except ValueError as exc:
                    inp.bad_lines.append(f"{p / 'run.json'}: not JSON ({exc})")
            inp.cam_dirs.append((p, _read_jsonl(man, inp.bad_lines), run_json))
        elif p.is_file():
            obj = _whole_json(p)
            if isinstance(obj, dict) and "image" not in obj:
                inp.evals.append((p, obj))
            else:
                inp.records.append((p, _read_jsonl(p, inp.bad_lines)))
        else:
            raise NoInputError(f"{p}: no such file or folder")
    return inp


def _whole_json(p: Path):
    """The file parsed as one JSON document, or None (JSON Lines, or not JSON)."""
    try:
        if p.stat().st_size > 64 << 20:
            return None
        return json.loads(p.read_text(encoding="utf-8-sig", errors="surrogateescape"))
    except ValueError:
        return None


# ---- rows -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One image of the report (the page's JSON keys in brackets).

    Attributes:
        image: the record's image path [n].
        width, height: original size in pixels, or None [w, h].
        preds: ``[label, class_index, score]`` top-k, best first [p].
        overlays: ``[rank, label, overlay file]`` (files as found, absolute or cwd-relative).
        boxes: ``[rank, x_min, y_min, x_max, y_max]`` predicted boxes, inclusive pixels [b].
        gt_labels: ground-truth label names [gl]; gt_classes their class indices.
        gt_boxes: ``[x_min, y_min, x_max, y_max]`` ground-truth boxes [gb].
        iou: the best IoU of a top-1 box with a GT box [u]; None without both.
        gt_known_iou: the best IoU of the GT-known box (``gt_known`` in the record) with a GT
            box of the GT class [gu].
        wrong_class: top-1 class not among the GT classes [wc]; None without GT.
        box_missed: GT boxes known and no top-1 box reaches the IoU threshold [bm].
        error: the failed record's reason [e].
        source: the original image file (to thumbnail and link), or None.
    """

    image: str
    width: int | None = None
    height: int | None = None
    preds: list[list] = field(default_factory=list)
    overlays: list[list] = field(default_factory=list)
    boxes: list[list] = field(default_factory=list)
    gt_labels: list[str] = field(default_factory=list)
    gt_classes: list[int] = field(default_factory=list)
    gt_boxes: list[list[int]] = field(default_factory=list)
    gt_known: list | None = None
    iou: float | None = None
    gt_known_iou: float | None = None
    wrong_class: bool | None = None
    box_missed: bool | None = None
    error: str | None = None
    source: str | None = None


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    """IoU of two inclusive-pixel boxes (SPEC section 3: width = x_max - x_min + 1)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _best_iou(boxes: Iterable[Sequence[int]], gt: Sequence[Sequence[int]]) -> float | None:
    vals = [_iou(b, g) for b in boxes for g in gt]
    return max(vals) if vals else (0.0 if gt else None)


def _merge(row: Row, rec: dict) -> None:
    """Fill ``row`` from one record (manifest or bbox), keeping what is already there."""
    if "error" in rec:
        row.error = str(rec["error"]).splitlines()[0] if str(rec["error"]) else "failed"
        return
    if row.width is None and isinstance(rec.get("width"), int):
        row.width, row.height = rec.get("width"), rec.get("height")
    if not row.preds and rec.get("predictions"):
        row.preds = [
            [str(p.get("label", p.get("class_index"))), p.get("class_index"), p.get("score")]
            for p in rec["predictions"]
        ]
    if not row.boxes and rec.get("boxes"):
        row.boxes = [
            [int(b.get("rank", 0)), *(int(v) for v in b["box"])]
            for b in rec["boxes"]
            if isinstance(b, dict) and b.get("box")
        ]
    gk = rec.get("gt_known")
    if row.gt_known is None and isinstance(gk, dict):
        row.gt_known = (
            [gk.get("class_index"), *(int(v) for v in gk["box"])]
            if gk.get("box")
            else [gk.get("class_index")]
        )
    gt = rec.get("gt")
    if not row.gt_labels and isinstance(gt, dict):  # records that carry their ground truth
        labs = gt.get("labels", [gt["label"]] if "label" in gt else [])
        row.gt_labels = [str(x) for x in labs]
        cls = gt.get("class_indices", [gt["class_index"]] if "class_index" in gt else [])
        row.gt_classes = [int(c) for c in cls]
        row.gt_boxes = [[int(v) for v in b] for b in gt.get("boxes") or []]


def build_rows(
    inputs: ReportInputs,
    truth=None,
    labels=None,
    *,
    iou: float = 0.5,
) -> list[Row]:
    """One :class:`Row` per image, in first-seen order (cam manifests, then records files).

    Records of the same image (same ``image`` string) from several inputs are merged: the
    first non-empty value of each field wins. Overlay paths of a cam folder are resolved
    against the folder.

    Args:
        inputs: what :func:`load_inputs` read.
        truth: a :class:`camcli.evaluate.truth.GroundTruth`, or None (then a record's own
            ``"gt"`` ``{"label"|"labels", "class_index"|"class_indices", "boxes"}`` is used).
        labels: the label map for ``truth`` (None: inferred from the records' labels).
        iou: the IoU a top-1 box needs to count as found (``box_missed`` below it).

    Returns:
        The rows.
    """
    rows: dict[str, Row] = {}
    for folder, recs, _run in inputs.cam_dirs:
        for rec in recs:
            row = rows.setdefault(rec["image"], Row(rec["image"]))
            _merge(row, rec)
            ovs = (rec.get("outputs") or {}).get("overlays") or []
            if ovs and not row.overlays:
                preds = rec.get("predictions") or []
                for j, f in enumerate(ovs):
                    lab = str(preds[j].get("label")) if j < len(preds) else Path(f).stem
                    row.overlays.append([j + 1, lab, str(folder / f)])
    for _path, recs in inputs.records:
        for rec in recs:
            _merge(rows.setdefault(rec["image"], Row(rec["image"])), rec)
    out = list(rows.values())
    if truth is not None:
        _attach_truth(out, inputs, truth, labels)
    for row in out:
        row.source = row.image
        _judge(row, iou)
    return out


def _attach_truth(rows: list[Row], inputs: ReportInputs, truth, labels) -> None:
    from camcli.evaluate.predictions import label_map_from_records

    recs = [r for _f, rs, _j in inputs.cam_dirs for r in rs] + [
        r for _f, rs in inputs.records for r in rs
    ]
    lm = label_map_from_records(labels, recs)
    targets, _unknown = truth.targets(lm)
    for row in rows:
        i = truth.match(row.image)
        if i is None:
            continue
        im, t = truth.images[i], targets[i]
        row.gt_labels = [lab[0] if isinstance(lab, tuple) else str(lab) for lab in im.labels]
        row.gt_classes = list(t.classes)
        row.gt_boxes = [list(b) for _c, b in t.objects]
        row._gt_objects = list(t.objects)  # type: ignore[attr-defined]


def _judge(row: Row, iou: float) -> None:
    """Set ``iou``, ``gt_known_iou``, ``wrong_class`` and ``box_missed`` from the row."""
    if row.error is not None or not (row.gt_classes or row.gt_boxes):
        return
    if row.preds and row.gt_classes:
        row.wrong_class = row.preds[0][1] not in row.gt_classes
    if row.gt_boxes and (row.boxes or row.preds):
        top = [b[1:] for b in row.boxes if b[0] == 1]
        row.iou = _best_iou(top, row.gt_boxes)
        row.box_missed = row.iou is None or row.iou < iou
    if row.gt_known and len(row.gt_known) == 5 and row.gt_boxes:
        objs = getattr(row, "_gt_objects", None)
        of_class = [list(b) for c, b in objs if c == row.gt_known[0]] if objs else row.gt_boxes
        row.gt_known_iou = _best_iou([row.gt_known[1:]], of_class or row.gt_boxes)


def class_table(rows: Sequence[Row], iou: float = 0.5) -> list[dict]:
    """Per-class figures, sorted by class name.

    With ground truth (rows with ``gt_classes``), one line per GT class (its first label):
    ``images``, ``top1_acc`` (fraction whose top-1 class is right), ``loc_acc`` (top-1 right and
    a top-1 box with IoU >= ``iou``; None without GT boxes), ``mean_iou``. Without, one line per
    top-1 class: ``images``, ``mean_score``. Failed images are left out.
    """
    groups: dict[str, list[Row]] = {}
    with_gt = any(r.gt_classes for r in rows)
    for r in rows:
        if r.error is not None:
            continue
        if with_gt:
            if r.gt_labels:
                groups.setdefault(r.gt_labels[0], []).append(r)
        elif r.preds:
            groups.setdefault(r.preds[0][0], []).append(r)
    out = []
    for name in sorted(groups):
        g = groups[name]
        line: dict = {"class": name, "images": len(g)}
        if with_gt:
            line["top1_acc"] = sum(r.wrong_class is False for r in g) / len(g)
            ious = [r.iou for r in g if r.iou is not None]
            line["loc_acc"] = (
                sum(r.wrong_class is False and (r.iou or 0) >= iou for r in g) / len(g)
                if ious
                else None
            )
            line["mean_iou"] = sum(ious) / len(ious) if ious else None
        else:
            line["mean_score"] = sum(float(r.preds[0][2] or 0) for r in g) / len(g)
        out.append(line)
    return out


# ---- thumbnails -------------------------------------------------------------------------------


def thumb_name(src: str | os.PathLike, size: int) -> str | None:
    """``thumbs/xx/<hash>.jpg`` for ``src`` (path, byte size and mtime in the hash, so a changed
    file gets a new thumbnail), or None when ``src`` cannot be found."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    key = f"{os.path.abspath(src)}\0{st.st_size}\0{st.st_mtime_ns}\0{size}"
    h = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return f"{THUMBS}/{h[:2]}/{h}.jpg"


def make_thumbnail(src: str | os.PathLike, dst: str | os.PathLike, size: int = THUMB_SIZE) -> None:
    """Write a JPEG thumbnail of ``src`` (longest side ``size`` px) to ``dst``, atomically.

    JPEGs are decoded at a reduced scale (DCT scaling, :meth:`PIL.Image.Image.draft`), then
    shrunk with a box filter.

    Raises:
        OSError: ``src`` cannot be read or decoded (Pillow's ``UnidentifiedImageError`` is one),
            or ``dst`` cannot be written.
    """
    from PIL import Image

    with Image.open(src) as im:
        im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=80)
    write_atomic(dst, buf.getvalue())


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
    """A run.json value as JSON text for the page (a non-finite number refused, not written)."""
    return json.dumps(v, allow_nan=False)


def _run_view(folder: Path, run: dict) -> dict:
    opts = run.get("options") or {}
    keep = ("command", "camcli", "torch", "model", "weights", "weights_sha256", "num_classes",
            "device", "batch_size", "wall_time_s")  # fmt: skip
    return {
        "path": shown(folder),
        "fields": [
            [
                k,
                json.dumps(run[k], allow_nan=False)
                if isinstance(run[k], (dict, list))
                else str(run[k]),
            ]
            for k in keep
            if k in run
        ],  # fmt: skip
        "options": [[k, _js(v)] for k, v in opts.items()],
        "counts": run.get("counts") or {},
        "preprocess": json.dumps(run.get("preprocess"), allow_nan=False)
        if run.get("preprocess")
        else None,
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

    ``out`` is locked (``out/.camcli.lock``, :class:`camcli.atomic.RunLock`) while it is
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
        CamcliError: (exit 2) another run holds ``out``'s lock, or ``iou`` given without
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
        raise CamcliError(
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
        lock = atomic.RunLock(outp / LOCK)
    except atomic.BusyError as exc:
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

    # thumbnails: (source file, target name) once per distinct source
    jobs: dict[str, str] = {}
    thumb_of: dict[str, str | None] = {}
    for r in rows:
        srcs = [r.source] if r.source and r.error is None else []
        srcs += [o[2] for o in r.overlays]
        for s in srcs:
            if s not in thumb_of:
                t = thumb_name(s, thumb_size)
                thumb_of[s] = t
                if t is not None:
                    jobs[s] = t
    todo = {s: t for s, t in jobs.items() if not _regular_below(outp, t)}
    reused = len(jobs) - len(todo)
    failed_thumbs = {s for s, t in thumb_of.items() if t is None}
    if progress:
        progress.start(len(todo), reused, len(jobs))
    try:
        n = workers or min(16, os.cpu_count() or 2)

        def one(item):
            s, t = item
            try:
                make_thumbnail(s, outp / t, thumb_size)
                return None
            except LinkError:
                raise  # a link in the report folder: refused, not a missing thumbnail
            except (OSError, ValueError) as exc:
                return s, exc

        with ThreadPoolExecutor(max_workers=n) as pool:
            for res in pool.map(one, todo.items()):
                if res is not None:
                    failed_thumbs.add(res[0])
                if progress:
                    progress.record({"image": res[0]} if res else {"image": ""})
    finally:
        if progress:
            progress.stop()

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


def _regular_below(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reached through real folders (no link on the
    way): a thumbnail to reuse. A planted link is not reused; the thumbnail is made again and
    replaces it."""
    import stat

    where = root
    try:
        for part in rel.split("/"):
            where = where / part
            mode = os.lstat(where).st_mode
            if where != root / rel and not stat.S_ISDIR(mode):
                return False
        return stat.S_ISREG(mode)
    except OSError:
        return False


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
