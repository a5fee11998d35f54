"""Hostile files, round 2 (issue 15, cases N, R, C, M, G, K of cases/hostile-2.md): no
non-finite number reaches an output, and one validating reader per file kind gives one-line
errors naming the file (and line) with the README's exit codes."""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from camcli.cli import main

pytestmark = pytest.mark.usefixtures("cli_one_thread")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "src" / "camcli" / "assets" / "shapes.pt"
EXAMPLES = REPO / "tests" / "data" / "shapes"


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run camcli in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    o, e = capsys.readouterr()
    return code, o, e


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def edited_demo(tmp_path: Path, edit, name: str = "x.pt") -> Path:
    import torch

    c = torch.load(DEMO, weights_only=True)
    edit(c)
    p = tmp_path / name
    torch.save(c, p)
    return p


# ------------------------------------------------------------------ N1: non-finite weights


def _set_bias_nan(c):
    c["state_dict"]["fc.bias"][0] = float("nan")


def _set_bn_inf(c):
    c["state_dict"]["trunk.1.running_var"][0] = float("inf")


N1_EDITS = {
    "fc.bias nan": (_set_bias_nan, "'fc.bias'"),
    "running_var inf": (_set_bn_inf, "'trunk.1.running_var'"),
    "mean nan": (lambda c: c["preprocess"].update(mean=[float("nan"), 0.4, 0.4]), "mean"),
    "std 1e-45": (lambda c: c["preprocess"].update(std=[1e-45, 0.2, 0.2]), "std"),
    "std inf": (lambda c: c["preprocess"].update(std=[float("inf"), 0.2, 0.2]), "std"),
}


@pytest.mark.parametrize("command", ["predict", "cam", "bbox"])
@pytest.mark.parametrize("case", list(N1_EDITS))
def test_N1_nonfinite_weights_refused_at_load(case, command, tmp_path, capsys):
    edit, names = N1_EDITS[case]
    ck = edited_demo(tmp_path, edit)
    out = tmp_path / "out"
    args = {
        "predict": ["--output", out / "p.jsonl"],
        "cam": ["--out", out],
        "bbox": ["--output", out / "b.jsonl"],
    }[command]
    code, o, e = cli(capsys, command, EXAMPLES / "circle.jpg", "-w", ck, *args)
    assert code == 4, e
    line = one_line(e)
    assert str(ck) in line and names in line
    assert not out.exists() or not any(out.rglob("*.jsonl"))
    assert "NaN" not in o and "Infinity" not in o


def test_N1_json_writers_refuse_nan():
    """Every JSON writer of camcli refuses NaN: records.dumps raises, and no json.dump(s) call
    in src/ goes without allow_nan=False (grep-level guard)."""
    from camcli.data.records import dumps

    for bad in (float("nan"), float("inf"), np.float32("nan"), np.array([1.0, np.inf])):
        with pytest.raises(ValueError, match="non-finite"):
            dumps({"score": bad})
    import re

    offenders = []
    for path in (REPO / "src" / "camcli").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"json\.dumps?\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            if "allow_nan=False" not in text[m.end() : i]:
                offenders.append(f"{path.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}")
    assert offenders == []


# ------------------------------------------------------------------ C1, C2: checkpoint fields


def _pop(key):
    return lambda c: c.pop(key)


def _set(key, value):
    return lambda c: c.__setitem__(key, value)


def _pre(key, value):
    return lambda c: c["preprocess"].__setitem__(key, value)


C1_EDITS = {
    "categories [1, None]": (_set("categories", [1, None, "a", "b", "c"]), "categories[0]"),
    "categories missing": (_pop("categories"), "'categories'"),
    "nested labels": (_set("categories", [["a"], "b", "c", "d", "e"]), "categories[0]"),
    "preprocess str": (_set("preprocess", "resize"), "'preprocess'"),
    "input_size str": (_pre("input_size", "64"), "preprocess.input_size"),
    "input_size 0": (_pre("input_size", 0), "preprocess.input_size"),
    "mean str": (_pre("mean", "abc"), "preprocess.mean"),
    "interpolation": (_pre("interpolation", 3), "preprocess.interpolation"),
    "pool median": (_set("pool", "median"), "'pool'"),
    "arch_options str": (_set("arch_options", "width=16"), "'arch_options'"),
    "state_dict None": (_set("state_dict", None), "'state_dict'"),
    "model int": (_set("model", 5), "'model'"),
    "model unknown": (_set("model", "no-such-net"), "'model'"),
}


