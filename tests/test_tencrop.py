"""Ten-crop: offsets, crops, the merged map and the mean softmax."""

from __future__ import annotations

import math

import pytest
import torch

from camcli.cam.tencrop import merge_ten_crop, ten_crop, ten_crop_offsets, ten_crop_scores

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
