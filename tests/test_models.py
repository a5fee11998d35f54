"""Registry builders and the GapModel adapter (random init, no downloads)."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from camcli.errors import ModelError
from camcli.models import builders, gap, hub, load
from camcli.models.gap import GapModel
from camcli.models.load import build_model, entry_for, random_model
from camcli.models.registry import load_registry

NAMES = list(load_registry())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Several processes share two cores here: OpenMP spin-waiting makes 2 threads 100x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _meta_model(name: str) -> GapModel:
    """Random-init model without allocating or initialising real weights where possible.

    A bundled model (``package:`` URL) is loaded for real: its checkpoint carries the
    architecture options (e.g. the demo's map resolution) that the registry documents."""
    if (load_registry()[name].url or "").startswith("package:"):
        from camcli.models.load import load_model

        return load_model(name, offline=True).to("meta")
    try:
        with torch.device("meta"):
            return random_model(name)
    except NotImplementedError:  # builders that compute with tensors (regnet widths)
        return random_model(name).to("meta")


@pytest.mark.parametrize("name", NAMES)
def test_feature_map_and_classes_at_default_input(name: str):
    e = load_registry()[name]
    m = _meta_model(name)
    s = e.preprocess.input_size
    f, logits = m.forward_features(torch.empty(1, 3, s, s, device="meta"))
    assert tuple(f.shape) == (1, e.feature_channels, *e.feature_size)
    assert tuple(logits.shape) == (1, e.num_classes)
    w, b = m.classifier
    assert tuple(w.shape) == (e.num_classes, e.feature_channels)
    assert tuple(b.shape) == (e.num_classes,)
    assert m.pool == e.pool
    assert m.num_classes == len(m.categories) == e.num_classes
    if e.categories == "imagenet1k":
        assert m.num_classes == 1000 and m.categories[0] == "tench"


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("alexnet-gap", 95)])
def test_gap_identity(name: str, size: int):
    torch.manual_seed(0)
    m = random_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        f, logits = m.forward_features(x)
        w, b = m.classifier
        expected = f.double().mean(dim=(2, 3)) @ w.double().T + b.double()
        cams = torch.einsum("ck,bkhw->bchw", w.double(), f.double())
    torch.testing.assert_close(logits.double(), expected, rtol=1e-5, atol=1e-5)
    # SPEC 1: mean of the CAM plus the bias is the logit
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + b.double(), expected, rtol=1e-9, atol=1e-9)


def test_gmp_model_pools_with_max():
    torch.manual_seed(0)
    m = random_model("alexnet-gmp", num_classes=5).eval()
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        f, logits = m.forward_features(x)
        w, b = m.classifier
        torch.testing.assert_close(logits, f.amax(dim=(2, 3)) @ w.T + b)


# torchvision classifiers camcli accepts; the GapModel must reproduce their logits exactly.
ACCEPTED = [
    ("resnet18", {}),
    ("densenet121", {}),
    ("mobilenet_v2", {}),
    ("efficientnet_b0", {}),
    ("googlenet", {"aux_logits": False, "init_weights": False, "transform_input": True}),
    ("regnet_y_400mf", {}),
    ("shufflenet_v2_x0_5", {}),
]


