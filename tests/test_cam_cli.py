"""Acceptance tests of `camcli cam` (issue 3): files written, values, options, resume, SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

V2_FIELDS = {
    "version", "cams", "class_indices", "scores", "labels", "image", "norm", "interpolation",
    "height", "width", "input_size", "resize", "short_side",
}  # fmt: skip

from conftest import (  # noqa: E402
    CLI_CATEGORIES,
    CLI_CORRUPT,
    CLI_IMAGES,
    CLI_INPUT_SIZE,
    PYTHON,
    full_maps,
    make_image,
    run_main,
    subprocess_env,
)

pytestmark = pytest.mark.usefixtures("cli_one_thread")

GOOD = [rel for rel, _ in CLI_IMAGES]
SIZES = dict(CLI_IMAGES)


def tree(root: Path) -> set[str]:
    """Every file under root, as POSIX paths relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def key_of(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def manifest(root: Path) -> list[dict]:
    return [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --- an independent reference of the maths (SPEC section 1) ----------------------------------


def _resize(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """[n, k, h, w] -> [n, k, *size]; antialias when shrinking; bicubic clamped to input range."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    shrink = size[0] < maps.shape[-2] or size[1] < maps.shape[-1]
    out = F.interpolate(maps, size=size, mode=mode, align_corners=False, antialias=shrink)
    if mode == "bicubic":
        lo = maps.amin(dim=(-2, -1), keepdim=True)
        hi = maps.amax(dim=(-2, -1), keepdim=True)
        out = torch.maximum(torch.minimum(out, hi), lo)
    return out


def _norm(m: torch.Tensor, mode: str) -> torch.Tensor:
    """Normalise each [h, w] map of [k, h, w]."""
    if mode == "none":
        return m
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    if mode == "minmax":
        return (m - lo) / (hi - lo)
    a = m.abs()
    return a / a.amax(dim=(-2, -1), keepdim=True)


def _input(path: Path, size: int) -> torch.Tensor:
    """[1, 3, size, size] normalised float: anisotropic antialiased resize of the uint8 image."""
    from torchvision.transforms.v2 import functional as TF

    img = torch.from_numpy(read_rgb(path).copy()).permute(2, 0, 1)
    x = TF.resize(img, [size, size], antialias=True).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    return ((x - mean) / std).unsqueeze(0)


def reference(model, path: Path, *, k=None, classes=None, norm="minmax", interp="bilinear"):
    """(probs [C] float64, class indices [k], maps [k, H, W]) computed from scratch."""
    h, w = read_rgb(path).shape[:2]
    with torch.no_grad():
        f = model.trunk(_input(path, CLI_INPUT_SIZE))[0].double()  # [K, h, w]
        logits = model.fc.weight.double() @ f.mean(dim=(1, 2)) + model.fc.bias.double()
        probs = torch.softmax(logits, 0)
        idx = torch.tensor(classes) if classes is not None else probs.argsort(descending=True)[:k]
        cams = torch.einsum("ck,khw->chw", model.fc.weight.double()[idx], f)
        cams = _norm(cams, norm).float()[None]
        cams = _resize(_resize(cams, (CLI_INPUT_SIZE, CLI_INPUT_SIZE), interp), (h, w), interp)
    return probs.numpy(), idx.numpy(), cams[0].numpy()


def ten_crop_reference(model, path: Path) -> np.ndarray:
    """Mean softmax over the ten crops of the image resized to round(S * 256 / 224)."""
    s = CLI_INPUT_SIZE
    canvas = round(s * 256 / 224)
    x = _input(path, canvas)[0]
    probs = []
    for top in (0, canvas - s):
        for left in (0, canvas - s):
            probs.append(x[:, top : top + s, left : left + s])
    c = round((canvas - s) / 2)
    probs.append(x[:, c : c + s, c : c + s])
    crops = torch.stack(probs + [p.flip(-1) for p in probs])
    with torch.no_grad():
        return torch.softmax(model(crops).double(), 1).mean(0).numpy()


# --- the main run: --save-maps --grid over a folder, then --resume -------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cli_images, cli_ckpt):
    out = tmp_path_factory.mktemp("cam") / "out"
    code = run_main(
        "cam", cli_images, "--out", out, "--weights", cli_ckpt, "--top-k", 3,
        "--save-maps", "--grid", "--quiet",
    )  # fmt: skip
    return code, out


def test_full_run_writes_exactly_the_documented_files(full_run):
    code, out = full_run
    assert code == 1  # one input failed (the corrupt file), the others are done
    recs = {r["key"]: r for r in manifest(out)}
    expect = {"manifest.jsonl", "run.json"}
    for rel in GOOD:
        key = key_of(rel)
        labels = [p["label"].replace(" ", "_") for p in recs[key]["predictions"]]
        assert len(labels) == 3
        expect |= {f"{key}/{r}_{lab}.jpg" for r, lab in enumerate(labels, start=1)}
        expect |= {f"{key}/grid.jpg", f"{key}.npz"}
    assert tree(out) == expect


def test_full_run_images_are_at_the_original_size(full_run):
    _, out = full_run
    for rel in GOOD:
        h, w = SIZES[rel]
        key = key_of(rel)
        overlays = sorted((out / key).glob("[0-9]_*.jpg"))
        assert len(overlays) == 3
        for p in overlays:
            assert read_rgb(p).shape == (h, w, 3)
        g = read_rgb(out / key / "grid.jpg")
        assert g.shape[0] > h and g.shape[1] > 4 * w  # original + 3 overlays, captions below


def test_full_run_manifest_and_run_json(full_run, cli_images):
    _, out = full_run
    recs = manifest(out)
    # one record per input, in input (sorted relative path) order, the corrupt one included
    assert [r["key"] for r in recs] == sorted(key_of(x) for x in [*GOOD, CLI_CORRUPT])
    bad = [r for r in recs if "error" in r]
    assert len(bad) == 1 and bad[0]["image"] == str(cli_images / CLI_CORRUPT)
    assert bad[0]["error"] and "\n" not in bad[0]["error"]
    for r in recs:
        if "error" in r:
            continue
        h, w = SIZES[next(g for g in GOOD if key_of(g) == r["key"])]
        assert (r["width"], r["height"]) == (w, h)
        assert set(r["outputs"]["files"]) == {
            *r["outputs"]["overlays"],
            r["outputs"]["grid"],
            r["outputs"]["maps"],
        }
        assert all((out / f).is_file() for f in r["outputs"]["files"])
    info = json.loads((out / "run.json").read_text())
    assert info["command"] == "cam"
    assert info["num_classes"] == 10 and info["model"] == "resnet18"
    assert info["counts"] == {"ok": len(GOOD), "failed": 1}
    assert info["options"]["top_k"] == 3 and info["options"]["grid"] is True


def test_full_run_maps_scores_and_classes_match_an_independent_reference(
    full_run, cli_images, cli_model
):
    _, out = full_run
    for rel in GOOD:
        h, w = SIZES[rel]
        with np.load(out / f"{key_of(rel)}.npz", allow_pickle=False) as z:
            assert set(z.files) == V2_FIELDS
            assert int(z["version"]) == 2 and z["cams"].shape == (3, 2, 2)  # features (64 px input)
            cls, scores = z["class_indices"], z["scores"]
            labels, image = z["labels"], str(z["image"])
        cams = full_maps(out / f"{key_of(rel)}.npz")
        assert cams.dtype == np.float32 and cams.shape == (3, h, w)
        assert cls.dtype == np.int64 and scores.dtype == np.float32
        assert image == str(cli_images / rel)
        probs, idx, maps = reference(cli_model, cli_images / rel, k=3)
        assert cls.tolist() == idx.tolist()
        np.testing.assert_allclose(scores, probs[idx], rtol=1e-5, atol=1e-6)
        assert labels.tolist() == [CLI_CATEGORIES[i] for i in idx]
        assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
        np.testing.assert_allclose(cams, maps, atol=2e-4)


def test_resume_after_a_complete_run_writes_nothing(full_run, cli_images, cli_ckpt):
    _, out = full_run
    before = {f: os.stat(out / f) for f in tree(out)}
    text = (out / "manifest.jsonl").read_text()
    code = run_main(
        "cam", cli_images, "--out", out, "--weights", cli_ckpt, "--top-k", 3,
        "--save-maps", "--grid", "--resume", "--quiet",
    )  # fmt: skip
    assert code == 1  # the corrupt input is retried and fails again
    assert tree(out) == set(before)
    assert (out / "manifest.jsonl").read_text() == text
    for f, st in before.items():
        if f in ("manifest.jsonl", "run.json"):
            continue
        now = os.stat(out / f)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f
    assert json.loads((out / "run.json").read_text())["options"]["resumed"] == len(GOOD)


# --- options ---------------------------------------------------------------------------------


@pytest.fixture
def two_images(tmp_path, cli_images) -> Path:
    """A folder with two of the generated images (faster option tests)."""
    d = tmp_path / "two"
    d.mkdir()
    for rel in ("a.jpg", "b.png"):
        (d / rel).write_bytes((cli_images / rel).read_bytes())
    return d


def _npz(path: Path) -> dict:
    """The arrays of a map file, ``cams`` the maps on the original image (v2: rebuilt)."""
    with np.load(path, allow_pickle=False) as z:
        return {**{k: z[k] for k in z.files}, "cams": full_maps(path)}


def test_class_by_name_and_index(two_images, cli_ckpt, cli_model, tmp_path):
    out = tmp_path / "cls"
    code = run_main(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--class", "CLASS C",
        "--class", "7", "--save-maps", "--quiet",
    )  # fmt: skip
    assert code == 0
    assert tree(out) == {
        "manifest.jsonl", "run.json", "a.npz", "b.npz",
        "a/1_class_c.jpg", "a/2_class_h.jpg", "b/1_class_c.jpg", "b/2_class_h.jpg",
    }  # fmt: skip
    for rel in ("a.jpg", "b.png"):
        z = _npz(out / f"{key_of(rel)}.npz")
        probs, idx, maps = reference(cli_model, two_images / rel, classes=[2, 7])
        assert z["class_indices"].tolist() == [2, 7]
        assert z["labels"].tolist() == ["class c", "class h"]
        np.testing.assert_allclose(z["scores"], probs[[2, 7]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["cams"], maps, atol=2e-4)


def test_short_o_is_the_output_folder(two_images, cli_ckpt, tmp_path):
    out = tmp_path / "short"
    code = run_main("cam", two_images, "-o", out, "--weights", cli_ckpt, "-c", "1", "--quiet")
    assert code == 0
    assert tree(out) == {"manifest.jsonl", "run.json", "a/1_class_b.jpg", "b/1_class_b.jpg"}


@pytest.mark.parametrize("bad", ["class z", "10"])
def test_unknown_class_is_a_one_line_usage_error(bad, two_images, cli_ckpt, tmp_path, camcli_run):
    out = tmp_path / "o"
    code, stdout, err = camcli_run("cam", two_images, "--out", out, "--weights", cli_ckpt,
                                   "--class", bad)  # fmt: skip
    assert code == 2
    assert stdout == ""
    assert len(err.strip().splitlines()) == 1 and repr(bad) in err
    assert not out.exists()


def test_no_overlay_alone_is_a_usage_error(two_images, cli_ckpt, tmp_path, camcli_run):
    out = tmp_path / "o"
    code, _, err = camcli_run(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--no-overlay"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--no-overlay" in err
    assert not out.exists()
    code, _, _ = camcli_run(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--no-overlay", "--save-maps",
        "--quiet",
    )  # fmt: skip
    assert code == 0
    assert tree(out) == {"manifest.jsonl", "run.json", "a.npz", "b.npz"}


def _expected_overlay(image: np.ndarray, cam: np.ndarray, cv2_map: int) -> np.ndarray:
    """round(0.5 * image + 0.5 * colormap(round(255 * cam))) with OpenCV's colormap."""
    levels = np.clip(np.round(cam.astype(np.float32) * np.float32(255)), 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(levels, cv2_map)[..., ::-1].astype(np.float64)
    return np.round(0.5 * image.astype(np.float64) + 0.5 * heat).astype(np.uint8)


def test_png_turbo_overlays_equal_opencv_colormap_blend(two_images, cli_ckpt, tmp_path):
    name, cv2_map = "turbo", cv2.COLORMAP_TURBO
    out = tmp_path / name
    code = run_main(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--top-k", 2, "--format", "png",
        "--grid", "--colormap", name, "--save-maps", "--quiet",
    )  # fmt: skip
    assert code == 0
    for rel in ("a.jpg", "b.png"):
        key = key_of(rel)
        z = _npz(out / f"{key}.npz")
        img = read_rgb(two_images / rel)
        files = sorted(p.name for p in (out / key).iterdir())
        labels = [x.replace(" ", "_") for x in z["labels"].tolist()]
        assert files == sorted([f"1_{labels[0]}.png", f"2_{labels[1]}.png", "grid.png"])
        for r in range(2):
            got = read_rgb(out / key / f"{r + 1}_{labels[r]}.png")
            assert np.array_equal(got, _expected_overlay(img, z["cams"][r], cv2_map))
        g = read_rgb(out / key / "grid.png")
        h, w = img.shape[:2]
        assert np.array_equal(g[:h, :w], img)  # the original is the first panel


def test_unknown_colormap_is_a_usage_error(two_images, cli_ckpt, tmp_path, camcli_run):
    code, _, err = camcli_run("cam", two_images, "--out", tmp_path / "o", "--weights", cli_ckpt,
                              "--colormap", "nope")  # fmt: skip
    assert code == 2 and "turbo" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("norm", "interp", "k"), [("max", "bilinear", 20), ("none", "bilinear", 2),
                              ("minmax", "bicubic", 3)],
)  # fmt: skip
def test_norm_interpolation_and_top_k(norm, interp, k, two_images, cli_ckpt, cli_model, tmp_path):
    out = tmp_path / f"{norm}-{interp}"
    code = run_main(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--top-k", k, "--norm", norm,
        "--interpolation", interp, "--save-maps", "--no-overlay", "--quiet",
    )  # fmt: skip
    assert code == 0
    assert tree(out) == {"manifest.jsonl", "run.json", "a.npz", "b.npz"}
    k = min(k, 10)  # clipped to the number of classes
    for rel in ("a.jpg", "b.png"):
        z = _npz(out / f"{key_of(rel)}.npz")
        _, idx, maps = reference(cli_model, two_images / rel, k=k, norm=norm, interp=interp)
        assert z["class_indices"].tolist() == idx.tolist()
        assert z["cams"].shape == (k, *SIZES[rel])
        scale = max(1.0, float(np.abs(maps).max()))
        np.testing.assert_allclose(z["cams"], maps, atol=2e-4 * scale)
        if norm != "none":
            assert z["cams"].min() >= 0 and z["cams"].max() <= 1 + 1e-6
    if norm == "none":  # raw maps are not in [0, 1]
        assert z["cams"].min() < 0 or z["cams"].max() > 1


def test_ten_crop_maps_at_original_size_and_mean_softmax(two_images, cli_ckpt, cli_model, tmp_path):
    out = tmp_path / "ten"
    code = run_main(
        "cam", two_images, "--out", out, "--weights", cli_ckpt, "--top-k", 3, "--ten-crop",
        "--save-maps", "--quiet",
    )  # fmt: skip
    assert code == 0
    for rel in ("a.jpg", "b.png"):
        h, w = SIZES[rel]
        z = _npz(out / f"{key_of(rel)}.npz")
        assert z["cams"].shape == (3, h, w)
        assert read_rgb(out / key_of(rel) / f"1_{z['labels'][0].replace(' ', '_')}.jpg").shape == (
            h,
            w,
            3,
        )
        probs = ten_crop_reference(cli_model, two_images / rel)
        top = np.argsort(-probs)[:3]
        assert z["class_indices"].tolist() == top.tolist()
        np.testing.assert_allclose(z["scores"], probs[top], rtol=1e-5, atol=1e-6)
        # the ten crops cover the whole canvas: no band of the map is left at zero
        assert (z["cams"] == 0).mean() < 0.05


# --- name collisions, nothing outside DIR ----------------------------------------------------


def test_same_stems_and_same_relative_paths_never_collide(tmp_path, cli_ckpt):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    sizes = {r1 / "sub/x.jpg": (21, 34), r1 / "sub/x.png": (30, 17), r2 / "sub/x.jpg": (25, 40)}
    for i, (p, hw) in enumerate(sizes.items()):
        make_image(p, hw, seed=10 + i)
    out = tmp_path / "out"
    before = {p for p in tmp_path.rglob("*")}
    code = run_main(
        "cam", r1, r2, r1 / "sub" / "x.jpg", tmp_path / "r2" / ".." / "r2" / "sub" / "x.jpg",
        "--out", out, "--weights", cli_ckpt, "--top-k", 1, "--save-maps", "--quiet",
    )  # fmt: skip
    assert code == 0
    recs = manifest(out)
    assert len(recs) == 5 and len({r["key"] for r in recs}) == 5
    for r in recs:
        z = _npz(out / r["outputs"]["maps"])
        assert str(z["image"]) == r["image"]
        assert z["cams"].shape[1:] == sizes[Path(os.path.normpath(r["image"]))]
        assert out.joinpath(r["outputs"]["overlays"][0]).is_file()
    assert len(tree(out)) == 2 + 2 * 5
    after = {p for p in tmp_path.rglob("*")}
    assert all(p == out or out in p.parents for p in after - before)


def test_labels_cannot_escape_dir(tmp_path, cli_model, cli_images):
    """A checkpoint whose category names hold separators and dots writes only inside DIR."""
    from camcli.models.registry import Preprocess

    evil = ["../../evil", "a/b", ".hidden", "..", "x" * 300, "/abs", "c:\\win", "sp ace", "é", ""]
    ckpt = tmp_path / "evil.pt"
    torch.save(
        {
            "format": "camcli-checkpoint",
            "model": "resnet18",
            "state_dict": cli_model.state_dict(),
            "categories": evil,
            "preprocess": Preprocess(input_size=CLI_INPUT_SIZE).to_dict(),
            "pool": "avg",
        },
        ckpt,
    )
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    code = run_main("cam", cli_images / "a.jpg", "--out", out, "--weights", ckpt, "--top-k", 10,
                    "--quiet")  # fmt: skip
    assert code == 0
    after = {p for p in tmp_path.rglob("*")}
    assert all(p == out or out in p.parents for p in after - before)
    names = sorted(p.name for p in (out / "a").iterdir())
    assert len(names) == 10 and all(p.parent == out / "a" for p in (out / "a").rglob("*"))
    assert all(not n.startswith(".") and "/" not in n and "\\" not in n for n in names)
    assert max(len(n) for n in names) < 100


# --- SIGINT mid-folder, then --resume ---------------------------------------------------------


def test_sigint_then_resume_equals_an_uninterrupted_run(tmp_path, cli_ckpt):
    """In-process runs use one thread (cli_one_thread), as the subprocess: same float maths."""
    imgs = tmp_path / "many"
    n = 160  # enough that the run is still going when the signal lands (a fast run ended first)
    for i in range(n):
        make_image(imgs / f"d{i % 3}" / f"img{i:03d}.jpg", (30 + i % 40, 50 - i % 40), seed=i)
    args = ["--weights", str(cli_ckpt), "--top-k", "3", "--save-maps", "--grid",
            "--batch-size", "1", "--workers", "0", "--quiet"]  # fmt: skip
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_main("cam", imgs, "--out", ref, *args) == 0

    proc = subprocess.Popen(
        [PYTHON, "-m", "camcli", "cam", str(imgs), "--out", str(out), *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    mpath = out / "manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        # the first record: the widest window before the run ends (under load, a signal sent
        # after the third one sometimes landed after the last image)
        if mpath.is_file() and mpath.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode() and "exception calling callback" not in err.decode()
    assert err.decode().strip().splitlines()[-1] == "error: interrupted"  # one line, no blank
    done = manifest(out)
    assert 1 <= len(done) < n
    # run.json says the run was interrupted (issue 15 S1: Ctrl-C and SIGTERM alike)
    assert json.loads((out / "run.json").read_text())["interrupted"] is True
    stray = [f for f in tree(out) if ".camcli-tmp" in f or f.endswith(".tmp")]
    assert stray == []
    for r in done:  # every record of the interrupted run is complete
        assert all((out / f).is_file() for f in r["outputs"]["files"])

    assert run_main("cam", imgs, "--out", out, *args, "--resume") == 0
    files = tree(out)
    assert files == tree(ref)
    assert not [f for f in files if ".camcli-tmp" in f or ".manifest.jsonl.tmp" in f]
    assert (out / "manifest.jsonl").read_text() == (ref / "manifest.jsonl").read_text()
    for f in sorted(files - {"run.json", "manifest.jsonl"}):
        if f.endswith(".npz"):
            a, b = _npz(out / f), _npz(ref / f)
            assert a.keys() == b.keys()
            for k in a:
                assert np.array_equal(a[k], b[k]), (f, k)
        else:
            assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_outdir_cancelled_writes_leave_no_record_and_no_noise(tmp_path, capfd, caplog):
    """Ctrl-C with writes still queued: close(cancel=True) drops their records quietly."""
    from camcli.atomic import write_atomic
    from camcli.runs.outdir import OutDir

    od = OutDir(tmp_path / "od", resume=False, workers=1)
    gate = threading.Event()
    first = od.submit(gate.wait)
    od.record(0, {"key": "k0", "outputs": {"files": []}}, [first])
    for i in range(1, 4):
        fut = od.submit(write_atomic, od.root / f"k{i}.bin", b"x")
        od.record(i, {"key": f"k{i}", "outputs": {"files": [f"k{i}.bin"]}}, [fut])
    threading.Timer(0.2, gate.set).start()
    od.close(order=[(i, f"k{i}") for i in range(4)], cancel=True)
    assert manifest(od.root) == [{"key": "k0", "outputs": {"files": []}}]
    assert tree(od.root) == {"manifest.jsonl"}
    _, err = capfd.readouterr()
    assert err == ""
    assert [r.getMessage() for r in caplog.records] == []  # "exception calling callback ..."


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["cam", "x", "--top-k", "x"], "'--top-k'"),
        (["cam", "x", "--frobnicate"], "--frobnicate"),
        (["cma"], "'cma'"),
        (["cam"], "Missing argument"),
        (["bbox", "x", "--box-rule", "foo"], "'foo' is not one of"),
        (["eval", "--gt"], "'--gt' requires an argument (see 'camcli eval -h')"),
        (["cam", "x", "-k"], "'-k' requires an argument (see 'camcli cam -h')"),
    ],
)
def test_option_errors_are_one_line_with_where_the_help_is(argv, said, camcli_run):
    code, stdout, err = camcli_run(*argv)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and said in lines[0] and "-h')" in lines[0]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["cam", "x", "-o", "o", "--device", "tpu"], "--device 'tpu': use auto, cpu, cuda"),
        (["cam", "x", "-o", "o", "--colormap", "nope"], "--colormap 'nope'"),
        (["cam", "x", "-o", "o", "--maps-format", "full"], "--maps-format does nothing without"),
        (["bbox"], "no input: give image files or folders"),
        (["eval", "--gt", "g.csv"], "give exactly one of --boxes, --maps or --submission"),
        (["predict", "x", "--resume"], "--resume needs --output FILE"),
        (["train", "x", "--out", "r"], "--model is required"),
    ],
)
def test_camcli_usage_errors_say_where_the_help_is(argv, said, camcli_run):
    """camcli's own checks of options (not the parser's) read like the parser's errors."""
    code, stdout, err = camcli_run(*argv)
    assert code == 2 and stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and said in lines[0]
    assert lines[0].endswith(f"(see 'camcli {argv[0]} -h')")


