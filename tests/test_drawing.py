"""`bbox --draw` drawings: captions of boxes that share a corner do not cover each other."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from camcli.api.drawing import caption_places, caption_style, draw_boxes

COLOURS = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255)]


def _entries(boxes):
    return [
        {"rank": r, "label": f"class {r}", "score": 0.5 / r, "kind": None, "box": b}
        for r, b in enumerate(boxes, start=1)
    ]


def _overlap(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def test_captions_of_boxes_sharing_a_corner_are_stacked_not_overlapping():
    size = (300, 200)
    draw = ImageDraw.Draw(Image.new("RGB", size))
    font = ImageFont.load_default(size=12)
    # five boxes at the image's corner (whole-image boxes, a common case) and a skipped one
    entries = _entries([[0, 0, 299, 199]] * 5 + [None])
    places = caption_places(draw, entries, font, 1, size)
    assert sorted(places) == [0, 1, 2, 3, 4]
    rects = [places[i][0] for i in range(5)]
    for i in range(5):
        for j in range(i):
            assert not _overlap(rects[i], rects[j]), (i, j, rects)
    assert [r[1] for r in rects] == sorted(r[1] for r in rects)  # best first, then below it
    assert places[0][1] == "1. class 1 0.50"


def test_a_caption_at_the_right_edge_stays_inside_the_image():
    size = (120, 80)
    draw = ImageDraw.Draw(Image.new("RGB", size))
    font = ImageFont.load_default(size=12)
    ((rect, _),) = caption_places(draw, _entries([[110, 40, 119, 79]]), font, 1, size).values()
    assert rect[0] >= 0 and rect[2] <= 119 and rect[1] < 40  # above the box: there is room


def test_drawn_image_shows_every_caption_colour():
    image = torch.zeros(3, 200, 300, dtype=torch.uint8)
    out = draw_boxes(image, _entries([[0, 0, 299, 199]] * 5))
    px = {tuple(p) for p in out.reshape(-1, 3)[::1].tolist()}
    assert all(c in px for c in COLOURS)
    # each caption is a filled rectangle of its colour at least a few rows high
    for c in COLOURS:
        rows = np.where((out == np.array(c)).all(-1).any(1))[0]
        assert len(rows) >= 8, c


def test_captions_on_a_panorama_are_sized_by_its_short_side():
    """A 2000 x 100 panorama: captions sized by the long side (50 px) would not fit three
    high; sized by the short side they stack inside the image without overlapping."""
    size = (2000, 100)
    font, lw = caption_style(size)
    draw = ImageDraw.Draw(Image.new("RGB", size))
    places = caption_places(draw, _entries([[0, 0, 1999, 99]] * 3), font, lw, size)
    rects = [places[i][0] for i in range(3)]
    assert all(r[3] < 100 for r in rects), rects
    for i in range(3):
        for j in range(i):
            assert not _overlap(rects[i], rects[j]), (i, j, rects)
