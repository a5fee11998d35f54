from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn

from camcli.cam.pipeline import (
    Geometry,
    cams_from_features,
    merge_ten_crop,
    normalize_cams,
    resize_maps,
    ten_crop,
    ten_crop_offsets,
    ten_crop_scores,
    topk_predictions,
    upsample_to_images,
)

# ---------------------------------------------------------------- classes and maps


def test_topk_predictions_values_order_and_clip():
    logits = torch.tensor([[1.0, 3.0, 2.0], [math.log(2.0), 0.0, math.log(3.0)]])
    scores, idx = topk_predictions(logits, 2)
    assert idx.tolist() == [[1, 2], [2, 0]]
    assert idx.dtype == torch.int64 and scores.dtype == torch.float32
    e = [math.exp(1), math.exp(3), math.exp(2)]
    assert scores[0].tolist() == pytest.approx([e[1] / sum(e), e[2] / sum(e)], abs=1e-7)
    assert scores[1].tolist() == pytest.approx([0.5, 1.0 / 3.0], abs=1e-7)
    s5, i5 = topk_predictions(logits, 5)  # clipped to C = 3
    assert s5.shape == (2, 3) and i5.shape == (2, 3)
    assert s5.sum(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    with pytest.raises(ValueError):
        topk_predictions(logits, 0)


def test_topk_half_precision_logits_give_float32_scores():
    scores, idx = topk_predictions(torch.tensor([[0.0, 1.0]], dtype=torch.bfloat16), 1)
    assert scores.dtype == torch.float32 and idx.tolist() == [[1]]


def test_cams_from_features_hand_values_no_bias():
    # features [1, K=2, 2, 2]
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -3.0]])  # C = 3
    cams = cams_from_features(f, w, torch.tensor([[2, 0]]))
    assert cams.shape == (1, 2, 2, 2) and cams.dtype == torch.float32
    assert cams[0, 0].tolist() == [[2.0, 1.0], [6.0, 11.0]]
    assert cams[0, 1].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    shared = cams_from_features(torch.cat([f, 2 * f]), w, torch.tensor([1]))  # [k] broadcast
    assert shared.shape == (2, 1, 2, 2)
    assert shared[1, 0].tolist() == [[0.0, 2.0], [0.0, -2.0]]


def test_cams_from_features_low_precision_is_float32():
    f = torch.tensor([[[[1.5]], [[2.0]]]], dtype=torch.bfloat16)
    w = torch.tensor([[1.0, 0.25]], dtype=torch.float16)
    cams = cams_from_features(f, w, torch.tensor([[0]]))
    assert cams.dtype == torch.float32 and cams.item() == 2.0


def test_cams_from_features_rejects_bad_shapes():
    with pytest.raises(ValueError):
        cams_from_features(torch.zeros(1, 3, 2, 2), torch.zeros(4, 2), torch.tensor([[0]]))
    with pytest.raises(ValueError):
        cams_from_features(torch.zeros(2, 3, 2, 2), torch.zeros(4, 3), torch.zeros(3, 1).long())


