"""Hostile corpus, round 2 (issue 15), terminal and names: T1 (control characters escaped in
every line printed for people), T2 (labels single-line and bounded in grid captions, file-name
parts bounded in UTF-8 bytes) and the new-user trial's leftovers: a closed stdout (`| head`)
exits 0 quietly, and `train` says how many images an epoch really trains on."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from camcli import console
from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.usefixtures("cli_one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "shapes"
DEMO_PT = Path(__file__).resolve().parents[1] / "src" / "camcli" / "assets" / "shapes.pt"

ESC_TITLE = "\x1b]0;owned\x07"  # OSC: sets the terminal title
ESC_CLEAR = "\x1b[2J"  # CSI: clears the screen
# every kind of character a terminal acts on: C0 (ESC, BEL, CR, BS), DEL, C1 (CSI, NEL),
# a line separator and the bidi override / isolate
HOSTILE = f"a{ESC_TITLE}b{ESC_CLEAR}c\r\b\x7f\x9b\x85\u2028\u202e\u2066d"
RAW = ["\x1b", "\x07", "\r", "\b", "\x7f", "\x9b", "\x85", "\u2028", "\u202e", "\u2066"]


def _no_raw(text: str) -> None:
    for ch in RAW:
        assert ch not in text, (ch, text)


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory) -> Path:
    """The demo checkpoint with hostile class names: escapes, a newline, 300 four-byte
    characters, 1,000 characters (the longest class name a checkpoint may carry; a caption of
    10,000 characters is tested on render.grid directly)."""
    c = torch.load(DEMO_PT, weights_only=True)
    c["categories"] = [
        f"line\none{ESC_TITLE}",  # circle
        "\U00020000" * 300,  # cross
        "x" * 1000,  # ring
        "square",
        f"tri{ESC_CLEAR}\u202e",  # triangle
    ]
    path = tmp_path_factory.mktemp("hostile") / "hostile.pt"
    torch.save(c, path)
    return path


# ------------------------------------------------------------------------------------------ T1


def test_T1_shown_escapes_control_characters():
    s = console.shown(HOSTILE)
    _no_raw(s)
    assert s == (
        "a\\u001b]0;owned\\u0007b\\u001b[2Jc\\u000d\\u0008\\u007f\\u009b\\u0085\\u2028"
        "\\u202e\\u2066d"
    )
    assert console.shown("a\nb\tc") == "a\\u000ab\\u0009c"  # one line
    assert console.shown("a\nb\tc", one_line=False) == "a\nb\tc"  # a report's own lines
    assert console.shown("caf\udce9") == "caf\\udce9"  # undecodable file-name bytes
    assert console.shown("naïve [ok] 猫") == "naïve [ok] 猫"


def test_T1_error_warning_info_and_table_lines_are_escaped(capsys):
    console.error(f"bad {HOSTILE}")
    console.warn(f"odd\n{HOSTILE}")
    console.info(f"note {HOSTILE}")
    err = capsys.readouterr().err
    _no_raw(err)
    assert err.count("\n") == 3  # one line each, the newline in the warning escaped
    assert "warning: odd\\u000aa\\u001b]0;owned" in err
    console.print_predictions_table(
        [
            {"image": f"{HOSTILE}.jpg", "error": f"cannot decode {ESC_CLEAR}"},
            {
                "image": "ok.jpg",
                "width": 2,
                "height": 1,
                "predictions": [{"class_index": 3, "label": HOSTILE, "score": 0.5}],
            },
        ]
    )
    out = capsys.readouterr().out
    _no_raw(out)
    assert "\\u001b[2J" in out


def test_T1_cli_lines_escape_labels_and_file_names(tmp_path, camcli_run, hostile_ckpt):
    bad = tmp_path / f"img{ESC_CLEAR}\x07.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    good = tmp_path / "circle.jpg"
    good.write_bytes((EXAMPLES / "circle.jpg").read_bytes())
    code, out, err = camcli_run("predict", tmp_path, "-w", hostile_ckpt, "-o", tmp_path / "p.jsonl")
    assert code == 1
    _no_raw(err)
    line = [x for x in err.splitlines() if x.startswith(str(tmp_path / "img"))]
    assert len(line) == 1 and "img\\u001b[2J\\u0007.jpg: " in line[0], err
    # the JSON records keep the label itself (escaped by JSON, not by camcli)
    recs = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert recs[0]["predictions"][0]["label"] == f"line\none{ESC_TITLE}"
    # error lines that name a file: the one-line error of a usage problem
    code, _, err = camcli_run("eval", "--gt", tmp_path / f"gt{ESC_TITLE}.csv", "--boxes", good)
    assert code == 3
    _no_raw(err)
    assert "gt\\u001b]0;owned\\u0007.csv" in err


def test_T1_eval_warnings_escape_image_names(tmp_path, camcli_run):
    boxes = tmp_path / "b.jsonl"
    code, _, err = camcli_run("bbox", EXAMPLES / "circle.jpg", "-m", "demo", "-o", boxes, "-q")
    assert code == 0, err
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "path,label,xmin,ymin,xmax,ymax\ncircle.jpg,circle,20,20,100,100\n"
        f'"evil{ESC_CLEAR}\u202e.jpg",square,1,1,5,5\n',
        encoding="utf-8",
    )
    code, out, err = camcli_run("eval", "--gt", gt, "--boxes", boxes, "-o", "-")
    assert code == 1
    _no_raw(err)
    assert "evil\\u001b[2J\\u202e.jpg" in err


def test_T1_train_class_folder_names_are_escaped(tmp_path, camcli_run):
    data = tmp_path / "data"
    from PIL import Image

    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(data / cls / "0.png")
    (data / f"evil{ESC_TITLE}").mkdir()  # a class folder without images
    code, _, err = camcli_run("train", data, "--out", tmp_path / "run", "-m", "camnet-small")
    assert code == 2
    _no_raw(err)
    assert "class folder" in err and "evil\\u001b]0;owned\\u0007 holds no images" in err


# ------------------------------------------------------------------------------------------ T2


def test_T2_grid_captions_are_one_bounded_line_and_fast():
    from camcli.cam import render

    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    ov = torch.zeros(3, 3, 40, 60, dtype=torch.uint8)
    t0 = time.perf_counter()
    g = render.grid(img, ov, ["a\nb 0.5", "x" * 10_000 + " 0.1", f"{ESC_CLEAR}\u202e 0.2"])
    assert time.perf_counter() - t0 < 5.0
    assert g.shape[0] == 3 and g.dtype == torch.uint8
    assert render.caption_text("a\nb") == "a\\u000ab"
    assert len(render.caption_text("x" * 10_000)) == render.CAPTION_MAX_CHARS


def test_T2_file_name_labels_bounded_in_bytes():
    from camcli.runs import outdir

    limit = 80  # bytes: outdir.LABEL_MAX_BYTES
    for label in ("\U00020000" * 300, "é" * 300, "x" * 10_000, "line\none"):
        s = outdir.safe_label(label)
        assert 0 < len(s.encode("utf-8")) <= limit, (label[:5], len(s.encode("utf-8")))
        assert "\n" not in s and "/" not in s
    assert outdir.safe_label("\U00020000" * 300) == "\U00020000" * (limit // 4)
    assert outdir.safe_label("German shepherd") == "German_shepherd"
    assert limit == outdir.LABEL_MAX_BYTES


def test_T2_cam_grid_with_hostile_labels_runs_and_resumes(tmp_path, camcli_run, hostile_ckpt):
    out = tmp_path / "out"
    args = ("cam", EXAMPLES / "circle.jpg", EXAMPLES / "cross.jpg", "--out", out)
    args += ("-w", hostile_ckpt, "--grid", "-k", "5", "-q")
    t0 = time.perf_counter()
    code, _, err = camcli_run(*args)
    assert code == 0, err
    assert time.perf_counter() - t0 < 60
    for key in ("circle", "cross"):
        names = sorted(p.name for p in (out / key).iterdir())
        assert "grid.jpg" in names and len(names) == 6, names
        for n in names:
            assert len(os.fsencode(n)) <= 100, n
    man = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert all("error" not in r for r in man), man
    code, _, err = camcli_run(*args[:-1], "--resume")
    assert code == 0, err
    assert "resume: 2 of 2 inputs already complete" in err


# ------------------------------------------------------------------------------- leftover (c)


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "--json"],
        ["predict", str(EXAMPLES), "-m", "demo", "--output", "-", "--workers", "0"],
        ["bbox", str(EXAMPLES), "-m", "demo", "--workers", "0"],
        ["--help"],
        ["cam", "--help"],
    ],
    ids=["models", "predict", "bbox", "help", "cam-help"],  # help: rich's own exit 1 before
)
def test_leftover_c_closed_stdout_exits_0_quietly(argv):
    """(c) The reader of stdout went away (`camcli ... | head -1`): exit 0, nothing on stderr
    (no error line, no traceback, no 'Exception ignored')."""
    r, w = os.pipe()
    os.close(r)  # a reader that has gone: every write is EPIPE
    try:
        p = subprocess.run(
            [PYTHON, "-m", "camcli", *argv], stdout=w, stderr=subprocess.PIPE, env=subprocess_env()
        )
    finally:
        os.close(w)
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""


def test_leftover_c_head_reads_one_record():
    env = subprocess_env()
    cmd = f"'{PYTHON}' -m camcli predict '{EXAMPLES}' -m demo --output - | head -1"
    p = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert json.loads(p.stdout)["image"].endswith("circle.jpg")


# ------------------------------------------------------------------------------- leftover (e)


def test_leftover_e_train_counts_the_images_an_epoch_trains_on(tmp_path, camcli_run):
    """(e) 36 images in batches of 8: the last partial batch is dropped, 32 are trained."""
    from camcli.data import synthetic

    data = synthetic.generate(
        tmp_path / "shapes",
        shapes=("circle", "square", "cross"),
        train_per_class=12,
        val_per_class=2,
        size=32,
        seed=3,
    )
    tiny = ["--arch-option", "width=4", "--arch-option", "stages=2"]
    tiny += ["--arch-option", "downsamplings=2", "--arch-option", "blocks=1"]
    code, _, err = camcli_run(
        "train",
        data,
        "--out",
        tmp_path / "run",
        "-m",
        "camnet-small",
        "--epochs",
        "1",
        "-b",
        "8",
        "--image-size",
        "16",
        "--workers",
        "0",
        *tiny,
    )
    assert code == 0, err
    assert "on 32 of 36 images of 3 classes per epoch" in err, err
    from camcli.train.data import images_per_epoch

    assert images_per_epoch(36, 8) == 32
    assert images_per_epoch(36, 36) == 36  # one batch: nothing dropped
    assert images_per_epoch(36, 64) == 36
    assert images_per_epoch(37, 8, world=2) == 32  # 19 per rank (padded) -> 16 each


def test_T1_error_line_keeps_a_file_name_with_a_newline_whole(tmp_path, camcli_run):
    d = tmp_path / f"two\nlines{ESC_CLEAR}"
    d.mkdir()
    code, out, err = camcli_run("predict", d, "-m", "demo")
    assert code == 3
    _no_raw(err)
    assert err.count("\n") == 1
    assert f"no images found in {tmp_path}/two\\u000alines\\u001b[2J: give image files" in err
