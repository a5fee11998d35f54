"""Box accuracy from score maps: wsolevaluation's BoxAcc / MaxBoxAcc (SPEC.md section 5).

Source: Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020
(clovaai/wsolevaluation: ``compute_bboxes_from_scoremaps`` and ``BoxEvaluator``).

BoxAcc(tau, delta) is the share of images whose best IoU over (boxes of the GT-class map at
threshold tau) x (GT boxes) is >= delta. MaxBoxAccV1: the largest contour's box, delta 0.5.
MaxBoxAccV2: all contours' boxes, delta 0.3 / 0.5 / 0.7, each maximised over tau separately, then
averaged. One tau for the whole split, never per image.

Boxes are ``[x_min, y_min, x_max, y_max]`` integer pixel indices, 0-based and inclusive, IoU
with ``width = x_max - x_min + 1`` (SPEC section 3), in the pixels of the map; see
:func:`scoremap_boxes` for wsolevaluation's one-pixel-larger boxes. Pure numpy / OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from camcli.cam.boxes import box_iou
from camcli.evaluate.taus import DEFAULT_TAUS

__all__ = [
    "V2_IOUS",
    "BoxAccumulator",
    "ScoremapBoxes",
    "best_iou_per_tau",
    "quantise_scoremap",
    "scoremap_boxes",
]

V2_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
"""The IoU thresholds (deltas) MaxBoxAccV2 averages over."""


def quantise_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """wsolevaluation's quantisation of a score map: ``trunc(255 * m)``, computed in float64.

    Args:
        scoremap: [H, W] float in [0, 1].

    Returns:
        uint8 [H, W].

    Raises:
        ValueError: the map is not 2-D (or empty), holds non-finite values, or leaves [0, 1].
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
    """Boxes of one score map at every tau (inclusive ``[x_min, y_min, x_max, y_max]``).

    Attributes:
        taus: float64 [T].
        largest: int64 [T, 4], the box of the contour with the largest ``cv2.contourArea`` at
            each tau (MaxBoxAccV1), valid where ``has_box``.
        has_box: bool [T], False where the thresholded map is empty.
        boxes: int64 [N, 4], every contour's box, tau by tau (MaxBoxAccV2).
        counts: int64 [T], how many of ``boxes`` belong to each tau (0 where the thresholded
            map is empty).
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

    Args:
        scoremap: [H, W] float in [0, 1].
        taus: [T] thresholds, fractions of the map's maximum.
        wsol_boxes: wsolevaluation's boxes (True) or tight ones.

    Returns:
        A :class:`ScoremapBoxes` in the map's pixels.

    Raises:
        ValueError: a map :func:`quantise_scoremap` refuses.
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

    Args:
        sb: the map's boxes (:func:`scoremap_boxes`).
        gt_boxes: [G, 4] ground-truth boxes in the map's pixels, inclusive.

    Returns:
        Two float64 [T] arrays (V1, V2); 0 where there is no box (or no GT box).
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

    Args:
        taus: [T] thresholds.
        v2_ious: the deltas of MaxBoxAccV2.
        v1_iou: the delta of MaxBoxAccV1.
        wsol_boxes: wsolevaluation's boxes (True) or tight ones, for :meth:`add`.
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
        """Count one image from its per-tau best IoUs.

        Args:
            v1: float [T], best IoU of the largest contour's box (:func:`best_iou_per_tau`).
            v2: float [T], best IoU of any contour's box.
        """
        self.n += 1
        self.correct_v1 += v1 >= self.v1_iou
        for i, d in enumerate(self.v2_ious):
            self.correct_v2[i] += v2 >= d

    def add(self, scoremap: np.ndarray, gt_boxes: Sequence[Sequence[int]]) -> None:
        """Count one image from its map.

        Args:
            scoremap: [H, W] float in [0, 1], the map of the image's ground-truth class.
            gt_boxes: that class's GT boxes in the map's pixels, inclusive.

        Raises:
            ValueError: a map :func:`quantise_scoremap` refuses.
        """
        sb = scoremap_boxes(scoremap, self.taus, wsol_boxes=self.wsol_boxes)
        self.add_ious(*best_iou_per_tau(sb, gt_boxes))

    def add_failed(self) -> None:
        """Count one image without a usable map: wrong at every tau."""
        self.n += 1

    def merge(self, other: BoxAccumulator) -> None:
        """Add the counts of another accumulator over the same taus and deltas."""
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