class TinyGap(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_gap_identity_mean_cam_plus_bias_equals_logit():
    torch.manual_seed(0)
    model = TinyGap().eval()
    x = torch.randn(3, 3, 9, 11)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
    _scores, idx = topk_predictions(logits, 5)
    cams = cams_from_features(feats, model.fc.weight, idx)
    recon = cams.mean(dim=(-2, -1)) + model.fc.bias[idx]
    torch.testing.assert_close(recon, logits.gather(1, idx), atol=1e-5, rtol=0)
    assert idx[:, 0].tolist() == logits.argmax(1).tolist()


# ---------------------------------------------------------------- normalisation


def test_normalize_minmax_hand_values():
    m = torch.tensor([[1.0, 3.0], [5.0, 2.0]])
    assert normalize_cams(m, "minmax").tolist() == [[0.0, 0.5], [1.0, 0.25]]


def test_normalize_all_negative_minmax_and_max():
    m = torch.tensor([[-4.0, -2.0], [-3.0, -1.0]])
    expect = torch.tensor([[0.0, 2.0 / 3.0], [1.0 / 3.0, 1.0]])
    torch.testing.assert_close(normalize_cams(m, "minmax"), expect, atol=1e-7, rtol=0)
    assert normalize_cams(m, "max").tolist() == [[1.0, 0.5], [0.75, 0.25]]


def test_normalize_max_mode_with_negative_values():
    m = torch.tensor([[-4.0, 2.0], [1.0, 0.0]])
    assert normalize_cams(m, "max").tolist() == [[1.0, 0.5], [0.25, 0.0]]


def test_normalize_degenerate_maps_become_zero_others_untouched():
    maps = torch.stack(
        [
            torch.full((2, 3), 7.0),  # constant
            torch.tensor([[0.0, float("nan"), 1.0], [2.0, 3.0, 4.0]]),
            torch.tensor([[0.0, float("inf"), 1.0], [2.0, 3.0, 4.0]]),
            torch.tensor([[0.0, -float("inf"), 1.0], [2.0, 3.0, 4.0]]),
            torch.zeros(2, 3),
            torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 8.0]]),
        ]
    ).reshape(2, 3, 2, 3)
    for mode in ("minmax", "max"):
        out = normalize_cams(maps, mode).reshape(6, 2, 3)
        assert torch.isfinite(out).all()
        assert (out[:5] == 0).all(), mode
        assert out[5].tolist() == [[0.0, 0.125, 0.25], [0.375, 0.5, 1.0]]
    raw = normalize_cams(maps, "none")
    assert torch.equal(raw.isnan(), maps.isnan())
    with pytest.raises(ValueError):
        normalize_cams(maps, "softmax")


def test_normalize_per_map_over_last_two_dims():
    m = torch.tensor([[[0.0, 2.0]], [[10.0, 40.0]]])  # two maps of 1 x 2
    assert normalize_cams(m).tolist() == [[[0.0, 1.0]], [[0.0, 1.0]]]
    assert normalize_cams(m, "max").tolist() == [[[0.0, 1.0]], [[0.25, 1.0]]]


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "h,w,size,short",
    [
        (300, 500, 224, 256),
        (500, 300, 224, 256),
        (256, 256, 224, 256),
        (333, 201, 224, 255),
        (100, 50, 224, 200),
        (31, 77, 24, 27),
    ],
)
def test_geometry_matches_torchvision_resize_and_center_crop(h, w, size, short):
    g = Geometry(h, w, size=size, mode="center_crop", short_side=short)
    img = torch.zeros(1, h, w)
    resized = TF.resize(img, [short], antialias=True)
    assert tuple(resized.shape[-2:]) == g.resized_hw
    h_r, w_r = g.resized_hw
    # index image: value = row * w_r + col + 1 (0 marks padding)
    index = (torch.arange(h_r * w_r, dtype=torch.float64) + 1).reshape(1, h_r, w_r)
    crop = TF.center_crop(index, [size, size])
    top, left = g.crop_offset
    expect = torch.zeros(size, size, dtype=torch.float64)
    for r in range(size):
        for c in range(size):
            rr, cc = top + r, left + c
            if 0 <= rr < h_r and 0 <= cc < w_r:
                expect[r, c] = rr * w_r + cc + 1
    assert torch.equal(crop[0], expect)


def test_geometry_defaults_and_validation():
    g = Geometry(300, 500, mode="center_crop")
    assert g.short_side == 256 and g.size == 224
    assert g.resized_hw == (256, 426) and g.crop_offset == (16, 101)
    assert g.crop_region == (19, 281, 119, 381)
    r = Geometry(300, 500)
    assert r.resized_hw == (224, 224) and r.crop_offset == (0, 0)
    assert r.crop_region == (0, 300, 0, 500)
    with pytest.raises(ValueError):
        Geometry(0, 10)
    with pytest.raises(ValueError):
        Geometry(10, 10, mode="letterbox")  # type: ignore[arg-type]


