"""Hostile corpus, round 2 (issue 15), options: O1 (an option that does nothing in some mode is
a usage error), O2 (`eval --model NAME` gets that model's class names) and the new-user trial's
leftovers: --codec device without CUDA, `bbox --from-maps` with model options, help text."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.usefixtures("cli_one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "shapes"
DEMO_PT = Path(__file__).resolve().parents[1] / "src" / "camcli" / "assets" / "shapes.pt"


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# ------------------------------------------------------------------------------------------ O1


def test_O1_bbox_dt_box_threshold_is_a_usage_error(tmp_path, camcli_run):
    out = tmp_path / "b.jsonl"
    for extra in (["--box-rule", "dt-box"], ["--tight-loose-heuristic"]):
        code, stdout, err = camcli_run(
            "bbox", EXAMPLES / "circle.jpg", "-m", "demo", *extra, "-t", "0.05", "-o", out
        )
        assert code == 2, err
        assert "--threshold does nothing with" in err
        assert "20, 100 and 110 of 255" in err
        assert stdout == ""
        assert not out.exists()
    # dt-box without -t still runs; -t with the paper rule still applies
    code, _, err = camcli_run(
        "bbox", EXAMPLES / "circle.jpg", "-m", "demo", "--box-rule", "dt-box", "-o", out, "-q"
    )
    assert code == 0, err
    assert json.loads(out.read_text())["boxes"][0]["kind"] == "loose"
    boxes = {}
    for t in ("0.05", "0.95"):
        code, _, err = camcli_run(
            "bbox", EXAMPLES / "circle.jpg", "-m", "demo", "-t", t, "-o", out, "-q"
        )
        assert code == 0, err
        boxes[t] = json.loads(out.read_text())["boxes"][0]["box"]
    assert boxes["0.05"] != boxes["0.95"]


# (argv after the command, the flags named in the message); the inputs/paths need not exist:
# the check comes before anything is read.
O1_FAMILY = [
    pytest.param(
        ["bbox", "--from-maps", "{tmp}/maps", "--ten-crop"],
        "--ten-crop",
        id="bbox-from-maps-ten-crop",
    ),
    pytest.param(
        ["bbox", "--from-maps", "{tmp}/maps", "-m", "demo"], "--model", id="bbox-from-maps-model"
    ),
    pytest.param(
        ["bbox", "--from-maps", "{tmp}/maps", "-w", "x.pt", "--batch-size", "4", "--device", "cpu"],
        "--weights, --device, --batch-size",
        id="bbox-from-maps-session",
    ),
    pytest.param(
        ["bbox", "--from-maps", "{tmp}/maps", "--norm", "max", "--interpolation", "bicubic"],
        "--norm, --interpolation",
        id="bbox-from-maps-norm",
    ),
    pytest.param(
        ["bbox", "{ex}", "-m", "demo", "--submission-format", "kaggle"],
        "--submission-format does nothing without --submission",
        id="bbox-submission-format",
    ),
    pytest.param(
        ["bbox", "{ex}", "-m", "demo", "--synsets", "{tmp}/s.txt"],
        "--synsets does nothing without --submission or --gt",
        id="bbox-synsets",
    ),
    pytest.param(
        ["cam", "{ex}", "--out", "{tmp}/out", "-m", "demo", "--class", "circle", "--top-k", "2"],
        "--top-k does nothing with --class",
        id="cam-class-top-k",
    ),
    pytest.param(
        ["cam", "{ex}", "--out", "{tmp}/out", "-m", "demo", "--no-overlay", "--save-maps"]
        + ["--colormap", "hot", "--alpha", "0.3", "--format", "png"],
        "--colormap, --alpha, --format do nothing with --no-overlay and no --grid",
        id="cam-no-overlay-colormap",
    ),
    pytest.param(
        ["eval", "--gt", "{tmp}/gt.csv", "--boxes", "{tmp}/b.jsonl", "--taus", "0:1:0.1"]
        + ["--tight-boxes", "--workers", "2"],
        "--taus, --wsol-boxes/--tight-boxes, --workers do nothing without --maps",
        id="eval-boxes-map-options",
    ),
    pytest.param(
        ["eval", "--gt", "{tmp}/gt.csv", "--maps", "{tmp}/maps", "--iou", "0.7"],
        "--iou does nothing with --maps",
        id="eval-maps-iou",
    ),
    pytest.param(
        ["eval", "--gt", "{tmp}/gt.csv", "--boxes", "{tmp}/b.jsonl"]
        + ["--submission-format", "kaggle"],
        "--submission-format does nothing without --submission",
        id="eval-submission-format",
    ),
    pytest.param(
        ["eval", "--gt", "{tmp}/gt.csv", "--boxes", "{tmp}/b.jsonl"]
        + ["--categories", "imagenet1k", "--model", "demo"],
        "--model does nothing with --categories",
        id="eval-categories-model",
    ),
    pytest.param(
        ["train", "{tmp}/data", "--out", "{tmp}/run", "-m", "camnet-small", "--val", "{tmp}/v"]
        + ["--val-split", "0.3"],
        "--val-split does nothing with --val",
        id="train-val-split",
    ),
]


@pytest.mark.parametrize(("argv", "named"), O1_FAMILY)
def test_O1_option_that_does_nothing_is_a_usage_error(tmp_path, camcli_run, argv, named):
    argv = [a.format(tmp=tmp_path, ex=EXAMPLES / "circle.jpg") for a in argv]
    code, stdout, err = camcli_run(*argv)
    assert code == 2, err
    assert named in err, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert stdout == ""
    assert _files(tmp_path) == []  # nothing written


def test_O1_bbox_from_maps_keeps_the_options_that_apply(tmp_path, camcli_run):
    """--top-k, --box-rule, -t, --output still work with --from-maps: only the others refuse."""
    code, _, err = camcli_run(
        "cam",
        EXAMPLES / "circle.jpg",
        EXAMPLES / "ring.jpg",
        "--out",
        tmp_path / "cams",
        "-m",
        "demo",
        "--save-maps",
        "--no-overlay",
        "-k",
        "3",
        "-q",
    )
    assert code == 0, err
    out = tmp_path / "b.jsonl"
    code, _, err = camcli_run(
        "bbox", "--from-maps", tmp_path / "cams", "-k", "2", "-t", "0.5", "-o", out, "-q"
    )
    assert code == 0, err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [len(r["boxes"]) for r in recs] == [2, 2]


# ------------------------------------------------------------------------------------------ O2


def _boxes_and_gt(tmp_path: Path, camcli_run, gt_label: str) -> tuple[Path, Path]:
    boxes = tmp_path / "b.jsonl"
    code, _, err = camcli_run(
        "bbox", EXAMPLES / "circle.jpg", EXAMPLES / "square.jpg", "-m", "demo", "-o", boxes, "-q"
    )
    assert code == 0, err
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "path,label,xmin,ymin,xmax,ymax\n"
        f"circle.jpg,circle,20,20,100,100\nsquare.jpg,{gt_label},20,20,100,100\n"
    )
    return boxes, gt


def test_O2_eval_model_gives_its_class_names(tmp_path, camcli_run):
    boxes, gt = _boxes_and_gt(tmp_path, camcli_run, "square")
    for model in ("demo", str(DEMO_PT)):  # a registry name; a checkpoint file
        code, out, err = camcli_run(
            "eval", "--gt", gt, "--boxes", boxes, "--model", model, "-o", "-"
        )
        assert code == 0, err
        assert "categories" not in err
        res = json.loads(out)
        assert res["n_images"] == 2 and res["n_missing"] == 0
        assert res["top1_cls_error"] == 0.0  # the demo model knows its shapes
    # the names are checked: a GT label that is not one of the model's classes is an error
    boxes, gt = _boxes_and_gt(tmp_path, camcli_run, "hexagon")
    code, out, err = camcli_run("eval", "--gt", gt, "--boxes", boxes, "--model", "demo")
    assert code == 2, err
    assert "'hexagon' is not a class of model demo" in err


def test_O2_eval_model_without_class_names_says_what_to_pass(tmp_path, camcli_run):
    boxes, gt = _boxes_and_gt(tmp_path, camcli_run, "square")
    code, out, err = camcli_run("eval", "--gt", gt, "--boxes", boxes, "--model", "camnet-small")
    assert code == 2, err
    assert "--model camnet-small: no class names of its own" in err
    assert "--categories FILE" in err and "unknown categories set" not in err


# ------------------------------------------------------------------------ leftover (a), (b)


def test_leftover_a_codec_device_without_cuda_warns(camcli_run):
    """(a) --codec device on a CPU device: decided as a one-line warning (the device codec
    path still runs, on the CPU), not a silent fallback."""
    code, out, err = camcli_run(
        "predict",
        EXAMPLES / "circle.jpg",
        "-m",
        "demo",
        "--device",
        "cpu",
        "--codec",
        "device",
        "-o",
        "-",
    )
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["label"] == "circle"
    warn = [x for x in err.splitlines() if x.startswith("warning: --codec device")]
    assert len(warn) == 1, err
    assert "the device is cpu" in warn[0]
    code, _, err = camcli_run(
        "predict", EXAMPLES / "circle.jpg", "-m", "demo", "--device", "cpu", "-o", "-"
    )
    assert code == 0 and "warning" not in err


def test_leftover_b_bbox_from_maps_refuses_ten_crop_and_model(tmp_path, camcli_run):
    (tmp_path / "maps").mkdir()
    for extra, flag in ((["--ten-crop"], "--ten-crop"), (["-m", "demo"], "--model")):
        code, out, err = camcli_run("bbox", "--from-maps", tmp_path / "maps", *extra)
        assert code == 2, err
        assert f"{flag} does nothing with --from-maps" in err


# ---------------------------------------------------------------------------- leftover (d)


def _help(*argv: str) -> str:
    env = {**subprocess_env(), "COLUMNS": "400", "NO_COLOR": "1"}
    p = subprocess.run(
        [PYTHON, "-m", "camcli", *argv, "--help"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    return re.sub(r"\s+", " ", p.stdout)


@pytest.mark.parametrize("command", ["predict", "cam", "bbox", "eval", "train"])
def test_leftover_d_help_text(command):
    text = _help(command)
    assert "<bool>" not in text
    assert "<list[" not in text
    assert " . " not in text and " .│" not in text  # a stripped "[default: ...]"
    if command in ("predict", "cam", "bbox"):
        assert "cpu_batch_size: 4 for EfficientNet-Lite)." in text
        assert "Decoding worker processes (default: cores, max 4)." in text
    if command == "train":
        assert "(default: 10 fine-tuning, 30 from scratch)" in text


def test_leftover_d_bbox_resume_and_profile_help():
    text = _help("bbox")
    resume = text[text.index("--resume") : text.index("--shard")]
    assert "manifest.jsonl" not in resume
    assert "--output FILE" in resume
    profile = text[text.index("--profile") : text.index("--codec")]
    assert "boxes (bbox)" in profile


def test_O1_bbox_from_maps_draw_says_what_it_could_not_draw(tmp_path, camcli_run):
    """--draw from maps needs the source images: one that is gone is named, not skipped."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("circle.jpg", "ring.jpg"):
        (src / name).write_bytes((EXAMPLES / name).read_bytes())
    code, _, err = camcli_run(
        "cam", src, "--out", tmp_path / "cams", "-m", "demo", "--save-maps", "--no-overlay", "-q"
    )
    assert code == 0, err
    (src / "ring.jpg").unlink()
    drawn = tmp_path / "drawn"
    code, _, err = camcli_run(
        "bbox", "--from-maps", tmp_path / "cams", "--draw", drawn, "-o", tmp_path / "b.jsonl"
    )
    assert code == 0, err
    assert (drawn / "circle" / "boxes.jpg").is_file()
    assert not (drawn / "ring").exists()
    warn = [x for x in err.splitlines() if x.startswith("warning: --draw:")]
    assert warn == [
        f"warning: --draw: 1 image(s) not drawn: {src / 'ring.jpg'}: source image not found"
    ]
