"""`camcli eval` round trips through the CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camcli.cli import main

WNIDS = ["n00000001", "n00000002", "n00000003", "n00000004", "n00000005", "n00000006"]
IDS = [4, 1, 6, 2, 5, 3]  # ILSVRC2012_IDs in the devkit's own order, not the sorted one
NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def write_gt_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text(
        "path,label,xmin,ymin,xmax,ymax\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    return path


def record(image: str, classes: list[int], boxes: list) -> dict:
    return {
        "image": image,
        "width": 64,
        "height": 48,
        "predictions": [
            {"class_index": c, "label": NAMES[c], "score": round(0.9 / (k + 1), 6)}
            for k, c in enumerate(classes)
        ],
        "boxes": [
            {
                "rank": k + 1,
                "class_index": c,
                "label": NAMES[c],
                "score": 0.1,
                "box": b,
                "kind": "largest",
                **({"reason": "empty mask"} if b is None else {}),
            }
            for k, (c, b) in enumerate(zip(classes, boxes))
        ],
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def small(tmp_path):
    gt = write_gt_csv(
        tmp_path / "gt.csv",
        [
            ("val/a.jpg", "cat", 0, 0, 9, 9),
            ("val/a.jpg", "cat", 20, 20, 29, 29),
            ("val/b.jpg", "dog", 5, 5, 14, 14),
            ("val/c.jpg", "fox", 0, 0, 4, 4),
        ],
    )
    recs = [
        record("/d/val/a.jpg", [2, 3], [[20, 20, 29, 29], [0, 0, 3, 3]]),
        record("/d/val/b.jpg", [2, 3], [[5, 5, 14, 14], [5, 5, 14, 14]]),
        record("/d/val/c.jpg", [5, 0], [None, [0, 0, 4, 4]]),
    ]
    return gt, write_jsonl(tmp_path / "boxes.jsonl", recs), tmp_path


def test_boxes_json_on_stdout(small, capsys):
    gt, boxes, _ = small
    code, out, err = run(["eval", "--gt", str(gt), "--boxes", str(boxes)], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["source"] == "boxes"
    assert r["n_images"] == 3 and r["n_missing"] == 0
    assert r["top1_cls_error"] == pytest.approx(1 / 3)  # b: cat ranked above dog
    assert r["top1_loc_error"] == pytest.approx(2 / 3)  # b wrong class, c no box
    assert "top5_loc_error" not in r
    assert out.count("\n") == 1  # one JSON object on one line


def test_boxes_output_file_missing_image_and_exit_1(small, capsys):
    gt, boxes, tmp = small
    lines = boxes.read_text().splitlines()
    boxes.write_text(lines[0] + "\n" + '{"image": "/d/val/b.jpg", "error": "broken"}\n')
    out_file = tmp / "res" / "metrics.json"
    code, out, err = run(
        ["eval", "--gt", str(gt), "--boxes", str(boxes), "--output", str(out_file)], capsys
    )
    assert code == 1
    r = json.loads(out_file.read_text())
    assert r["missing"] == ["val/c.jpg"] and r["n_missing"] == 1 and r["n_failed"] == 1
    assert r["failed"] == [{"image": "/d/val/b.jpg", "error": "broken"}]
    assert r["top1_cls_error"] == pytest.approx(2 / 3)
    assert "1 ground-truth image has no prediction (counted wrong): val/c.jpg" in err
    assert "broken" in err
    # --subset: c (no record) leaves the denominators; b (failed) stays; still exit 1.
    code, out, _ = run(
        ["eval", "--gt", str(gt), "--boxes", str(boxes), "--subset", "-o", "-", "-q"], capsys
    )
    r = json.loads(out)
    assert code == 1 and r["n_images"] == 2 and r["top1_cls_error"] == 0.5


def test_blacklist_and_iou_options(small, capsys):
    gt, boxes, tmp = small
    bl = tmp / "blacklist.txt"
    bl.write_text("a\n")
    code, out, _ = run(
        ["eval", "--gt", str(gt), "--boxes", str(boxes), "--blacklist", str(bl), "-o", "-"], capsys
    )
    r = json.loads(out)
    assert r["n_blacklisted"] == 1 and r["n_loc_images"] == 2
    assert r["top1_loc_error"] == 1.0
    assert r["top1_cls_error"] == pytest.approx(1 / 3)  # classification keeps every image
    code, out, _ = run(
        ["eval", "--gt", str(gt), "--boxes", str(boxes), "--iou", "1.0", "-o", "-"], capsys
    )
    assert json.loads(out)["top1_loc_error"] == pytest.approx(2 / 3)


def test_usage_errors(small, capsys):
    gt, boxes, tmp = small
    code, _, err = run(["eval", "--gt", str(gt)], capsys)
    assert code == 2 and "exactly one of --boxes" in err
    code, _, err = run(["eval", "--gt", str(gt), "--boxes", str(boxes), "--maps", str(tmp)], capsys)
    assert code == 2
    code, _, err = run(
        ["eval", "--gt", str(gt), "--boxes", str(boxes), "--plot", str(tmp / "p.png")], capsys
    )
    assert code == 2 and "--maps" in err
    code, _, err = run(["eval", "--gt", str(gt), "--maps", str(tmp), "--taus", "1:0:0.1"], capsys)
    assert code == 2 and "--taus" in err
    code, _, err = run(["eval", "--gt", str(tmp / "nope.csv"), "--boxes", str(boxes)], capsys)
    assert code == 3 and "nope.csv" in err
    code, _, err = run(["eval", "--gt", str(gt), "--boxes", str(tmp / "none.jsonl")], capsys)
    assert code == 3
    bad = tmp / "bad.jsonl"
    bad.write_text("{not json\n")
    code, _, err = run(["eval", "--gt", str(gt), "--boxes", str(bad)], capsys)
    assert code == 3 and "line 1" in err  # no readable record at all
    code, _, err = run(["eval", "--gt", str(gt), "--submission", str(boxes)], capsys)
    # no --synsets: ImageNet-1k's WNIDs; a records file is no submission, named with its line
    assert code == 2 and "line 1" in err and "is not 'ID xmin ymin xmax ymax'" in err


def test_nothing_matches_is_exit_3(small, capsys):
    gt, _, tmp = small
    other = write_jsonl(tmp / "other.jsonl", [record("/d/zzz.jpg", [0], [[0, 0, 1, 1]])])
    code, _, err = run(["eval", "--gt", str(gt), "--boxes", str(other)], capsys)
    assert code == 3 and "no prediction matches" in err and "zzz" in err


def test_maps_json_and_plot(tmp_path, capsys):
    from PIL import Image

    gt = write_gt_csv(
        tmp_path / "gt.csv",
        [("a.jpg", "0", 2, 2, 6, 6), ("b.jpg", "0", 0, 0, 9, 9), ("c.jpg", "1", 0, 0, 4, 4)],
    )
    maps = tmp_path / "maps"
    maps.mkdir()
    m = np.zeros((2, 10, 10), np.float32)
    m[0, 2:6, 2:6] = 1.0
    m[1, 0:2, 0:2] = 1.0
    for name in ("a", "b"):
        np.savez(maps / f"{name}.npz", cams=m, class_indices=np.array([0, 2]), image=f"{name}.jpg")
    plot = tmp_path / "curve.png"
    res = tmp_path / "r.json"
    code, out, err = run(
        ["eval", "--gt", str(gt), "--maps", str(maps), "--taus", "0:1:0.1", "--categories",
         str(_cats(tmp_path)), "--plot", str(plot), "-o", str(res), "--workers", "0"],
        capsys,
    )  # fmt: skip
    assert code == 1  # c has no map file
    r = json.loads(res.read_text())
    assert r["source"] == "maps" and r["n_loc_images"] == 3 and r["missing"] == ["c.jpg"]
    assert r["maxboxacc_v1"] == pytest.approx(1 / 3) and r["best_tau"] == 0.0
    assert len(r["taus"]) == 10 and len(r["boxacc"]["v1"]) == 10
    assert set(r["maxboxacc_v2_by_iou"]) == {"0.3", "0.5", "0.7"}
    assert "pxap" not in r
    img = Image.open(plot)
    assert img.size == (900, 560)
    px = np.asarray(img.convert("RGB")).reshape(-1, 3)
    for color in [(214, 39, 40), (31, 119, 180), (44, 160, 44)]:  # the V2 curves are drawn
        assert (px == color).all(axis=1).any()


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _maps_run(tmp_path: Path) -> list[str]:
    """`eval --maps` argv (without --plot) over the map files of a two-image ground truth."""
    gt = write_gt_csv(tmp_path / "gt.csv", [("a.jpg", "0", 2, 2, 6, 6), ("b.jpg", "0", 0, 0, 9, 9)])
    maps = tmp_path / "maps"
    maps.mkdir()
    m = np.zeros((2, 10, 10), np.float32)
    m[0, 2:6, 2:6] = 1.0
    for name in ("a", "b"):
        np.savez(maps / f"{name}.npz", cams=m, class_indices=np.array([0, 2]), image=f"{name}.jpg")
    return ["eval", "--gt", str(gt), "--maps", str(maps), "--taus", "0:1:0.1", "--categories",
            str(_cats(tmp_path)), "-o", str(tmp_path / "r.json"), "--workers", "0"]  # fmt: skip


def test_plot_to_any_file_name_is_png(tmp_path, capsys):
    """Trial B5: --plot insisted on a .png name (`--plot curve`: exit 2). Any name gets a PNG;
    only `-` is refused (stdout carries the metrics)."""
    from PIL import Image

    argv = _maps_run(tmp_path)
    code, _, err = run([*argv, "--plot", str(tmp_path / "curve")], capsys)
    assert code == 0, err
    data = (tmp_path / "curve").read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert Image.open(tmp_path / "curve").size == (900, 560)
    code, _, err = run([*argv, "--plot", "-"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "error: --plot -: give a file name (/dev/stdout writes the PNG to stdout) "
        "(see 'camcli eval -h')"
    ]


def _without_output(argv: list[str]) -> list[str]:
    i = argv.index("-o")
    return argv[:i] + argv[i + 2 :]


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
@pytest.mark.parametrize("output", [None, "-"], ids=["no-output", "output-dash"])
def test_plot_to_stdout_is_refused_when_the_metrics_go_there(name, output, tmp_path, capsys):
    """Trial E2: `--plot /dev/stdout` without --output (or with `--output -`) wrote the JSON
    and the PNG into the same stdout. Refused before any work, as `--plot -` is."""
    argv = _without_output(_maps_run(tmp_path))
    if output is not None:
        argv += ["-o", output]
    code, out, err = run([*argv, "--plot", name], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: --plot {name}: that is stdout, where the metrics go too: give the plot another "
        "file, or the metrics a file with --output (see 'camcli eval -h')"
    ]


def _camcli_into(target: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m camcli argv`` with stdout redirected to ``target``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    with open(target, "wb") as fh:
        return subprocess.run(
            [sys.executable, "-m", "camcli", *argv],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=120,
        )


def test_plot_to_the_file_behind_stdout_is_refused(tmp_path):
    """Trial E2: a --plot path that is the file stdout is redirected to (same device and
    inode) is stdout too; with --output FILE the same --plot is written."""
    argv = _without_output(_maps_run(tmp_path))
    target = tmp_path / "out.bin"
    r = _camcli_into(target, [*argv, "--plot", str(target)])
    assert r.returncode == 2, r.stderr
    assert f"error: --plot {target}: that is stdout, where the metrics go too" in r.stderr
    assert target.read_bytes() == b""
    res = tmp_path / "r.json"
    r = _camcli_into(target, [*argv, "-o", str(res), "--plot", "/dev/stdout"])
    assert r.returncode == 0, r.stderr
    assert target.read_bytes().startswith(PNG_MAGIC) and "gt_known_loc" in res.read_text()


def test_plot_and_output_on_one_file_are_refused(tmp_path, capsys):
    """Trial E2: --plot and --output naming one file (by the same or another path) are a usage
    error before any work; one would have overwritten the other."""
    argv = _without_output(_maps_run(tmp_path))
    res = tmp_path / "r.json"
    code, _, err = run([*argv, "-o", str(res), "--plot", str(res)], capsys)
    assert code == 2 and "name the same file: give two" in err and not res.exists()
    res.write_text("keep")
    (tmp_path / "link.json").symlink_to(res)
    code, _, err = run([*argv, "-o", str(res), "--plot", str(tmp_path / "link.json")], capsys)
    assert code == 2 and "name the same file" in err and res.read_text() == "keep"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_plot_into_a_fifo_streams_the_png(tmp_path, capsys):
    """Trial B5: --plot into a named pipe (as /dev/stdout is) was refused for its name; the
    PNG now goes through it, and the FIFO is neither replaced nor given anything beside it."""
    import stat
    import threading

    argv = _maps_run(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read():
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    code, _, err = run([*argv, "--plot", str(fifo)], capsys)
    t.join(30)
    assert code == 0, err
    assert got and got[0].startswith(PNG_MAGIC) and got[0].endswith(b"IEND\xaeB`\x82")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cats.txt", "gt.csv", "maps", "pipe", "r.json"]  # fmt: skip


def _cats(tmp: Path) -> Path:
    p = tmp / "cats.txt"
    p.write_text("\n".join(NAMES) + "\n")
    return p


def test_submission_round_trip_matches_boxes(tmp_path, capsys):
    """bbox's records and the ILSVRC / Kaggle files written from them score the same."""
    from camcli.evaluate import submission as sub
    from camcli.evaluate.synsets import load_synsets

    xml = tmp_path / "xml"
    gt_boxes = {
        1: ("n00000003", [(0, 0, 9, 9), (30, 30, 39, 39)]),
        2: ("n00000001", [(5, 5, 20, 20)]),
        3: ("n00000006", [(0, 0, 40, 30)]),
        4: ("n00000002", [(10, 10, 19, 19)]),
    }
    for i, (wnid, bxs) in gt_boxes.items():
        objs = "".join(
            f"<object><name>{wnid}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for b in bxs
        )
        xml.mkdir(exist_ok=True)
        (xml / f"ILSVRC2012_val_{i:08d}.xml").write_text(
            f"<annotation><filename>ILSVRC2012_val_{i:08d}</filename>{objs}</annotation>"
        )
    synsets = tmp_path / "map_clsloc.txt"
    synsets.write_text("".join(f"{w} {d} {n}\n" for w, d, n in zip(WNIDS, IDS, NAMES)))
    recs = [
        # right at rank 1, on the second GT box
        record("/v/ILSVRC2012_val_00000001.JPEG", [2, 0, 1, 3, 4], [[30, 30, 39, 39]] * 5),
        # right class at rank 3 with a good box
        record("/v/ILSVRC2012_val_00000002.JPEG", [3, 4, 0, 1, 2], [[5, 5, 20, 20]] * 5),
        # right class first, bad box; a missing box later
        record("/v/ILSVRC2012_val_00000003.JPEG", [5, 4, 3, 2, 1], [[50, 40, 60, 45]] + [None] * 4),
        # right class only at rank 5
        record("/v/ILSVRC2012_val_00000004.JPEG", [0, 2, 3, 4, 1], [[10, 10, 19, 19]] * 5),
    ]
    boxes = write_jsonl(tmp_path / "boxes.jsonl", recs)
    smap = load_synsets(synsets, num_classes=None)
    items = [
        (r["image"], [(b["class_index"], b["box"]) for b in r["boxes"] if b["box"] is not None])
        for r in recs
    ]
    ilsvrc = tmp_path / "sub.txt"
    kaggle = tmp_path / "sub.csv"
    sub.write_ilsvrc_submission(ilsvrc, items, smap)
    sub.write_kaggle_submission(kaggle, items, smap)
    common = ["eval", "--gt", str(xml), "--synsets", str(synsets), "-o", "-"]
    _, out_b, _ = run([*common, "--boxes", str(boxes)], capsys)
    _, out_i, err = run([*common, "--submission", str(ilsvrc)], capsys)
    _, out_k, _ = run([*common, "--submission", str(kaggle)], capsys)
    rb, ri, rk = json.loads(out_b), json.loads(out_i), json.loads(out_k)
    keys = ["top1_cls_error", "top5_cls_error", "top1_loc_error", "top5_loc_error", "n_images"]
    assert rb["top1_cls_error"] == 0.5 and rb["top5_cls_error"] == 0.0
    assert rb["top1_loc_error"] == 0.75 and rb["top5_loc_error"] == 0.25
    for k in keys:
        assert ri[k] == rb[k], (k, err)
        assert rk[k] == rb[k], k


