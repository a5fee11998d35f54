"""ILSVRC-style scoring of per-image predictions: ``bbox`` / ``predict`` records or submissions.

Top-1 / top-5 classification and localization error (the devkit's definition) and GT-known
localization, SPEC.md section 5, computed by :func:`camcli.evaluate.metrics.score_predictions`
over the GT images the predictions are matched to. A GT image without a prediction, or whose
prediction is an error, counts as wrong.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from camcli.errors import GtError
from camcli.evaluate.blacklist import blacklist_flags
from camcli.evaluate.labels import LabelMap
from camcli.evaluate.matching import Matched, finish_result, match_predictions
from camcli.evaluate.metrics import ImagePrediction, score_predictions
from camcli.evaluate.predictions import label_map_from_records, record_prediction
from camcli.evaluate.submission import (
    SubmissionError,
    read_ilsvrc_submission,
    read_kaggle_submission,
)
from camcli.evaluate.truth import GroundTruth

__all__ = ["evaluate_records", "evaluate_submission", "read_submission", "score_matched"]

Blacklist = str | os.PathLike | Sequence[bool] | None


def score_matched(
    gt: GroundTruth,
    m: Matched,
    labels: LabelMap,
    *,
    iou: float,
    blacklist: Blacklist,
    subset: bool,
) -> dict:
    """Score matched predictions against the ground truth.

    Args:
        gt: the ground truth.
        m: the predictions assigned to GT images.
        labels: maps the GT labels to class indices.
        iou: the IoU a box needs to be right.
        blacklist: a blacklist file, flags per GT image, or None.
        subset: leave GT images nothing was said about out of the denominators.

    Returns:
        The ordered result: :func:`~camcli.evaluate.metrics.score_predictions`' figures,
        ``n_gt_images``, ``iou`` and the lists of :func:`~camcli.evaluate.matching.finish_result`.

    Raises:
        GtError: a GT label the map cannot read, or an unusable blacklist.
    """
    targets, unknown = gt.targets(labels)
    flags = blacklist_flags(gt, blacklist)
    tried = m.attempted
    keep = [i for i in range(len(gt)) if not subset or i in tried]
    out = score_predictions(((targets[i], m.preds.get(i), flags[i]) for i in keep), iou=iou)
    out["n_gt_images"] = len(gt)
    out["iou"] = iou
    return finish_result(out, gt, m, unknown)


def evaluate_records(
    records: Iterable[dict],
    gt: GroundTruth,
    labels: LabelMap | None = None,
    *,
    iou: float = 0.5,
    blacklist: Blacklist = None,
    subset: bool = False,
) -> dict:
    """Score ``predict`` / ``bbox`` records against ground truth (what ``bbox --gt`` reports).

    A missing or failed image counts as wrong; with ``subset`` the missing ones are left out of
    the denominators (still counted in ``n_missing`` and listed).

    Args:
        records: the records (error records included).
        gt: the ground truth.
        labels: the user's label map, or None to infer one from the records' labels.
        iou: the IoU a box needs to be right.
        blacklist: a blacklist file, flags per GT image, or None.
        subset: score only the GT images that have a record.

    Returns:
        The metrics of :func:`camcli.evaluate.metrics.score_predictions` plus ``missing`` (GT
        image names without any record), ``failed`` (error records of GT images),
        ``unmatched`` (record images matching no GT image), ``n_duplicates``, ``n_gt_images``
        and ``iou``.

    Raises:
        GtError: a GT label the map cannot read, or an unusable blacklist.
    """
    records = list(records)
    lm = label_map_from_records(labels, records)
    named = [
        (r["image"], str(r["error"]) if "error" in r else record_prediction(r)) for r in records
    ]
    m = match_predictions(gt, named)
    return score_matched(gt, m, lm, iou=iou, blacklist=blacklist, subset=subset)


def read_submission(
    path: str, gt: GroundTruth, labels: LabelMap, fmt: str = "auto"
) -> dict[str, ImagePrediction]:
    """An ILSVRC CLS-LOC or Kaggle submission as predictions.

    ILSVRC lines belong to the GT images in file-name order (the devkit's convention) and carry
    ILSVRC2012_IDs; Kaggle rows carry WNIDs. The classification of a submission is its guesses'
    labels, in order (duplicates kept, as the devkit counts them).

    Args:
        path: the submission file.
        gt: the ground truth (ILSVRC files: its images give the lines their names).
        labels: maps ILSVRC2012_IDs or WNIDs to class indices.
        fmt: ``auto`` (the first line decides), ``ilsvrc`` or ``kaggle``.

    Returns:
        ``{image name: ImagePrediction}``; boxes inclusive ``(x_min, y_min, x_max, y_max)``.

    Raises:
        GtError: an unknown format, an unreadable or malformed file, or a label the map cannot
            read (naming the file).
    """
    if fmt == "auto":
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline().strip()
        fmt = "kaggle" if first.replace(" ", "").startswith("ImageId,") else "ilsvrc"
    try:
        if fmt == "kaggle":
            raw = read_kaggle_submission(path)
            to_index = labels.index
        elif fmt == "ilsvrc":
            raw = read_ilsvrc_submission(path, [Path(im.name).name for im in gt.images])
            to_index = labels.index_of_ilsvrc_id
        else:
            raise GtError(f"--submission-format {fmt!r}: use auto, ilsvrc or kaggle")
    except (SubmissionError, OSError) as exc:
        raise GtError(f"--submission {path}: {exc}") from None
    out: dict[str, ImagePrediction] = {}
    for name, groups in raw.items():
        try:
            guesses = [(to_index(lab), tuple(int(v) for v in box)) for lab, box in groups]
        except KeyError as exc:
            raise GtError(f"--submission {path}: image {name!r}: {exc.args[0]}") from None
        out[name] = ImagePrediction([c for c, _ in guesses], guesses, None)  # type: ignore[arg-type]
    return out


def _imagenet1k_labels() -> LabelMap:
    """Without ``--synsets``: ImageNet-1k's WNIDs and names (a Kaggle file's WNIDs read; an
    ILSVRC file's IDs still need the devkit's mapping, which the error then names)."""
    from camcli.evaluate.synsets import SynsetError, imagenet1k_synsets

    try:
        syn = imagenet1k_synsets()
    except SynsetError as exc:
        raise GtError(f"--submission needs --synsets to map labels to classes ({exc})") from None
    return LabelMap(list(syn.names), wnids=list(syn.wnids), source=syn.source)


def evaluate_submission(
    path: str,
    gt: GroundTruth,
    labels: LabelMap | None,
    *,
    fmt: str = "auto",
    iou: float = 0.5,
    blacklist: Blacklist = None,
    subset: bool = False,
) -> dict:
    """Score an ILSVRC / Kaggle submission file against ground truth.

    Args:
        path: the submission file.
        gt: the ground truth.
        labels: the label map from ``--synsets``; None: ImageNet-1k's WNIDs and names (enough
            for Kaggle files; ILSVRC files need the devkit's IDs).
        fmt: ``auto``, ``ilsvrc`` or ``kaggle``.
        iou: the IoU a box needs to be right.
        blacklist: a blacklist file, flags per GT image, or None.
        subset: score only the GT images the file has a line for.

    Returns:
        A result with the keys of :func:`evaluate_records`.

    Raises:
        GtError: ILSVRC IDs without a mapping that has them, or what
            :func:`read_submission` and :func:`score_matched` raise.
    """
    if labels is None:
        labels = _imagenet1k_labels()
    preds = read_submission(path, gt, labels, fmt)
    m = match_predictions(gt, preds.items())
    return score_matched(gt, m, labels, iou=iou, blacklist=blacklist, subset=subset)
