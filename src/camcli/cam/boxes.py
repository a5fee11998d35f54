"""Box primitives.

Convention everywhere in camcli: a box is ``[x_min, y_min, x_max, y_max]`` in integer pixel
indices of the ORIGINAL image, 0-based and inclusive (``0 <= x_min <= x_max <= W - 1``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
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


# ---------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]
"""An inclusive pixel box ``(x_min, y_min, x_max, y_max)`` of Python ints."""

XYWH = tuple[int, int, int, int]
"""An OpenCV-style rectangle ``(x, y, w, h)`` as printed by the official ``dt_box`` binary."""

DT_THRESHOLDS: tuple[int, ...] = (20, 100, 110)
"""The thresholds (of 255) the authors ran ``dt_box`` with (``generate_bbox.m``)."""

RULES = ("paper", "dt-box", "all")


def _is_torch_tensor(x: Any) -> bool:
    """True when ``x`` is a torch tensor, without importing torch if nobody else did."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device, or array-like)."""
    if _is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# `paper` and `all` rules
# ---------------------------------------------------------------------------------------------


def threshold_masks(maps, tau: float):
    """Binarise maps at a fraction of each map's own maximum.

    maps: ``[..., H, W]`` float, a torch tensor (any device) or a numpy array; usually
    ``[N, H, W]`` normalised CAMs. A pixel is kept iff ``value > tau * max(map)`` STRICTLY, the
    max taken per ``[H, W]`` map. Returns a bool tensor on the input's device (torch input) or a
    bool numpy array (numpy input) of the same shape. A map whose max is NaN keeps no pixel; an
    all-zero map keeps none either (``0 > 0`` is false). The comparison runs in the map's own
    dtype (``tau * max`` is rounded to it), so a pixel equal to ``tau * max`` in that dtype is
    dropped.
    """
    tau = float(tau)
    if not np.isfinite(tau):
        raise ValueError(f"tau={tau!r} is not a finite number; pass e.g. --tau 0.2")
    if _is_torch_tensor(maps):
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