@pytest.mark.parametrize("case", list(C1_EDITS))
def test_C1_checkpoint_fields_checked(case, tmp_path, capsys):
    edit, field = C1_EDITS[case]
    ck = edited_demo(tmp_path, edit)
    code, _, e = cli(capsys, "predict", EXAMPLES / "circle.jpg", "-w", ck)
    assert code == 4, e
    line = one_line(e)
    assert f"{ck}: checkpoint field" in line and field in line


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_pop("train_options"), "'train_options'"),
        (_set("epoch", "two"), "'epoch'"),
        (_set("train_options", {"lr": "fast"}), "'train_options'"),
        (_set("history", "h"), "'history'"),
    ],
)
def test_C1_train_resume_checkpoint_checked(edit, field, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    last = edited_demo(run, edit, "last.pt")
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
    code, _, e = cli(capsys, "train", data, "--out", run, "--resume")
    assert code == 4, e
    line = one_line(e)
    assert f"{last}: checkpoint field" in line and field in line


@pytest.mark.parametrize("size", [6000, 100000, 1025])
def test_C2_input_size_bounded_at_load(size, tmp_path, capsys):
    ck = edited_demo(tmp_path, _pre("input_size", size))
    code, o, e = cli(capsys, "predict", EXAMPLES / "circle.jpg", "-w", ck)
    assert code == 4 and o == ""
    line = one_line(e)
    assert str(ck) in line and "preprocess.input_size" in line and "1024" in line


def _bomb(tmp_path: Path, mib: int) -> Path:
    """demo.pt re-zipped with an extra deflated member of ``mib`` MiB of zeros."""
    src = zipfile.ZipFile(DEMO)
    p = tmp_path / "bomb.pt"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
        prefix = src.infolist()[0].filename.split("/")[0]
        with z.open(f"{prefix}/data/999", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                fh.write(chunk)
    return p


def test_C2_decompression_bomb_refused(tmp_path, capsys, monkeypatch):
    bomb = _bomb(tmp_path, 80)
    assert bomb.stat().st_size < 2 << 20
    import torch

    called = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: called.append(1) or real(*a, **k))
    code, _, e = cli(capsys, "predict", EXAMPLES / "circle.jpg", "-w", bomb)
    assert code == 4, e
    line = one_line(e)
    assert str(bomb) in line and "decompression bomb" in line
    assert called == []  # refused from the zip directory, before anything is decompressed
    # the same through train --resume
    run = tmp_path / "run"
    run.mkdir()
    os.replace(bomb, run / "last.pt")
    (tmp_path / "data" / "a").mkdir(parents=True)
    code, _, e = cli(capsys, "train", tmp_path / "data", "--out", run, "--resume")
    assert code == 4 and "decompression bomb" in one_line(e)


# ------------------------------------------------------------------ N2: training never saves NaN

TINY_ARGS = [a for kv in ("width=4", "stages=2", "downsamplings=2", "blocks=1")
             for a in ("--arch-option", kv)]  # fmt: skip


def _all_finite(path: Path) -> bool:
    import torch

    ck = torch.load(path, weights_only=True)
    ok = all(torch.isfinite(v.float()).all() for v in ck["state_dict"].values())
    return ok and all(math.isfinite(v) for h in ck["history"] for v in h.values()
                      if isinstance(v, float))  # fmt: skip


def test_N2_sgd_lr_1e6_saves_no_nonfinite_state(tmp_path, capsys):
    from camcli.data import synthetic

    data = synthetic.generate(tmp_path / "s", shapes=("circle", "square", "cross"),
                              train_per_class=12, val_per_class=4, size=32, seed=3)  # fmt: skip
    run = tmp_path / "run"
    code, _, e = cli(capsys, "train", data, "-m", "camnet-small", "--out", run, "--epochs", "3",
                     "--image-size", "16", "--batch-size", "8", "--workers", "0", "--device",
                     "cpu", "--optimizer", "sgd", "--lr", "1e6", *TINY_ARGS)  # fmt: skip
    assert code == 1, e
    line = [x for x in e.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "non-finite" in line[0]
    saved = sorted(run.glob("*.pt"))
    assert all(_all_finite(p) for p in saved)
    if not saved:
        assert "no good checkpoint exists" in line[0]
    for text in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


@pytest.mark.parametrize("what", ["running_var inf", "weight nan"])
def test_N2_nonfinite_buffer_after_good_epoch_not_saved(what, tmp_path):
    import torch

    from camcli.errors import NonFiniteError
    from camcli.models.load import build_model, entry_for
    from camcli.models.registry import Preprocess
    from camcli.train.loop import fit
    from camcli.train.options import TrainOptions, resolve_options

    torch.manual_seed(0)
    tiny = {"width": 4, "stages": 2, "downsamplings": 2, "blocks": 1}
    o = resolve_options(TrainOptions(model="camnet-small", epochs=3, batch_size=4, image_size=16,
                                     workers=0, seed=0, arch_options=dict(tiny)),
                        entry_for("camnet-small"))  # fmt: skip
    model = build_model(entry_for("camnet-small"), None, num_classes=2, categories=["a", "b"],
                        preprocess=Preprocess(input_size=16), arch_options=tiny)  # fmt: skip
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    name = "trunk.1.running_var" if what.startswith("running") else "fc.weight"

    def poison(epoch, step):
        if epoch == 1 and step == 1:
            with torch.no_grad():
                model.state_dict()[name].view(-1)[0] = math.inf if "inf" in what else math.nan

    with pytest.raises(NonFiniteError) as ei:
        fit(model, batches, batches, options=o, device=torch.device("cpu"), out_dir=tmp_path,
            step_callback=poison)  # fmt: skip
    msg = str(ei.value)
    assert "after epoch 2" in msg and f"{tmp_path / 'last.pt'} keeps epoch 1" in msg
    for p in ("last.pt", "best.pt"):
        assert _all_finite(tmp_path / p)
        assert torch.load(tmp_path / p, weights_only=True)["epoch"] == 1


# ------------------------------------------------------------------ M1-M3: map files


def _map(path: Path, image: str, **kw) -> Path:
    m = np.zeros((1, 10, 10), np.float32)
    m[0, 2:6, 2:6] = 1
    arrays = {"cams": m, "class_indices": np.array([0]), "image": image, **kw}
    np.savez(path, **arrays)
    return path


def _header_only(path: Path, shape, descr="<f4", body=100, deflate_bytes=0) -> Path:
    """A .npz whose cams header declares ``shape``: a short body, or ``deflate_bytes`` zeros
    deflated (a decompression bomb)."""
    import io

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("cams.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
            )
            left = deflate_bytes or body
            while left > 0:
                fh.write(bytes(min(left, 1 << 22)))
                left -= 1 << 22
        buf = io.BytesIO()
        np.save(buf, np.array([0]))
        z.writestr("class_indices.npy", buf.getvalue())
    return path


def _bad_maps(kind: str, d: Path) -> Path:
    p = d / "b.npz"
    if kind == "garbage after zip header":
        p.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 2)
    elif kind == "0 bytes":
        p.write_bytes(b"")
    elif kind == "bad crc":
        _map(p, "b.jpg")
        raw = bytearray(p.read_bytes())
        raw[raw.find(b"\x93NUMPY", raw.find(b"cams.npy")) + 200] ^= 0xFF
        p.write_bytes(bytes(raw))
    elif kind == "structured dtype":
        np.savez(p, cams=np.zeros((1, 10, 10), [("x", "f4"), ("y", "f4")]),
                 class_indices=np.array([0]), image="b.jpg")  # fmt: skip
    elif kind == "header [2, 100000, 100000]":
        _header_only(p, (2, 100000, 100000))
    elif kind == "nan class index":
        _map(p, "b.jpg", class_indices=np.array([np.nan]))
    elif kind == "labels a number":
        _map(p, "b.jpg", labels=np.array([1.5]))
    return p


M1_KINDS = ["garbage after zip header", "0 bytes", "bad crc", "structured dtype",
            "header [2, 100000, 100000]", "nan class index", "labels a number"]  # fmt: skip


def _maps_folder(tmp_path: Path, make_bad) -> Path:
    d = tmp_path / "maps"
    d.mkdir()
    _map(d / "a.npz", "a.jpg")
    make_bad(d)
    _map(d / "c.npz", "c.jpg")
    return d


def _gt_csv(tmp_path: Path) -> tuple[Path, Path]:
    gt = tmp_path / "gt.csv"
    gt.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,0,2,2,6,6\nb.jpg,0,2,2,6,6\n"
                  "c.jpg,0,2,2,6,6\n")  # fmt: skip
    cats = tmp_path / "cats.txt"
    cats.write_text("ant\nbee\n")
    return gt, cats


