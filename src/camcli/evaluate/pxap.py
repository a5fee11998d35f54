"""PxAP: pixel average precision of score maps against masks (SPEC.md section 5).

Source: Choe et al., CVPR 2020 (clovaai/wsolevaluation ``MaskEvaluator``): the precision-recall
curve over all pixels of all images as tau sweeps, and the area under it, computed from score
histograms (in fractions here, not percent). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camcli.evaluate.taus import DEFAULT_TAUS

__all__ = ["PxAPAccumulator"]


class PxAPAccumulator:
    """Pixel average precision over a split (wsolevaluation's MaskEvaluator, in fractions).

    Score histograms of foreground and background pixels are accumulated with bin edges
    ``taus + [1, 2, 3]`` (taus ascending from 0); the precision-recall points are the thresholds
    ``>= edge`` from the top, and PxAP = ``sum precision[i] * (recall[i] - recall[i - 1])`` over
    the points with a positive prediction. Ignored pixels are left out.

    Args:
        taus: [T] ascending thresholds from 0, as the maps' values (maps in [0, 1]).
    """

    def __init__(self, taus: Sequence[float] | np.ndarray = DEFAULT_TAUS) -> None:
        self.taus = np.asarray(taus, dtype=np.float64).reshape(-1)
        self.edges = np.concatenate([self.taus, [1.0, 2.0, 3.0]])
        self.pos = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.neg = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.n = 0

    def add(self, scoremap: np.ndarray, mask: np.ndarray, ignore: np.ndarray | None = None) -> None:
        """Count the pixels of one image.

        Args:
            scoremap: [H, W] float in [0, 1].
            mask: [H, W] bool, the foreground.
            ignore: [H, W] bool, pixels to leave out (None: none).

        Raises:
            ValueError: the shapes differ, or the map holds non-finite values.
        """
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
        """Add the histograms of another accumulator over the same taus."""
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