def _hot(h: int, w: int, r: int, c: int) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    m[0, 0, r, c] = 1.0
    return m


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("cell", [(2, 5), (0, 0), (6, 6), (3, 3)])
def test_hot_cell_lands_in_its_original_pixel_cell_non_square(interp, cell):
    r, c = cell
    g = Geometry(300, 500, size=224)
    up = upsample_to_images(_hot(7, 7, r, c), [g], interp)
    assert up.coverage == [None]
    m = up.maps[0]
    assert m.shape == (1, 300, 500) and m.dtype == torch.float32
    y, x = divmod(int(m[0].argmax()), 500)
    assert r * 300 / 7 <= y < (r + 1) * 300 / 7
    assert c * 500 / 7 <= x < (c + 1) * 500 / 7
    ys, xs = (m[0] == m[0].max()).nonzero(as_tuple=True)  # every maximal pixel is in the cell
    assert r * 300 / 7 <= ys.min() and ys.max() < (r + 1) * 300 / 7
    assert c * 500 / 7 <= xs.min() and xs.max() < (c + 1) * 500 / 7
    if 0 < r < 6 and 0 < c < 6:  # inner cell: the peak sits on the cell centre within a pixel
        assert abs(ys.float().mean().item() + 0.5 - (r + 0.5) * 300 / 7) <= 1.0
        assert abs(xs.float().mean().item() + 0.5 - (c + 0.5) * 500 / 7) <= 1.0


def test_center_crop_hot_cell_and_coverage_mask_exact():
    g = Geometry(300, 500, size=224, mode="center_crop")  # resized 256x426, offset (16, 101)
    y0, y1, x0, x1 = g.crop_region
    assert (y0, y1, x0, x1) == (19, 281, 119, 381)
    for r, c in [(3, 3), (0, 0), (6, 1)]:
        up = upsample_to_images(_hot(7, 7, r, c), [g])
        m, cov = up.maps[0][0], up.coverage[0]
        assert cov.dtype == torch.bool and cov.shape == (300, 500)
        expect = torch.zeros(300, 500, dtype=torch.bool)
        expect[19:281, 119:381] = True
        assert torch.equal(cov, expect)
        assert (m[~cov] == 0).all()
        y, x = divmod(int(m.argmax()), 500)
        # cell (r, c) covers crop pixels [32r, 32r+32) -> resized rows +16, cols +101
        sy, sx = 300 / 256, 500 / 426
        assert (16 + 32 * r) * sy - 1 <= y < (16 + 32 * (r + 1)) * sy + 1
        assert (101 + 32 * c) * sx - 1 <= x < (101 + 32 * (c + 1)) * sx + 1
    # constant map: exactly 1 inside the crop, 0 outside
    up = upsample_to_images(torch.ones(1, 2, 7, 7), [g], "bicubic")
    assert torch.equal(up.maps[0], expect.float().expand(2, -1, -1))


def test_center_crop_padded_crop_region_is_clipped():
    g = Geometry(100, 50, size=224, mode="center_crop", short_side=200)  # resized 400x200
    assert g.resized_hw == (400, 200) and g.crop_offset == (88, -12)
    y0, y1, x0, x1 = g.crop_region
    assert (y0, y1, x0, x1) == (22, 78, -3, 53)
    up = upsample_to_images(torch.ones(1, 1, 7, 7), [g])
    cov = up.coverage[0]
    assert cov[22:78].all() and not cov[:22].any() and not cov[78:].any()
    assert up.maps[0].shape == (1, 100, 50)
    assert up.maps[0][0, 50].tolist() == [1.0] * 50