def _check_bbox_from_maps(tmp_path, capsys, d, reason):
    out = tmp_path / "boxes.jsonl"
    code, _, e = cli(capsys, "bbox", "--from-maps", d, "--output", out)
    assert code == 1, e
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [("error" in r) for r in recs] == [False, True, False]  # one record each, in order
    assert recs[1]["image"] == str(d / "b.npz") and reason in recs[1]["error"]
    assert str(d / "b.npz") not in recs[1]["error"]  # the record names the file once
    assert e.count(str(d / "b.npz")) == 1 and "Traceback" not in e


def _check_eval_maps(tmp_path, capsys, d, reason):
    gt, cats = _gt_csv(tmp_path)
    res = tmp_path / "r.json"
    code, _, e = cli(capsys, "eval", "--gt", gt, "--maps", d, "--categories", cats,
                     "--workers", "0", "-o", res)  # fmt: skip
    assert code == 1, e
    r = json.loads(res.read_text())
    assert r["n_failed"] == 1 and r["failed"][0]["image"] == str(d / "b.npz")
    assert reason in r["failed"][0]["error"] and str(d / "b.npz") not in r["failed"][0]["error"]
    assert r["maxboxacc_v1"] == pytest.approx(2 / 3)


M1_REASONS = {"garbage after zip header": "zip", "0 bytes": "empty file", "bad crc": "CRC",
              "structured dtype": "dtype", "header [2, 100000, 100000]": "limit",
              "nan class index": "non-integer", "labels a number": "dtype"}  # fmt: skip


