"""Batched heat-map overlays, on the device of the inputs.

Images are ``[3, H, W]`` (or ``[N, 3, H, W]``) uint8 RGB tensors; maps are float in [0, 1]
(normalised CAMs, SPEC section 1). Colormaps are 256 x 3 uint8 RGB lookup tables equal to
OpenCV's ``cv2.applyColorMap`` (read once from OpenCV on a 0..255 ramp and cached; OpenCV's BGR
is turned into RGB). No matplotlib. Only :func:`grid` leaves the device, to draw caption text
with PIL; :func:`levels_cv2` and :func:`overlay_cv2` are the CPU (numpy + OpenCV) fast path of
one map. Nothing here reads or writes files, or prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COLORMAPS",
    "DEFAULT_COLORMAP",
    "MAX_GRID_WIDTH",
    "blend",
    "colorize",
    "colormap_lut",
    "grid",
    "levels_cv2",
    "levels_u8",
    "overlay",
    "overlay_cv2",
]

# name -> OpenCV constant name ("gray" is the identity ramp).
_CV2_NAMES: dict[str, str] = {
    "jet": "COLORMAP_JET",
    "turbo": "COLORMAP_TURBO",
    "viridis": "COLORMAP_VIRIDIS",
    "inferno": "COLORMAP_INFERNO",
    "magma": "COLORMAP_MAGMA",
    "plasma": "COLORMAP_PLASMA",
    "cividis": "COLORMAP_CIVIDIS",
    "parula": "COLORMAP_PARULA",
    "hot": "COLORMAP_HOT",
    "bone": "COLORMAP_BONE",
    "rainbow": "COLORMAP_RAINBOW",
}
COLORMAPS: tuple[str, ...] = (*_CV2_NAMES, "gray")
DEFAULT_COLORMAP = "jet"
MAX_GRID_WIDTH = 4096


@cache
def _lut_cpu(name: str) -> Tensor:
    """The [256, 3] uint8 RGB table of ``name`` on the CPU (cached); ``ValueError`` if unknown."""
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    ramp = np.arange(256, dtype=np.uint8)
    if name == "gray":
        rgb = np.repeat(ramp[:, None], 3, axis=1)
    else:
        import cv2

        bgr = cv2.applyColorMap(ramp.reshape(256, 1), getattr(cv2, _CV2_NAMES[name]))
        rgb = bgr.reshape(256, 3)[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb))


def colormap_lut(name: str, device: torch.device | str | None = None) -> Tensor:
    """The [256, 3] uint8 RGB lookup table of colormap ``name`` (cached), on ``device``.

    Row ``i`` is the colour of level ``i``; equals ``cv2.applyColorMap`` on a 0..255 ramp
    (channels reversed from OpenCV's BGR). ``gray`` is the identity ramp.

    Args:
        name: one of :data:`COLORMAPS`.
        device: where the table goes; ``None`` keeps the cached CPU tensor (do not modify it).

    Returns:
        ``[256, 3]`` uint8 tensor.

    Raises:
        ValueError: an unknown colormap name.
    """
    lut = _lut_cpu(name)
    return lut if device is None else lut.to(device)


def colorize(maps: Tensor, name: str = DEFAULT_COLORMAP) -> Tensor:
    """Colour maps with a colormap, on the maps' device.

    Level = :func:`levels_u8` (``round(255 * m)`` clamped, NaN -> 0), then a LUT gather.

    Args:
        maps: ``[N, H, W]`` float in [0, 1] (values outside are clamped), any device.
        name: one of :data:`COLORMAPS`.

    Returns:
        ``[N, 3, H, W]`` uint8 RGB on the maps' device.

    Raises:
        ValueError: ``maps`` not 3-D, or an unknown colormap.
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {tuple(maps.shape)}")
    lut = colormap_lut(name, maps.device)
    return lut[levels_u8(maps).long()].permute(0, 3, 1, 2).contiguous()


def blend(images: Tensor, heat: Tensor, alpha: float = 0.5) -> Tensor:
    """``round((1 - alpha) * images + alpha * heat)`` as uint8 (round half to even, like OpenCV).

    Args:
        images: uint8 tensor, e.g. ``[N, 3, H, W]``.
        heat: uint8 tensor broadcastable with ``images``, same device.
        alpha: the weight of the heat map, in [0, 1].

    Returns:
        uint8 tensor of the broadcast shape, on the inputs' device.

    Raises:
        ValueError: ``alpha`` outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mixed = (1.0 - alpha) * images.to(torch.float32) + alpha * heat.to(torch.float32)
    return mixed.round().clamp(0, 255).to(torch.uint8)


def overlay(
    image: Tensor, maps: Tensor, colormap: str = DEFAULT_COLORMAP, alpha: float = 0.5
) -> Tensor:
    """Overlay k maps on one image, all k classes at once.

    Args:
        image: ``[3, H, W]`` uint8 RGB, any device.
        maps: ``[k, H, W]`` float in [0, 1]; moved to the image's device.
        colormap: one of :data:`COLORMAPS`.
        alpha: the weight of the heat map, in [0, 1].

    Returns:
        ``[k, 3, H, W]`` uint8 RGB, ``blend(image, colorize(maps, colormap), alpha)``, on the
        image's device.

    Raises:
        ValueError: bad shapes, an unknown colormap, or ``alpha`` outside [0, 1].
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if maps.ndim != 3 or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"maps must be [k, {image.shape[1]}, {image.shape[2]}], got shape {tuple(maps.shape)}"
        )
    heat = colorize(maps.to(image.device), colormap)
    return blend(image.unsqueeze(0), heat, alpha)


