"""Predictions assigned to ground-truth images, and the result every evaluation returns.

Every evaluation (records, submissions, maps) matches what it has to GT images by name
(:meth:`camcli.evaluate.truth.GroundTruth.match`) and ends its result with the same lists: GT
images without a prediction (``missing``), predictions matching no GT image (``unmatched``),
failed ones (``failed``) and repeats (``n_duplicates``), keys in :data:`RESULT_ORDER`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from camcli.evaluate.metrics import ImagePrediction
from camcli.evaluate.truth import GroundTruth

__all__ = ["RESULT_ORDER", "Matched", "finish_result", "match_predictions", "order_result"]


@dataclass
class Matched:
    """Predictions assigned to GT images (by index), and what could not be assigned.

    Attributes:
        preds: GT image index -> its prediction.
        failed: GT image index -> ``{"image": name, "error": reason}`` (counted wrong).
        unmatched: names of predictions that match no GT image (ignored).
        duplicates: names of predictions of a GT image already assigned (ignored).
    """

    preds: dict[int, ImagePrediction] = field(default_factory=dict)
    failed: dict[int, dict] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> set[int]:
        """The GT images something was said about (a prediction or a failure)."""
        return set(self.preds) | set(self.failed)


def match_predictions(
    gt: GroundTruth, named: Iterable[tuple[str, ImagePrediction | str]]
) -> Matched:
    """Assign predictions to GT images, the first of a GT image winning.

    Args:
        gt: the ground truth.
        named: ``(image path, prediction)`` pairs; a ``str`` instead of a prediction is the
            reason the image failed.

    Returns:
        The :class:`Matched` assignment.
    """
    m = Matched()
    for name, pred in named:
        i = gt.match(name)
        if i is None:
            m.unmatched.append(name)
        elif i in m.preds or i in m.failed:
            m.duplicates.append(name)
        elif isinstance(pred, str):
            m.failed[i] = {"image": name, "error": pred}
        else:
            m.preds[i] = pred
    return m


RESULT_ORDER = (
    "source",
    "n_images",
    "n_gt_images",
    "n_missing",
    "top1_cls_error",
    "top5_cls_error",
    "top1_loc_error",
    "top5_loc_error",
    "gt_known_loc",
    "gt_known_tau",
    "best_tau_gt_known",
    "max_gt_known_loc",
    "maxboxacc_v1",
    "maxboxacc_v2",
    "best_tau",
    "pxap",
    "maxboxacc_v2_by_iou",
    "best_tau_v2",
    "iou",
    "wsol_boxes",
    "n_loc_images",
    "n_blacklisted",
    "n_no_gt_box",
    "n_missing_gt_known",
    "n_missing_gt_class",
    "n_mask_images",
    "n_renormalised",
    "n_failed",
    "n_unmatched",
    "n_duplicates",
)
"""The keys an evaluation result starts with, in order (those present)."""


def order_result(out: dict) -> dict:
    """The result with headline figures first, then counts, then the long lists and curves.

    Args:
        out: an evaluation result.

    Returns:
        A new dict: the keys of :data:`RESULT_ORDER` present, in that order, then the others in
        their order.
    """
    head = {k: out[k] for k in RESULT_ORDER if k in out}
    return head | {k: v for k, v in out.items() if k not in head}


def finish_result(out: dict, gt: GroundTruth, m: Matched, unknown_labels: list[str]) -> dict:
    """Add the lists every result carries and order it.

    Args:
        out: the figures computed so far (changed in place).
        gt: the ground truth.
        m: the assignment of predictions.
        unknown_labels: GT labels no class matched (inferred label maps).

    Returns:
        The ordered result, with ``missing`` / ``n_missing`` (GT image names nothing was said
        about), ``unmatched`` / ``n_unmatched``, ``failed`` / ``n_failed`` (in GT order),
        ``n_duplicates`` and, when any, ``unknown_labels``.
    """
    tried = m.attempted
    out["missing"] = [gt.images[i].name for i in range(len(gt)) if i not in tried]
    out["n_missing"] = len(out["missing"])
    out["n_unmatched"] = len(m.unmatched)
    out["unmatched"] = m.unmatched
    out["n_failed"] = len(m.failed)
    out["failed"] = [m.failed[i] for i in sorted(m.failed)]
    out["n_duplicates"] = len(m.duplicates)
    if unknown_labels:
        out["unknown_labels"] = unknown_labels
    return order_result(out)