def _components(mask) -> list[tuple[int, Box]]:
    """8-connected components of a 2-D mask as ``(pixel_count, box)``, largest first.

    Ties in pixel count are broken by raster order: the component whose first pixel (row-major
    scan, top row first, then left to right) comes first wins. This is independent of the label
    numbering of the OpenCV algorithm used underneath.
    """
    m = _to_numpy(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    m = np.ascontiguousarray(m != 0, dtype=np.uint8)
    if not m.any():
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

    mask: ``[H, W]`` bool (numpy, CPU torch tensor, or anything nonzero-means-true). Size is the
    pixel count; diagonal-only contact joins pixels (8-connectivity). Ties: the component whose
    first pixel in raster order (row-major: smallest row, then smallest column) comes first.
    Returns ``(x_min, y_min, x_max, y_max)`` inclusive, or ``None`` for an empty mask.
    """
    comps = _components(mask)
    return comps[0][1] if comps else None


def component_boxes(mask) -> list[Box]:
    """The `all` rule: the tight box of every 8-connected component of ``mask`` ``[H, W]``.

    Sorted by pixel count, largest first; ties by raster order of the components' first pixels
    (as :func:`paper_box`). An empty mask gives ``[]``.
    """
    return [box for _, box in _components(mask)]


# ---------------------------------------------------------------------------------------------
# `dt-box` rule: the authors' C++ `dt_box` (zhoubolei/CAM, bboxgenerator/dt_box.cpp + dt.c)
# ---------------------------------------------------------------------------------------------


def quantize_map(heatmap) -> np.ndarray:
    """The uint8 heatmap `dt_box` reads, from a map.

    heatmap: ``[H, W]``. Rules by dtype:

    - ``uint8`` (e.g. a heatmap jpg read with ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``, the
      way the official binary's ``cvLoadImage(path, 0)`` read it): taken as is.
    - any other real dtype (float, other ints, bool; numpy or torch on any device): as float64,
      non-finite values and negatives set to 0 (as Matlab's ``imwrite`` clips), then
      ``floor(255 * m / max(m) + 0.5)`` - round half up, which for ``m >= 0`` is Matlab's
      ``im2uint8`` rounding in the official ``ILSVRC_generate_heatmap.m``. A map whose max is
      ``<= 0`` gives all zeros (and so no box).
    """
    m = _to_numpy(heatmap)
    if m.ndim != 2:
        raise ValueError(
            f"heatmap must be 2-D [H, W], got shape {m.shape}; read jpgs with cv2.IMREAD_GRAYSCALE"
        )
    if m.dtype == np.uint8:
        return np.ascontiguousarray(m)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"heatmap dtype {m.dtype} is not a real number type")
    m = m.astype(np.float64)
    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
    peak = m.max() if m.size else 0.0
    if peak <= 0:
        return np.zeros(m.shape, np.uint8)
    return np.floor(m * (255.0 / peak) + 0.5).clip(0, 255).astype(np.uint8)


def _dt_erode(binary: np.ndarray) -> np.ndarray:
    """The relative erosion of ``dt.c``'s ``dt_binary`` followed by ``> 10``.

    binary: ``[H, W]`` bool. Exact Euclidean distance of every foreground pixel to the nearest
    background pixel (pixels outside the image are not background), scaled by ``255 / maxdist``
    and rounded half up; a pixel stays iff the result is ``> 10``. A mask that is all foreground
    or all background is returned unchanged (the C code leaves such an image as it is).
    """
    if binary.all() or not binary.any():
        return binary.copy()
    d = cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # cv2 returns float32; recover the exact integer squared distances and redo the C maths in
    # float64: sqrt, then s = d * (255 / (max - min)) with min = 0, then (int)(s + 0.5).
    dist = np.sqrt(np.rint(d.astype(np.float64) ** 2))
    scaled = np.floor(dist * (255.0 / dist.max()) + 0.5)
    return scaled > 10


def _limit(v: int, lo: int, hi: int) -> int:
    """``LIMIT`` of dt_box.cpp: ``lo`` if ``v < lo``, else ``hi`` if ``v > hi``, else ``v``.

    Note: with ``hi < lo`` a non-negative ``v`` becomes ``hi`` (negative), as in the C code.
    """
    return lo if v < lo else (min(v, hi))


def _contour_rects(eroded: np.ndarray) -> list[XYWH]:
    """Clamped bounding rectangles of every contour of ``eroded`` (RETR_CCOMP: outer + holes).

    The OpenCV 2.x ``findContours`` the binary was built against zeroed the image's 1-pixel
    frame before tracing (OpenCV >= 3.2 pads instead); that is reproduced here, so a region
    touching the image edge starts at pixel 1, as in the official output.
    """
    H, W = eroded.shape
    img = eroded.astype(np.uint8)
    img[0, :] = 0
    img[-1, :] = 0
    img[:, 0] = 0
    img[:, -1] = 0
    found = cv2.findContours(img, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    contours = found[-2]
    rects = []
    for c in contours:
        bx, by, bw, bh = (int(v) for v in cv2.boundingRect(c))
        rects.append(
            (
                _limit(bx, 0, W - 5),
                _limit(by, 0, H - 5),
                _limit(bw, 0, W - bx - 5),  # uses the unclamped x, as the C code does
                _limit(bh, 0, H - by - 5),
            )
        )
    return rects


def _c_int(x: float) -> int:
    """C's double -> int conversion (truncation toward zero)."""
    return int(x)


def _big_overlap(a: XYWH, b: XYWH) -> bool:
    """dt_box.cpp's test: intersection (exclusive ends) > int(0.5 * max(area_a, area_b))."""
    t = _c_int(max(a[2] * a[3], b[2] * b[3]) * 0.5)
    xo = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    yo = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return xo * yo > t


def _dt_merge(rects: list[XYWH]) -> list[XYWH]:
    """Greedy suppression of dt_box.cpp, skip included.

    For each kept box i, each later box j: j is deleted when it overlaps i by more than half
    the larger area; after a deletion the loop index still advances, so the box that slid into
    slot j is NOT compared with i (it may survive although it overlaps i).
    """
    out = list(rects)
    i = 0
    while i < len(out):
        j = i + 1
        while j < len(out):
            if _big_overlap(out[i], out[j]):
                del out[j]
            j += 1
        i += 1
    return out


def _check_thresholds(thresholds) -> tuple[int, ...]:
    ths = tuple(thresholds)
    if not ths or any(
        not isinstance(t, (int, np.integer)) or isinstance(t, bool) or not 0 <= t <= 254
        for t in ths
    ):
        raise ValueError(
            f"dt-box thresholds {thresholds!r} must be integers in 0..254 (of 255), e.g. 20 100 110"
        )
    return tuple(int(t) for t in ths)


def dt_boxes(heatmap, thresholds=DT_THRESHOLDS) -> list[XYWH]:
    """The official ``dt_box`` boxes of one heatmap, as ``(x, y, w, h)`` like its text output.

    heatmap: ``[H, W]``, quantised by :func:`quantize_map` (uint8 taken as is; other dtypes
    max-normalised to ``round(255 * m / max m)``). For each threshold t (of 255): binarise
    (``> t``); relative erosion (exact Euclidean distance to the background scaled by
    ``255 / maxdist`` and rounded half up, keep ``> 10``; all-foreground / all-background masks
    unchanged); the 1-pixel frame set to 0 (OpenCV 2.x ``findContours``); every contour of
    ``findContours(RETR_CCOMP)`` (outer borders and holes) gives its ``boundingRect`` clamped
    as ``x in [0, W-5]``, ``y in [0, H-5]``, ``w <= W - x_raw - 5``, ``h <= H - y_raw - 5``
    (a contour starting right of ``W-5`` keeps the C code's negative width). All thresholds'
    rectangles are pooled in threshold then contour order, sorted by ``w * h`` descending
    (stable; the C++ ``std::sort`` leaves ties in an unspecified order), then the greedy
    suppression of :func:`_dt_merge` (with the C loop's skip) is applied. Largest box first.

    Differences from the binary: invalid thresholds raise ``ValueError`` (the binary silently
    used 30 90 150 unless ``0 < t0 < t1 < t2 < 255``); any number of thresholds is accepted.
    """
    ths = _check_thresholds(thresholds)
    gray = quantize_map(heatmap)
    rects: list[XYWH] = []
    for t in ths:
        rects.extend(_contour_rects(_dt_erode(gray > t)))
    rects.sort(key=lambda r: -(r[2] * r[3]))
    return _dt_merge(rects)


def xywh_to_box(rect: XYWH, width: int, height: int) -> Box:
    """An OpenCV ``(x, y, w, h)`` rectangle as an inclusive box inside a ``width x height`` image.

    ``x_max = x + w - 1`` (SPEC section 3). A degenerate width or height (``<= 0``, which the
    C clamps can produce next to the right/bottom edge) becomes one pixel; every coordinate is
    clipped to the image.
    """
    x, y, w, h = (int(v) for v in rect)
    x0 = min(max(x, 0), width - 1)
    y0 = min(max(y, 0), height - 1)
    x1 = min(max(x + max(w, 1) - 1, x0), width - 1)
    y1 = min(max(y + max(h, 1) - 1, y0), height - 1)
    return (x0, y0, x1, y1)


def dt_boxes_inclusive(heatmap, thresholds=DT_THRESHOLDS) -> list[Box]:
    """:func:`dt_boxes` as inclusive ``(x_min, y_min, x_max, y_max)`` boxes (same order/count).

    Each ``(x, y, w, h)`` goes through :func:`xywh_to_box` with the heatmap's own size.
    """
    h, w = _to_numpy(heatmap).shape[-2:]
    return [xywh_to_box(r, w, h) for r in dt_boxes(heatmap, thresholds)]


# ---------------------------------------------------------------------------------------------
# Tight/loose heuristic (the 37.1 % ILSVRC test entry)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guess:
    """One of the five tight/loose guesses.

    class_rank: position of the class in the ranked list given (0 = most confident).
    kind: ``"loose"`` (first, largest dt-box box) or ``"tight"`` (second box).
    box: the box, or ``None`` when the class's map gave no box at all (``reason`` says so);
    such a guess must not be written to a submission.
    """

    class_rank: int
    kind: str
    box: Any | None
    reason: str | None = None


_TIGHT_LOOSE_PATTERN = (
    (0, "loose"),
    (0, "tight"),
    (1, "loose"),
    (1, "tight"),
    (2, "loose"),
)


def tight_loose_boxes(per_class_dt_boxes: Sequence[Sequence[Any]]) -> list[Guess]:
    """The five tight/loose guesses from the dt-box boxes of the top-3 classes' maps.

    per_class_dt_boxes: for each class, most confident first, its dt-box boxes largest first
    (as :func:`dt_boxes_inclusive` returns them; any box format is passed through). Only the
    first three classes are used. Returns, in order, (class 0, loose), (class 0, tight),
    (class 1, loose), (class 1, tight), (class 2, loose): loose = first box, tight = second; a
    class with one box repeats it as its tight box. A class with ZERO boxes still gets its
    entries, with ``box=None`` and a reason (no fake box); callers skip them, so that image has
    fewer than five groups. With fewer than three classes given, only their entries are
    returned.
    """
    out: list[Guess] = []
    for rank, kind in _TIGHT_LOOSE_PATTERN:
        if rank >= len(per_class_dt_boxes):
            break
        boxes = list(per_class_dt_boxes[rank])
        if not boxes:
            out.append(
                Guess(
                    rank,
                    kind,
                    None,
                    "no dt-box box: the map is empty at every threshold",
                )
            )
            continue
        box = boxes[0] if kind == "loose" or len(boxes) == 1 else boxes[1]
        out.append(Guess(rank, kind, box))
    return out


# ---------------------------------------------------------------------------------------------
# Convenience for the `bbox` command
# ---------------------------------------------------------------------------------------------


def boxes_for_maps(
    maps, rule: str = "paper", tau: float = 0.2, thresholds=DT_THRESHOLDS
) -> list[list[tuple[Box, str]]]:
    """Boxes of a stack of normalised maps under one rule.

    maps: ``[k, H, W]`` float (torch on any device, or numpy), normalised (e.g. min-max).
    rule:

    - ``"paper"``: ``threshold_masks(maps, tau)`` (on the maps' device), then per map the
      largest 8-connected component -> ``[(box, "largest")]``, or ``[]`` when the mask is empty.
    - ``"all"``: every component, largest first -> ``[(box, "component"), ...]``.
    - ``"dt-box"``: ``dt_boxes_inclusive(map, thresholds)`` (``tau`` unused) -> the loose
      (first) and tight (second; the first again when there is only one) boxes,
      ``[(loose, "loose"), (tight, "tight")]``, or ``[]`` when there is none.

    Boxes are inclusive ``(x_min, y_min, x_max, y_max)`` in the maps' pixel grid.
    """
    if rule not in RULES:
        raise ValueError(f"unknown box rule {rule!r}; choose one of {', '.join(RULES)}")
    ndim = maps.ndim if _is_torch_tensor(maps) else np.asarray(maps).ndim
    if ndim != 3:
        raise ValueError(f"maps must be [k, H, W], got {ndim} dimensions")
    out: list[list[tuple[Box, str]]] = []
    if rule == "dt-box":
        for m in _to_numpy(maps):
            boxes = dt_boxes_inclusive(m, thresholds)
            out.append(
                [(boxes[0], "loose"), (boxes[min(1, len(boxes) - 1)], "tight")] if boxes else []
            )
        return out
    masks = threshold_masks(maps, tau)
    masks = _to_numpy(masks).astype(np.uint8)
    for mask in masks:
        if rule == "paper":
            box = paper_box(mask)
            out.append([(box, "largest")] if box is not None else [])
        else:
            out.append([(b, "component") for b in component_boxes(mask)])
    return out