def _font(size: int):
    """PIL's default font at ``size`` px (scalable in Pillow >= 10.1), else its bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # bitmap-only Pillow
        return ImageFont.load_default()


CAPTION_MAX_CHARS = 200
"""Captions are cut to this many characters before they are fitted to their panel."""


def caption_text(text: object) -> str:
    """A caption as one line of bounded length: control characters (newlines, ESC, bidi
    overrides) escaped as in JSON (``\\u000a``), at most :data:`CAPTION_MAX_CHARS` characters."""
    from camcli.console import shown

    s = shown(text)
    return s if len(s) <= CAPTION_MAX_CHARS else s[: CAPTION_MAX_CHARS - 3] + "..."


def _fit_text(text: str, room: float, measure) -> str:
    """``text``, or its longest prefix + ``...`` whose width ``measure`` gives within ``room``
    (a binary search: a few measurements whatever the length)."""
    if measure(text) <= room:
        return text
    lo, hi = 0, len(text)  # the prefix of lo characters fits, of hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(text[:mid] + "...") <= room:
            lo = mid
        else:
            hi = mid
    return text[:lo] + "..."


def _caption_strips(captions: Sequence[str], width: int, font_size: int) -> np.ndarray:
    """[n, strip_h, width, 3] uint8: black text on white, one line (:func:`caption_text`),
    ellipsised to fit ``width``."""
    from PIL import Image, ImageDraw

    font = _font(font_size)
    pad = max(2, font_size // 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    top, bottom = probe.textbbox((0, 0), "Hg|", font=font)[1::2]
    strip_h = (bottom - top) + 2 * pad
    strips = []
    for text in captions:
        text = _fit_text(
            caption_text(text), width - 2 * pad, lambda t: probe.textlength(t, font=font)
        )
        img = Image.new("RGB", (width, strip_h), (255, 255, 255))
        ImageDraw.Draw(img).text((pad, pad - top), text, fill=(0, 0, 0), font=font)
        strips.append(np.asarray(img))
    return np.stack(strips)


def _fit_width(panels: Tensor, max_width: int, gap: int) -> Tensor:
    """``[n, 3, h, w]`` uint8 panels scaled down (antialiased) so that ``n`` of them and the
    ``gap``s between them fit in ``max_width``; unchanged when they already fit."""
    n, _, h, w = panels.shape
    new_h, new_w = grid_panel_size(h, w, n, max_width, gap)
    if (new_h, new_w) == (h, w):
        return panels
    scaled = F.interpolate(
        panels.to(torch.float32), size=(new_h, new_w), mode="bilinear", antialias=True
    )
    return scaled.round().clamp(0, 255).to(torch.uint8)


def _side_by_side(panels: Tensor, strips: Tensor, gap: int) -> Tensor:
    """``[n, 3, h, w]`` panels, each above its ``[n, 3, sh, w]`` strip, in one row separated
    by ``gap`` white pixels: ``[3, h + sh, n * w + (n - 1) * gap]`` uint8."""
    n, _, h, w = panels.shape
    sh = strips.shape[2]
    out = torch.full(
        (3, h + sh, n * w + (n - 1) * gap), 255, dtype=torch.uint8, device=panels.device
    )
    for i in range(n):
        x0 = i * (w + gap)
        out[:, :h, x0 : x0 + w] = panels[i]
        out[:, h:, x0 : x0 + w] = strips[i]
    return out


def grid(
    image: Tensor,
    overlays: Tensor,
    captions: Sequence[str],
    title: str = "input",
    max_width: int = MAX_GRID_WIDTH,
    gap: int = 4,
) -> Tensor:
    """The original and its k overlays side by side, each above a caption strip (paper Fig. 4).

    Panels are separated by ``gap`` white pixels; when the row would be wider than
    ``max_width`` every panel is scaled down (antialiased) so it fits. Captions use PIL's
    default font (drawn on the CPU, then moved to the image's device), black on white,
    shortened with ``...`` to fit a panel.

    Args:
        image: ``[3, H, W]`` uint8 RGB, any device.
        overlays: ``[k, 3, H, W]`` uint8 RGB (e.g. from :func:`overlay`).
        captions: k strings, one per overlay (e.g. ``"golden retriever 0.93"``).
        title: the caption of the original.
        max_width: the widest row allowed, in pixels.
        gap: white pixels between panels.

    Returns:
        ``[3, H', W']`` uint8 RGB on the image's device.

    Raises:
        ValueError: bad shapes, or a number of captions that is not k.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if overlays.ndim != 4 or overlays.shape[1:] != image.shape:
        raise ValueError(
            f"overlays must be [k, {', '.join(map(str, image.shape))}], "
            f"got shape {tuple(overlays.shape)}"
        )
    if len(captions) != overlays.shape[0]:
        raise ValueError(f"got {len(captions)} captions for {overlays.shape[0]} overlays")
    panels = torch.cat([image.unsqueeze(0), overlays.to(image.device)], dim=0)  # [n, 3, H, W]
    panels = _fit_width(panels, max_width, gap)
    w = panels.shape[-1]
    font_size = max(10, min(48, w // 16))
    strips = _caption_strips([title, *captions], w, font_size)  # [n, sh, w, 3]
    strips_t = torch.from_numpy(strips).to(image.device).permute(0, 3, 1, 2)  # [n, 3, sh, w]
    return _side_by_side(panels, strips_t, gap)


def levels_u8(maps: Tensor) -> Tensor:
    """Quantise maps to the 256 colormap levels.

    Args:
        maps: ``[..., H, W]`` float in [0, 1], any device.

    Returns:
        uint8 tensor of the same shape and device: ``round(255 * m)`` (half to even), clamped
        to 0..255; NaN -> 0.
    """
    levels = torch.nan_to_num(maps.to(torch.float32) * 255.0, nan=0.0)
    return levels.round_().clamp_(0, 255).to(torch.uint8)


def levels_cv2(m: np.ndarray, *, inplace: bool = False, nonneg: bool = False) -> np.ndarray:
    """:func:`levels_u8` for one map on the CPU, in two OpenCV SIMD passes (one with
    ``nonneg``).

    Negatives to 0 (``THRESH_TOZERO``), then ``saturate_cast(|255 m|)`` (rounding half to even
    like ``torch.round``; NaN, which the threshold passes through, saturates to 0).

    Args:
        m: ``[H, W]`` float32 numpy array, values in [0, 1].
        inplace: clip the negatives of ``m`` in place (no float copy: large images).
        nonneg: the caller knows ``m`` has no negative value and no NaN (a bilinear upsampling
            of such a map): the clipping pass is skipped (same levels).

    Returns:
        ``[H, W]`` uint8 numpy array, equal to ``levels_u8(torch.from_numpy(m)).numpy()``.
    """
    import cv2

    if not nonneg:
        _, m = cv2.threshold(m, 0.0, 0.0, cv2.THRESH_TOZERO, dst=m if inplace else None)
    return cv2.convertScaleAbs(m, alpha=255.0)


@cache
def _lut_cv2(name: str, bgr: bool) -> np.ndarray:
    """The table of ``name`` as a [256, 1, 3] uint8 user colormap for ``cv2.applyColorMap``."""
    lut = _lut_cpu(name).numpy()
    return np.ascontiguousarray(lut[:, ::-1] if bgr else lut).reshape(256, 1, 3)


def overlay_cv2(
    image_hwc: np.ndarray,
    levels: np.ndarray,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = 0.5,
    *,
    bgr: bool = False,
) -> np.ndarray:
    """CPU fast path of :func:`overlay` for ONE map: OpenCV's SIMD LUT and blend, GIL released.

    Args:
        image_hwc: ``[H, W, 3]`` uint8 numpy array, RGB (or BGR with ``bgr=True``).
        levels: ``[H, W]`` uint8 numpy array of map levels (:func:`levels_cv2` or
            :func:`levels_u8`).
        colormap: one of :data:`COLORMAPS`.
        alpha: the weight of the heat map, in [0, 1].
        bgr: the image (and so the result) is in OpenCV's BGR order.

    Returns:
        ``[H, W, 3]`` uint8 numpy array in the image's channel order: the same colours as
        :func:`colorize` and ``cv2.addWeighted`` rounding (within 1 of :func:`blend`, usually
        identical).

    Raises:
        ValueError: an unknown colormap.
    """
    import cv2

    heat = cv2.applyColorMap(levels, _lut_cv2(colormap, bgr))  # channel order of the LUT
    return cv2.addWeighted(image_hwc, 1.0 - alpha, heat, alpha, 0.0, dst=heat)  # no 2nd buffer


def grid_panel_size(
    height: int, width: int, panels: int, max_width: int = MAX_GRID_WIDTH, gap: int = 4
) -> tuple[int, int]:
    """(h, w) of each panel in a :func:`grid` of ``panels`` images of ``height x width``: the
    size :func:`grid` scales them to. Panels already at this size are not scaled again, so the
    caller can downscale each overlay as soon as it is rendered (bounded memory)."""
    room = max_width - (panels - 1) * gap
    if panels * width <= room:
        return height, width
    new_w = max(1, room // panels)
    return max(1, round(height * new_w / width)), new_w
