"""Classification and localization metrics (SPEC.md section 5; IoU per section 3).

Everything here is pure: numpy arrays and plain Python values in, numbers out; no files, no
printing. Boxes are ``[x_min, y_min, x_max, y_max]`` integer pixel indices, 0-based and inclusive
(IoU with ``width = x_max - x_min + 1``), in the pixels of whatever image the map or the ground
truth lives in (camcli: the ORIGINAL image).

Three families:

- ILSVRC CLS-LOC errors per image (:func:`cls_error_image`, :func:`loc_error_image`) with the
  devkit's definition: an image with ground-truth classes ``C_1..C_n`` scores
  ``1/n sum_j min_i d(c_i, C_j)`` where guess ``i`` is wrong (``d = 1``) unless its label is
  ``C_j`` and (localization) its box has IoU >= 0.5 with ANY ground-truth box of ``C_j``. For
  ImageNet (one class per image) this is 0 or 1. :func:`score_predictions` averages them over a
  split; a missing prediction counts as wrong.
- wsolevaluation's box accuracy from score maps (:func:`scoremap_boxes`,
  :class:`BoxAccumulator`): BoxAcc(tau, delta) curves, MaxBoxAccV1 (largest contour, delta 0.5),
  MaxBoxAccV2 (all contours, delta 0.3 / 0.5 / 0.7, each maximised over tau, then averaged).
  One tau for the whole split, never per image.
- PxAP (:class:`PxAPAccumulator`): area under the pixel precision-recall curve over all pixels
  of all images, wsolevaluation's histogram form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from camcli.cam.boxes import box_iou

__all__ = [
    "DEFAULT_TAUS",
    "V2_IOUS",
    "BoxAccumulator",
    "GtTarget",
    "ImagePrediction",
    "PxAPAccumulator",
    "ScoremapBoxes",
    "best_iou_per_tau",
    "cls_error_image",
    "gt_known_correct",
    "loc_error_image",
    "parse_taus",
    "quantise_scoremap",
    "score_predictions",
    "scoremap_boxes",
    "tau_grid",
]

Box = tuple[int, int, int, int]
V2_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)


# --------------------------------------------------------------------------------------------
# The tau grid
# --------------------------------------------------------------------------------------------


def tau_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.01) -> np.ndarray:
    """``start, start + step, ...`` below ``stop`` (exclusive), float64 [T].

    Values are ``start + i * step``, the same floats as ``np.arange(start, stop, step)`` (and so
    as wsolevaluation's ``np.arange(0, 1, cam_curve_interval)``), but the count is computed with a
    tolerance so that ``0:1:0.01`` gives exactly 100 values.
    """
    if not step > 0:
        raise ValueError(f"tau step must be > 0, got {step}")
    if not stop > start:
        raise ValueError(f"tau stop must be > start, got {start}:{stop}")
    n = math.ceil((stop - start) / step - 1e-9)
    return start + np.arange(n, dtype=np.float64) * step


DEFAULT_TAUS = tau_grid(0.0, 1.0, 0.01)


def parse_taus(spec: str) -> np.ndarray:
    """``START:STOP:STEP`` (stop exclusive) or a comma list ``0.1,0.2,0.5`` -> float64 [T].

    Taus must be sorted ascending, unique, in [0, 1). Raises ValueError with a one-line reason.
    """
    s = spec.strip()
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            if len(parts) != 3:
                raise ValueError
            taus = tau_grid(*parts)
        else:
            taus = np.asarray([float(p) for p in s.split(",") if p.strip()], dtype=np.float64)
    except ValueError as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ValueError(
            f"--taus {spec!r}: give START:STOP:STEP like 0:1:0.01, or values like 0.1,0.2{detail}"
        ) from None
    if taus.size == 0:
        raise ValueError(f"--taus {spec!r}: no thresholds")
    if np.any(taus < 0) or np.any(taus >= 1) or np.any(np.diff(taus) <= 0):
        raise ValueError(f"--taus {spec!r}: thresholds must be ascending, unique, in [0, 1)")
    return taus


# --------------------------------------------------------------------------------------------
# ILSVRC classification / localization, per image
# --------------------------------------------------------------------------------------------


def _max_iou(box: Sequence[int], gt_boxes: Sequence[Sequence[int]]) -> float:
    if not gt_boxes:
        return 0.0
    return float(box_iou([box], gt_boxes).max())


def cls_error_image(ranked: Sequence[int], gt_classes: Sequence[int], k: int) -> float:
    """Top-k classification error of one image: ``1/n sum_j [C_j not in ranked[:k]]``.

    ranked: predicted class indices, best first. gt_classes: the image's ground-truth classes
    (ImageNet: exactly one). Returns a float in [0, 1] (0 or 1 with one GT class).
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

    guesses: ``(class_index, box or None)`` in order, most confident first; only the first ``k``
    count. A ``None`` box (no box could be made) is a wrong guess. gt_objects: ``(class_index,
    box)`` of every ground-truth box. For each GT class ``C``, the image is right for ``C`` if one
    of the first ``k`` guesses has label ``C`` and IoU >= ``iou`` with ANY GT box of class ``C``
    (inclusive IoU); the error is the share of GT classes not right. Returns a float in [0, 1].
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
    """GT-known localization of one image: the box of the ground-truth class's map has IoU >=
    ``iou`` with any GT box of that class (the class prediction is ignored)."""
    return box is not None and _max_iou(box, list(gt_boxes)) >= iou


# --------------------------------------------------------------------------------------------
# Split-level scoring of per-image predictions (records or submissions)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GtTarget:
    """Ground truth of one image, labels already mapped to class indices.

    classes: the image's ground-truth classes (the first is its primary class; ImageNet has one).
    objects: ``(class_index, box)`` for every ground-truth box (may be empty: then the image
    counts for classification only).
    """

    classes: tuple[int, ...]
    objects: tuple[tuple[int, Box], ...] = ()

    def boxes_of(self, cls: int) -> list[Box]:
        return [b for c, b in self.objects if c == cls]


@dataclass
class ImagePrediction:
    """What a method said about one image.

    classes: ranked classification, class indices best first (may be empty).
    guesses: localization guesses ``(class_index, box or None)`` in order, or ``None`` when the
    source has no localization at all (a predict record).
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

    items: ``(ground truth, prediction or None when missing, blacklisted)`` per GT image. A
    missing prediction counts as wrong everywhere. Blacklisted images count for classification
    only (the devkit's localization blacklist); images without any GT box count for
    classification only.

    Returns a dict of fractions in [0, 1] and counts:
    ``n_images`` (all items), ``n_missing`` (items without a prediction), ``top1_cls_error`` and
    ``top5_cls_error`` (when some prediction ranks at least 1 / 5 classes), ``n_loc_images``,
    ``n_blacklisted``, ``n_no_gt_box``, ``top1_loc_error`` and ``top5_loc_error`` (when some
    prediction has at least 1 / 5 guesses), ``gt_known_loc`` and ``n_missing_gt_known`` (when
    some prediction carries a GT-known box; one that does not, or for another class, is wrong).
    A top-k figure uses each image's first k entries, however many it has.
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
    for k in (1, 5):
        if max_cls >= k:
            err = sum(
                1.0 if p is None else cls_error_image(p.classes, gt.classes, k)
                for gt, p, _ in items
            )
            out[f"top{k}_cls_error"] = err / n
    loc_items = [(gt, p) for gt, p, bl in items if not bl and gt.objects]
    out["n_loc_images"] = len(loc_items)
    out["n_blacklisted"] = sum(bool(bl) for _, _, bl in items)
    out["n_no_gt_box"] = sum(not bl and not gt.objects for gt, _, bl in items)
    if not loc_items:
        return out
    if has_loc:
        for k in (1, 5):
            if max_loc >= k:
                err = sum(
                    1.0
                    if p is None or p.guesses is None
                    else loc_error_image(p.guesses, gt.objects, k, iou)
                    for gt, p in loc_items
                )
                out[f"top{k}_loc_error"] = err / len(loc_items)
    if has_gk:
        right = missing = 0
        for gt, p in loc_items:
            primary = gt.classes[0]
            if p is None or p.gt_known is None or p.gt_known[0] != primary:
                missing += 1
                continue
            right += gt_known_correct(p.gt_known[1], gt.boxes_of(primary), iou)
        out["gt_known_loc"] = right / len(loc_items)
        out["n_missing_gt_known"] = missing
    return out


# --------------------------------------------------------------------------------------------
# Boxes from a score map at many thresholds (wsolevaluation's compute_bboxes_from_scoremaps)
# --------------------------------------------------------------------------------------------


def quantise_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """[H, W] float map in [0, 1] -> uint8 [H, W] = ``trunc(255 * m)`` (computed in float64).

    Raises ValueError for a map that is not 2-D, holds non-finite values, or leaves [0, 1].
    """
    m = np.asarray(scoremap)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"a score map must be a non-empty [H, W] array, got shape {m.shape}")
    m = m.astype(np.float64, copy=False)
    if not np.isfinite(m).all():
        raise ValueError("the score map holds NaN or infinite values")
    if m.min() < 0 or m.max() > 1:
        raise ValueError(f"the score map must lie in [0, 1], found [{m.min():.4g}, {m.max():.4g}]")
    return (m * 255.0).astype(np.uint8)


@dataclass
class ScoremapBoxes:
    """Boxes of one score map at every tau.

    taus: float64 [T]. largest: int64 [T, 4], the box of the contour with the largest
    ``cv2.contourArea`` at each tau (MaxBoxAccV1), valid where has_box [T] bool. boxes: int64
    [N, 4], every contour's box, tau by tau (MaxBoxAccV2); counts: int64 [T], how many of them
    belong to each tau (0 where the thresholded map is empty).
    """

    taus: np.ndarray
    largest: np.ndarray
    has_box: np.ndarray
    boxes: np.ndarray
    counts: np.ndarray

    def boxes_at(self, t: int) -> np.ndarray:
        """int64 [n_t, 4], all contour boxes at the t-th tau."""
        start = int(self.counts[:t].sum())
        return self.boxes[start : start + int(self.counts[t])]


def _contour_boxes(binary: np.ndarray, wsol_boxes: bool) -> tuple[list[tuple], int]:
    """uint8 [H, W] (0 / 255) -> (boxes of all contours, index of the largest or -1)."""
    import cv2

    h, w = binary.shape
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return [], -1
    rects = [cv2.boundingRect(c) for c in contours]
    if wsol_boxes:
        # wsolevaluation: (x, y, x + w, y + h) with the end clipped to W - 1 / H - 1.
        boxes = [(x, y, min(x + rw, w - 1), min(y + rh, h - 1)) for x, y, rw, rh in rects]
    else:
        boxes = [(x, y, x + rw - 1, y + rh - 1) for x, y, rw, rh in rects]
    if len(contours) == 1:
        return boxes, 0
    areas = [cv2.contourArea(c) for c in contours]
    # the first of equal areas, as Python's max(contours, key=cv2.contourArea)
    return boxes, max(range(len(areas)), key=areas.__getitem__)


def scoremap_boxes(
    scoremap: np.ndarray, taus: Sequence[float] | np.ndarray, *, wsol_boxes: bool = True
) -> ScoremapBoxes:
    """Boxes of a score map at each tau, as wsolevaluation computes them for MaxBoxAcc.

    scoremap: [H, W] float in [0, 1]. The map is quantised ``q = trunc(255 m)``; at each tau the
    binary mask is ``q > int(tau * max q)``; ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``
    gives the contours (holes included) and ``cv2.boundingRect`` their boxes; the largest is the
    first of those with the largest ``cv2.contourArea``.

    ``wsol_boxes=True`` (default) reproduces wsolevaluation's box ``(x, y, x + w, y + h)`` clipped
    to ``W - 1`` / ``H - 1``, one pixel wider and taller than the tight box away from the right and
    bottom borders, so that MaxBoxAcc figures compare with published ones. ``False`` gives camcli's
    tight inclusive box ``(x, y, x + w - 1, y + h - 1)``.

    Unlike wsolevaluation, an empty mask gives NO box (wsolevaluation returns a ``[0, 0, 0, 0]``
    placeholder, which can only matter for a ground-truth box of at most 3 pixels).

    Thresholds that select the same pixels share one ``findContours`` call.
    """
    import cv2

    taus = np.asarray(taus, dtype=np.float64).reshape(-1)
    q = quantise_scoremap(scoremap)
    qmax = int(q.max())
    values = np.flatnonzero(np.bincount(q.ravel(), minlength=256))
    thr = [int(t * qmax) for t in taus.tolist()]
    # The mask q > thr only depends on how many distinct values are <= thr.
    levels = np.searchsorted(values, thr, side="right").tolist()
    cache: dict[int, tuple[list[tuple], int]] = {}
    largest: list[tuple] = []
    has_box: list[bool] = []
    boxes: list[tuple] = []
    counts: list[int] = []
    for lv in levels:
        if lv not in cache:
            if lv >= len(values):
                cache[lv] = ([], -1)
            else:
                if lv > 0:
                    _, binary = cv2.threshold(q, int(values[lv - 1]), 255, cv2.THRESH_BINARY)
                else:
                    binary = np.full_like(q, 255)
                cache[lv] = _contour_boxes(binary, wsol_boxes)
        bx, j = cache[lv]
        largest.append(bx[j] if j >= 0 else (0, 0, 0, 0))
        has_box.append(j >= 0)
        boxes.extend(bx)
        counts.append(len(bx))
    return ScoremapBoxes(
        taus,
        np.array(largest, dtype=np.int64).reshape(-1, 4),
        np.array(has_box, dtype=bool),
        np.array(boxes, dtype=np.int64).reshape(-1, 4),
        np.array(counts, dtype=np.int64),
    )


def best_iou_per_tau(
    sb: ScoremapBoxes, gt_boxes: Sequence[Sequence[int]] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per tau, the best IoU with any GT box of (the largest contour's box, any contour's box).

    Returns two float64 [T] arrays (V1, V2); 0 where there is no box.
    """
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    t = len(sb.taus)
    v1 = np.zeros(t, dtype=np.float64)
    v2 = np.zeros(t, dtype=np.float64)
    if len(gt) == 0:
        return v1, v2
    if sb.has_box.any():
        v1[sb.has_box] = box_iou(sb.largest[sb.has_box], gt).max(axis=1)
    if len(sb.boxes):
        per_box = box_iou(sb.boxes, gt).max(axis=1)
        nz = sb.counts > 0
        starts = np.concatenate([[0], np.cumsum(sb.counts)[:-1]])
        v2[nz] = np.maximum.reduceat(per_box, starts[nz])
    return v1, v2


# --------------------------------------------------------------------------------------------
# BoxAcc / MaxBoxAcc over a split
# --------------------------------------------------------------------------------------------


class BoxAccumulator:
    """BoxAcc(tau, delta) counts over a split; MaxBoxAccV1 / V2 at the end.

    ``add(scoremap, gt_boxes)`` per image (the map of the ground-truth class and that class's GT
    boxes); ``add_failed()`` for an image without a usable map (wrong at every tau).
    V1: largest contour, delta 0.5. V2: all contours, each delta of ``v2_ious`` maximised over tau
    separately, then averaged. The best tau is the first (smallest) of equal maxima.
    """

    def __init__(
        self,
        taus: Sequence[float] | np.ndarray = DEFAULT_TAUS,
        *,
        v2_ious: Sequence[float] = V2_IOUS,
        v1_iou: float = 0.5,
        wsol_boxes: bool = True,
    ) -> None:
        self.taus = np.asarray(taus, dtype=np.float64).reshape(-1)
        self.v1_iou = float(v1_iou)
        self.v2_ious = tuple(float(d) for d in v2_ious)
        self.wsol_boxes = wsol_boxes
        self.n = 0
        self.correct_v1 = np.zeros(len(self.taus), dtype=np.int64)
        self.correct_v2 = np.zeros((len(self.v2_ious), len(self.taus)), dtype=np.int64)

    def add_ious(self, v1: np.ndarray, v2: np.ndarray) -> None:
        """Count one image from its per-tau best IoUs (:func:`best_iou_per_tau`)."""
        self.n += 1
        self.correct_v1 += v1 >= self.v1_iou
        for i, d in enumerate(self.v2_ious):
            self.correct_v2[i] += v2 >= d

    def add(self, scoremap: np.ndarray, gt_boxes: Sequence[Sequence[int]]) -> None:
        sb = scoremap_boxes(scoremap, self.taus, wsol_boxes=self.wsol_boxes)
        self.add_ious(*best_iou_per_tau(sb, gt_boxes))

    def add_failed(self) -> None:
        self.n += 1

    def merge(self, other: BoxAccumulator) -> None:
        self.n += other.n
        self.correct_v1 += other.correct_v1
        self.correct_v2 += other.correct_v2

    def curves(self) -> dict:
        """``{"v1": [T], "v2": {delta: [T]}}`` BoxAcc fractions (empty lists before any image)."""
        if self.n == 0:
            return {"v1": [], "v2": {_key(d): [] for d in self.v2_ious}}
        return {
            "v1": (self.correct_v1 / self.n).tolist(),
            "v2": {_key(d): (c / self.n).tolist() for d, c in zip(self.v2_ious, self.correct_v2)},
        }

    def result(self) -> dict:
        """``maxboxacc_v1``, ``best_tau`` (V1's), ``maxboxacc_v2`` (mean over deltas),
        ``maxboxacc_v2_by_iou`` and ``best_tau_v2`` (per delta), ``boxacc`` curves and ``taus``.
        Empty dict before any image."""
        if self.n == 0:
            return {}
        acc1 = self.correct_v1 / self.n
        acc2 = self.correct_v2 / self.n
        i1 = int(np.argmax(acc1))
        i2 = np.argmax(acc2, axis=1)
        by_iou = {_key(d): float(acc2[j, i2[j]]) for j, d in enumerate(self.v2_ious)}
        # Taus are reported rounded (0.47, not 0.47000000000000003); they are labels here.
        taus = [round(float(t), 12) for t in self.taus]
        return {
            "maxboxacc_v1": float(acc1[i1]),
            "best_tau": taus[i1],
            "maxboxacc_v2": float(np.mean(list(by_iou.values()))),
            "maxboxacc_v2_by_iou": by_iou,
            "best_tau_v2": {_key(d): taus[i2[j]] for j, d in enumerate(self.v2_ious)},
            "taus": taus,
            "boxacc": self.curves(),
        }


def _key(d: float) -> str:
    return f"{d:g}"


# --------------------------------------------------------------------------------------------
# PxAP
# --------------------------------------------------------------------------------------------


class PxAPAccumulator:
    """Pixel average precision over a split (wsolevaluation's MaskEvaluator, in fractions).

    Score histograms of foreground and background pixels are accumulated with bin edges
    ``taus + [1, 2, 3]`` (taus ascending from 0); the precision-recall points are the thresholds
    ``>= edge`` from the top, and PxAP = ``sum precision[i] * (recall[i] - recall[i - 1])`` over
    the points with a positive prediction. Ignored pixels are left out.
    """

    def __init__(self, taus: Sequence[float] | np.ndarray = DEFAULT_TAUS) -> None:
        self.taus = np.asarray(taus, dtype=np.float64).reshape(-1)
        self.edges = np.concatenate([self.taus, [1.0, 2.0, 3.0]])
        self.pos = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.neg = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.n = 0

    def add(self, scoremap: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """scoremap: [H, W] float in [0, 1]; mask: [H, W] bool foreground; ignore: [H, W] bool
        pixels to leave out (None: none). All three of the same shape."""
        m = np.asarray(scoremap, dtype=np.float64)
        fg = np.asarray(mask, dtype=bool)
        if m.shape != fg.shape or (ignore is not None and np.shape(ignore) != m.shape):
            raise ValueError(f"map {m.shape} and mask {fg.shape} differ in size")
        if not np.isfinite(m).all():
            raise ValueError("the score map holds NaN or infinite values")
        keep = ~np.asarray(ignore, dtype=bool) if ignore is not None else np.ones_like(fg)
        self.pos += np.histogram(m[fg & keep], bins=self.edges)[0]
        self.neg += np.histogram(m[~fg & keep], bins=self.edges)[0]
        self.n += 1

    def merge(self, other: PxAPAccumulator) -> None:
        self.pos += other.pos
        self.neg += other.neg
        self.n += other.n

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) float64 [B + 1], from the highest threshold down; precision is NaN
        where nothing is predicted positive."""
        tp = self.pos[::-1].cumsum()
        fp = self.neg[::-1].cumsum()
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / self.pos.sum()
        return precision, recall

    def result(self) -> float:
        """PxAP in [0, 1]. Raises ValueError without foreground pixels or positive scores."""
        if self.pos.sum() <= 0:
            raise ValueError("PxAP: the masks hold no foreground pixel")
        if self.pos.sum() + self.neg.sum() <= 0:
            raise ValueError("PxAP: no pixel to score")
        precision, recall = self.curve()
        tp = self.pos[::-1].cumsum()
        fp = self.neg[::-1].cumsum()
        nz = (tp + fp)[1:] > 0
        return float((precision[1:] * np.diff(recall))[nz].sum())