def test_upsample_mixed_batch_equals_single_calls():
    torch.manual_seed(1)
    cams = torch.randn(4, 3, 7, 7)
    geoms = [
        Geometry(30, 50, size=28),
        Geometry(41, 17, size=28, mode="center_crop", short_side=32),
        Geometry(30, 50, size=28),
        Geometry(20, 20, size=14),
    ]
    for interp in ("bilinear", "bicubic"):
        up = upsample_to_images(cams, geoms, interp)
        for i, g in enumerate(geoms):
            one = upsample_to_images(cams[i : i + 1], [g], interp)
            assert up.maps[i].shape == (3, g.height, g.width)
            torch.testing.assert_close(up.maps[i], one.maps[0], atol=1e-6, rtol=0)
            assert (up.coverage[i] is None) == (g.mode == "resize")


def test_upsample_two_stage_matches_explicit_interpolate():
    cams = torch.arange(12.0).reshape(1, 1, 3, 4)
    up = upsample_to_images(cams, [Geometry(10, 30, size=8)]).maps[0]
    step1 = torch.nn.functional.interpolate(cams, size=(8, 8), mode="bilinear", align_corners=False)
    step2 = torch.nn.functional.interpolate(
        step1, size=(10, 30), mode="bilinear", align_corners=False
    )
    # CPU bilinear upsampling runs through OpenCV: the same rule, float rounding apart.
    torch.testing.assert_close(up, step2[0], atol=1e-5, rtol=0)
    one_stage = torch.nn.functional.interpolate(
        cams, size=(10, 30), mode="bilinear", align_corners=False
    )
    assert (up - one_stage[0]).abs().max() > 0.1  # the tolerance still tells the rules apart


def test_cpu_bilinear_upsampling_equals_torch_interpolate():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 7, 7) * 10 - 5
    for size in [(224, 224), (375, 500), (7, 640), (1000, 9)]:
        ref = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        out = resize_maps(maps, size)
        assert out.shape == ref.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # maps that need gradients keep the differentiable torch path
    g = maps.clone().requires_grad_(True)
    resize_maps(g, (30, 40)).sum().backward()
    assert g.grad is not None and g.grad.shape == maps.shape


