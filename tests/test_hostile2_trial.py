"""More members of the hostile-2 families, found by a new-user trial after the first fixes.

M1 (one validating map reader): non-finite scores, out-of-range class indices, no maps, and
cams/class_indices that disagree fail their own file in `bbox --from-maps` and `eval --maps`
alike. W4 (resume trusts nothing): resumed records holding NaN or wrongly typed predictions or
boxes are done again. O1: `--top-k` with the tight/loose heuristic. Weights given by registry
name; a checkpoint whose class names do not match its classifier.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "tests" / "data" / "shapes"
SHAPES_PT = ROOT / "src" / "camcli" / "assets" / "shapes.pt"


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> Path:
    """`cam --save-maps` of two shapes images (read-only; copy before changing)."""
    from camcli.cli import main

    out = tmp_path_factory.mktemp("maps") / "cams"
    with pytest.raises(SystemExit) as ei:
        main(["cam", str(SHAPES / "circle.jpg"), str(SHAPES / "ring.jpg"), "--out", str(out),
              "-m", "shapes", "-k", "2", "--save-maps", "--no-overlay", "-q"])  # fmt: skip
    assert ei.value.code == 0
    return out


def _bad_copy(maps: Path, tmp_path: Path, **changes) -> Path:
    """The map folder with ``bad.npz``: ``circle.npz`` with some arrays replaced."""
    d = tmp_path / "m"
    shutil.copytree(maps, d)
    with np.load(d / "circle.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(d / "bad.npz", **arrays)
    return d


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"scores": np.array([np.inf, 0.1], np.float32)}, "scores hold non-finite values"),
        ({"class_indices": np.array([10**12, 1])}, "class index 1000000000000 is outside 0..4"),
        (
            {
                "class_indices": np.zeros(0, np.int64),
                "cams": np.zeros((0, 128, 128), np.float32),
                "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, "<U1"),
            },
            "no maps",
        ),
        ({"class_indices": np.array([0])}, "class_indices"),  # 2 maps, 1 class index
    ],
)
def test_M1_bad_map_fails_alone_in_bbox_from_maps(maps, tmp_path, camcli_run, change, reason):
    d = _bad_copy(maps, tmp_path, **change)
    out = tmp_path / "b.jsonl"
    code, _, err = camcli_run("bbox", "--from-maps", d, "-o", out)
    assert code == 1, err
    assert "Traceback" not in err and "exception calling callback" not in err
    recs = {Path(r["image"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(recs) == 3  # circle, ring and the bad file: the run went on
    bad = recs["bad.npz"] if "bad.npz" in recs else next(r for r in recs.values() if "error" in r)
    assert reason in bad["error"] and bad["image"].endswith("bad.npz")
    assert "bad.npz" not in bad["error"]  # the record names the file once, as its image
    assert sum("error" in r for r in recs.values()) == 1


def test_M1_eval_maps_fails_a_file_whose_maps_and_classes_disagree(maps, tmp_path, camcli_run):
    d = _bad_copy(maps, tmp_path, class_indices=np.array([0]))
    gt = tmp_path / "gt.csv"
    with open(gt, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "xmin", "ymin", "xmax", "ymax"])
        for name in ("circle", "ring", "bad"):
            w.writerow([name, "circle", 10, 10, 100, 100])
    res_file = tmp_path / "res.json"
    code, _, err = camcli_run("eval", "--gt", gt, "--maps", d, "--model", "shapes", "-o", res_file)
    res = json.loads(res_file.read_text())
    assert res["n_failed"] == 1, (res, err)
    assert code == 1


def test_W4_cam_resume_redoes_a_manifest_record_holding_nan(tmp_path, camcli_run):
    out = tmp_path / "cams"
    args = ("cam", SHAPES / "circle.jpg", SHAPES / "ring.jpg", "--out", out, "-m", "shapes")
    args += ("-k", "1", "-q")
    assert camcli_run(*args)[0] == 0
    man = out / "manifest.jsonl"
    lines = man.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["predictions"][0]["score"] = float("nan")
    lines[0] = json.dumps(rec)  # NaN: not JSON
    man.write_text("\n".join(lines) + "\n")
    code, _, err = camcli_run(*args, "--resume")
    assert code == 0, err
    recs = [json.loads(x) for x in man.read_text().splitlines()]  # strict JSON again
    assert len(recs) == 2 and all(r["predictions"][0]["score"] >= 0 for r in recs)
    assert "NaN" not in man.read_text()


def test_W4_bbox_resume_redoes_wrongly_typed_partial_records(tmp_path, camcli_run):
    out = tmp_path / "b.jsonl"
    img = str(SHAPES / "circle.jpg")
    partial = tmp_path / ".b.jsonl.partial"
    partial.write_text(json.dumps({"image": img, "width": 128, "height": 128,
                                   "boxes": "pwned", "predictions": 7}) + "\n")  # fmt: skip
    code, _, err = camcli_run("bbox", img, "-m", "shapes", "-o", out, "--resume", "-q")
    assert code == 0, err
    (rec,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert isinstance(rec["predictions"], list) and isinstance(rec["boxes"], list)
    assert "pwned" not in out.read_text()


def test_O1_top_k_with_the_tight_loose_heuristic_is_a_usage_error(tmp_path, camcli_run):
    out = tmp_path / "tl.jsonl"
    code, _, err = camcli_run(
        "bbox", SHAPES / "circle.jpg", "-m", "shapes", "--tight-loose-heuristic", "-k", "2",
        "-o", out,
    )  # fmt: skip
    assert code == 2 and "--top-k does nothing with --tight-loose-heuristic" in err
    assert not out.exists()


def test_weights_by_registry_name_alone(camcli_run):
    code, out, err = camcli_run("predict", SHAPES / "circle.jpg", "--weights", "shapes", "-o", "-")
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["label"] == "circle"


def test_checkpoint_names_and_classifier_disagree_names_file_and_field(tmp_path, camcli_run):
    c = torch.load(SHAPES_PT, weights_only=True)
    c["categories"] = c["categories"][:4]
    bad = tmp_path / "shortcat.pt"
    torch.save(c, bad)
    code, _, err = camcli_run("predict", SHAPES / "circle.jpg", "--weights", bad)
    assert code == 4
    assert str(bad) in err and "'categories' has 4 names" in err and "5 classes" in err


def test_eval_kaggle_submission_needs_no_synsets_for_imagenet(tmp_path, camcli_run):
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageId,PredictionString\ncoffee,n07920052 75 14 480 390\n")
    gt = tmp_path / "gt.csv"
    gt.write_text("image,label,xmin,ymin,xmax,ymax\ncoffee.jpg,espresso,75,14,480,390\n")
    res_file = tmp_path / "res.json"
    code, _, err = camcli_run("eval", "--gt", gt, "--submission", sub, "-o", res_file)
    assert code == 0, err
    res = json.loads(res_file.read_text())
    assert res["top1_loc_error"] == 0.0 and res["n_images"] == 1
    # an ILSVRC file names classes by ILSVRC2012_ID: still needs the devkit's mapping
    sub2 = tmp_path / "sub.txt"
    sub2.write_text("1 75 14 480 390\n")
    code, _, err = camcli_run("eval", "--gt", gt, "--submission", sub2)
    assert code == 2 and "--synsets" in err
