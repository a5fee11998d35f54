"""Pixel masks for PxAP: where an image's masks are, and reading them at a map's size.

A mask is an image file whose nonzero pixels are foreground (or, for an ignore mask, pixels left
out). They come from the ground truth (JSON Lines ``mask`` / ``ignore``) or from ``--masks DIR``
holding ``<name>.png`` and an optional ``<name>_ignore.png``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from camcli.evaluate.truth import GtImage, name_parts, strip_ext

__all__ = ["mask_paths", "read_mask"]


def read_mask(paths: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """The union of the nonzero pixels of mask files, at a map's size.

    Args:
        paths: mask image files (any mode PIL reads; converted to grey).
        shape: ``(H, W)`` of the map; masks of another size are resized (nearest neighbour).

    Returns:
        bool [H, W].

    Raises:
        OSError: a file cannot be read as an image, or is not a regular file (a FIFO).
    """
    from PIL import Image

    out = np.zeros(shape, dtype=bool)
    for p in paths:
        if not os.path.isfile(p):  # a FIFO would block: refused like a non-image
            raise OSError(f"{p}: not a regular file")
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"))
        if a.shape != shape:
            import cv2

            a = cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        out |= a > 0
    return out


def mask_paths(im: GtImage, masks_dir: str | None) -> tuple[list[str], str | None]:
    """The mask files of a GT image: its own, else ``masks_dir``'s.

    In ``masks_dir`` the mask is ``<name>.png`` for the image's name without extension (its
    relative path, then its stem), the ignore mask ``<name>_ignore.png`` beside it.

    Args:
        im: the GT image.
        masks_dir: the ``--masks`` folder, or None.

    Returns:
        ``(mask files, ignore file or None)``; no mask files when there is none.
    """
    if im.masks:
        return im.masks, im.ignore
    if not masks_dir:
        return [], None
    base = Path(masks_dir)
    key = strip_ext(im.name)
    for cand in (key, name_parts(im.name)[-1]):
        p = base / f"{cand}.png"
        if p.is_file():
            ig = base / f"{cand}_ignore.png"
            return [str(p)], str(ig) if ig.is_file() else None
    return [], None
