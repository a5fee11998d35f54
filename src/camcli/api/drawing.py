"""Boxes drawn onto images (``bbox --draw``)."""

from __future__ import annotations

import numpy as np
import torch


def draw_boxes(image: torch.Tensor, entries: list[dict]) -> np.ndarray:
    """The image with each box, its rank, label and score drawn.

    Args:
        image: uint8 [3, H, W] RGB (any device).
        entries: a bbox record's ``boxes``: ``box`` [x0, y0, x1, y1] inclusive pixels, or
            None (skipped).

    Returns:
        uint8 [H, W, 3] RGB numpy array. Drawn from the last guess to the first, so the best
        class's box and label end on top; one colour per class rank.
    """
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(img)
    colours = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255)]
    lw = max(1, round(max(img.size) / 250))
    try:
        font = ImageFont.load_default(size=max(10, round(max(img.size) / 40)))
    except TypeError:  # pragma: no cover - old Pillow
        font = ImageFont.load_default()
    for e in reversed(entries):
        if e["box"] is None:
            continue
        c = colours[(e["rank"] - 1) % len(colours)]
        x0, y0, x1, y1 = e["box"]
        draw.rectangle([x0, y0, x1, y1], outline=c, width=lw)
        score = "" if e["score"] is None else f" {e['score']:.2f}"
        text = f"{e['rank']}. {e['label']}{score}" + (
            f" ({e['kind']})" if e["kind"] in ("loose", "tight") else ""
        )
        tb = draw.textbbox((x0, y0), text, font=font)
        ty = y0 - (tb[3] - tb[1]) - 2 if y0 - (tb[3] - tb[1]) - 2 >= 0 else y0 + lw
        tb = draw.textbbox((x0 + lw, ty), text, font=font)
        draw.rectangle(tb, fill=c)
        draw.text((x0 + lw, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)
