"""Top-k, class activation maps and normalisation; the whole chain on CUDA against the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camcli.cam.pipeline import cams_from_features, normalize_cams, topk_predictions
from camcli.cam.tencrop import merge_ten_crop
from camcli.cam.upsample import Geometry, upsample_to_images

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