@pytest.mark.parametrize(("arch", "kw"), ACCEPTED)
def test_split_gap_classifier_reproduces_torchvision(arch: str, kw: dict):
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, weights=None, num_classes=6, **kw).eval()
    trunk, fc, pool = gap.split_gap_classifier(net, arch)
    assert pool == "avg"
    assert isinstance(fc, nn.Linear) and fc.out_features == 6
    gm = GapModel(
        trunk, fc, pool, name=arch, preprocess=entry_for("resnet18").preprocess, categories="abcdef"
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg16", "mobilenet_v3_small", "convnext_tiny"])
def test_split_gap_classifier_refuses_other_heads(arch: str):
    with torch.device("meta"):
        net = torchvision.models.get_model(arch, weights=None)
    with pytest.raises(ModelError) as ei:
        gap.split_gap_classifier(net, arch)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{arch}: ")
    assert "vgg-gap" in msg and "camcli models" in msg


def test_torchvision_prefix_builds_and_rejects_unknown():
    e = entry_for("torchvision:resnet18")
    assert e.url == torchvision.models.ResNet18_Weights.DEFAULT.url
    assert e.sha256 == "f37072fd"
    assert entry_for("torchvision:efficientnet_b0").preprocess.interpolation == "bicubic"
    with pytest.raises(ModelError, match="unknown torchvision model 'nope'"):
        entry_for("torchvision:nope")


def _reference_googlenet(num_classes: int = 10, **kw) -> nn.Module:
    torch.manual_seed(1)
    return torchvision.models.googlenet(
        weights=None, init_weights=True, transform_input=True, num_classes=num_classes, **kw
    ).eval()


def test_googlenet_published_file_layout_loads_with_transform_input():
    """torchvision's googlenet file carries aux1/aux2 tensors and expects transform_input."""
    net = _reference_googlenet(aux_logits=True)
    state = net.state_dict()
    assert any(k.startswith("aux1.") for k in state)
    m = build_model(entry_for("googlenet"), state)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x), rtol=1e-5, atol=1e-5)


def test_densenet_legacy_key_names_load():
    """torchvision's densenet files use the old ``norm.1`` key names; its builder renames them."""
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=4).eval()
    # The 2017 file: old key names, and no num_batches_tracked buffers (added in torch 0.4.1).
    legacy = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    m = build_model(entry_for("densenet121"), legacy)
    assert m.num_classes == 4
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x), rtol=1e-5, atol=1e-5)


def test_googlenet_gap_checkpoint_round_trip():
    """A googlenet-gap trained from the torchvision backbone reloads from its own state_dict."""
    backbone = _reference_googlenet(1000, aux_logits=True).state_dict()
    e = entry_for("googlenet-gap")
    m = build_model(e, None, num_classes=3, backbone_state=backbone).eval()
    # trunk.0 is the parameter-free transform_input; conv1 follows it
    assert isinstance(m.trunk[0], gap.TransformInput)
    torch.testing.assert_close(m.state_dict()["trunk.1.conv.weight"], backbone["conv1.conv.weight"])
    again = build_model(e, m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), m(x))
        f = again.features(x)
    assert tuple(f.shape) == (1, 1024, 4, 4)


def test_shape_mismatch_names_first_bad_tensor():
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(hub.WeightsError) as ei:
        build_model(entry_for("resnet18"), state)
    msg = str(ei.value)
    assert "'layer2.0.conv1.weight'" in msg and "[3, 3, 3, 3]" in msg and "[128, 64, 3, 3]" in msg
    del state["layer2.0.conv1.weight"]
    with pytest.raises(hub.WeightsError, match="missing 'layer2.0.conv1.weight'; 1 missing"):
        build_model(entry_for("resnet18"), state)


def test_paper_network_without_trained_head_fails_before_downloading(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path))

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(hub, "download", no_download)
    with pytest.raises(hub.WeightsError, match="train it first"):
        load.load_model("vgg-gap")


def test_offline_without_cache_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path))
    with pytest.raises(hub.WeightsError) as ei:
        load.load_model("resnet18", offline=True)
    assert str(tmp_path / "weights" / "resnet18-f37072fd.pth") in str(ei.value)
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


def test_check_gap_head_before_any_download():
    builders.check_gap_head(entry_for("torchvision:regnet_y_400mf"))  # tensor-computing builder
    builders.check_gap_head(entry_for("torchvision:mnasnet0_5"))
    with pytest.raises(ModelError, match="vgg-gap"):
        builders.check_gap_head(entry_for("torchvision:vgg11"))