def test_python_m_camcli_eval_help():
    out = subprocess.run(
        [sys.executable, "-m", "camcli", "eval", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert "--submission" in out.stdout and "--maps" in out.stdout


def test_boxes_from_stdin(small, capsys, monkeypatch):
    import io

    gt, boxes, _ = small
    monkeypatch.setattr(sys, "stdin", io.StringIO(boxes.read_text()))
    code, out, _ = run(["eval", "--gt", str(gt), "--boxes", "-", "-o", "-"], capsys)
    assert code == 0 and json.loads(out)["top1_loc_error"] == pytest.approx(2 / 3)


def test_report_for_bbox_keeps_stdout_clean(small, tmp_path, capsys):
    """What `bbox --gt` calls: the table goes to stderr, JSON only to a file."""
    from camcli.cli.eval_cmd import report
    from camcli.evaluate.groundtruth import read_ground_truth
    from camcli.evaluate.predictions import read_box_records
    from camcli.evaluate.scoring import evaluate_records

    gt, boxes, _ = small
    result = evaluate_records(read_box_records(str(boxes)), read_ground_truth(str(gt)))
    target = tmp_path / "m.json"
    code = report(result, output=str(target), table_on_stderr=True)
    out = capsys.readouterr()
    assert code == 0 and out.out == ""
    assert "top-1 localization error" in out.err and "66.67 %" in out.err
    assert json.loads(target.read_text())["top1_cls_error"] == pytest.approx(1 / 3)


def test_report_for_records_hook_of_bbox(small, capsys):
    """`bbox --gt` calls camcli.cli.eval_cmd.report_for_records(records, gt, synsets)."""
    from camcli.cli.eval_cmd import report_for_records

    gt, boxes, tmp = small
    recs = [json.loads(x) for x in boxes.read_text().splitlines()]
    r = report_for_records(recs, gt, None)
    out = capsys.readouterr()
    assert out.out == "" and "top-1 classification error" in out.err
    assert r["top1_cls_error"] == pytest.approx(1 / 3)
    # A ground truth that matches nothing is a warning, not the end of the bbox run.
    assert (
        report_for_records(recs, write_gt_csv(tmp / "o.csv", [("zz.jpg", "cat", 0, 0, 1, 1)]))
        is None
    )
    assert "no metrics" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 2])
