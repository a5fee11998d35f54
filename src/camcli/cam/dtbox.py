"""The `dt-box` rule and the tight/loose heuristic: the authors' official box code.

SPEC section 2 (`dt-box` rule, tight/loose heuristic). The reference is the C++ ``dt_box`` the
authors ran (zhoubolei/CAM, ``bboxgenerator/dt_box.cpp`` + ``dt.c``, driven by
``generate_bbox.m``), not the paper's text: the paper's own rule (threshold at 20 % of the max,
largest connected component) is in :mod:`camcli.cam.boxes`.

Boxes come in two conventions here:

- ``XYWH``: OpenCV's ``(x, y, w, h)`` as ``dt_box`` prints it, end exclusive (``x + w`` is one
  past the last column). :func:`dt_boxes` returns these, to compare with the binary's output.
- ``Box``: camcli's inclusive ``(x_min, y_min, x_max, y_max)`` (SPEC section 3), with
  ``x_max = x + w - 1``. :func:`dt_boxes_inclusive` returns these.

Everything runs on the CPU with numpy and OpenCV: a torch map on any device is copied to the CPU
first. Nothing reads files or prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from camcli.cam._common import Box, to_numpy
from camcli.sysinfo import release_free_memory

__all__ = [
    "DT_THRESHOLDS",
    "XYWH",
    "Guess",
    "dt_boxes",
    "dt_boxes_inclusive",
    "quantize_map",
    "quantize_rows",
    "tight_loose_boxes",
    "xywh_to_box",
]

XYWH = tuple[int, int, int, int]
"""An OpenCV-style rectangle ``(x, y, w, h)`` as printed by the official ``dt_box`` binary."""

DT_THRESHOLDS: tuple[int, ...] = (20, 100, 110)
"""The thresholds (of 255) the authors ran ``dt_box`` with (``generate_bbox.m``; SPEC section 2)."""


# ---------------------------------------------------------------------------------------------
# Quantisation and erosion
# ---------------------------------------------------------------------------------------------


def quantize_map(heatmap) -> np.ndarray:
    """The uint8 heatmap `dt_box` reads, from a map (SPEC section 2, "quantise").

    Args:
        heatmap: ``[H, W]`` map, numpy array or torch tensor on any device. Rules by dtype:

            - ``uint8`` (e.g. a heatmap jpg read with ``cv2.imread(path,
              cv2.IMREAD_GRAYSCALE)``, the way the official binary's ``cvLoadImage(path, 0)``
              read it): taken as is.
            - any other real dtype (float, other ints, bool): as float64, non-finite values and
              negatives set to 0 (as Matlab's ``imwrite`` clips), then
              ``floor(255 * m / max(m) + 0.5)`` - round half up, which for ``m >= 0`` is
              Matlab's ``im2uint8`` rounding in the official ``ILSVRC_generate_heatmap.m``.

    Returns:
        ``[H, W]`` uint8 numpy array (C-contiguous) in 0..255. A map whose max is ``<= 0``
        gives all zeros (and so no box).

    Raises:
        ValueError: the map is not 2-D, or its dtype is not a real number type.
    """
    m = to_numpy(heatmap)
    if m.ndim != 2:
        raise ValueError(
            f"heatmap must be 2-D [H, W], got shape {m.shape}; read jpgs with cv2.IMREAD_GRAYSCALE"
        )
    if m.dtype == np.uint8:
        return np.ascontiguousarray(m)
    if m.dtype.kind not in "biuf":
        raise ValueError(f"heatmap dtype {m.dtype} is not a real number type")
    # In row strips of about _STRIP_PIXELS (same float64 maths per pixel, bounded memory).
    peak = 0.0
    for y0, y1 in _strips(m.shape):
        part = _clean(m[y0:y1])
        if part.size:
            peak = max(peak, float(part.max()))
    out = np.zeros(m.shape, np.uint8)
    if peak <= 0:
        return out
    for y0, y1 in _strips(m.shape):
        out[y0:y1] = np.floor(_clean(m[y0:y1]) * (255.0 / peak) + 0.5).clip(0, 255)
    return out


def quantize_rows(rows, shape: tuple[int, int]) -> np.ndarray:
    """:func:`quantize_map` of a float map given in row strips (large maps never whole).

    Args:
        rows: a callable returning an iterator of ``(y0, y1, strip)`` (float ``[y1 - y0, W]``
            numpy, top to bottom, e.g. :func:`camcli.cam.upsample.upsample_rows`); called a
            second time when the map comes in more than one strip (the peak comes first).
        shape: ``(H, W)`` of the map.

    Returns:
        ``[H, W]`` uint8, equal to ``quantize_map`` of the whole map.
    """
    peak, whole = 0.0, None
    for y0, y1, strip in rows():
        if y0 == 0 and y1 == shape[0]:
            whole = strip
            break
        part = _clean(strip)
        if part.size:
            peak = max(peak, float(part.max()))
    if whole is not None:
        return quantize_map(whole)
    out = np.zeros(shape, np.uint8)
    if peak <= 0:
        return out
    for y0, y1, strip in rows():
        out[y0:y1] = np.floor(_clean(strip) * (255.0 / peak) + 0.5).clip(0, 255)
    return out


_HUGE_PIXELS = 1 << 25
"""Maps of this many pixels or more (33.6 M) give the allocator's free memory back before each
distance transform (:func:`camcli.sysinfo.release_free_memory`)."""

_STRIP_PIXELS = 1 << 22
"""Pixels per row strip of the float64 steps (32 MiB): bounded memory on large maps."""


def _strips(shape: tuple[int, ...]):
    """(y0, y1) row ranges of about :data:`_STRIP_PIXELS` pixels covering ``shape[0]`` rows."""
    rows = max(1, _STRIP_PIXELS // max(1, shape[1]))
    for y0 in range(0, shape[0], rows):
        yield y0, min(shape[0], y0 + rows)


def _clean(part: np.ndarray) -> np.ndarray:
    """float64, non-finite values and negatives set to 0 (as Matlab's ``imwrite`` clips)."""
    part = part.astype(np.float64)
    return np.where(np.isfinite(part) & (part > 0), part, 0.0)


def _dt_erode(binary: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """The relative erosion of ``dt.c``'s ``dt_binary`` followed by ``> 10``.

    binary: ``[H, W]`` bool. Exact Euclidean distance of every foreground pixel to the nearest
    background pixel (pixels outside the image are not background), scaled by ``255 / maxdist``
    and rounded half up; a pixel stays iff the result is ``> 10``. A mask that is all foreground
    or all background is returned unchanged (the C code leaves such an image as it is).
    ``inplace``: the result is written over ``binary`` (C-contiguous bool) and returned; beside
    it only the float32 distances and one float64 row strip are held (large maps).
    """
    if binary.all() or not binary.any():
        return binary if inplace else binary.copy()
    src = binary.view(np.uint8) if binary.dtype == bool else binary.astype(np.uint8)  # no copy
    d = cv2.distanceTransform(np.ascontiguousarray(src), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # cv2 returns float32; recover the exact integer squared distances and redo the C maths in
    # float64: sqrt, then s = d * (255 / (max - min)) with min = 0, then (int)(s + 0.5).
    # The max of sqrt(rint(d^2)) is that of the max of d (both steps are monotone); the rest
    # runs in row strips, in place in one strip buffer (bounded memory on large maps).
    top = float(np.sqrt(np.rint(np.float64(d.max()) ** 2)))
    out = binary if inplace and binary.dtype == bool else np.empty(d.shape, dtype=bool)
    for y0, y1 in _strips(d.shape):
        dist = d[y0:y1].astype(np.float64)
        np.square(dist, out=dist)
        np.rint(dist, out=dist)
        np.sqrt(dist, out=dist)
        dist *= 255.0 / top
        dist += 0.5
        np.floor(dist, out=dist)
        np.greater(dist, 10, out=out[y0:y1])
    return out


# ---------------------------------------------------------------------------------------------
# Contours, pooling and the greedy merge of dt_box.cpp
# ---------------------------------------------------------------------------------------------


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
    """The thresholds as a tuple of ints in 0..254; ``ValueError`` for anything else."""
    ths = tuple(thresholds)
    if not ths or any(
        not isinstance(t, (int, np.integer)) or isinstance(t, bool) or not 0 <= t <= 254
        for t in ths
    ):
        raise ValueError(
            f"dt-box thresholds {thresholds!r} must be integers in 0..254 (of 255), e.g. 20 100 110"
        )
    return tuple(int(t) for t in ths)


# ---------------------------------------------------------------------------------------------
# The rule
# ---------------------------------------------------------------------------------------------


def dt_boxes(heatmap, thresholds: Sequence[int] = DT_THRESHOLDS) -> list[XYWH]:
    """The official ``dt_box`` boxes of one heatmap, as ``(x, y, w, h)`` like its text output.

    SPEC section 2 (`dt-box` rule). Steps, for each threshold t (of 255) of the quantised map
    (:func:`quantize_map`):

    1. binarise (``> t``);
    2. relative erosion: exact Euclidean distance to the background scaled by
       ``255 / maxdist`` and rounded half up, keep ``> 10`` (all-foreground and
       all-background masks unchanged);
    3. the 1-pixel frame set to 0 (as OpenCV 2.x ``findContours`` did);
    4. every contour of ``findContours(RETR_CCOMP)`` (outer borders and holes) gives its
       ``boundingRect`` clamped as ``x in [0, W-5]``, ``y in [0, H-5]``,
       ``w <= W - x_raw - 5``, ``h <= H - y_raw - 5`` (a contour starting right of ``W-5``
       keeps the C code's negative width).

    All thresholds' rectangles are pooled in threshold then contour order, sorted by ``w * h``
    descending (stable; the C++ ``std::sort`` leaves ties in an unspecified order), then the
    greedy suppression of dt_box.cpp is applied: box j is dropped when its intersection with an
    earlier kept box i is more than half the larger area, and the box that slides into j's slot
    after a deletion is skipped, as the C loop does.

    Differences from the binary: invalid thresholds raise (the binary silently used 30 90 150
    unless ``0 < t0 < t1 < t2 < 255``); any number of thresholds is accepted.

    Args:
        heatmap: ``[H, W]`` map, numpy or torch on any device (copied to the CPU); uint8 is
            taken as is, other real dtypes are max-normalised to ``round(255 * m / max m)``
            (:func:`quantize_map`).
        thresholds: integers in 0..254 (of 255), default :data:`DT_THRESHOLDS`.

    Returns:
        ``(x, y, w, h)`` tuples of Python ints, largest area first; end exclusive (the last
        column is ``x + w - 1``). ``w``/``h`` may be ``<= 0`` next to the right/bottom edge, as
        in the binary. An empty list when no threshold leaves a region.

    Raises:
        ValueError: bad thresholds, or a heatmap that is not 2-D or not of a real dtype.
    """
    ths = _check_thresholds(thresholds)
    gray = quantize_map(heatmap)
    rects: list[XYWH] = []
    for t in ths:
        if gray.size >= _HUGE_PIXELS:
            release_free_memory()  # before the float32 distances (645 MiB at 13000 x 13000)
        rects.extend(_contour_rects(_dt_erode(gray > t, inplace=True)))
    rects.sort(key=lambda r: -(r[2] * r[3]))
    return _dt_merge(rects)


def xywh_to_box(rect: XYWH, width: int, height: int) -> Box:
    """An OpenCV ``(x, y, w, h)`` rectangle as an inclusive box inside a ``width x height`` image.

    ``x_max = x + w - 1`` (SPEC section 3). A degenerate width or height (``<= 0``, which the
    C clamps can produce next to the right/bottom edge) becomes one pixel; every coordinate is
    clipped to the image.

    Args:
        rect: ``(x, y, w, h)``, end exclusive; any int-convertible values.
        width: image width W in pixels (>= 1).
        height: image height H in pixels (>= 1).

    Returns:
        ``(x_min, y_min, x_max, y_max)`` Python ints, inclusive, with
        ``0 <= x_min <= x_max <= W - 1`` and ``0 <= y_min <= y_max <= H - 1``.
    """
    x, y, w, h = (int(v) for v in rect)
    x0 = min(max(x, 0), width - 1)
    y0 = min(max(y, 0), height - 1)
    x1 = min(max(x + max(w, 1) - 1, x0), width - 1)
    y1 = min(max(y + max(h, 1) - 1, y0), height - 1)
    return (x0, y0, x1, y1)


def dt_boxes_inclusive(heatmap, thresholds: Sequence[int] = DT_THRESHOLDS) -> list[Box]:
    """:func:`dt_boxes` as inclusive ``(x_min, y_min, x_max, y_max)`` boxes (same order/count).

    Args:
        heatmap: ``[H, W]`` map, as for :func:`dt_boxes`.
        thresholds: as for :func:`dt_boxes`.

    Returns:
        Each ``(x, y, w, h)`` of :func:`dt_boxes` through :func:`xywh_to_box` with the
        heatmap's own size: inclusive boxes in the heatmap's pixel grid, largest first.

    Raises:
        ValueError: as :func:`dt_boxes`.
    """
    h, w = to_numpy(heatmap).shape[-2:]
    return [xywh_to_box(r, w, h) for r in dt_boxes(heatmap, thresholds)]


# ---------------------------------------------------------------------------------------------
# Tight/loose heuristic (the 37.1 % ILSVRC test entry)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guess:
    """One of the five tight/loose guesses (SPEC section 2, tight/loose heuristic).

    Attributes:
        class_rank: position of the class in the ranked list given (0 = most confident).
        kind: ``"loose"`` (first, largest dt-box box) or ``"tight"`` (second box).
        box: the box as given to :func:`tight_loose_boxes` (any format, passed through), or
            ``None`` when the class's map gave no box at all (``reason`` says so); such a guess
            must not be written to a submission.
        reason: why ``box`` is ``None``; ``None`` when there is a box.
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

    SPEC section 2 (the heuristic behind the paper's 37.1 % ILSVRC test entry): loose = the
    first (largest) dt-box box of a class, tight = the second; a class with one box repeats it
    as its tight box.

    Args:
        per_class_dt_boxes: for each class, most confident first, its dt-box boxes largest
            first (as :func:`dt_boxes_inclusive` returns them; any box format is passed
            through). Only the first three classes are used.

    Returns:
        In order: (class 0, loose), (class 0, tight), (class 1, loose), (class 1, tight),
        (class 2, loose), as :class:`Guess`. A class with ZERO boxes still gets its entries,
        with ``box=None`` and a reason (no fake box); callers skip them, so that image has
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
