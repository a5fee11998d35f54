"""The device codec path (GPU: nvJPEG decode, batched render and encode on the device) run on
the CPU through the same code, against the default CPU path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("cli_one_thread")


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_cam_device_codec_matches_cpu_path(tmp_path, camcli_run, cli_ckpt, cli_images):
    outs = {}
    for codec in ("cpu", "device"):
        out = tmp_path / codec
        code, _, err = camcli_run(
            "cam",
            cli_images,
            "--out",
            out,
            "--weights",
            cli_ckpt,
            "-k",
            "2",
            "--grid",
            "--save-maps",
            "--codec",
            codec,
            "--workers",
            "0",
            "-q",
        )
        assert code == 1, err  # the corrupt file
        outs[codec] = out
    assert _tree(outs["cpu"]) == _tree(outs["device"])
    man = [
        [{k: v for k, v in json.loads(line).items()} for line in (o / "manifest.jsonl").open()]
        for o in outs.values()
    ]
    assert man[0] == man[1]
    for rel in _tree(outs["cpu"]):
        a, b = outs["cpu"] / rel, outs["device"] / rel
        if rel.endswith(".npz"):
            za, zb = np.load(a), np.load(b)
            np.testing.assert_allclose(za["cams"], zb["cams"], atol=1e-6)
            assert (za["class_indices"] == zb["class_indices"]).all()
        elif rel.endswith((".jpg", ".png")):
            ia = np.asarray(Image.open(a)).astype(int)
            ib = np.asarray(Image.open(b)).astype(int)
            assert ia.shape == ib.shape
            # The same blend up to rounding; the CPU path's JPEG overlays read the colormap's
            # chroma at each 2 x 2 block's mean level (camcli.cam.overlay_jpeg), which moves
            # these tiny images of a random network's noisy maps by about 1.5 levels
            # (measured: grids 0, overlays 1.3-1.8 here; on a 500 x 375 photo with a smooth
            # map the CPU file is 1.11 from the exact overlay against 0.96 for the RGB one's)
            assert np.abs(ia - ib).mean() < 2.0, rel
            assert np.percentile(np.abs(ia - ib), 99) <= 12, rel


def test_bbox_device_codec_same_boxes(tmp_path, camcli_run, cli_ckpt, cli_images):
    recs = []
    for codec in ("cpu", "device"):
        out = tmp_path / f"{codec}.jsonl"
        code, _, err = camcli_run(
            "bbox",
            cli_images,
            "--weights",
            cli_ckpt,
            "--output",
            out,
            "--codec",
            codec,
            "--workers",
            "0",
            "-q",
        )
        assert code == 1, err
        recs.append([json.loads(line) for line in out.open()])
    assert recs[0] == recs[1]
    assert sum("error" in r for r in recs[0]) == 1


def test_bad_codec_is_usage_error(camcli_run, cli_ckpt, cli_images):
    code, _, err = camcli_run("predict", cli_images, "--weights", cli_ckpt, "--codec", "gpu")
    assert code == 2
    assert "--codec" in err


@pytest.mark.slow
def test_compile_gives_the_same_predictions(tmp_path, camcli_run, cli_ckpt, cli_images):
    recs = []
    for extra in ((), ("--compile",)):
        out = tmp_path / f"p{len(extra)}.jsonl"
        code, _, err = camcli_run(
            "predict", cli_images, "--weights", cli_ckpt, "--output", out, "--workers", "0", *extra
        )
        assert code == 1, err
        recs.append([json.loads(line) for line in out.open()])
    for a, b in zip(recs[0], recs[1]):
        assert a.get("error") == b.get("error")
        for pa, pb in zip(a.get("predictions", []), b.get("predictions", [])):
            assert pa["class_index"] == pb["class_index"]
            assert abs(pa["score"] - pb["score"]) < 1e-4


def test_session_runs_opencv_without_its_spinning_thread_pool(cli_ckpt):
    # OpenCV's pool busy-waits after each call and steals CPU from the forward pass.
    import cv2

    from camcli.api.session import Session

    cv2.setNumThreads(2)
    assert cv2.getNumThreads() == 2
    Session.open(None, str(cli_ckpt), device="cpu")
    assert cv2.getNumThreads() == 1
