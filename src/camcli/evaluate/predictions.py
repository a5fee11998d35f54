"""Predictions from camcli's own records: ``predict`` / ``bbox`` JSON Lines -> what was said.

A record is ``{"image": path, "predictions": [{"class_index", "label", "score"}...],
"boxes": [{"class_index", "box": [x_min, y_min, x_max, y_max] or null, ...}...],
"gt_known": {"class_index", "box"}}`` (or ``{"image", "error"}`` for an image that failed);
boxes are inclusive integer pixel indices of the original image (SPEC.md section 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from camcli.data.records import iter_jsonl
from camcli.errors import GtError
from camcli.evaluate.labels import LabelMap
from camcli.evaluate.metrics import Box, ImagePrediction

__all__ = ["label_map_from_records", "read_box_records", "record_prediction", "record_problem"]


def read_box_records(path: str, bad: list[str] | None = None) -> Iterator[dict]:
    """The records of a JSON Lines file (read by :func:`camcli.data.records.iter_jsonl`).

    Args:
        path: the file, or ``-`` for standard input; UTF-8 (a byte-order mark is dropped;
            undecodable bytes become surrogate escapes).
        bad: where to collect bad lines; None: a bad line is an error.

    Yields:
        Each record with an ``"image"`` path, in file order.

    Raises:
        GtError: (with ``bad`` None) ``--boxes PATH line N: not JSON (...)``, ``--boxes PATH
            line N: a record needs an "image" path`` or what :func:`record_problem` says;
            with ``bad`` given, that reason is appended to it and the line skipped.
        OSError: the file cannot be opened or read.
    """
    for line in iter_jsonl(path, bom=True):
        rec = line.value
        problem = record_problem(rec) if rec is not None else None
        if rec is not None and isinstance(rec.get("image"), str) and problem is None:
            yield rec
            continue
        where = f"--boxes {line.where(path)}"
        if line.error is not None and line.error.startswith("not JSON"):
            why = f"{where}: {line.error}"
        elif problem is not None and isinstance(rec.get("image"), str):
            why = f"{where}: {problem}"
        else:
            why = f'{where}: a record needs an "image" path'
        if bad is None:
            raise GtError(why)
        bad.append(why)


#: The largest class index a record may name (a larger one would size the label table).
MAX_CLASS_INDEX = 1_000_000
MAX_COORD = 2**31 - 1


def _brief(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _index_problem(v, what: str) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_CLASS_INDEX:
        return f"{what} class_index {_brief(v)} is not an int 0..{MAX_CLASS_INDEX}"
    return None


def _box_problem(b, what: str) -> str | None:
    if b is None:
        return None
    ok = (
        isinstance(b, list)
        and len(b) == 4
        and all(
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and abs(v) <= MAX_COORD
            for v in b
        )
    )
    return None if ok else f"{what} box {_brief(b)} is not null or 4 finite numbers"


def record_problem(rec) -> str | None:
    """What is wrong with a record's fields (types and bounds), or None when it can be scored.

    An error record (``"error"``) needs only its ``"image"``; otherwise ``predictions`` and
    ``boxes`` are lists (or absent/null) of objects with an int ``class_index`` in
    0..:data:`MAX_CLASS_INDEX`, a ``box`` null or 4 finite numbers, a ``label`` null or text,
    a ``score`` null or a finite number; ``gt_known`` is null or such an object.
    """
    if not isinstance(rec, dict):
        return "a record must be a JSON object"
    if "error" in rec:
        return None
    for key in ("predictions", "boxes"):
        items = rec.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            return f'"{key}" is {_brief(items)}, expected a list'
        for k, it in enumerate(items, 1):
            what = f"{key}[{k}]"
            if not isinstance(it, dict):
                return f"{what} is {_brief(it)}, expected an object"
            why = _index_problem(it.get("class_index"), what)
            why = why or (_box_problem(it.get("box"), what) if key == "boxes" else None)
            if why:
                return why
            lab, score = it.get("label"), it.get("score")
            if lab is not None and not isinstance(lab, str):
                return f"{what} label {_brief(lab)} is not text"
            if score is not None and (
                isinstance(score, bool)
                or not isinstance(score, int | float)
                or not math.isfinite(score)
            ):
                return f"{what} score {_brief(score)} is not a finite number"
    gk = rec.get("gt_known")
    if gk is not None:
        if not isinstance(gk, dict):
            return f'"gt_known" is {_brief(gk)}, expected an object'
        return _index_problem(gk.get("class_index"), "gt_known") or _box_problem(
            gk.get("box"), "gt_known"
        )
    return None


def _rec_box(b) -> Box | None:
    if b is None:
        return None
    return tuple(int(v) for v in b)  # type: ignore[return-value]


def record_prediction(rec: dict) -> ImagePrediction:
    """What a ``predict`` / ``bbox`` record says about its image.

    Args:
        rec: the record (not an error record).

    Returns:
        An :class:`~camcli.evaluate.metrics.ImagePrediction`: classes =
        ``predictions[*].class_index`` in order; guesses = ``boxes[*]`` ``(class_index, box)`` in
        order (None without a ``boxes`` key; a null box stays None); gt_known = ``gt_known``
        ``(class_index, box)``.
    """
    classes = [int(p["class_index"]) for p in rec.get("predictions") or []]
    guesses = None
    if "boxes" in rec:
        guesses = [(int(b["class_index"]), _rec_box(b.get("box"))) for b in rec["boxes"] or []]
    gk = rec.get("gt_known")
    gt_known = (int(gk["class_index"]), _rec_box(gk.get("box"))) if isinstance(gk, dict) else None
    return ImagePrediction(classes, guesses, gt_known)


def label_map_from_records(labels: LabelMap | None, records: Iterable[dict] = ()) -> LabelMap:
    """The label map to score records with: ``labels`` (the user's) or one inferred from them.

    Either way, the ``class_index -> label`` pairs of the records' predictions and boxes fill in
    the names the map does not know yet.

    Args:
        labels: the user's map, or None to infer one (``explicit=False``).
        records: the records.

    Returns:
        ``labels`` itself (names added) or a new inferred map.
    """
    lm = labels if labels is not None else LabelMap(explicit=False, source="the predictions")
    pairs = []
    for r in records:
        for p in r.get("predictions") or []:
            pairs.append((p.get("class_index", -1), p.get("label")))
        for b in r.get("boxes") or []:
            pairs.append((b.get("class_index", -1), b.get("label")))
        gk = r.get("gt_known")
        if isinstance(gk, dict):
            pairs.append((gk.get("class_index", -1), gk.get("label")))
    lm.add_names(pairs)
    return lm
