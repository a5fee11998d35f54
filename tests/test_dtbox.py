"""The `dt-box` rule: the authors' C++ dt_box (zhoubolei/CAM bboxgenerator), step by step."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from camcli.cam.dtbox import (
    Guess,
    _dt_erode,
    _dt_merge,
    dt_boxes,
    dt_boxes_inclusive,
    quantize_map,
    tight_loose_boxes,
    xywh_to_box,
)


def _official_dir() -> Path | None:
    """`shared/data/official-cam-dtbox` beside the project (or any parent), if present."""
    for parent in Path(__file__).resolve().parents:
        d = parent / "shared" / "data" / "official-cam-dtbox"
        if (d / "heatmap_6.jpg").is_file() and (d / "heatmap_6.txt").is_file():
            return d
    return None


def _square(size: int, lo: int, hi: int, value: int = 200) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[lo:hi, lo:hi] = value
    return m


# --------------------------------------------------------------------------- official reference


@pytest.mark.skipif(_official_dir() is None, reason="official-cam-dtbox data folder absent")
def test_official_heatmap_6_exact():
    d = _official_dir()
    # the binary read it with cvLoadImage(path, 0): greyscale
    gray = cv2.imread(str(d / "heatmap_6.jpg"), cv2.IMREAD_GRAYSCALE)
    assert gray.shape == (368, 500)
    expected = [int(v) for v in (d / "heatmap_6.txt").read_text().split()]
    assert expected == [41, 145, 362, 202, 102, 188, 242, 126]
    got = dt_boxes(gray, (20, 100, 110))
    assert [v for r in got for v in r] == expected
    assert dt_boxes(gray) == got  # (20, 100, 110) is the default
    assert dt_boxes_inclusive(gray) == [(41, 145, 402, 346), (102, 188, 343, 313)]


# --------------------------------------------------------------------------- quantisation


def test_quantize_uint8_as_is_float_round_half_up():
    u = np.array([[0, 7], [128, 255]], np.uint8)
    assert quantize_map(u) is not None and np.array_equal(quantize_map(u), u)
    # max 2.0: 255 * m / 2 -> 0.5 -> 1 (half up, not to even), 1.5 -> 2, 127.5 -> 128, 255
    f = np.array([[1 / 255, 3 / 255], [1.0, 2.0]])
    np.testing.assert_array_equal(quantize_map(f), [[1, 2], [128, 255]])
    # negatives and non-finite -> 0; torch input works
    t = torch.tensor([[-1.0, float("nan")], [0.5, 1.0]])
    np.testing.assert_array_equal(quantize_map(t), [[0, 0], [128, 255]])
    assert not quantize_map(np.zeros((3, 3))).any()
    with pytest.raises(ValueError, match="IMREAD_GRAYSCALE"):
        quantize_map(np.zeros((3, 3, 3), np.uint8))


# --------------------------------------------------------------------------- erosion


def test_erosion_rounds_scaled_distance_half_up():
    # 50x50 square: max distance to background 25, so an edge pixel (distance 1) scales to
    # 255/25 = 10.2 -> rounds to 10 -> NOT > 10: the 1-pixel rim goes; distance 2 -> 20.4 stays.
    m = _square(80, 10, 60)
    assert dt_boxes(m, (100,)) == [(11, 11, 48, 48)]


def test_erosion_exact_euclidean_and_thin_parts():
    # 60x60 square: max distance 30, distance 1 -> 8.5 -> dropped; the 1-pixel-thick line
    # glued to its right side disappears too. But the square pixel (row 50, col 79) next to
    # the line now has its nearest background diagonally at sqrt(2) -> 12.02 -> kept, so the
    # box reaches column 79 (a city-block or chessboard distance would not keep it).
    m = _square(100, 20, 80)
    assert dt_boxes(m, (100,)) == [(21, 21, 58, 58)]
    m[50, 80:95] = 200
    assert dt_boxes(m, (100,)) == [(21, 21, 59, 58)]
    eroded = _dt_erode(m > 100)
    assert not eroded[50, 80:95].any() and eroded[50, 79] and not eroded[49, 79]


def test_erosion_matches_scipy_exact_edt():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(2, 60, size=2)
        mask = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2.0) > 0.5
        if mask.all() or not mask.any():
            continue
        d = scipy_ndimage.distance_transform_edt(mask)  # float64, outside is not background
        ref = np.floor(d * (255.0 / d.max()) + 0.5) > 10
        np.testing.assert_array_equal(_dt_erode(mask), ref)


def test_erosion_in_place_is_the_same_in_row_strips(monkeypatch):
    """dt_boxes erodes over its own mask (one bool mask less at the peak: issue 17, 13000 x
    13000 maps); the strips of the float64 steps are a few rows here, edges included."""
    from camcli.cam import dtbox

    rng = np.random.default_rng(1)
    for h, w in ((40, 31), (7, 9), (64, 64)):
        mask = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2.0) > 0.5
        want = _dt_erode(mask)
        monkeypatch.setattr(dtbox, "_STRIP_PIXELS", 3 * w)  # 3 rows a strip
        buf = mask.copy()
        got = _dt_erode(buf, inplace=True)
        assert got is buf
        np.testing.assert_array_equal(got, want)
        monkeypatch.undo()
    full = np.ones((5, 6), bool)
    assert _dt_erode(full, inplace=True) is full


def test_all_foreground_left_as_is_and_frame_zeroed():
    # every pixel > t: no erosion; OpenCV 2.x findContours zeroes the 1-pixel frame, so the
    # region traced is (1, 1)..(18, 18) -> rect (1, 1, 18, 18), then w <= 20 - 1 - 5 = 14.
    m = np.full((20, 20), 200, np.uint8)
    assert dt_boxes(m, (100,)) == [(1, 1, 14, 14)]
    assert dt_boxes(np.zeros((20, 20), np.uint8)) == []
    # a float map whose max is not positive gives no box
    assert dt_boxes(np.full((20, 20), -1.0)) == []


# --------------------------------------------------------------------------- contours + clamps


def test_ccomp_gives_hole_contours_too():
    # a square ring: RETR_CCOMP returns the outer border and the hole border; the hole border
    # runs along the foreground pixels around the hole: rows/cols 19..40.
    m = _square(60, 10, 50)
    m[20:40, 20:40] = 0
    assert dt_boxes(m, (100,)) == [(10, 10, 40, 40), (19, 19, 22, 22)]


def test_clamps_reproduce_the_c_code_including_negative_width():
    m = np.zeros((30, 30), np.uint8)
    m[20:28, 18:28] = 200  # rect (18, 20, 10, 8): w <= 30-18-5 = 7, h <= 30-20-5 = 5
    m[2:11, 26:29] = 200  # rect (26, 2, 3, 9): x -> 25, w -> LIMIT(3, 0, -1) = -1 (C quirk)
    assert dt_boxes(m, (100,)) == [(18, 20, 7, 5), (25, 2, -1, 9)]
    assert dt_boxes_inclusive(m, (100,)) == [(18, 20, 24, 24), (25, 2, 25, 10)]


def test_xywh_to_box():
    assert xywh_to_box((41, 145, 362, 202), 500, 368) == (41, 145, 402, 346)
    assert xywh_to_box((25, 2, -1, 9), 30, 30) == (25, 2, 25, 10)
    assert xywh_to_box((3, 4, 0, 0), 30, 30) == (3, 4, 3, 4)


# --------------------------------------------------------------------------- pooling + merge


def test_pool_sort_and_merge_across_thresholds():
    # outer region > 20 only, inner region > 100 and > 110: three rects pooled
    # [(10,10,40,40) t=20, (20,20,20,20) t=100, (20,20,20,20) t=110]; the duplicate goes.
    m = _square(60, 10, 50, 50)
    m[20:40, 20:40] = 150
    assert dt_boxes(m, (20, 100, 110)) == [(10, 10, 40, 40), (20, 20, 20, 20)]
    assert dt_boxes(m, (20,)) == [(10, 10, 40, 40)]
    # an inner region covering more than half the outer box is merged away
    m = _square(60, 10, 50, 50)
    m[11:49, 11:40] = 150  # 38 x 29 = 1102 > 0.5 * 1600
    assert dt_boxes(m, (20, 100)) == [(10, 10, 40, 40)]


def test_merge_threshold_is_more_than_half_of_larger_area():
    a = (0, 0, 10, 10)  # area 100
    assert _dt_merge([a, (0, 0, 10, 5)]) == [a, (0, 0, 10, 5)]  # overlap 50: not > 50
    assert _dt_merge([a, (0, 0, 10, 6)]) == [a]  # overlap 60 > 50
    # exclusive ends: touching rects do not overlap
    assert _dt_merge([(0, 0, 4, 4), (4, 0, 4, 4)]) == [(0, 0, 4, 4), (4, 0, 4, 4)]


def test_merge_skips_the_box_that_slides_into_place():
    a, b, c, d = (
        (0, 0, 10, 10),
        (0, 0, 9, 9),
        (1, 1, 8, 8),
        (0, 0, 8, 7),
    )  # areas 100 81 64 56
    # i=0: b overlaps a (81 > 50) -> deleted; c slides into slot 1 but j moves on to slot 2:
    # c is never compared with a and survives (64 > 50 would have removed it); d is compared
    # with a (56 > 50) and removed.
    assert _dt_merge([a, b, c, d]) == [a, c]
    # without a deletion just before it, c is compared with a and removed ...
    assert _dt_merge([a, c]) == [a]
    # ... and then d is the one that slides into place and escapes
    assert _dt_merge([a, c, d]) == [a, d]
    assert _dt_merge([a, c, (20, 20, 2, 2)]) == [a, (20, 20, 2, 2)]


def test_sort_is_stable_by_area():
    # two equal-area separate regions at one threshold keep contour order; larger first
    m = np.zeros((40, 60), np.uint8)
    m[5:15, 5:15] = 200  # area 100
    m[20:30, 40:50] = 200  # area 100
    m[25:35, 10:22] = 200  # area 120
    got = dt_boxes(m, (100,))
    assert got[0] == (10, 25, 12, 10)
    assert sorted(got[1:]) == [(5, 5, 10, 10), (40, 20, 10, 10)]


def test_thresholds_validated():
    with pytest.raises(ValueError, match="thresholds"):
        dt_boxes(np.zeros((10, 10), np.uint8), (20, 300))
    with pytest.raises(ValueError, match="thresholds"):
        dt_boxes(np.zeros((10, 10), np.uint8), ())


# --------------------------------------------------------------------------- tight / loose


def test_tight_loose_pattern():
    a, b, c, d = (0, 0, 9, 9), (1, 1, 5, 5), (2, 2, 3, 3), (4, 4, 8, 8)
    e, f = (0, 0, 1, 1), (5, 5, 6, 6)
    guesses = tight_loose_boxes([[a, b, c], [d], [e, f], [(7, 7, 7, 7)]])
    assert [(g.class_rank, g.kind, g.box) for g in guesses] == [
        (0, "loose", a),
        (0, "tight", b),
        (1, "loose", d),
        (1, "tight", d),  # one box: repeated as tight
        (2, "loose", e),  # class 3 only gets its loose box; a 4th class is ignored
    ]
    assert all(g.reason is None for g in guesses)


def test_tight_loose_class_without_boxes_gives_no_box_with_reason():
    a, b = (0, 0, 9, 9), (1, 1, 5, 5)
    guesses = tight_loose_boxes([[a, b], [], [b]])
    assert len(guesses) == 5
    assert guesses[2] == Guess(1, "loose", None, guesses[2].reason)
    assert guesses[3].box is None and guesses[3].kind == "tight"
    assert "no dt-box box" in guesses[2].reason
    assert guesses[4] == Guess(2, "loose", b)
    assert [g.box for g in tight_loose_boxes([[a]])] == [
        a,
        a,
    ]  # fewer classes: fewer guesses


def test_huge_maps_give_free_memory_back_before_each_distance_transform(monkeypatch):
    from camcli.cam import dtbox

    calls = []
    monkeypatch.setattr(dtbox, "release_free_memory", lambda: calls.append(1))
    m = _square(40, 10, 30)
    want = dtbox.dt_boxes(m, (20, 100, 110))
    assert calls == []  # small maps: nothing to do
    monkeypatch.setattr(dtbox, "_HUGE_PIXELS", m.size)
    assert dtbox.dt_boxes(m, (20, 100, 110)) == want
    assert len(calls) == 3