def test_input_errors_do_not_point_at_the_help(tmp_path, camcli_run):
    """Exit 2 for a bad file (not an option) names the file and the fix, no help hint."""
    gt = tmp_path / "gt.csv"
    gt.write_text("image,x\n")
    (tmp_path / "maps").mkdir()
    code, _, err = camcli_run("eval", "--maps", str(tmp_path / "maps"), "--gt", str(gt))
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert "-h')" not in err


@pytest.mark.parametrize("command", ["bbox", "eval"])
def test_help_piped_to_a_file_is_not_cut_at_80_columns(command):
    env = {k: v for k, v in subprocess_env().items() if k not in ("TERMINAL_WIDTH", "COLUMNS")}
    r = subprocess.run(
        [sys.executable, "-m", "camcli", command, "-h"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout  # rich's ellipsis of a cut option name or value
    assert max(len(line) for line in r.stdout.splitlines()) <= 110
    if command == "bbox":
        assert "--tight-loose-heuristic" in r.stdout


def test_colormap_names_are_case_insensitive(two_images, cli_ckpt, tmp_path, camcli_run):
    outs = {}
    for name in ("jet", "JET"):
        out = tmp_path / name
        code, _, err = camcli_run("cam", two_images, "--out", out, "--weights", cli_ckpt,
                                  "--colormap", name, "--workers", "0", "-q")  # fmt: skip
        assert code == 0, err
        outs[name] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.jpg")}
    assert outs["jet"] and outs["jet"] == outs["JET"]
