"""A synthetic labelled image set: one coloured shape per image on a textured background.

The class is the shape (circle, square, triangle, cross, ring, ...); its colour, size, position
and rotation, and the background's colours and texture, are random, so a classifier has to find
the shape, and a GAP network trained on it learns to localise it. Every image also has its
ground-truth box, written to ``annotations.csv`` in the layout of ``tin-dev10`` (``split, class,
path, width, height, xmin, ymin, xmax, ymax``; 0-based inclusive pixels).

Deterministic by seed: the same (seed, split, class, index) always gives the same pixels
(numpy's PCG64 through ``np.random.default_rng``; no drawing library involved).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")
ALL_SHAPES: tuple[str, ...] = (*SHAPES, "star", "hexagon")
_SPLIT_CODE = {"train": 0, "val": 1, "examples": 2}
_SUPER = 4  # supersampling factor per axis for anti-aliased edges


@dataclass(frozen=True)
class SyntheticImage:
    """One generated image: ``pixels`` uint8 [H, W, 3] RGB, its class and its inclusive box."""

    pixels: np.ndarray
    label: str
    box: tuple[int, int, int, int]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates: two float64 [size*_SUPER, size*_SUPER] arrays."""
    n = size * _SUPER
    c = (np.arange(n) + 0.5) / _SUPER
    return np.meshgrid(c, c)  # x, y


def _polygon(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test; pts [n, 2] (x, y). Returns a bool array like x."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        if y1 == y2:
            continue
        cond = (y1 > y) != (y2 > y)
        xcross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= cond & (x < xcross)
    return inside


def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Coverage of a shape in [0, 1], float64 [size, size]; ``r`` is its outer radius (pixels)."""
    x, y = _grid(size)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        m = dx * dx + dy * dy <= r * r
    elif shape == "ring":
        d2 = dx * dx + dy * dy
        m = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    else:
        if shape == "square":
            a = r / np.sqrt(2.0)
            pts = np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
        elif shape == "triangle":
            t = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            pts = np.stack([np.cos(t), -np.sin(t)], 1) * r
        elif shape == "cross":
            a, b = r / np.sqrt(2.0), 0.32 * r
            pts = np.array(
                [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b]]
                + [[-a, b], [-a, -b], [-b, -b]]
            )
        elif shape == "star":
            t = np.pi / 2 + np.arange(10) * np.pi / 5
            rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
            pts = np.stack([np.cos(t) * rad, -np.sin(t) * rad], 1)
        elif shape == "hexagon":
            t = np.arange(6) * np.pi / 3
            pts = np.stack([np.cos(t), np.sin(t)], 1) * r
        else:
            raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(ALL_SHAPES)}")
        pts = _rotate(pts, angle) + np.array([cx, cy])
        m = _polygon(x, y, pts)
    return m.reshape(size, _SUPER, size, _SUPER).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1]: float64 [size, size]."""
    g = rng.random((cells + 1, cells + 1))
    t = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]  # [size, cells+1]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background, float64 [size, size, 3] in [0, 1]."""
    c1, c2 = rng.random(3), rng.random(3)
    n = _smooth_noise(rng, size, int(rng.integers(2, 6)))
    img = c1 * n[..., None] + c2 * (1 - n[..., None])
    kind = int(rng.integers(0, 3))
    if kind == 1:  # stripes
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(4, 12) * size / 64
        yy, xx = np.mgrid[0:size, 0:size]
        s = 0.5 + 0.5 * np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
        img = img * (1 - 0.25 * s[..., None]) + 0.25 * s[..., None] * rng.random(3)
    elif kind == 2:  # blotches
        b = _smooth_noise(rng, size, int(rng.integers(6, 12)))
        img = img * (1 - 0.3 * b[..., None]) + 0.3 * b[..., None] * rng.random(3)
    # a few small distractor blobs that are no class's shape
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for _ in range(int(rng.integers(0, 4))):
        bx, by = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.02, 0.06, 2) * size
        blob = ((xx - bx) / rx) ** 2 + ((yy - by) / ry) ** 2 <= 1
        img[blob] = rng.random(3)
    return img


def _distinct_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A colour at least a little away from the local background mean."""
    for _ in range(20):
        c = rng.random(3)
        if np.abs(c - avoid).sum() > 0.6:
            return c
    return 1.0 - avoid


def render(
    shape: str, *, size: int = 64, seed: int = 0, min_scale: float = 0.2, max_scale: float = 0.45
) -> SyntheticImage:
    """One image of ``shape`` (deterministic for a given seed).

    The shape's outer radius is ``U(min_scale, max_scale) * size``; it lies wholly inside the
    image. Returns pixels uint8 [size, size, 3] and the inclusive box of pixels it covers
    (coverage >= 0.5).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    img = _background(rng, size)
    r = rng.uniform(min_scale, max_scale) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(-0.35, 0.35)
    cover = _shape_mask(shape, size, cx, cy, r, angle)
    fg = cover >= 0.5
    local = img[fg].mean(axis=0) if fg.any() else img.mean(axis=(0, 1))
    colour = _distinct_colour(rng, local)
    shade = 0.85 + 0.15 * _smooth_noise(rng, size, 3)[..., None]
    img = img * (1 - cover[..., None]) + (colour * shade) * cover[..., None]
    img = img + rng.normal(0, 0.03, img.shape)
    pixels = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(fg)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return SyntheticImage(pixels, shape, box)


def image_seed(seed: int, split: str, class_index: int, index: int) -> int:
    """The per-image seed (a stable 63-bit hash of its coordinates)."""
    ss = np.random.SeedSequence([seed, _SPLIT_CODE.get(split, 9), class_index, index])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2**31]))


def _encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(pixels, "RGB")
    if fmt == "png":
        im.save(buf, format="PNG", optimize=False)
    else:
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate(
    out_dir: str | Path,
    *,
    shapes: Sequence[str] = SHAPES,
    train_per_class: int = 200,
    val_per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    fmt: str = "png",
    quality: int = 90,
) -> Path:
    """Write ``out_dir/train/<shape>/<shape>_NNNN.<ext>``, ``out_dir/val/...`` and
    ``out_dir/annotations.csv``. Returns ``out_dir``.

    fmt: ``png`` (lossless, default) or ``jpg``. The same arguments always write the same files.
    """
    if fmt not in ("png", "jpg"):
        raise ValueError(f"fmt must be png or jpg, got {fmt!r}")
    if len(set(shapes)) != len(shapes) or not shapes:
        raise ValueError("shapes must be a non-empty list of distinct names")
    out = Path(out_dir)
    rows = []
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for ci, shape in enumerate(shapes):
            d = out / split / shape
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = render(shape, size=size, seed=image_seed(seed, split, ci, i))
                rel = f"{split}/{shape}/{shape}_{i:04d}.{fmt}"
                (out / rel).write_bytes(_encode(im.pixels, fmt, quality))
                rows.append([split, shape, rel, size, size, *im.box])
    with open(out / "annotations.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["split", "class", "path", "width", "height", "xmin", "ymin", "xmax", "ymax"])
        w.writerows(rows)
    return out