@pytest.mark.parametrize("kind", M1_KINDS)
def test_M1_bad_npz_is_an_error_record_run_goes_on_bbox(kind, tmp_path, capsys):
    d = _maps_folder(tmp_path, lambda d: _bad_maps(kind, d))
    _check_bbox_from_maps(tmp_path, capsys, d, M1_REASONS[kind])


@pytest.mark.parametrize("kind", M1_KINDS)
def test_M1_bad_npz_is_an_error_record_run_goes_on_eval(kind, tmp_path, capsys):
    d = _maps_folder(tmp_path, lambda d: _bad_maps(kind, d))
    _check_eval_maps(tmp_path, capsys, d, M1_REASONS[kind])


def test_M2_fifo_map_file_refused_without_blocking(tmp_path, capsys):
    d = _maps_folder(tmp_path, lambda d: os.mkfifo(d / "b.npz"))
    _check_bbox_from_maps(tmp_path, capsys, d, "not a regular file")
    (tmp_path / "e").mkdir()
    _check_eval_maps(tmp_path / "e", capsys, d, "not a regular file")


def test_M2_fifo_as_gt_or_mask_refused_without_blocking(tmp_path, capsys):
    d = _maps_folder(tmp_path, lambda d: _map(d / "b.npz", "b.jpg"))
    fifo = tmp_path / "gt.csv"
    os.mkfifo(fifo)
    code, _, e = cli(capsys, "eval", "--gt", fifo, "--maps", d, "--workers", "0")
    assert code == 2 and str(fifo) in one_line(e) and "not a regular file" in e
    # a GT mask that is a FIFO: that image fails, the others are scored
    os.mkfifo(tmp_path / "m.png")
    from PIL import Image

    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "ok.png")
    gt = tmp_path / "gt.jsonl"
    rows = (("a", "ok.png"), ("b", "m.png"), ("c", "ok.png"))
    gt.write_text("".join(json.dumps({"image": f"{n}.jpg", "label": 0, "mask": m}) + "\n"
                          for n, m in rows))  # fmt: skip
    cats = tmp_path / "cats.txt"
    cats.write_text("ant\n")
    res = tmp_path / "r.json"
    code, _, e = cli(capsys, "eval", "--gt", gt, "--maps", d, "--categories", cats,
                     "--workers", "0", "-o", res)  # fmt: skip
    assert code == 1, e
    r = json.loads(res.read_text())
    assert r["n_failed"] == 1 and "not a regular file" in r["failed"][0]["error"]


def test_M3_pixel_limit_applied_before_decompressing(tmp_path, capsys):
    """A 180 MB (uint8) map deflated to a few hundred KB: refused from its header (13400 x
    13400 pixels > the 178,956,970 limit) without allocating it."""
    import tracemalloc

    d = _maps_folder(
        tmp_path,
        lambda d: _header_only(d / "b.npz", (1, 13400, 13400), "|u1", deflate_bytes=13400 * 13400),
    )
    assert (d / "b.npz").stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        _check_bbox_from_maps(tmp_path, capsys, d, "178956970 pixels per map")
        _check_eval_maps(tmp_path, capsys, d, "178956970 pixels per map")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# ------------------------------------------------------------------ G1, G2: ground truth

BIG = "9" * 400


def _boxes_file(tmp_path: Path) -> Path:
    p = tmp_path / "boxes.jsonl"
    recs = [{"image": f"{n}.jpg", "width": 20, "height": 20,
             "predictions": [{"class_index": 0, "label": "ant", "score": 0.9}],
             "boxes": [{"rank": 1, "class_index": 0, "label": "ant", "score": 0.9,
                        "box": [2, 2, 6, 6], "kind": "largest"}]} for n in "abc"]  # fmt: skip
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def _cats(tmp_path: Path) -> Path:
    p = tmp_path / "cats.txt"
    p.write_text("ant\nbee\n")
    return p


def _gt_jsonl_line(**kw) -> str:
    rec = {"image": "b.jpg", "label": "ant", "boxes": [[2, 2, 6, 6]], **kw}
    return json.dumps(rec)


G_JSONL = {
    "width 1e400": ('{"image": "b.jpg", "label": "ant", "width": 1e400}', "image size"),
    "boxes 7": (_gt_jsonl_line(boxes=7), '"boxes"'),
    "labels 5": (_gt_jsonl_line(labels=5), '"labels"'),
    "mask [5]": (_gt_jsonl_line(mask=[5]), '"mask"'),
    "400-digit coordinate": (
        f'{{"image": "b.jpg", "label": "ant", "boxes": [[1, 2, 3, {BIG}]]}}',
        "box coordinate",
    ),  # fmt: skip
    "box a string": (_gt_jsonl_line(boxes=["abcd"]), "4 numbers"),
    "label a dict": (_gt_jsonl_line(label={"a": 1}), "label"),
    "height -5": (_gt_jsonl_line(height=-5), "image size"),
}


