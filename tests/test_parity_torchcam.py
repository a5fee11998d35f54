"""Parity with torch-cam's CAM (an independent implementation of the same formula)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from camcli.cam.pipeline import cams_from_features, normalize_cams

torchcam_methods = pytest.importorskip("torchcam.methods")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("normalized", [True, False])
def test_cam_maps_equal_torchcam(normalized):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(3, 3, 19, 23)
    classes = [2, 0, 3]
    with torchcam_methods.CAM(model, "features", "fc", input_shape=(3, 19, 23)) as extractor:
        with torch.no_grad():
            model(x)
        (theirs,) = extractor(class_idx=classes, normalized=normalized)
    with torch.no_grad():
        feats = model.features(x)
    ours = cams_from_features(feats, model.fc.weight, torch.tensor(classes)[:, None])[:, 0]
    if normalized:
        ours = normalize_cams(ours, "minmax")
    assert theirs.shape == ours.shape == (3, 9, 11)
    assert ours.min() < 0 or normalized  # raw maps keep their sign: no ReLU in either
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
