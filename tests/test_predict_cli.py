"""`camcli predict` end to end: parity with torchvision, records, exit codes, weights files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

import camcli.cli
from camcli.data.records import JsonlWriter
from camcli.models.load import random_model
from camcli.models.registry import load_categories

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Several processes share two cores here: OpenMP spin-waiting makes 2 threads 100x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        net.fc.weight.mul_(40)  # a peaked softmax: top-5 well separated
    return net.eval()


@pytest.fixture(scope="module")
def sd_path(tv_net, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("w") / "sd.pth"
    torch.save(tv_net.state_dict(), p)
    return p


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        camcli.cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return ei.value.code, out, err


def _records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def _images(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)

    def noise(h, w, c):
        return rng.integers(0, 256, (h, w, c), dtype=np.uint8)

    out = {}
    out["rgb"] = d / "rgb odd.png"
    Image.fromarray(noise(23, 37, 3)).save(out["rgb"])
    out["l"] = d / "grey.png"
    Image.fromarray(noise(1, 1, 1)[:, :, 0]).save(out["l"])
    out["rgba"] = d / "rgba.png"
    Image.fromarray(noise(17, 64, 4)).save(out["rgba"])
    out["p"] = d / "pal.gif"
    Image.fromarray(noise(301, 5, 3)).convert("P").save(out["p"])
    out["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(noise(30, 29, 4), mode="CMYK").save(out["cmyk"])
    out["i16"] = d / "deep.png"
    Image.fromarray(rng.integers(0, 65536, (9, 13), dtype=np.uint16)).save(out["i16"])
    out["zero"] = d / "zero.jpg"
    out["zero"].write_bytes(b"")
    out["text"] = d / "text.jpg"
    out["text"].write_text("not an image")
    full = (d / "rgb odd.png").read_bytes()
    out["trunc"] = d / "trunc.png"
    out["trunc"].write_bytes(full[: len(full) // 2])
    return out


@pytest.fixture(scope="module")
def imgs(tmp_path_factory) -> dict[str, Path]:
    return _images(tmp_path_factory.mktemp("imgs"))


def _reference(net: torch.nn.Module, path: Path, k: int = 5) -> tuple[list[int], list[float]]:
    """The documented preprocessing, built independently with torchvision.transforms.v2."""
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((224, 224), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    with Image.open(path) as im:
        x = tf(im.convert("RGB"))[None]
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1)[0]
    s, i = p.topk(k)
    return i.tolist(), s.tolist()


def test_predict_matches_torchvision(capsys, tv_net, sd_path, imgs):
    names = ["rgb", "l", "rgba"]
    args = ["predict", *(imgs[n] for n in names), "--model", "resnet18", "--weights", sd_path]
    code, out, err = _cli(capsys, *args, "-b", "2", "--workers", "0", "-o", "-", "--device", "cpu")
    assert code == 0, err
    recs = _records(out)
    assert [r["image"] for r in recs] == [str(imgs[n]) for n in names]
    cats = load_categories("imagenet1k")
    for n, r in zip(names, recs):
        idx, scores = _reference(tv_net, imgs[n])
        assert [p["class_index"] for p in r["predictions"]] == idx
        np.testing.assert_allclose([p["score"] for p in r["predictions"]], scores, atol=1e-4)
        assert [p["label"] for p in r["predictions"]] == [cats[i] for i in idx]
        assert scores[0] > 0.05 and scores[0] - scores[1] > 1e-3  # the check is not vacuous
    with Image.open(imgs["rgb"]) as im:
        assert (recs[0]["width"], recs[0]["height"]) == im.size == (37, 23)


ORDER = ["rgb", "zero", "l", "p", "missing", "rgba", "trunc", "cmyk", "text", "i16"]
BAD = {"zero", "missing", "trunc", "text"}


def test_predict_mixed_inputs_one_record_each_in_order(sd_path, imgs, tmp_path):
    """Through `python -m camcli`, with decoding worker processes."""
    paths = [str(imgs[n]) if n != "missing" else str(tmp_path / "missing.png") for n in ORDER]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "camcli", "predict", *paths, "-m", "resnet18", "-w", str(sd_path)]
        + ["-b", "3", "--workers", "2", "-k", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    recs = _records(r.stdout)  # not a terminal: JSON Lines without --output
    assert [x["image"] for x in recs] == paths
    sizes = {"rgb": (37, 23), "l": (1, 1), "p": (5, 301), "rgba": (64, 17), "cmyk": (29, 30)}
    sizes["i16"] = (13, 9)
    for n, rec in zip(ORDER, recs):
        if n in BAD:
            assert set(rec) == {"image", "error"} and rec["error"] and "\n" not in rec["error"]
        else:
            assert "error" not in rec
            assert (rec["width"], rec["height"]) == sizes[n]
            assert len(rec["predictions"]) == 3
            scores = [p["score"] for p in rec["predictions"]]
            assert scores == sorted(scores, reverse=True)
    assert "Traceback" not in r.stderr


def test_predict_all_corrupt_exits_3(capsys, sd_path, imgs):
    code, out, _ = _cli(
        capsys, "predict", imgs["zero"], imgs["text"], "-m", "resnet18", "-w", sd_path, "-o", "-"
    )
    assert code == 3
    assert [set(r) for r in _records(out)] == [{"image", "error"}] * 2


def test_predict_output_file_written_atomically(capsys, sd_path, imgs, tmp_path):
    target = tmp_path / "out" / "preds.jsonl"
    code, out, err = _cli(
        capsys, "predict", imgs["rgb"], imgs["zero"], "-m", "resnet18", "-w", sd_path,
        "--workers", "0", "--output", target,
    )  # fmt: skip
    assert code == 1 and out == ""
    recs = _records(target.read_text(encoding="utf-8"))
    assert [r["image"] for r in recs] == [str(imgs["rgb"]), str(imgs["zero"])]
    assert sorted(p.name for p in target.parent.iterdir()) == [".preds.jsonl.run", "preds.jsonl"]
    assert "zero.jpg: not an image file" in err  # failed inputs are reported on stderr


def test_jsonl_writer_replaces_only_on_close(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_text("old\n")
    w = JsonlWriter(target)
    w.write({"a": 1})
    assert target.read_text() == "old\n"
    w.close()
    assert target.read_text() == '{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_predict_non_utf8_path_gives_valid_json(capsys, sd_path, tmp_path):
    d = tmp_path / "nu"
    d.mkdir()
    raw = os.path.join(os.fsencode(d), b"\xff\xfe.png")
    with open(raw, "wb") as fh:
        Image.new("RGB", (5, 4), (1, 2, 3)).save(fh, format="PNG")
    target = tmp_path / "o.jsonl"
    code, _, err = _cli(
        capsys, "predict", d, "-m", "resnet18", "-w", sd_path, "--workers", "0", "-o", target
    )
    assert code == 0, err
    text = target.read_bytes().decode("utf-8")  # valid UTF-8
    (rec,) = _records(text)
    assert os.fsencode(rec["image"]) == raw  # and the path round-trips
    code, out, err = _cli(capsys, "predict", d, "-m", "resnet18", "-w", sd_path, "-o", "-")
    assert code == 0, err
    assert os.fsencode(_records(out)[0]["image"]) == raw


def _checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module, list[str]]:
    torch.manual_seed(3)
    m = random_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        m.fc.weight.mul_(40)
    cats = [f"thing {i}" for i in range(10)]
    pre = {
        "input_size": 64,
        "resize": "resize",
        "mean": MEAN,
        "std": STD,
        "interpolation": "bilinear",
    }
    ckpt = {
        "format": "camcli-checkpoint",
        "model": "resnet18",
        "state_dict": m.state_dict(),
        "categories": cats,
        "preprocess": pre,
        "pool": "avg",
    }
    path = tmp_path / "run.pt"
    torch.save(ckpt, path)
    return path, m, cats


def test_camcli_checkpoint_loads_with_and_without_model(capsys, imgs, tmp_path):
    path, m, cats = _checkpoint(tmp_path)
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((64, 64), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    with Image.open(imgs["rgb"]) as im:
        x = tf(im.convert("RGB"))[None]
    with torch.no_grad():
        s, i = torch.softmax(m(x), dim=1)[0].topk(10)
    for extra in ([], ["--model", "resnet18"]):
        code, out, err = _cli(
            capsys,
            "predict",
            imgs["rgb"],
            "-w",
            path,
            *extra,
            "-k",
            "20",
            "-o",
            "-",
            "--workers",
            "0",
        )
        assert code == 0, err
        (rec,) = _records(out)
        assert [p["class_index"] for p in rec["predictions"]] == i.tolist()
        assert [p["label"] for p in rec["predictions"]] == [cats[j] for j in i.tolist()]
        np.testing.assert_allclose([p["score"] for p in rec["predictions"]], s, atol=1e-4)
    code, _, err = _cli(capsys, "predict", imgs["rgb"], "-w", path, "--model", "densenet121")
    assert code == 4 and "checkpoint is for 'resnet18'" in err


def test_safetensors_state_dict_loads(capsys, tv_net, imgs, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd.safetensors"
    save_file({k: v.contiguous() for k, v in tv_net.state_dict().items()}, str(path))
    code, out, err = _cli(
        capsys, "predict", imgs["rgba"], "-m", "resnet18", "-w", path, "-o", "-", "--workers", "0"
    )
    assert code == 0, err
    (rec,) = _records(out)
    idx, scores = _reference(tv_net, imgs["rgba"])
    assert [p["class_index"] for p in rec["predictions"]] == idx
    np.testing.assert_allclose([p["score"] for p in rec["predictions"]], scores, atol=1e-4)


def test_shape_mismatch_exits_4_naming_the_tensor(capsys, tv_net, imgs, tmp_path):
    sd = dict(tv_net.state_dict())
    sd["layer3.1.bn2.weight"] = torch.ones(7)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    code, out, err = _cli(capsys, "predict", imgs["rgb"], "-m", "resnet18", "-w", path)
    assert code == 4 and out == ""
    assert "'layer3.1.bn2.weight'" in err and "[7]" in err and "[256]" in err
    assert err.count("\n") == 1 and "Traceback" not in err


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused(capsys, imgs, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Evil(str(marker))}, path)
    code, out, err = _cli(capsys, "predict", imgs["rgb"], "-m", "resnet18", "-w", path)
    assert code == 4 and out == ""
    assert "never pickled code" in err and err.count("\n") == 1
    assert not marker.exists()


def test_non_tensor_values_and_unknown_weights_name(capsys, imgs, tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"a": torch.zeros(1), "b": 3}, path)
    code, _, err = _cli(capsys, "predict", imgs["rgb"], "-m", "resnet18", "-w", path)
    assert code == 4 and "non-tensor" in err
    code, _, err = _cli(capsys, "predict", imgs["rgb"], "-m", "resnet18", "-w", "nosuch.pth")
    assert code == 4 and "not a file, URL or registry name" in err


def test_paper_network_needs_training(capsys, imgs):
    code, _, err = _cli(capsys, "predict", imgs["rgb"], "-m", "vgg-gap", "--offline")
    assert code == 4 and "train it first" in err