def _eval_gt(tmp_path, capsys, gt: Path):
    return cli(capsys, "eval", "--gt", gt, "--boxes", _boxes_file(tmp_path), "--categories",
               _cats(tmp_path))  # fmt: skip


@pytest.mark.parametrize("case", list(G_JSONL))
def test_G1_gt_jsonl_malformed_values_one_line_with_file_and_line(case, tmp_path, capsys):
    line, what = G_JSONL[case]
    gt = tmp_path / "gt.jsonl"
    gt.write_text(_gt_jsonl_line(image="a.jpg") + "\n" + line + "\n")
    code, _, e = _eval_gt(tmp_path, capsys, gt)
    assert code == 2, e
    msg = one_line(e)
    assert f"{gt} line 2" in msg and what in msg


def test_G2_gt_labels_string_is_not_a_list(tmp_path, capsys):
    gt = tmp_path / "gt.jsonl"
    gt.write_text(_gt_jsonl_line(image="a.jpg") + "\n"
                  + _gt_jsonl_line(labels="triangle") + "\n")  # fmt: skip
    code, _, e = _eval_gt(tmp_path, capsys, gt)
    assert code == 2, e
    msg = one_line(e)
    assert f"{gt} line 2" in msg and '"labels" must be a list' in msg


@pytest.mark.parametrize(
    ("row", "what"),
    [
        ("b.jpg,ant,2,2,6,6,1e400,20", "image size"),
        (f"b.jpg,ant,2,2,6,{BIG},20,20", "box coordinate"),
        ("b.jpg,ant,2,2,6,6,20," + "7" * 200_000, "bad CSV"),
    ],
)
def test_G1_gt_csv_malformed_values(row, what, tmp_path, capsys):
    gt = tmp_path / "gt.csv"
    gt.write_text("path,label,xmin,ymin,xmax,ymax,width,height\na.jpg,ant,2,2,6,6,20,20\n"
                  + row + "\n")  # fmt: skip
    code, _, e = _eval_gt(tmp_path, capsys, gt)
    assert code == 2, e
    msg = one_line(e)
    assert f"{gt} line 3" in msg and what in msg


def test_G1_gt_xml_bad_width_skips_that_file(tmp_path, capsys):
    xml = tmp_path / "xml"
    xml.mkdir()
    for n, w in (("a", "20"), ("b", "1e999"), ("c", "20")):
        (xml / f"{n}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>20</height></size><object>"
            "<name>ant</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>6</xmax><ymax>6</ymax>"
            "</bndbox></object></annotation>"
        )
    res = tmp_path / "r.json"
    code, _, e = cli(capsys, "eval", "--gt", xml, "--boxes", _boxes_file(tmp_path),
                     "--categories", _cats(tmp_path), "-o", res)  # fmt: skip
    assert code in (0, 1), e
    assert str(xml / "b.xml") in e and "image size" in e and "Traceback" not in e
    r = json.loads(res.read_text())
    assert r["n_gt_images"] == 2


def _good_rec(image: str) -> dict:
    return {"image": image, "width": 20, "height": 20,
            "predictions": [{"class_index": 0, "label": "ant", "score": 0.9}],
            "boxes": [{"rank": 1, "class_index": 0, "label": "ant", "score": 0.9,
                       "box": [2, 2, 6, 6], "kind": "largest"}]}  # fmt: skip


def _bad_box_rec(box) -> str:
    rec = _good_rec("b.jpg")
    rec["boxes"][0]["box"] = box
    return json.dumps(rec)


def _bad_cls_rec(value, *, drop=False) -> str:
    rec = _good_rec("b.jpg")
    if drop:
        del rec["predictions"][0]["class_index"]
    else:
        rec["predictions"][0]["class_index"] = value
    return json.dumps(rec)


