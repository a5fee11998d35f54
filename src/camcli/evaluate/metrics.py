"""ILSVRC classification and localization errors (SPEC.md section 5; IoU per section 3).

Pure: plain Python values in, numbers out; no files, no printing. Boxes are ``[x_min, y_min,
x_max, y_max]`` integer pixel indices, 0-based and inclusive (IoU with ``width = x_max - x_min +
1``), in the pixels of the ORIGINAL image.

The devkit's definition: an image with ground-truth classes ``C_1..C_n`` scores
``1/n sum_j min_i d(c_i, C_j)`` where guess ``i`` is wrong (``d = 1``) unless its label is ``C_j``
and (localization) its box has IoU >= 0.5 with ANY ground-truth box of ``C_j``. For ImageNet (one
class per image) this is 0 or 1. :func:`score_predictions` averages them over a split; a missing
prediction counts as wrong. Box accuracy from score maps (MaxBoxAcc) is in
:mod:`camcli.evaluate.boxacc`, PxAP in :mod:`camcli.evaluate.pxap`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from camcli.cam.boxes import box_iou

__all__ = [
    "Box",
    "GtTarget",
    "ImagePrediction",
    "cls_error_image",
    "gt_known_correct",
    "loc_error_image",
    "score_predictions",
]

Box = tuple[int, int, int, int]


def _max_iou(box: Sequence[int], gt_boxes: Sequence[Sequence[int]]) -> float:
    if not gt_boxes:
        return 0.0
    return float(box_iou([box], gt_boxes).max())


def cls_error_image(ranked: Sequence[int], gt_classes: Sequence[int], k: int) -> float:
    """Top-k classification error of one image: ``1/n sum_j [C_j not in ranked[:k]]``.

    Args:
        ranked: predicted class indices, best first.
        gt_classes: the image's ground-truth classes (ImageNet: exactly one).
        k: how many of ``ranked`` count.

    Returns:
        A float in [0, 1] (0 or 1 with one GT class).

    Raises:
        ValueError: no ground-truth class.
    """
    gts = list(dict.fromkeys(gt_classes))
    if not gts:
        raise ValueError("an image needs at least one ground-truth class")
    top = set(list(ranked)[:k])
    return sum(c not in top for c in gts) / len(gts)


def loc_error_image(
    guesses: Sequence[tuple[int, Sequence[int] | None]],
    gt_objects: Sequence[tuple[int, Sequence[int]]],
    k: int,
    iou: float = 0.5,
) -> float:
    """Top-k ILSVRC localization error of one image (devkit definition, SPEC section 5).

    For each GT class ``C``, the image is right for ``C`` if one of the first ``k`` guesses has
    label ``C`` and IoU >= ``iou`` with ANY GT box of class ``C`` (inclusive IoU); the error is
    the share of GT classes not right.

    Args:
        guesses: ``(class_index, box or None)`` in order, most confident first; only the first
            ``k`` count. A ``None`` box (no box could be made) is a wrong guess.
        gt_objects: ``(class_index, box)`` of every ground-truth box; boxes inclusive
            ``[x_min, y_min, x_max, y_max]``.
        k: how many guesses count.
        iou: the IoU a box needs.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: no ground-truth box.
    """
    by_class: dict[int, list[Sequence[int]]] = {}
    for c, b in gt_objects:
        by_class.setdefault(int(c), []).append(b)
    if not by_class:
        raise ValueError("an image needs at least one ground-truth box")
    top = list(guesses)[:k]
    wrong = 0
    for c, boxes in by_class.items():
        ok = any(gc == c and gb is not None and _max_iou(gb, boxes) >= iou for gc, gb in top)
        wrong += not ok
    return wrong / len(by_class)


def gt_known_correct(
    box: Sequence[int] | None, gt_boxes: Sequence[Sequence[int]], iou: float = 0.5
) -> bool:
    """GT-known localization of one image (SPEC section 5): the box of the ground-truth class's
    map has IoU >= ``iou`` with any GT box of that class (the class prediction is ignored).

    Args:
        box: the box of the GT class's map, or None when it has none (wrong).
        gt_boxes: that class's ground-truth boxes.
        iou: the IoU the box needs.

    Returns:
        Whether the image is localized.
    """
    return box is not None and _max_iou(box, list(gt_boxes)) >= iou


# --------------------------------------------------------------------------------------------
# Split-level scoring of per-image predictions (records or submissions)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GtTarget:
    """Ground truth of one image, labels already mapped to class indices.

    Attributes:
        classes: the image's ground-truth classes (the first is its primary class; ImageNet
            has one).
        objects: ``(class_index, box)`` for every ground-truth box, inclusive ``[x_min, y_min,
            x_max, y_max]`` (may be empty: then the image counts for classification only).
    """

    classes: tuple[int, ...]
    objects: tuple[tuple[int, Box], ...] = ()

    def boxes_of(self, cls: int) -> list[Box]:
        """The ground-truth boxes of class ``cls``, in order."""
        return [b for c, b in self.objects if c == cls]


@dataclass
class ImagePrediction:
    """What a method said about one image.

    Attributes:
        classes: ranked classification, class indices best first (may be empty).
        guesses: localization guesses ``(class_index, box or None)`` in order, or ``None`` when
            the source has no localization at all (a predict record).
        gt_known: ``(class_index, box or None)`` of the ground-truth class's map, when known.
    """

    classes: list[int] = field(default_factory=list)
    guesses: list[tuple[int, Box | None]] | None = None
    gt_known: tuple[int, Box | None] | None = None


def score_predictions(
    items: Iterable[tuple[GtTarget, ImagePrediction | None, bool]],
    *,
    iou: float = 0.5,
) -> dict:
    """ILSVRC-style errors over a split.

    A missing prediction counts as wrong everywhere. Blacklisted images count for classification
    only (the devkit's localization blacklist); images without any GT box count for
    classification only.

    Args:
        items: ``(ground truth, prediction or None when missing, blacklisted)`` per GT image.
        iou: the IoU a box needs to be right.

    Returns:
        A dict of fractions in [0, 1] and counts: ``n_images`` (all items), ``n_missing``
        (items without a prediction), ``top1_cls_error`` and ``top5_cls_error`` (when some
        prediction ranks at least 1 / 5 classes), ``n_loc_images``, ``n_blacklisted``,
        ``n_no_gt_box``, ``top1_loc_error`` and ``top5_loc_error`` (when some prediction has at
        least 1 / 5 guesses), ``gt_known_loc`` and ``n_missing_gt_known`` (when some prediction
        carries a GT-known box; one that does not, or for another class, is wrong). A top-k
        figure uses each image's first k entries, however many it has.
    """
    items = list(items)
    n = len(items)
    out: dict = {"n_images": n, "n_missing": sum(p is None for _, p, _ in items)}
    preds = [p for _, p, _ in items if p is not None]
    max_cls = max((len(p.classes) for p in preds), default=0)
    max_loc = max((len(p.guesses) for p in preds if p.guesses is not None), default=0)
    has_loc = any(p.guesses is not None for p in preds)
    has_gk = any(p.gt_known is not None for p in preds)
    if n == 0:
        return out
    out.update(_cls_errors(items, max_cls))
    loc_items = [(gt, p) for gt, p, bl in items if not bl and gt.objects]
    out["n_loc_images"] = len(loc_items)
    out["n_blacklisted"] = sum(bool(bl) for _, _, bl in items)
    out["n_no_gt_box"] = sum(not bl and not gt.objects for gt, _, bl in items)
    if not loc_items:
        return out
    if has_loc:
        out.update(_loc_errors(loc_items, max_loc, iou))
    if has_gk:
        out.update(_gt_known(loc_items, iou))
    return out


def _cls_errors(
    items: list[tuple[GtTarget, ImagePrediction | None, bool]], max_cls: int
) -> dict[str, float]:
    """``top1_cls_error`` / ``top5_cls_error`` when some prediction ranks 1 / 5 classes."""
    out = {}
    for k in (1, 5):
        if max_cls >= k:
            err = sum(
                1.0 if p is None else cls_error_image(p.classes, gt.classes, k)
                for gt, p, _ in items
            )
            out[f"top{k}_cls_error"] = err / len(items)
    return out


def _loc_errors(
    loc_items: list[tuple[GtTarget, ImagePrediction | None]], max_loc: int, iou: float
) -> dict[str, float]:
    """``top1_loc_error`` / ``top5_loc_error`` when some prediction has 1 / 5 guesses."""
    out = {}
    for k in (1, 5):
        if max_loc >= k:
            err = sum(
                1.0
                if p is None or p.guesses is None
                else loc_error_image(p.guesses, gt.objects, k, iou)
                for gt, p in loc_items
            )
            out[f"top{k}_loc_error"] = err / len(loc_items)
    return out


def _gt_known(loc_items: list[tuple[GtTarget, ImagePrediction | None]], iou: float) -> dict:
    """``gt_known_loc`` and ``n_missing_gt_known`` (no GT-known box, or one for another class:
    wrong)."""
    right = missing = 0
    for gt, p in loc_items:
        primary = gt.classes[0]
        if p is None or p.gt_known is None or p.gt_known[0] != primary:
            missing += 1
            continue
        right += gt_known_correct(p.gt_known[1], gt.boxes_of(primary), iou)
    return {"gt_known_loc": right / len(loc_items), "n_missing_gt_known": missing}
