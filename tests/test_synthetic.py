"""camcli.data.synthetic: deterministic shapes with exact boxes, ImageFolder layout."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from camcli.data import synthetic
from camcli.data.codec import decode_image


def test_circle_coverage_and_box_exact():
    # Circle of radius 4 centred at (8, 8): pixel x is covered on the centre row iff its
    # centre x + 0.5 lies in [4, 12] -> x = 4..11.
    cover = synthetic._shape_mask("circle", 16, 8.0, 8.0, 4.0, 0.0)
    assert cover.shape == (16, 16) and cover.dtype == np.float64
    assert cover.min() == 0.0 and cover.max() == 1.0
    ys, xs = np.nonzero(cover >= 0.5)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 11, 4, 11)
    assert cover[8, 4] == 1.0 and cover[8, 3] == 0.0
    assert cover.sum() == pytest.approx(np.pi * 16, rel=0.02)


def test_square_area_and_symmetry():
    # side r * sqrt(2) = 8 -> area 64 exactly on an axis-aligned, pixel-aligned square
    cover = synthetic._shape_mask("square", 16, 8.0, 8.0, 8 / np.sqrt(2), 0.0)
    assert cover.sum() == pytest.approx(64.0, abs=1e-9)
    np.testing.assert_array_equal(cover, cover[::-1, ::-1])


def test_render_is_deterministic_and_box_matches_pixels():
    a = synthetic.render("triangle", size=48, seed=11)
    b = synthetic.render("triangle", size=48, seed=11)
    c = synthetic.render("triangle", size=48, seed=12)
    assert a.pixels.dtype == np.uint8 and a.pixels.shape == (48, 48, 3)
    assert np.array_equal(a.pixels, b.pixels) and a.box == b.box
    assert not np.array_equal(a.pixels, c.pixels)
    x0, y0, x1, y1 = a.box
    assert 0 <= x0 < x1 <= 47 and 0 <= y0 < y1 <= 47
    with pytest.raises(ValueError, match="unknown shape"):
        synthetic.render("blob", size=32)


def test_image_seeds_differ_by_coordinate():
    seeds = {
        synthetic.image_seed(s, split, c, i)
        for s in (0, 1)
        for split in ("train", "val")
        for c in range(3)
        for i in range(4)
    }
    assert len(seeds) == 2 * 2 * 3 * 4


def test_generate_layout_annotations_and_reproducibility(tmp_path):
    out = synthetic.generate(
        tmp_path / "a", shapes=("ring", "cross"), train_per_class=3, val_per_class=2, size=24
    )
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        *(f"train/cross/cross_{i:04d}.png" for i in range(3)),
        *(f"train/ring/ring_{i:04d}.png" for i in range(3)),
        *(f"val/cross/cross_{i:04d}.png" for i in range(2)),
        *(f"val/ring/ring_{i:04d}.png" for i in range(2)),
    ]
    rows = list(csv.DictReader(open(out / "annotations.csv")))
    assert len(rows) == 10 and rows[0]["split"] == "train" and rows[0]["class"] == "ring"
    r = rows[0]
    px = decode_image(str(out / r["path"]))
    again = synthetic.render("ring", size=24, seed=synthetic.image_seed(0, "train", 0, 0))
    assert np.array_equal(px, again.pixels)  # PNG is lossless
    assert [int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")] == list(again.box)
    other = synthetic.generate(
        tmp_path / "b", shapes=("ring", "cross"), train_per_class=3, val_per_class=2, size=24
    )
    for f in files:
        assert (out / f).read_bytes() == (other / f).read_bytes()