G1_RECORDS = {
    "class_index abc": (_bad_cls_rec("abc"), "class_index"),
    "class_index missing": (_bad_cls_rec(None, drop=True), "class_index"),
    "class_index 1e400": (_bad_cls_rec(None).replace("null", "1e400"), "class_index"),
    "class_index 10**12": (_bad_cls_rec(10**12), "class_index"),
    "box [1,2,3]": (_bad_box_rec([1, 2, 3]), "box"),
    "box abcd": (_bad_box_rec("abcd"), "box"),
    "box NaN": (_bad_box_rec([1, 2, 3, 4]).replace("[1, 2, 3, 4]", "[1, 2, NaN, 4]"), "box"),
    "boxes [1,2]": (json.dumps({**_good_rec("b.jpg"), "boxes": [1, 2]}), "boxes[1]"),
    "predictions a dict": (
        json.dumps({**_good_rec("b.jpg"), "predictions": {"a": 1}}),
        '"predictions"',
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(G1_RECORDS))
def test_G1_records_malformed_values_skipped_with_file_and_line(case, tmp_path, capsys):
    line, what = G1_RECORDS[case]
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("\n".join([json.dumps(_good_rec("a.jpg")), line,
                                json.dumps(_good_rec("c.jpg"))]) + "\n")  # fmt: skip
    gt = tmp_path / "gt.csv"
    gt.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,ant,2,2,6,6\nc.jpg,ant,2,2,6,6\n")
    res = tmp_path / "r.json"
    code, _, e = cli(capsys, "eval", "--gt", gt, "--boxes", boxes, "--categories",
                     _cats(tmp_path), "-o", res)  # fmt: skip
    assert code in (0, 1) and "Traceback" not in e, e
    r = json.loads(res.read_text())
    assert r["n_unreadable"] == 1
    assert f"{boxes} line 2" in r["unreadable"][0] and what in r["unreadable"][0]
    assert f"{boxes} line 2" in e
    assert r["top1_loc_error"] == 0.0 and r["n_images"] == 2


def _sub_setup(tmp_path: Path) -> tuple[Path, Path]:
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><object><name>n00000001</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    synsets = tmp_path / "map_clsloc.txt"
    synsets.write_text("n00000001 1 ant\nn00000002 2 bee\n")
    return xml, synsets


@pytest.mark.parametrize(
    ("name", "body", "what"),
    [
        ("sub.txt", f"1 1 1 5 {BIG}\n".encode(), "line 1"),
        (
            "sub.csv",
            f"ImageId,PredictionString\nILSVRC2012_val_00000001,n00000001 1 1 5 {BIG}\n".encode(),
            "line 2",
        ),  # fmt: skip
        ("sub.txt", b"1 1 1 5 \xff5\n", "not UTF-8"),
        (
            "sub.csv",
            b"ImageId,PredictionString\nILSVRC2012_val_00000001,n00000001 1 1 5 \xff\n",
            "not UTF-8",
        ),  # fmt: skip
    ],
)
def test_G1_submission_malformed_one_line(name, body, what, tmp_path, capsys):
    xml, synsets = _sub_setup(tmp_path)
    sub = tmp_path / name
    sub.write_bytes(body)
    code, _, e = cli(capsys, "eval", "--gt", xml, "--synsets", synsets, "--submission", sub)
    assert code == 2, e
    msg = one_line(e)
    assert str(sub) in msg and what in msg


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("n00000001 1 ant\nn00000002 \u00b2 bee\n", "line 2"),
        ("n00000001 1 ant\nn00000002 %s bee\n" % ("7" * 5000), "line 2"),
    ],
)
def test_G1_synsets_bad_ids_one_line(text, what, tmp_path, capsys):
    synsets = tmp_path / "map_clsloc.txt"
    synsets.write_text(text)
    code, _, e = cli(capsys, "eval", "--gt", _gt_csv(tmp_path)[0], "--boxes",
                     _boxes_file(tmp_path), "--synsets", synsets)  # fmt: skip
    assert code == 2, e
    msg = one_line(e)
    assert str(synsets) in msg and what in msg


@pytest.mark.parametrize("empty", ["ILSVRC2012_ID", "WNID"])
def test_G1_meta_mat_empty_id_or_wnid_one_line(empty, tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")]
    syn = np.zeros(2, dtype=dt)
    for i, w in enumerate(["n00000001", "n00000002"]):
        syn[i] = (np.array([[i + 1]]), np.array([w]), np.array(["x"]))
    syn[1][empty] = np.zeros((0, 0))
    meta = tmp_path / "meta.mat"
    scipy_io.savemat(meta, {"synsets": syn})
    code, _, e = cli(capsys, "eval", "--gt", _gt_csv(tmp_path)[0], "--boxes",
                     _boxes_file(tmp_path), "--synsets", meta)  # fmt: skip
    assert code == 2, e
    msg = one_line(e)
    assert str(meta) in msg and "synset 2" in msg


@pytest.mark.parametrize("flag", ["--blacklist", "--categories"])
def test_G1_blacklist_categories_not_utf8(flag, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ant\n\xff\xfe bee\n")
    extra = [] if flag == "--categories" else ["--categories", _cats(tmp_path)]
    code, _, e = cli(capsys, "eval", "--gt", _gt_csv(tmp_path)[0], "--boxes",
                     _boxes_file(tmp_path), flag, bad, *extra)  # fmt: skip
    assert code == 2, e
    msg = one_line(e)
    assert str(bad) in msg and "not UTF-8" in msg


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["eval", "--taus", "0:1:1e-12"], "--taus"),
        (["eval", "--taus", "nan"], "--taus"),
        (["eval", "--taus", "0:nan:0.1"], "--taus"),
        (["predict", "--batch-size", "99999999999999999999"], "--batch-size"),
        (["cam", "--top-k", "99999999999999999999"], "--top-k"),
        (["cam", "--top-k", "1001"], "--top-k"),
        (["train", "--batch-size", "99999999999999999999"], "--batch-size"),
    ],
)
def test_G1_options_that_size_memory_are_bounded(args, what, tmp_path, capsys):
    if args[0] == "eval":
        gt, _ = _gt_csv(tmp_path)
        d = _maps_folder(tmp_path, lambda d: None)
        full = [*args, "--gt", gt, "--maps", d, "--workers", "0"]
    elif args[0] == "train":
        full = [*args, str(tmp_path), "--out", tmp_path / "run"]
    else:
        full = [*args, EXAMPLES / "circle.jpg", "-w", DEMO, "--out" if args[0] == "cam" else
                "--output", tmp_path / "o"]  # fmt: skip
    code, o, e = cli(capsys, *full)
    assert code == 2, e
    assert what in e and "Traceback" not in e
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ R1: train's val split


