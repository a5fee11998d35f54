"""Box rules `paper` and `all`, thresholding, IoU and boxes_for_maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from camcli.cam.boxes import (
    box_iou,
    boxes_for_maps,
    component_boxes,
    paper_box,
    threshold_masks,
)


def _mask(h: int, w: int, pixels) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for y, x in pixels:
        m[y, x] = True
    return m


# --------------------------------------------------------------------------- thresholding


def test_threshold_is_strict_numpy_and_torch():
    row = [1.0, 0.2, 0.21, 0.19, 0.0]
    expected = np.array([[True, False, True, False, False]])
    got_np = threshold_masks(np.array([row], np.float32), 0.2)
    assert got_np.dtype == bool
    np.testing.assert_array_equal(got_np, expected)
    got_t = threshold_masks(torch.tensor([row], dtype=torch.float32), 0.2)
    assert got_t.dtype == torch.bool
    np.testing.assert_array_equal(got_t.numpy(), expected)


def test_threshold_uses_each_maps_own_max():
    maps = torch.tensor(
        [
            [[2.0, 1.0], [1.01, 0.0]],  # max 2, tau*max = 1.0: 1.0 is NOT kept
            [[0.5, 0.25], [0.26, 0.1]],  # max 0.5, tau*max = 0.25
        ]
    )
    got = threshold_masks(maps, 0.5)
    expected = torch.tensor([[[True, False], [True, False]], [[True, False], [True, False]]])
    assert torch.equal(got, expected)
    assert got.device == maps.device
    np.testing.assert_array_equal(threshold_masks(maps.numpy(), 0.5), expected.numpy())


def test_threshold_all_zero_map_keeps_nothing_and_tau_zero_keeps_positive():
    assert not threshold_masks(np.zeros((1, 3, 3), np.float32), 0.2).any()
    m = np.array([[0.0, 0.5], [1e-6, 0.0]], np.float32)
    np.testing.assert_array_equal(threshold_masks(m, 0.0), [[False, True], [True, False]])
    with pytest.raises(ValueError, match="tau"):
        threshold_masks(m, float("nan"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_threshold_stays_on_cuda():
    maps = torch.tensor([[[1.0, 0.2], [0.3, 0.0]]], device="cuda")
    got = threshold_masks(maps, 0.2)
    assert got.device.type == "cuda"
    assert got.cpu().tolist() == [[[True, False], [True, False]]]


# --------------------------------------------------------------------------- paper / all


def test_paper_diagonal_pixels_form_one_component():
    # a diagonal staircase of 4 pixels (only corner contact) vs a 3-pixel bar
    m = _mask(6, 8, [(0, 0), (1, 1), (2, 2), (3, 3), (5, 5), (5, 6), (5, 7)])
    assert paper_box(m) == (0, 0, 3, 3)
    assert component_boxes(m) == [(0, 0, 3, 3), (5, 5, 7, 5)]


def test_paper_four_connected_would_split_but_eight_does_not():
    # an X shape: 5 pixels, all touching only diagonally through the centre
    m = _mask(3, 3, [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)])
    assert component_boxes(m) == [(0, 0, 2, 2)]


def test_paper_tie_goes_to_first_component_in_raster_order():
    # A: row 1, columns 0..2; B: row 0, columns 5..7. Same size (3 px). B's first pixel (0, 5)
    # comes before A's (1, 0) in row-major order, although A is further left.
    m = _mask(4, 9, [(1, 0), (1, 1), (1, 2), (0, 5), (0, 6), (0, 7)])
    assert paper_box(m) == (5, 0, 7, 0)
    assert component_boxes(m) == [(5, 0, 7, 0), (0, 1, 2, 1)]
    # the bigger one wins regardless of position
    m[3, 0] = m[3, 1] = m[3, 2] = m[3, 3] = True
    assert paper_box(m) == (0, 3, 3, 3)


def _reference_components(m: np.ndarray) -> list[tuple[int, int, tuple]]:
    """(pixel count, raster index of the first pixel, inclusive box) of every 8-connected
    component, by a plain flood fill (independent of OpenCV)."""
    h, w = m.shape
    seen = np.zeros_like(m, bool)
    out = []
    for y0 in range(h):
        for x0 in range(w):
            if not m[y0, x0] or seen[y0, x0]:
                continue
            stack, pix = [(y0, x0)], []
            seen[y0, x0] = True
            while stack:
                y, x = stack.pop()
                pix.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and m[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            stack.append((yy, xx))
            ys, xs = zip(*pix)
            out.append((len(pix), y0 * w + x0, (min(xs), min(ys), max(xs), max(ys))))
    return out


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6, 0.9])
def test_paper_box_matches_a_flood_fill_reference_on_random_masks(density):
    # many components, ties in size included (density 0.2 gives many single pixels)
    rng = np.random.default_rng(int(density * 100))
    ties = 0
    for _ in range(40):
        h, w = rng.integers(1, 40, 2)
        m = rng.random((h, w)) < density
        ref = _reference_components(m)
        if not ref:
            assert paper_box(m) is None
            continue
        big = max(c[0] for c in ref)
        ties += sum(c[0] == big for c in ref) > 1
        want = min((c for c in ref if c[0] == big), key=lambda c: c[1])[2]
        assert paper_box(m) == want
        assert paper_box(m.astype(np.uint8) * 255) == want
        assert component_boxes(m)[0] == want
    assert ties > 0 or density > 0.5  # sparse masks exercise the tie rule


def test_paper_box_on_a_mask_placed_in_a_larger_empty_canvas():
    # paper_box labels only the foreground's bounding rectangle: the same components, shifted
    # back by its corner (ties by raster order included)
    rng = np.random.default_rng(7)
    for _ in range(30):
        h, w = rng.integers(1, 25, 2)
        m = rng.random((h, w)) < 0.3
        ref = _reference_components(m)
        if not ref:
            continue
        big = max(c[0] for c in ref)
        x0, y0, x1, y1 = min((c for c in ref if c[0] == big), key=lambda c: c[1])[2]
        dy, dx = rng.integers(0, 30, 2)
        canvas = np.zeros((h + dy + int(rng.integers(0, 9)), w + dx + 5), bool)
        canvas[dy : dy + h, dx : dx + w] = m
        assert paper_box(canvas) == (x0 + dx, y0 + dy, x1 + dx, y1 + dy)


def test_paper_box_32_bit_labels_and_bincount_path():
    # over 65,534 possible components: 32-bit labels and np.bincount (not the 16-bit histogram)
    m = np.zeros((600, 600), bool)
    m[::2, ::2] = True  # 90,000 single pixels, all tied
    assert paper_box(m) == (0, 0, 0, 0)
    m[599, 597] = True  # joins (598, 596) and (598, 598): three pixels, alone the largest
    assert paper_box(m) == (596, 598, 598, 599)


def test_paper_many_tied_components_one_pass():
    # 16,384 isolated pixels, all tied: the first in raster order wins; a first-pixel scan per
    # tied component (components x pixels) took seconds here and hours on a crafted map
    m = np.zeros((256, 256), bool)
    m[1::2, 1::2] = True
    assert paper_box(m) == (1, 1, 1, 1)
    m[255, 254] = True  # joins (255, 253) and (255, 255): a 3-pixel component wins alone
    assert paper_box(m) == (253, 255, 255, 255)


def test_paper_empty_mask_gives_none():
    assert paper_box(np.zeros((5, 7), bool)) is None
    assert component_boxes(np.zeros((5, 7), bool)) == []


def test_paper_border_and_non_square():
    h, w = 3, 7
    assert paper_box(np.ones((h, w), bool)) == (0, 0, w - 1, h - 1)
    m = _mask(h, w, [(2, 6), (1, 6), (2, 5), (0, 0)])  # bottom-right corner blob + a dot
    assert paper_box(m) == (5, 1, 6, 2)
    assert component_boxes(m) == [(5, 1, 6, 2), (0, 0, 0, 0)]
    # a torch CPU mask is accepted as well
    assert paper_box(torch.from_numpy(m)) == (5, 1, 6, 2)


def test_all_rule_sorted_by_pixel_count_not_box_area():
    # a long thin diagonal (5 px, box 5x5) vs a compact 2x3 block (6 px, box 3x2)
    diag = [(i, i) for i in range(5)]
    block = [(y, x) for y in range(6, 8) for x in range(6, 9)]
    m = _mask(9, 10, diag + block + [(0, 9)])
    assert component_boxes(m) == [(6, 6, 8, 7), (0, 0, 4, 4), (9, 0, 9, 0)]
    assert paper_box(m) == (6, 6, 8, 7)


def test_mask_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        paper_box(np.zeros((1, 3, 3), bool))


# --------------------------------------------------------------------------- IoU


def test_box_iou_inclusive_formula():
    iou = box_iou([[1, 2, 5, 6]], [[3, 1, 4, 5]])
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(8 / 27, abs=1e-15)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 1.0  # one pixel, one pixel
    assert box_iou([[0, 0, 1, 1]], [[2, 2, 3, 3]])[0, 0] == 0.0


# --------------------------------------------------------------------------- boxes_for_maps


def _two_maps() -> torch.Tensor:
    maps = torch.zeros(2, 12, 16)
    maps[0, 2:5, 3:9] = 1.0  # 18 px
    maps[0, 8:10, 12:14] = 0.5  # 4 px
    maps[0, 0, 15] = 0.2  # exactly tau*max: dropped
    return maps  # map 1 stays all zero


def test_boxes_for_maps_paper_and_all():
    maps = _two_maps()
    assert boxes_for_maps(maps, "paper", 0.2) == [[((3, 2, 8, 4), "largest")], []]
    assert boxes_for_maps(maps.numpy(), "all", 0.2) == [
        [((3, 2, 8, 4), "component"), ((12, 8, 13, 9), "component")],
        [],
    ]
    # tau = 0.6 drops the 0.5 blob
    assert boxes_for_maps(maps, "all", 0.6)[0] == [((3, 2, 8, 4), "component")]


def test_boxes_for_maps_dt_box_loose_and_tight():
    maps = torch.zeros(2, 60, 60)
    maps[0, 10:50, 10:50] = 50 / 255
    maps[0, 20:40, 20:40] = 150 / 255
    maps[1, 10:50, 10:50] = 1.0
    got = boxes_for_maps(maps, "dt-box")
    assert got[0] == [((10, 10, 49, 49), "loose"), ((20, 20, 39, 39), "tight")]
    assert got[1] == [((10, 10, 49, 49), "loose"), ((10, 10, 49, 49), "tight")]
    assert boxes_for_maps(torch.zeros(1, 8, 8), "dt-box") == [[]]


def test_boxes_for_maps_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown box rule"):
        boxes_for_maps(torch.zeros(1, 4, 4), "largest")
    with pytest.raises(ValueError, match=r"\[k, H, W\]"):
        boxes_for_maps(torch.zeros(4, 4), "paper")
