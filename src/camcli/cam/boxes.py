"""Boxes from maps: the paper's rule, every component, IoU, and the rule switch of ``bbox``.

Convention everywhere in camcli (SPEC section 3): a box is ``[x_min, y_min, x_max, y_max]`` in
integer pixel indices of the ORIGINAL image, 0-based and inclusive
(``0 <= x_min <= x_max <= W - 1``); its width is ``x_max - x_min + 1``.

Rules (SPEC section 2):

- ``paper``: threshold at ``tau`` of each map's max (:func:`threshold_masks`), then the tight
  box of the largest 8-connected component (:func:`paper_box`); Zhou et al., CVPR 2016,
  section 3.1 (``tau = 0.2``).
- ``all``: the tight box of every component (:func:`component_boxes`).
- ``dt-box``: the authors' official ``dt_box`` code, in :mod:`camcli.cam.dtbox`.

Thresholding runs on the device of the input maps; connected components run on the CPU with
OpenCV (masks are copied there). Nothing reads files or prints.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from camcli.cam._common import Box, is_torch_tensor, to_numpy
from camcli.cam.dtbox import DT_THRESHOLDS, dt_boxes_inclusive, quantize_map, quantize_rows

__all__ = [
    "RULES",
    "Box",
    "box_iou",
    "boxes_for_map",
    "boxes_for_rows",
    "boxes_for_maps",
    "component_boxes",
    "paper_box",
    "threshold_masks",
    "threshold_u8",
]

RULES = ("paper", "dt-box", "all")
"""The box rules :func:`boxes_for_maps` knows (SPEC section 2)."""


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of inclusive-pixel boxes (SPEC section 3).

    Width is ``x_max - x_min + 1``:
    ``box_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]]) == 8 / 27``.

    Args:
        a: ``[N, 4]`` array-like of ``x_min, y_min, x_max, y_max`` (inclusive); anything
            that reshapes to ``[-1, 4]``.
        b: ``[M, 4]`` array-like, same convention.

    Returns:
        ``[N, M]`` float64 numpy array in [0, 1]; 0 where the union is empty.
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


# ---------------------------------------------------------------------------------------------
# `paper` and `all` rules
# ---------------------------------------------------------------------------------------------


def threshold_masks(maps, tau: float):
    """Binarise maps at a fraction of each map's own maximum (SPEC section 2, `paper` rule).

    A pixel is kept iff ``value > tau * max(map)`` STRICTLY, the max taken per ``[H, W]`` map.
    A map whose max is NaN keeps no pixel; an all-zero map keeps none either (``0 > 0`` is
    false). The comparison runs in the map's own dtype (``tau * max`` is rounded to it), so a
    pixel equal to ``tau * max`` in that dtype is dropped.

    Args:
        maps: ``[..., H, W]`` float, a torch tensor (any device) or a numpy array; usually
            ``[N, H, W]`` normalised CAMs.
        tau: the fraction of the max, a finite number (the paper uses 0.2).

    Returns:
        A bool tensor on the input's device (torch input) or a bool numpy array (numpy input)
        of the same shape.

    Raises:
        ValueError: ``tau`` is not finite, or ``maps`` has fewer than two dimensions.
    """
    tau = float(tau)
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau!r} is not a finite number; pass e.g. --tau 0.2")
    if is_torch_tensor(maps):
        if maps.ndim < 2:
            raise ValueError(f"maps must be [..., H, W], got shape {tuple(maps.shape)}")
        peak = maps.amax(dim=(-2, -1), keepdim=True)
        return maps > peak * tau
    arr = np.asarray(maps)
    if arr.ndim < 2:
        raise ValueError(f"maps must be [..., H, W], got shape {arr.shape}")
    peak = arr.max(axis=(-2, -1), keepdims=True)
    limit = peak * arr.dtype.type(tau) if arr.dtype.kind == "f" else peak * tau
    return arr > limit


def threshold_u8(m: np.ndarray, tau: float) -> np.ndarray:
    """:func:`threshold_masks` of ONE map straight to a uint8 mask, in one OpenCV call.

    ``255`` where ``m > tau * max(m)`` (compared in float32, ``tau * max`` rounded to
    float32, exactly as :func:`threshold_masks` compares a float32 map), ``0`` elsewhere; a map
    whose max is NaN keeps no pixel.

    Args:
        m: ``[H, W]`` float32 numpy array (other dtypes go through :func:`threshold_masks`).
        tau: the fraction of the max, a finite number.

    Returns:
        ``[H, W]`` uint8 numpy array of 0 and 255 (OpenCV's foreground is nonzero).

    Raises:
        ValueError: ``tau`` is not finite or ``m`` is not 2-D.
    """
    tau = float(tau)
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau!r} is not a finite number; pass e.g. --tau 0.2")
    if m.ndim != 2:
        raise ValueError(f"map must be 2-D [H, W], got shape {m.shape}")
    if m.dtype != np.float32:
        return threshold_masks(m, tau).astype(np.uint8) * np.uint8(255)
    limit = np.float32(m.max()) * np.float32(tau)
    if np.isnan(limit):
        return np.zeros(m.shape, np.uint8)
    return _greater_u8(m, limit)


def _greater_u8(m: np.ndarray, limit: np.float32) -> np.ndarray:
    """uint8 255 where float32 ``m > limit``, else 0: one OpenCV call."""
    if m.size < 16:  # OpenCV takes tiny arrays for scalars: compare in numpy (same float32)
        return (m > limit).astype(np.uint8) * np.uint8(255)
    return cv2.compare(np.ascontiguousarray(m), float(limit), cv2.CMP_GT)


def threshold_rows(rows, shape: tuple[int, int], tau: float) -> np.ndarray:
    """:func:`threshold_u8` of a float32 map given in row strips (large maps never whole).

    Args:
        rows: a callable returning an iterator of ``(y0, y1, strip)`` (float32
            ``[y1 - y0, W]``, top to bottom); called a second time when the map comes in more
            than one strip (the max comes first).
        shape: ``(H, W)``.
        tau: the fraction of the max.

    Returns:
        ``[H, W]`` uint8 0/255, equal to ``threshold_u8`` of the whole map.
    """
    tau = float(tau)
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau!r} is not a finite number; pass e.g. --tau 0.2")
    peak, whole = np.float32(-np.inf), None
    for y0, y1, strip in rows():
        if y0 == 0 and y1 == shape[0]:
            whole = strip
            break
        if strip.size:
            peak = np.float32(np.max([peak, np.float32(strip.max())]))  # NaN wins
    if whole is not None:
        return threshold_u8(np.asarray(whole, dtype=np.float32), tau)
    limit = peak * np.float32(tau)
    out = np.zeros(shape, np.uint8)
    if np.isnan(limit):
        return out
    for y0, y1, strip in rows():
        out[y0:y1] = _greater_u8(strip, limit)
    return out


def _components(mask) -> list[tuple[int, Box]]:
    """8-connected components of a 2-D mask as ``(pixel_count, box)``, largest first.

    Ties in pixel count are broken by raster order: the component whose first pixel (row-major
    scan, top row first, then left to right) comes first wins. This is independent of the label
    numbering of the OpenCV algorithm used underneath.
    """
    m = _mask_u8(mask)
    if m.size == 0 or cv2.countNonZero(m) == 0:
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
    areas = stats[1:, cv2.CC_STAT_AREA]
    # raster position of each component's first pixel, computed only where areas tie: it lies
    # in the component's top row, at the leftmost pixel of that label in that row
    uniq, counts = np.unique(areas, return_counts=True)
    tied = set(uniq[counts > 1].tolist())
    comps = []
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        first = 0
        if area in tied:
            first = y * m.shape[1] + int(np.flatnonzero(labels[y, x : x + w] == k)[0]) + x
        comps.append((area, first, (x, y, x + w - 1, y + h - 1)))
    comps.sort(key=lambda c: (-c[0], c[1]))
    return [(area, box) for area, _, box in comps]


def paper_box(mask) -> Box | None:
    """The `paper` rule: the tight box of the largest 8-connected component of a mask.

    SPEC section 2; Zhou et al., CVPR 2016, section 3.1. Size is the pixel count;
    diagonal-only contact joins pixels (8-connectivity). Ties: the component whose first pixel
    in raster order (row-major: smallest row, then smallest column) comes first.

    Args:
        mask: ``[H, W]`` bool (numpy, a torch tensor on any device - copied to the CPU - or
            anything where nonzero means true).

    Returns:
        ``(x_min, y_min, x_max, y_max)`` Python ints, inclusive, in the mask's pixel grid; or
        ``None`` for an empty mask (no fake box).

    Raises:
        ValueError: the mask is not 2-D.
    """
    m = _mask_u8(mask)
    if m.size == 0 or cv2.countNonZero(m) == 0:
        return None
    # Label only the foreground's bounding rectangle (a view): nothing outside it is foreground,
    # so its components are the mask's.
    x0, y0, w0, h0 = cv2.boundingRect(m)
    roi = m[y0 : y0 + h0, x0 : x0 + w0]
    # 8-connected components number at most ceil(H/2) * ceil(W/2): 16-bit labels when they fit
    most = (h0 + 1) // 2 * ((w0 + 1) // 2)
    ltype = cv2.CV_16U if most < 65535 else cv2.CV_32S
    n, labels = cv2.connectedComponents(roi, connectivity=8, ltype=ltype)
    if n == 2:  # one component: the box of every foreground pixel
        return (x0, y0, x0 + w0 - 1, y0 + h0 - 1)
    # labels only (no OpenCV stats, which cost twice the labelling): areas by counting, the
    # box of the winner alone
    areas = _label_counts(labels, n)[1:]
    best = np.flatnonzero(areas == areas.max()) + 1
    k = int(best[0])
    if len(best) > 1:  # a tie: the component whose first pixel comes first in raster order
        # one pass for every label's first pixel (a scan per tied label would cost
        # components x pixels on a checkerboard); raster order in the ROI is the mask's
        _, first = np.unique(labels.ravel(), return_index=True)
        k = int(best[np.argmin(first[best])])
    x, y, w, h = cv2.boundingRect((labels == k).view(np.uint8))
    return (x0 + x, y0 + y, x0 + x + w - 1, y0 + y + h - 1)


def _label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Pixels per label of a 16-bit (or 32-bit) label image with labels ``0..n-1``: int64
    ``[n]``. OpenCV's histogram (twice as fast as ``np.bincount``, which widens every label
    to 64 bits) where its float32 counts are exact (under 2**24 pixels), else ``bincount``."""
    if labels.dtype == np.uint16 and labels.size < (1 << 24):
        hist = cv2.calcHist([labels], [0], None, [n], [0, n])
        return hist.ravel().astype(np.int64)
    return np.bincount(labels.ravel(), minlength=n)


def _mask_u8(mask) -> np.ndarray:
    """A 2-D mask as C-contiguous uint8 (nonzero is foreground), as OpenCV wants it."""
    m = to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    if m.dtype != np.uint8 or not m.flags.c_contiguous:  # uint8: nonzero is foreground as is
        m = np.ascontiguousarray(m != 0, dtype=np.uint8)
    return m


def component_boxes(mask) -> list[Box]:
    """The `all` rule: the tight box of every 8-connected component of a mask.

    Args:
        mask: ``[H, W]`` bool, as for :func:`paper_box`.

    Returns:
        Inclusive ``(x_min, y_min, x_max, y_max)`` boxes, sorted by pixel count, largest first;
        ties by raster order of the components' first pixels (as :func:`paper_box`). An empty
        mask gives ``[]``.

    Raises:
        ValueError: the mask is not 2-D.
    """
    return [box for _, box in _components(mask)]


# ---------------------------------------------------------------------------------------------
# The rule switch of the `bbox` command
# ---------------------------------------------------------------------------------------------


def boxes_for_maps(
    maps, rule: str = "paper", tau: float = 0.2, thresholds: Sequence[int] = DT_THRESHOLDS
) -> list[list[tuple[Box, str]]]:
    """Boxes of a stack of normalised maps under one rule (SPEC section 2).

    Rules:

    - ``"paper"``: ``threshold_u8`` (= ``threshold_masks(maps, tau)``, on the CPU), then per map the
      largest 8-connected component -> ``[(box, "largest")]``, or ``[]`` when the mask is empty.
    - ``"all"``: every component, largest first -> ``[(box, "component"), ...]``.
    - ``"dt-box"``: ``dt_boxes_inclusive(map, thresholds)`` (``tau`` unused) -> the loose
      (first) and tight (second; the first again when there is only one) boxes,
      ``[(loose, "loose"), (tight, "tight")]``, or ``[]`` when there is none.

    Args:
        maps: ``[k, H, W]`` float (torch on any device, or numpy), normalised (e.g. min-max).
        rule: one of :data:`RULES`.
        tau: the `paper`/`all` threshold, a fraction of each map's max.
        thresholds: the `dt-box` thresholds (of 255), see :func:`camcli.cam.dtbox.dt_boxes`.

    Returns:
        k lists, one per map in order, of ``(box, tag)`` pairs; boxes are inclusive
        ``(x_min, y_min, x_max, y_max)`` Python ints in the maps' pixel grid.

    Raises:
        ValueError: an unknown rule, ``maps`` not 3-D, a non-finite ``tau``, or bad
            ``thresholds``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {', '.join(RULES)}")
    ndim = maps.ndim if is_torch_tensor(maps) else np.asarray(maps).ndim
    if ndim != 3:
        raise ValueError(f"maps must be [k, H, W], got {ndim} dimensions")
    return [boxes_for_map(m, rule, tau, thresholds) for m in maps]


def boxes_for_map(
    m, rule: str = "paper", tau: float = 0.2, thresholds: Sequence[int] = DT_THRESHOLDS
) -> list[tuple[Box, str]]:
    """:func:`boxes_for_maps` of ONE ``[H, W]`` map (torch on any device, or numpy).

    The float map is only read once: `paper`/`all` threshold it straight to a uint8 mask
    (:func:`threshold_u8`), `dt-box` quantises it to uint8 (:func:`camcli.cam.dtbox.quantize_map`);
    everything after works on that mask, so a caller that drops its map first keeps one
    uint8 image per class in memory.

    Raises:
        ValueError: as :func:`boxes_for_maps`.
    """
    if rule not in RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {', '.join(RULES)}")
    arr = to_numpy(m)
    del m  # the caller's map is freed as soon as it is quantised (when nothing else holds it)
    if rule == "dt-box":
        gray = quantize_map(arr)
        del arr
        return _dt_pair(dt_boxes_inclusive(gray, thresholds))
    mask = threshold_u8(arr, tau)
    del arr
    return _mask_boxes(mask, rule)


def boxes_for_rows(
    rows,
    shape: tuple[int, int],
    rule: str = "paper",
    tau: float = 0.2,
    thresholds: Sequence[int] = DT_THRESHOLDS,
) -> list[tuple[Box, str]]:
    """:func:`boxes_for_map` of a map given in row strips, for large images: the float map
    is never whole in memory, only its uint8 mask (or quantised map).

    Args:
        rows: a callable returning an iterator of ``(y0, y1, float32 strip)``, top to bottom
            (e.g. ``lambda: upsample_rows(...)``); called twice when there is more than one
            strip. A single strip covering every row is the whole map (read once).
        shape: ``(H, W)``.
        rule, tau, thresholds: as :func:`boxes_for_maps`.

    Returns:
        The boxes of :func:`boxes_for_map` on the whole map.
    """
    if rule not in RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {', '.join(RULES)}")
    if rule == "dt-box":
        return _dt_pair(dt_boxes_inclusive(quantize_rows(rows, shape), thresholds))
    return _mask_boxes(threshold_rows(rows, shape, tau), rule)


def _dt_pair(boxes: list[Box]) -> list[tuple[Box, str]]:
    return [(boxes[0], "loose"), (boxes[min(1, len(boxes) - 1)], "tight")] if boxes else []


def _mask_boxes(mask: np.ndarray, rule: str) -> list[tuple[Box, str]]:
    if rule == "paper":
        box = paper_box(mask)
        return [(box, "largest")] if box is not None else []
    return [(b, "component") for b in component_boxes(mask)]