@pytest.mark.parametrize("split", ["val", "train"])
def test_R1_truncated_image_in_val_reported_like_train(split, tmp_path, capsys):
    from camcli.data import synthetic

    data = synthetic.generate(tmp_path / "s", shapes=("circle", "square"), train_per_class=6,
                              val_per_class=3, size=32, seed=3)  # fmt: skip
    good = next((data / split / "circle").iterdir())
    bad = data / split / "circle" / "zz_truncated.jpg"
    from PIL import Image

    Image.open(good).convert("RGB").save(tmp_path / "full.jpg", quality=95)
    raw = (tmp_path / "full.jpg").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    run = tmp_path / "run"
    code, _, e = cli(capsys, "train", data, "-m", "camnet-small", "--out", run, "--epochs", "1",
                     "--image-size", "16", "--batch-size", "4", "--workers", "0", "--device",
                     "cpu", *TINY_ARGS)  # fmt: skip
    assert code == 1, e
    hits = [x for x in e.splitlines() if "zz_truncated.jpg" in x]
    assert len(hits) == 1 and str(bad) in hits[0], e
    assert "could not be used" in e
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    if split == "val":
        assert metrics["val_images"] == 6  # 7 found, the truncated one reported and left out


def test_R1_linear_probe_feature_pass_reports_undecodable_images():
    """The linear probe's feature pass (both splits) hands undecodable images on too."""
    import torch

    from camcli.models.load import random_model
    from camcli.train.distributed import DistContext
    from camcli.train.probe import pooled_features

    model = random_model("camnet-small", num_classes=2)
    x = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    batches = [(x, torch.tensor([0, 1]), [("v/bad.jpg", "truncated")]), (x, torch.tensor([1, 0]))]
    got = []
    f, y = pooled_features(model, batches, device=torch.device("cpu"), precision="fp32",
                           mirror=False, dist=DistContext(), on_errors=got.extend)  # fmt: skip
    assert got == [("v/bad.jpg", "truncated")] and len(y) == 4


# ------------------------------------------------------------------ K1: camcli merge


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}  # fmt: skip


def _predict_parts(tmp_path: Path, capsys) -> Path:
    out = tmp_path / "p.jsonl"
    for i in range(2):
        code, _, e = cli(capsys, "predict", EXAMPLES, "-w", DEMO, "--output", out,
                         "--shard", f"{i}/2", "--workers", "0", "-q")  # fmt: skip
        assert code == 0, e
    return out


def _fake_outdir(d: Path, n: int, sizes: list[int], total: int, run1=None) -> None:
    d.mkdir()
    k = 0
    for i, size in enumerate(sizes):
        lines = []
        for _ in range(size):
            lines.append(json.dumps({"image": f"i{k}.jpg", "key": f"i{k}", "outputs": {}}))
            k += 1
        (d / f"manifest.shard-{i}-of-{n}.jsonl").write_text("".join(x + "\n" for x in lines))
        info = {"command": "cam", "inputs_total": total, "counts": {"done": size},
                "wall_time_s": 1.0, "options": {"resumed": 0}, "shard": f"{i}/{n}"}  # fmt: skip
        (d / f"run.shard-{i}-of-{n}.json").write_text(
            json.dumps(info) if not (run1 is not None and i == 1) else run1
        )


