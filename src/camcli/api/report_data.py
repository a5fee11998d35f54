"""``camcli report``: the data of the page.

Reads any combination of a ``cam`` output folder (``manifest.jsonl`` + overlays + ``run.json``),
``bbox`` / ``predict`` records (JSON Lines) and ``eval --output`` JSON files
(:func:`load_inputs`), and joins them, with ground truth when given, into one :class:`Row` per
image (:func:`build_rows`: IoU, wrong-class and missed-box flags) and a per-class table
(:func:`class_table`). Pure and torch-free; the page itself is :mod:`camcli.api.report_html`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camcli.data.records import iter_jsonl
from camcli.errors import CamcliError, Exit, NoInputError

__all__ = [
    "IOU",
    "ReportInputError",
    "ReportInputs",
    "Row",
    "build_rows",
    "class_table",
    "load_inputs",
]

#: the IoU a top-1 box needs not to count as missed, when none is given
IOU = 0.5


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
                if run_json is not None and not isinstance(run_json, dict):
                    inp.bad_lines.append(f"{p / 'run.json'}: not a JSON object")
                    run_json = None
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