def test_bicubic_is_clamped_to_input_range_and_downsampling_is_smooth():
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0
    raw = torch.nn.functional.interpolate(step, size=(32, 32), mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 1  # bicubic overshoots ...
    out = resize_maps(step, (32, 32), "bicubic")
    assert out.min() == 0 and out.max() == 1  # ... camcli clamps
    stripes = torch.zeros(1, 1, 4, 9)
    stripes[..., ::2] = 1.0
    # 9 -> 3 columns: a plain bilinear resize samples columns 1, 4, 7 -> (0, 1, 0); the
    # antialiased one weighs columns 2..6 by (1, 2, 3, 2, 1) / 9 in the middle -> 5 / 9
    small = resize_maps(stripes, (4, 3), "bilinear")
    torch.testing.assert_close(small[..., 1], torch.full((1, 1, 4), 5 / 9), atol=1e-6, rtol=0)
    assert torch.equal(resize_maps(stripes, (4, 9)), stripes)


def test_upsample_validates_inputs():
    with pytest.raises(ValueError):
        upsample_to_images(torch.zeros(2, 1, 7, 7), [Geometry(10, 10)])
    with pytest.raises(ValueError):
        upsample_to_images(torch.zeros(1, 1, 7, 7), [Geometry(10, 10)], "nearest")  # type: ignore[arg-type]


# ---------------------------------------------------------------- ten-crop


def test_ten_crop_offsets_order():
    assert ten_crop_offsets(256, 256, 224) == [
        (0, 0, False),
        (0, 32, False),
        (32, 0, False),
        (32, 32, False),
        (16, 16, False),
        (0, 0, True),
        (0, 32, True),
        (32, 0, True),
        (32, 32, True),
        (16, 16, True),
    ]
    assert ten_crop_offsets(10, 13, 4)[4] == (3, 4, False)  # round(4.5) = 4 as torchvision
    with pytest.raises(ValueError):
        ten_crop_offsets(200, 256, 224)


def test_ten_crop_pixels():
    x = torch.arange(2 * 2 * 8 * 9, dtype=torch.float32).reshape(2, 2, 8, 9)
    crops = ten_crop(x, 5)
    assert crops.shape == (20, 2, 5, 5)
    offsets = [(0, 0), (0, 4), (3, 0), (3, 4), (2, 2)]
    for b in range(2):
        for j, (t, x0) in enumerate(offsets):
            piece = x[b, :, t : t + 5, x0 : x0 + 5]
            assert torch.equal(crops[b * 10 + j], piece)
            assert torch.equal(crops[b * 10 + j + 5], piece.flip(-1))


def test_merge_ten_crop_delta_positions_and_abs():
    cams = torch.zeros(1, 10, 1, 224, 224)  # at crop resolution: the resize is the identity
    cams[0, 1, 0, 10, 20] = 1.0  # top-right crop, offset (0, 32)
    cams[0, 6, 0, 10, 20] = -2.0  # mirrored top-right crop: column 223 - 20 = 203 before mirror
    cams[0, 9, 0, 0, 0] = 4.0  # mirrored centre: offset (16, 16), column 223
    merged = merge_ten_crop(cams, 256, 224)
    assert merged.shape == (1, 1, 256, 256)
    expect = torch.zeros(256, 256)
    expect[10, 52] = 1.0
    expect[10, 32 + 203] = 2.0
    expect[16, 16 + 223] = 4.0
    assert torch.equal(merged[0, 0], expect)


def _coverage_count(size: int, crop: int) -> torch.Tensor:
    count = torch.zeros(size, size)
    far = size - crop
    mid = round(far / 2.0)
    for t, x0 in [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]:
        count[t : t + crop, x0 : x0 + crop] += 2  # the crop and its mirror
    return count


def test_merge_ten_crop_constant_one_counts_coverage():
    merged = merge_ten_crop(-torch.ones(2, 10, 3, 7, 7), 256, 224, "bicubic")
    count = _coverage_count(256, 224)
    assert torch.equal(merged, count.expand(2, 3, -1, -1))
    assert merged[0, 0, 0, 0] == 2 and merged[0, 0, 128, 128] == 10
    assert merged[0, 0, 20, 20] == 4 and merged[0, 0, 10, 100] == 4
    assert merged[0, 0, 100, 100] == 10 and merged[0, 0, 255, 255] == 2


def test_ten_crop_then_merge_reconstructs_image_times_count():
    torch.manual_seed(2)
    x = torch.rand(1, 1, 12, 12)
    crops = ten_crop(x, 9)  # [10, 1, 9, 9]
    merged = merge_ten_crop(crops.reshape(1, 10, 1, 9, 9), 12, 9)
    torch.testing.assert_close(merged[0, 0], x[0, 0] * _coverage_count(12, 9), atol=1e-6, rtol=0)


def test_ten_crop_scores_mean_softmax():
    logits = torch.zeros(1, 10, 2)
    logits[0, :5, 0] = math.log(3.0)  # p = (0.75, 0.25) on five crops, (0.5, 0.5) on five
    probs = ten_crop_scores(logits)
    assert probs.shape == (1, 2)
    assert probs[0].tolist() == pytest.approx([0.625, 0.375], abs=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_match_cpu_and_stay_on_device():
    torch.manual_seed(3)
    feats = torch.randn(2, 8, 7, 7)
    weight = torch.randn(5, 8)
    logits = torch.randn(2, 5)
    geoms = [Geometry(300, 500), Geometry(120, 90, mode="center_crop")]
    results = {}
    for dev in ("cpu", "cuda"):
        _, idx = topk_predictions(logits.to(dev), 3)
        cams = cams_from_features(feats.to(dev).half(), weight.to(dev), idx)
        up = upsample_to_images(normalize_cams(cams), geoms, "bicubic")
        merged = merge_ten_crop(cams.unsqueeze(1).expand(-1, 10, -1, -1, -1), 256, 224)
        assert cams.device.type == dev and up.maps[1].device.type == dev
        assert up.coverage[1].device.type == dev and merged.device.type == dev
        results[dev] = (cams, up.maps[0], up.maps[1], merged)
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=2e-3, rtol=1e-3)