def test_K1_parts_cut_at_line_boundaries_refused_nothing_written(tmp_path, capsys):
    out = _predict_parts(tmp_path, capsys)
    parts = [tmp_path / f"p.shard-{i}-of-2.jsonl" for i in range(2)]
    for p, keep in zip(parts, (2, 1)):  # 3 + 3 records for 6 inputs, cut to 2 + 1
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:keep]))
    before = _snapshot(tmp_path)
    code, _, e = cli(capsys, "merge", out)
    assert code == 3, e
    msg = one_line(e)
    assert str(parts[0]) in msg and "2 records for the shard's 3 inputs" in msg
    assert _snapshot(tmp_path) == before and not out.exists()
    # the same parts whole again merge fine, and the input-count files go with the parts
    out2 = _predict_parts(tmp_path / "again", capsys)
    assert cli(capsys, "merge", out2)[0] == 0
    assert len(out2.read_text().splitlines()) == 6
    # the parts and their input counts go; the merged FILE records their run (session 13)
    assert sorted(p.name for p in out2.parent.iterdir()) == [".p.jsonl.run", "p.jsonl"]


def test_K1_folder_parts_short_of_their_inputs_refused(tmp_path, capsys):
    d = tmp_path / "cams"
    _fake_outdir(d, 2, [2, 1], total=6)
    before = _snapshot(tmp_path)
    code, _, e = cli(capsys, "merge", d)
    assert code == 3 and "for the shard's 3 inputs" in one_line(e)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("run1", ["[]", '"x"', '{"counts": [1]}', '{"wall_time_s": "x"}',
                                  '{"options": 5}', '{"inputs_total": "6"}'])  # fmt: skip
def test_K1_run_json_not_an_object_refused_before_writing(run1, tmp_path, capsys):
    d = tmp_path / "cams"
    _fake_outdir(d, 2, [3, 3], total=6, run1=run1)
    before = _snapshot(tmp_path)
    code, _, e = cli(capsys, "merge", d)
    assert code == 3, e
    assert str(d / "run.shard-1-of-2.json") in one_line(e)
    assert _snapshot(tmp_path) == before  # no manifest.jsonl, no run.json, parts kept


def test_K1_huge_shard_count_refused_fast(tmp_path, capsys):
    import time

    (tmp_path / "boxes.shard-0-of-99999999999.jsonl").write_text('{"image": "a"}\n')
    d = tmp_path / "cams"
    d.mkdir()
    (d / "manifest.shard-0-of-99999999999.jsonl").write_text('{"image": "a", "key": "a"}\n')
    (d / "run.shard-0-of-99999999999.json").write_text("{}")
    before = _snapshot(tmp_path)
    for target in (tmp_path / "boxes.jsonl", d):
        t0 = time.monotonic()
        code, _, e = cli(capsys, "merge", target)
        assert code == 3 and "at most 100000 shards" in one_line(e)
        assert time.monotonic() - t0 < 5
    assert _snapshot(tmp_path) == before
    code, _, e = cli(capsys, "predict", EXAMPLES, "-w", DEMO, "--shard", "0/99999999999")
    assert code == 2 and "at most 100000 shards" in e


def test_K1_one_bad_target_nothing_written_for_any(tmp_path, capsys):
    good = _predict_parts(tmp_path, capsys)
    d = tmp_path / "cams"
    _fake_outdir(d, 2, [3, 3], total=6, run1="[]")
    before = _snapshot(tmp_path)
    code, _, e = cli(capsys, "merge", good, d)
    assert code == 3, e
    assert _snapshot(tmp_path) == before and not good.exists()
    # a part line that is an object without "image" (not a record) is refused too
    part = tmp_path / "p.shard-1-of-2.jsonl"
    part.write_text('{"x": 1}\n' + "".join(part.read_text().splitlines(keepends=True)[1:]))
    code, _, e = cli(capsys, "merge", good)
    assert code == 3 and f"{part} line 1" in one_line(e) and not good.exists()


@pytest.mark.parametrize("command", ["predict", "cam", "bbox"])
def test_N1_overflowing_finite_weights_fail_the_image_not_the_json(command, tmp_path, capsys):
    """Finite weights whose logits overflow to inf (softmax NaN): each image fails with a
    one-line reason; no NaN or Infinity token is written anywhere."""

    def huge(c):
        c["state_dict"]["fc.weight"].fill_(3e38)

    ck = edited_demo(tmp_path, huge)
    out = tmp_path / "out"
    target = out / "r.jsonl" if command != "cam" else out
    flag = "--out" if command == "cam" else "--output"
    code, o, e = cli(capsys, command, EXAMPLES / "circle.jpg", EXAMPLES / "ring.jpg", "-w", ck,
                     flag, target, "--workers", "0")  # fmt: skip
    assert code == 3, e
    assert "Traceback" not in e and "non-finite scores" in e
    files = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json")]
    assert files

    def no_token(c):
        pytest.fail(f"{c} written")

    for p in files:
        text = p.read_text()
        if p.suffix == ".jsonl":
            recs = [json.loads(x, parse_constant=no_token) for x in text.splitlines()]
            assert recs and all("non-finite scores" in r["error"] for r in recs)
        else:
            json.loads(text, parse_constant=no_token)