def test_mismatch_warnings_agree_with_their_count(n, capsys):
    """Trial E3: "1 predictions match no ground-truth image" and the like: every count phrase
    of eval's warnings is singular for 1 and plural otherwise."""
    from camcli.cli.eval_table import warn_mismatches

    names = [f"x{i}.jpg" for i in range(n)]
    warn_mismatches(
        {
            "n_images": 3,
            "n_gt_images": 3,
            "missing": names,
            "unmatched": names,
            "failed": [{"image": x, "error": "bad"} for x in names],
            "n_duplicates": n,
            "missing_gt_class": names,
            "n_renormalised": n,
            "n_missing_gt_known": n,
            "unknown_labels": [f"label{i}" for i in range(n)],
        }
    )
    err = capsys.readouterr().err
    if n == 1:
        wanted = ["1 ground-truth image has no", "1 prediction matches no", "1 prediction is an "
                  "error", "1 prediction repeats an", "1 map file holds no", "1 map was outside "
                  "[0, 1] and was min-max", "1 record carries no",
                  "ground-truth label no prediction uses"]  # fmt: skip
    else:
        wanted = ["2 ground-truth images have no", "2 predictions match no", "2 predictions are "
                  "errors", "2 predictions repeat an", "2 map files hold no", "2 maps were outside "
                  "[0, 1] and were min-max", "2 records carry no",
                  "ground-truth labels no prediction uses"]  # fmt: skip
    for w in wanted:
        assert w in err, (w, err)
    assert err.count("\n") == len(wanted)
