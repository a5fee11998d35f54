"""Exact tests of camcli.evaluate's metrics (taus, metrics, boxacc, pxap) on hand-made cases;
parity with wsolevaluation box vectors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camcli.evaluate.boxacc import (
    BoxAccumulator,
    best_iou_per_tau,
    quantise_scoremap,
    scoremap_boxes,
)
from camcli.evaluate.metrics import (
    GtTarget,
    ImagePrediction,
    cls_error_image,
    gt_known_correct,
    loc_error_image,
    score_predictions,
)
from camcli.evaluate.pxap import PxAPAccumulator
from camcli.evaluate.taus import DEFAULT_TAUS, parse_taus, tau_grid

# --------------------------------------------------------------------------------------------
# taus
# --------------------------------------------------------------------------------------------


def test_tau_grid_matches_arange_values():
    assert len(DEFAULT_TAUS) == 100
    np.testing.assert_array_equal(DEFAULT_TAUS, np.arange(0, 1, 0.01))
    np.testing.assert_array_equal(tau_grid(0, 1, 0.2), np.arange(0, 1, 0.2))
    assert tau_grid(0, 1, 0.2)[3] == 0.6000000000000001  # the float wsolevaluation uses
    assert len(tau_grid(0, 1, 0.001)) == 1000


def test_parse_taus():
    np.testing.assert_array_equal(parse_taus("0:1:0.25"), [0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(parse_taus("0.1, 0.5"), [0.1, 0.5])
    for bad in ("0:1", "a:b:c", "0.5,0.2", "0:2:0.5", "", "0:1:0"):
        with pytest.raises(ValueError, match="--taus"):
            parse_taus(bad)


# --------------------------------------------------------------------------------------------
# ILSVRC classification / localization per image
# --------------------------------------------------------------------------------------------


def test_cls_error_image():
    assert cls_error_image([3, 1, 2], [1], 1) == 1.0
    assert cls_error_image([3, 1, 2], [1], 5) == 0.0
    assert cls_error_image([], [1], 5) == 1.0
    # Several GT classes: the devkit averages over them.
    assert cls_error_image([3, 1], [1, 7], 5) == 0.5
    assert cls_error_image([3, 1], [1, 1], 5) == 0.0  # a repeated GT class counts once


def test_loc_error_multiple_gt_boxes_any_counts():
    gt = [(4, (0, 0, 9, 9)), (4, (50, 50, 59, 59))]
    assert loc_error_image([(4, (50, 50, 59, 59))], gt, 1) == 0.0
    assert loc_error_image([(4, (0, 0, 9, 9))], gt, 1) == 0.0
    # A box in between matches neither.
    assert loc_error_image([(4, (20, 20, 40, 40))], gt, 1) == 1.0


def test_loc_error_needs_label_and_box():
    gt = [(4, (0, 0, 9, 9))]
    assert loc_error_image([(5, (0, 0, 9, 9))], gt, 5) == 1.0  # right box, wrong class
    assert loc_error_image([(4, (0, 0, 9, 3))], gt, 5) == 1.0  # IoU 40/100
    assert loc_error_image([(4, None)], gt, 5) == 1.0  # no box is a wrong guess
    assert loc_error_image([], gt, 5) == 1.0


def test_loc_error_iou_threshold_inclusive_at_one_half():
    gt = [(0, (0, 0, 9, 9))]  # 100 pixels (inclusive)
    assert loc_error_image([(0, (0, 0, 9, 4))], gt, 1) == 0.0  # IoU 50/100 = 0.5 exactly
    assert loc_error_image([(0, (0, 0, 9, 4))], gt, 1, iou=0.51) == 1.0
    # Inclusive IoU: [1,2,5,6] vs [3,1,4,5] = 8/27 (an exclusive formula gives 6/22).
    assert loc_error_image([(0, (1, 2, 5, 6))], [(0, (3, 1, 4, 5))], 1, iou=8 / 27) == 0.0
    assert loc_error_image([(0, (1, 2, 5, 6))], [(0, (3, 1, 4, 5))], 1, iou=0.2963) == 1.0


def test_loc_error_top_k_and_repeated_classes():
    gt = [(2, (10, 10, 19, 19))]
    # Tight/loose style: the same class twice, the second box is the right one.
    guesses = [(2, (0, 0, 39, 39)), (2, (10, 10, 19, 19)), (7, (10, 10, 19, 19))]
    assert loc_error_image(guesses, gt, 1) == 1.0
    assert loc_error_image(guesses, gt, 2) == 0.0
    assert loc_error_image(guesses, gt, 5) == 0.0
    # Only the first k guesses count.
    late = [(9, None)] * 5 + [(2, (10, 10, 19, 19))]
    assert loc_error_image(late, gt, 5) == 1.0


def test_loc_error_several_gt_classes_is_averaged():
    gt = [(1, (0, 0, 9, 9)), (2, (20, 20, 29, 29))]
    assert loc_error_image([(1, (0, 0, 9, 9))], gt, 5) == 0.5
    assert loc_error_image([(1, (0, 0, 9, 9)), (2, (20, 20, 29, 29))], gt, 5) == 0.0


def test_gt_known_correct():
    assert gt_known_correct((0, 0, 9, 4), [(0, 0, 9, 9)])
    assert not gt_known_correct((0, 0, 9, 3), [(0, 0, 9, 9)])
    assert not gt_known_correct(None, [(0, 0, 9, 9)])
    assert gt_known_correct((50, 50, 59, 59), [(0, 0, 9, 9), (50, 50, 59, 59)])


# --------------------------------------------------------------------------------------------
# Split-level scoring
# --------------------------------------------------------------------------------------------

BOX_A = (0, 0, 9, 9)
BOX_B = (20, 20, 29, 29)


def _split():
    """Six GT images; returns items for score_predictions."""
    ok = ImagePrediction([1, 2, 3, 4, 5], [(1, BOX_A), (2, BOX_B)], (1, BOX_A))
    second = ImagePrediction([2, 1, 3, 4, 5], [(2, BOX_A), (1, BOX_A)], (1, (0, 0, 9, 3)))
    empty = ImagePrediction([], [], None)
    return [
        (GtTarget((1,), ((1, BOX_A),)), ok, False),  # all right
        (GtTarget((1,), ((1, BOX_A),)), second, False),  # right at rank 2
        (GtTarget((1,), ((1, BOX_A),)), empty, False),  # empty prediction: wrong
        (GtTarget((1,), ((1, BOX_A),)), None, False),  # missing: wrong
        (GtTarget((1,), ((1, BOX_A),)), second, True),  # blacklisted: cls only
        (GtTarget((2,), ()), ok, False),  # no GT box: cls only
    ]


def test_score_predictions_exact():
    r = score_predictions(_split())
    assert r["n_images"] == 6
    assert r["n_missing"] == 1
    # cls top-1: right on images 0 and 5? image 5 GT 2, ranked [1,...]: wrong. -> 1 right of 6.
    assert r["top1_cls_error"] == pytest.approx(5 / 6)
    # cls top-5: 0, 1, 4, 5 right -> 2 wrong of 6.
    assert r["top5_cls_error"] == pytest.approx(2 / 6)
    assert r["n_loc_images"] == 4
    assert r["n_blacklisted"] == 1
    assert r["n_no_gt_box"] == 1
    assert r["top1_loc_error"] == pytest.approx(3 / 4)
    # top-5 loc uses whatever guesses there are (max 2 here, but the key needs >= 5): absent.
    assert "top5_loc_error" not in r
    assert r["gt_known_loc"] == pytest.approx(1 / 4)
    assert r["n_missing_gt_known"] == 2


def test_score_predictions_top5_loc_present_with_five_guesses():
    five = ImagePrediction([1], [(3, None)] * 4 + [(1, BOX_A)])
    r = score_predictions([(GtTarget((1,), ((1, BOX_A),)), five, False)])
    assert r["top1_loc_error"] == 1.0
    assert r["top5_loc_error"] == 0.0
    assert "top5_cls_error" not in r  # one ranked class only
    assert "gt_known_loc" not in r


def test_score_predictions_classification_only():
    r = score_predictions([(GtTarget((1,), ((1, BOX_A),)), ImagePrediction([1]), False)])
    assert r["top1_cls_error"] == 0.0
    assert "top1_loc_error" not in r


def test_score_predictions_gt_known_of_another_class_is_wrong():
    p = ImagePrediction([1], [(1, BOX_A)], (2, BOX_A))
    r = score_predictions([(GtTarget((1,), ((1, BOX_A),)), p, False)])
    assert r["gt_known_loc"] == 0.0 and r["n_missing_gt_known"] == 1


# --------------------------------------------------------------------------------------------
# wsolevaluation box vectors (evaluation_test.py, compute_bboxes_from_scoremaps)
# --------------------------------------------------------------------------------------------

UNIMODAL = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.4, 0.4, 0.4, 0.6],
        [0.0, 0.4, 1.0, 0.8, 0.6],
        [0.0, 0.4, 0.4, 0.4, 0.6],
    ]
)
MULTIMODAL = np.array(
    [
        [0.4, 0.0, 0.2, 0.2, 0.2],
        [0.4, 0.4, 0.0, 0.4, 0.0],
        [0.0, 0.0, 0.0, 0.4, 0.0],
        [1.0, 0.6, 0.8, 0.2, 0.2],
    ]
)
WSOL_TAUS = np.arange(0, 1, 0.2)


def test_wsol_vectors_unimodal():
    sb = scoremap_boxes(UNIMODAL, WSOL_TAUS)
    assert sb.largest.tolist() == [
        [1, 1, 4, 3],
        [1, 1, 4, 3],
        [2, 1, 4, 3],
        [2, 2, 4, 3],
        [2, 2, 3, 3],
    ]
    assert sb.has_box.all()


def test_wsol_vectors_multimodal():
    sb = scoremap_boxes(MULTIMODAL, WSOL_TAUS)
    assert sb.largest.tolist() == [
        [0, 0, 4, 3],
        [0, 0, 2, 2],
        [0, 3, 3, 3],
        [2, 3, 3, 3],
        [0, 3, 1, 3],
    ]
    # All contours (MaxBoxAccV2's multi-contour boxes), tau by tau.
    assert sb.counts.tolist() == [1, 2, 1, 2, 1]
    assert [sb.boxes_at(t).tolist() for t in range(5)] == [
        [[0, 0, 4, 3]],
        [[0, 1, 4, 3], [0, 0, 2, 2]],
        [[0, 3, 3, 3]],
        [[2, 3, 3, 3], [0, 3, 1, 3]],
        [[0, 3, 1, 3]],
    ]


def test_wsol_vectors_degenerate_gives_no_box():
    # wsolevaluation returns [0, 0, 0, 0] placeholders here; camcli returns no box at all.
    sb = scoremap_boxes(np.zeros((3, 3)), WSOL_TAUS)
    assert not sb.has_box.any()
    assert sb.counts.tolist() == [0] * 5 and sb.boxes.shape == (0, 4)
    v1, v2 = best_iou_per_tau(sb, [(0, 0, 0, 0)])
    assert v1.tolist() == [0.0] * 5 and v2.tolist() == [0.0] * 5


def test_wsol_vectors_nan_rejected():
    with pytest.raises(ValueError, match="NaN"):
        scoremap_boxes(np.full((3, 3), np.nan), WSOL_TAUS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scoremap_boxes(np.full((3, 3), 1.5), WSOL_TAUS)


def test_tight_boxes_unimodal():
    sb = scoremap_boxes(UNIMODAL, WSOL_TAUS, wsol_boxes=False)
    assert sb.largest.tolist() == [
        [1, 1, 4, 3],
        [1, 1, 4, 3],
        [2, 1, 4, 3],
        [2, 2, 3, 2],
        [2, 2, 2, 2],
    ]


def test_quantisation_truncates_like_wsolevaluation():
    # trunc(255 m), not round: 0.999 -> 254, 0.29 -> 73 (73.95)
    q = quantise_scoremap(np.array([[0.999, 1.0, 0.0, 0.4, 0.29]]))
    assert q.tolist() == [[254, 255, 0, 102, 73]]
    # float32 maps are quantised from their float64 value, as wsolevaluation's float maps
    m32 = np.array([[0.29]], dtype=np.float32)
    assert quantise_scoremap(m32)[0, 0] == int(np.float64(m32[0, 0]) * 255)


def _reference_boxes(scoremap, taus, multi):
    """A literal per-tau transcription of the algorithm, to check the cached implementation."""
    h, w = scoremap.shape
    img = (scoremap * 255).astype(np.uint8)
    out = []
    for tau in taus:
        _, thr = cv2.threshold(img, int(tau * np.max(img)), 255, cv2.THRESH_BINARY)
        contours, _ = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        if not multi and contours:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            boxes.append([x, y, min(x + bw, w - 1), min(y + bh, h - 1)])
        out.append(boxes)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scoremap_boxes_match_a_per_tau_reference(seed):
    rng = np.random.default_rng(seed)
    small = rng.random((6, 7))
    m = cv2.resize(small, (53, 41), interpolation=cv2.INTER_LINEAR)
    m[rng.random(m.shape) < 0.05] = 0.0  # speckle: holes and many contours
    m = (m - m.min()) / (m.max() - m.min())
    taus = DEFAULT_TAUS
    sb = scoremap_boxes(m, taus)
    ref1 = _reference_boxes(m, taus, multi=False)
    refn = _reference_boxes(m, taus, multi=True)
    for t in range(len(taus)):
        assert (sb.largest[t].tolist() if sb.has_box[t] else []) == (ref1[t][0] if ref1[t] else [])
        assert sb.boxes_at(t).tolist() == refn[t]


# --------------------------------------------------------------------------------------------
# BoxAcc / MaxBoxAcc
# --------------------------------------------------------------------------------------------


def _block(h, w, *rects):
    m = np.zeros((h, w))
    for (y0, y1, x0, x1), v in rects:
        m[y0 : y1 + 1, x0 : x1 + 1] = v
    return m


TAUS4 = [0.0, 0.25, 0.5, 0.75]


def test_boxacc_curves_exact_and_one_tau_for_the_split():
    acc = BoxAccumulator(TAUS4, v2_ious=(0.5,))
    # A: one block of 1.0 (rows 2..5, cols 2..5) -> wsol box [2, 2, 6, 6] at every tau.
    acc.add(_block(10, 10, ((2, 5, 2, 5), 1.0)), [(2, 2, 6, 6)])
    # B: top half at 0.5 (q = 127), a 2x2 corner at 1.0. tau < 0.5: the top half; tau >= 0.5
    # (threshold 127 or more): only the corner.
    b = _block(20, 20, ((0, 9, 0, 19), 0.5), ((0, 1, 0, 1), 1.0))
    acc.add(b, [(0, 0, 19, 10)])  # the wsol box of the top half
    # C: right only at high tau: the corner block is the GT.
    acc.add(b, [(0, 0, 2, 2)])
    acc.add_failed()  # D: no usable map
    r = acc.result()
    assert acc.n == 4
    assert r["boxacc"]["v1"] == [0.5, 0.5, 0.5, 0.5]
    # Per image, every image but D reaches IoU 0.5 at some tau (3/4); one tau for the split: 2/4.
    assert r["maxboxacc_v1"] == 0.5
    assert r["best_tau"] == 0.0  # first of equal maxima


def test_boxacc_v1_vs_v2_components_and_deltas():
    # Two blobs: the big one is the largest contour, the GT is the small one.
    m = _block(30, 30, ((0, 9, 0, 19), 1.0), ((20, 23, 20, 23), 1.0))
    acc = BoxAccumulator([0.0, 0.5])
    acc.add(m, [(20, 20, 24, 24)])
    r = acc.result()
    assert r["maxboxacc_v1"] == 0.0
    assert r["maxboxacc_v2_by_iou"] == {"0.3": 1.0, "0.5": 1.0, "0.7": 1.0}
    assert r["maxboxacc_v2"] == 1.0
    # A box with IoU 0.64 counts at 0.3 and 0.5, not at 0.7.
    acc2 = BoxAccumulator([0.0], wsol_boxes=False)
    acc2.add(_block(10, 10, ((2, 5, 2, 5), 1.0)), [(2, 2, 6, 6)])  # tight [2,2,5,5]: 16/25
    r2 = acc2.result()
    assert r2["maxboxacc_v1"] == 1.0
    assert r2["maxboxacc_v2_by_iou"] == {"0.3": 1.0, "0.5": 1.0, "0.7": 0.0}
    assert r2["maxboxacc_v2"] == pytest.approx(2 / 3)


def test_boxacc_best_tau_per_delta():
    # Map where a low tau gives a big box, a high tau a small one; two GT images prefer each.
    m = _block(20, 20, ((0, 19, 0, 19), 0.3), ((5, 9, 5, 9), 1.0))
    acc = BoxAccumulator(TAUS4)
    acc.add(m, [(5, 5, 10, 10)])  # the small block's wsol box: right once 255 tau > 76
    r = acc.result()
    assert r["boxacc"]["v1"] == [0.0, 0.0, 1.0, 1.0]
    assert r["best_tau"] == 0.5
    assert r["best_tau_v2"]["0.5"] == 0.5


def test_boxacc_empty():
    assert BoxAccumulator(TAUS4).result() == {}


def test_boxacc_merge():
    a, b = BoxAccumulator(TAUS4), BoxAccumulator(TAUS4)
    a.add(_block(10, 10, ((2, 5, 2, 5), 1.0)), [(2, 2, 6, 6)])
    b.add_failed()
    a.merge(b)
    assert a.result()["boxacc"]["v1"] == [0.5] * 4


# --------------------------------------------------------------------------------------------
# PxAP
# --------------------------------------------------------------------------------------------


def test_pxap_hand_computed_binned():
    m = np.array([[0.9, 0.8, 0.3, 0.1]])
    fg = np.array([[1, 0, 1, 0]], dtype=bool)
    acc = PxAPAccumulator(TAUS4)
    acc.add(m, fg)
    # 0.9 and 0.8 share the bin [0.75, 1): precision 1/2 at recall 1/2, then 2/3 at recall 1.
    assert acc.result() == pytest.approx(0.5 * 0.5 + (2 / 3) * 0.5)


def test_pxap_equals_average_precision_on_a_fine_grid():
    m = np.array([[0.9, 0.8, 0.3, 0.1]])
    fg = np.array([[1, 0, 1, 0]], dtype=bool)
    acc = PxAPAccumulator([0.0, 0.2, 0.5, 0.85])
    acc.add(m, fg)
    assert acc.result() == pytest.approx((1 / 1 + 2 / 3) / 2)  # AP of the ranking + - + -


def test_pxap_perfect_and_constant_maps_like_wsolevaluation():
    rng = np.random.default_rng(0)
    fg = rng.random((30, 40)) < 0.3
    perfect = PxAPAccumulator()
    perfect.add(fg.astype(np.float64), fg)
    assert perfect.result() == 1.0
    for value in (0.0, 0.5, 1.0):  # a constant map scores the foreground share
        acc = PxAPAccumulator()
        acc.add(np.full(fg.shape, value), fg)
        assert acc.result() == pytest.approx(fg.mean())


def test_pxap_ignore_and_accumulates_over_images():
    fg = np.array([[1, 0, 0, 0]], dtype=bool)
    m = np.array([[0.9, 0.95, 0.1, 0.1]])
    ign = np.array([[0, 1, 0, 0]], dtype=bool)
    acc = PxAPAccumulator()
    acc.add(m, fg, ign)  # the false positive at 0.95 is ignored
    assert acc.result() == 1.0
    acc.add(np.array([[0.2, 0.3]]), np.array([[0, 1]], dtype=bool))
    # scores + 0.9, + 0.3, - 0.2, - 0.1, - 0.1 (fine enough grid): AP = (1 + 1) / 2
    assert acc.result() == 1.0
    assert acc.n == 2


def test_pxap_without_foreground_raises():
    acc = PxAPAccumulator()
    acc.add(np.zeros((2, 2)), np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="foreground"):
        acc.result()
