"""camnet-small: shapes, options, registry entry, CAM identity."""

from __future__ import annotations

import pytest
import torch

from camcli.cam import pipeline
from camcli.models.camnet_small import (
    SmallArchError,
    build_small_trunk,
    feature_channels,
    feature_size,
    small_options,
)
from camcli.models.load import build_model, entry_for
from camcli.models.registry import get_entry


@pytest.mark.parametrize(
    ("opts", "size", "expected"),
    [
        ({"width": 8}, 32, (64, 4, 4)),
        ({"width": 8, "downsamplings": 2}, 32, (64, 8, 8)),
        ({"width": 8, "downsamplings": 0}, 32, (64, 32, 32)),
        ({"width": 4, "stages": 2, "downsamplings": 2}, 33, (16, 9, 9)),
        ({"width": 4, "stages": 4, "downsamplings": 4, "blocks": 1}, 64, (64, 4, 4)),
    ],
)
def test_feature_map_shape(opts, size, expected):
    trunk, k = build_small_trunk(None, **opts)
    f = trunk(torch.randn(2, 3, size, size))
    assert tuple(f.shape) == (2, *expected)
    assert k == expected[0] == feature_channels(**opts)
    assert feature_size(size, **opts) == expected[1]
    assert f.min() >= 0  # ReLU output


def test_parameter_count_exact():
    # stem conv 3*4*9 + BN 2*4; stage conv 4*8*9 + BN 2*8 (no conv bias).
    trunk, k = build_small_trunk(None, width=4, stages=1, downsamplings=1, blocks=1)
    assert k == 8
    assert sum(p.numel() for p in trunk.parameters()) == 108 + 8 + 288 + 16


def test_downsamplings_keep_weight_shapes():
    a, _ = build_small_trunk(None, width=4, downsamplings=3)
    b, _ = build_small_trunk(None, width=4, downsamplings=1)
    b.load_state_dict(a.state_dict())  # same tensors, only strides differ
    strides = [m.stride for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(1, 1), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1)]


@pytest.mark.parametrize(
    ("opts", "fragment"),
    [
        ({"depth": 3}, "unknown camnet-small option 'depth'"),
        ({"downsamplings": 4}, "downsamplings must be in 0..stages (3)"),
        ({"width": 2}, "width must be in 4..256"),
        ({"width": "wide"}, "must be an integer"),
        ({"blocks": 1.5}, "must be an integer"),
    ],
)
def test_bad_options(opts, fragment):
    with pytest.raises(SmallArchError) as ei:
        small_options(**opts)
    assert fragment in str(ei.value)


def test_registry_entry_and_cam_identity():
    e = get_entry("camnet-small")
    assert (e.builder, e.url, e.sha256, e.head) == ("small", None, None, "untrained")
    assert e.preprocess.input_size == 64 and e.feature_size == (8, 8)
    torch.manual_seed(0)
    m = build_model(entry_for("camnet-small"), None, num_classes=3, arch_options={"width": 4})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f, logits = m.forward_features(x)
    assert tuple(f.shape) == (2, 32, 8, 8)
    w, b = m.classifier
    cams = pipeline.cams_from_features(f, w, torch.arange(3))
    torch.testing.assert_close(cams.mean((-2, -1)) + b, logits, rtol=1e-5, atol=1e-5)
