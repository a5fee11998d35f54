"""Box primitives.

Convention everywhere in camcli: a box is ``[x_min, y_min, x_max, y_max]`` in integer pixel
indices of the ORIGINAL image, 0-based and inclusive (``0 <= x_min <= x_max <= W - 1``).
"""

from __future__ import annotations

import numpy as np


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of inclusive-pixel boxes.

    a: [N, 4], b: [M, 4] (array-like, ``x_min, y_min, x_max, y_max`` inclusive).
    Returns float64 [N, M]. Width is ``x_max - x_min + 1`` (SPEC section 3):
    ``box_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]]) == 8 / 27``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
