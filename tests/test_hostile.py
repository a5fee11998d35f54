"""A corpus of hostile inputs through every command (issue: reliability at scale).

Zero-byte, truncated, mislabelled and bomb files, huge and 1 x 1 images, 16-bit, CMYK and
EXIF-rotated images, unreadable files, broken and looping symlinks, a FIFO, names with spaces,
undecodable bytes, ``..`` and the output folder's own file names. Each command gives every bad
file one record (or one message), finishes the good ones, exits 1 (3 when nothing is usable),
and writes nothing outside its output.
"""

from __future__ import annotations

import io as _io
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camcli.cli import main
from camcli.console import shown
from camcli.data import inputs
from conftest import make_image, snapshot

pytestmark = pytest.mark.usefixtures("cli_one_thread")

ROOT_IS_ALL_POWERFUL = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Expect:
    """What a corpus file must give: (width, height) when good, a reason fragment when bad."""

    size: tuple[int, int] | None = None
    error: str | None = None


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression bomb, never decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = _io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def build_corpus(root: Path, outside: Path) -> dict[str, Expect]:
    """Write the corpus under ``root``; returns {path as discovered: Expect}."""
    root.mkdir(parents=True)
    outside.mkdir(parents=True)
    good: dict[str, tuple[int, int]] = {}  # name -> (width, height)

    def image(name: str, hw: tuple[int, int], seed: int) -> None:
        fmt = {".jpg": "JPEG", ".png": "PNG"}[Path(name).suffix]  # PIL reads '..jpg' as no ext
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _noise(*hw, seed).save(root / name, format=fmt)
        good[name] = (hw[1], hw[0])

    image("plain.jpg", (30, 40), 1)
    image("name with  spaces.jpg", (33, 21), 2)
    image("..jpg", (20, 24), 3)  # the stem is '..'
    image("-dash.png", (25, 25), 4)
    image("manifest.jsonl.jpg", (22, 30), 5)  # would be DIR/manifest.jsonl/...
    image("run.json.png", (26, 18), 6)
    image("dots.../inner.jpg", (24, 28), 7)
    image("L" * 200 + ".png", (19, 23), 8)  # long name: its temporary name must fit too
    image("huge.jpg", (1200, 1600), 9)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(root / "one.png")
    good["one.png"] = (1, 1)
    a16 = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100).astype(np.uint16)
    Image.fromarray(a16).save(root / "sixteen.png")
    good["sixteen.png"] = (20, 30)
    Image.new("CMYK", (27, 17), (10, 200, 30, 0)).save(root / "cmyk.jpg")
    good["cmyk.jpg"] = (27, 17)
    rot = _noise(20, 40, 10)  # stored 40 wide, 20 high; orientation 6: shown 20 x 40
    exif = Image.Exif()
    exif[0x0112] = 6
    rot.save(root / "exif6.jpg", exif=exif.tobytes())
    good["exif6.jpg"] = (20, 40)
    make_image(outside / "elsewhere.jpg", (21, 31), 11)
    (root / "link to outside.jpg").symlink_to(outside / "elsewhere.jpg")
    good["link to outside.jpg"] = (31, 21)
    raw = os.path.join(os.fsencode(root), b"caf\xe9 \xff.png")  # not UTF-8
    with open(raw, "wb") as fh:
        _noise(16, 12, 12).save(fh, format="PNG")
    good[os.fsdecode(raw)[len(str(root)) + 1 :]] = (12, 16)
    make_image(root / "noperm.jpg", (18, 22), 13)
    os.chmod(root / "noperm.jpg", 0)

    bad: dict[str, str] = {}
    (root / "zero.jpg").write_bytes(b"")
    bad["zero.jpg"] = "not an image file (empty: 0 bytes)"
    jpg = _encoded(_noise(48, 48, 14), "JPEG")
    (root / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    bad["trunc.jpg"] = "cannot decode image"
    png = _encoded(_noise(48, 48, 15), "PNG")
    (root / "trunc.png").write_bytes(png[: len(png) // 2])
    bad["trunc.png"] = "cannot decode image"
    (root / "text.jpg").write_text("I am text in a .jpg\n")
    bad["text.jpg"] = "not an image file"
    (root / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    bad["bomb.png"] = "decompression bomb"
    (root / "broken link.jpg").symlink_to(outside / "gone.jpg")
    bad["broken link.jpg"] = "broken symbolic link"
    (root / "loop.jpg").symlink_to("loop.jpg")
    bad["loop.jpg"] = "symbolic link loop"
    os.mkfifo(root / "fifo.jpg")
    bad["fifo.jpg"] = "not a regular file"
    with open(os.path.join(os.fsencode(root), b"bad \xfe.jpg"), "wb") as fh:
        fh.write(b"GIF89a but not really")
    bad[os.fsdecode(b"bad \xfe.jpg")] = "cannot"
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to("..", target_is_directory=True)  # pruned, not an input
    if ROOT_IS_ALL_POWERFUL:
        good["noperm.jpg"] = (22, 18)
    else:  # pragma: no cover - depends on who runs the tests
        bad["noperm.jpg"] = "permission denied"

    out = {str(root / k): Expect(size=v) for k, v in good.items()}
    out.update({str(root / k): Expect(error=v) for k, v in bad.items()})
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict[str, Expect]]:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "in"
    return base, root, build_corpus(root, base / "outside")


def run_in(base: Path, out: Path, monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """Run camcli from a working folder inside ``base``; assert nothing changed outside
    ``out`` -> (exit code, stdout, stderr)."""
    cwd = base / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    before = snapshot(base, out)
    capsys.readouterr()
    try:
        main([str(a) for a in argv] + ["--workers", "0"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    o, e = capsys.readouterr()
    after = snapshot(base, out)
    assert after == before, set(after) ^ set(before)
    return code, o, e


def order_of(root: Path) -> list[str]:
    return [it.path for it in inputs.discover([str(root)])]


def check_records(recs: list[dict], root: Path, expect: dict[str, Expect]) -> None:
    """One record per input, in discovery order; bad ones carry their one-line reason."""
    assert [r["image"] for r in recs] == order_of(root)
    assert set(expect) == {r["image"] for r in recs}
    for r in recs:
        e = expect[r["image"]]
        if e.error:
            assert "error" in r and e.error in r["error"], (r["image"], r.get("error"))
            assert "\n" not in r["error"]
        else:
            assert "error" not in r, r
            assert (r["width"], r["height"]) == e.size, r["image"]


def check_messages(err: str, expect: dict[str, Expect]) -> None:
    """One stderr line per bad input, naming it."""
    lines = err.splitlines()
    for path, e in expect.items():
        n = sum(1 for line in lines if line.startswith(f"{shown(path)}: "))
        assert n == (1 if e.error else 0), (path, err)


def records_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_what_it_claims(corpus):
    _, root, expect = corpus
    assert len(order_of(root)) == len(expect) == 25
    assert sum(1 for e in expect.values() if e.error) == 9


def test_predict(corpus, cli_ckpt, monkeypatch, capsys):
    base, root, expect = corpus
    out = base / "out-predict"
    code, o, e = run_in(base, out, monkeypatch, capsys,
                        "predict", root, "-w", cli_ckpt, "-o", out / "p.jsonl")  # fmt: skip
    assert code == 1 and o == ""
    check_records(records_of(out / "p.jsonl"), root, expect)
    check_messages(e, expect)
    assert sorted(p.name for p in out.iterdir()) == [".p.jsonl.run", "p.jsonl"]


def test_cam(corpus, cli_ckpt, monkeypatch, capsys):
    base, root, expect = corpus
    out = base / "out-cam"
    code, o, e = run_in(base, out, monkeypatch, capsys,
                        "cam", root, "-w", cli_ckpt, "--out", out, "--top-k", "1",
                        "--save-maps")  # fmt: skip
    assert code == 1 and o == ""
    recs = records_of(out / "manifest.jsonl")
    check_records(recs, root, expect)
    check_messages(e, expect)
    keys = [r["key"] for r in recs]
    assert len(set(keys)) == len(keys)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    listed = {f for r in recs for f in r.get("outputs", {}).get("files", [])}
    assert written == listed | {"manifest.jsonl", "run.json"}
    for r in recs:
        if "error" in r:
            continue
        (ov,) = r["outputs"]["overlays"]
        with Image.open(out / ov) as im:
            assert im.size == (r["width"], r["height"])
    # the image named manifest.jsonl.jpg did not take the manifest's place
    assert (out / "manifest.jsonl").is_file() and (out / "run.json").is_file()


def test_bbox(corpus, cli_ckpt, monkeypatch, capsys):
    base, root, expect = corpus
    out = base / "out-bbox"
    code, o, e = run_in(base, out, monkeypatch, capsys,
                        "bbox", root, "-w", cli_ckpt, "-o", out / "b.jsonl",
                        "--draw", out / "draw")  # fmt: skip
    assert code == 1 and o == ""
    recs = records_of(out / "b.jsonl")
    check_records(recs, root, expect)
    check_messages(e, expect)
    for r in recs:
        for b in r.get("boxes", []):
            if b["box"] is not None:
                x0, y0, x1, y1 = b["box"]
                assert 0 <= x0 <= x1 < r["width"] and 0 <= y0 <= y1 < r["height"]
    drawn = records_of(out / "draw" / "manifest.jsonl")
    assert [d["image"] for d in drawn] == order_of(root)


@pytest.mark.parametrize("command", ["predict", "cam", "bbox"])
def test_nothing_usable_is_exit_3(command, corpus, cli_ckpt, tmp_path, capsys):
    base, root, expect = corpus
    bad = [p for p, e in expect.items() if e.error]
    out = tmp_path / "out"
    args = ["--out", out] if command == "cam" else ["-o", out / "r.jsonl"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        main([command, *bad, "-w", str(cli_ckpt), *map(str, args), "--workers", "0"])
    assert ex.value.code == 3
    check_messages(capsys.readouterr().err, {p: expect[p] for p in bad})


# --- eval: bad ground-truth files, record lines and map files ---------------------------------

XML = """<annotation><size><width>{w}</width><height>{h}</height></size>
<object><name>class a</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>{x1}</xmax>
<ymax>{y1}</ymax></bndbox></object></annotation>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<annotation><object><name>&lol9;</name></object></annotation>"""


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def eval_corpus(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for name in ("p", "q", "r"):
        (gt / f"{name}.xml").write_text(XML.format(w=20, h=10, x1=9, y1=4))
    bad_gt = {
        "broken.xml": "<annotation><object>",
        "zero.xml": "",
        "billion.xml": BILLION_LAUGHS,
        "noname.xml": "<annotation><object><name> </name></object></annotation>",
        "badbox.xml": XML.format(w=20, h=10, x1=-5, y1=4),
    }
    for n, text in bad_gt.items():
        (gt / n).write_text(text)
    os.mkfifo(gt / "fifo.xml")
    cats = tmp_path / "cats.txt"
    cats.write_text("class a\nclass b\n")
    return tmp_path, gt, cats, [*bad_gt, "fifo.xml"]


def _box_record(name: str, cls: int, box) -> dict:
    return {
        "image": f"/d/{name}.jpg",
        "width": 20,
        "height": 10,
        "predictions": [{"class_index": cls, "label": f"class {'ab'[cls]}", "score": 0.9}],
        "boxes": [{"rank": 1, "class_index": cls, "label": "x", "score": 0.9, "box": box,
                   "kind": "largest"}],
    }  # fmt: skip


def test_eval_boxes_and_gt(eval_corpus, capsys):
    t, gt, cats, bad_gt = eval_corpus
    good = [_box_record("p", 0, [0, 0, 9, 4]), _box_record("q", 1, [0, 0, 9, 4])]
    bad_lines = ["{not json", "[1, 2]", '{"no_image": 1}', '{"image": 7}']
    boxes = t / "boxes.jsonl"
    with open(boxes, "wb") as fh:
        fh.write((json.dumps(good[0]) + "\n" + "\n".join(bad_lines) + "\n").encode())
        fh.write(b'{"image": "/d/\xff\xfe.jpg", "error": "bad bytes"}\n')  # not UTF-8
        fh.write((json.dumps(good[1]) + "\n").encode())
        fh.write(b'{"image": "/d/r.jpg", "wid')  # cut by a kill
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        main(["eval", "--gt", str(gt), "--boxes", str(boxes), "--categories", str(cats),
              "-o", str(t / "m.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert ex.value.code == 1
    r = json.loads((t / "m.json").read_text())
    assert r["n_gt_images"] == 3 and r["n_images"] == 3  # p, q, r: the readable GT files
    assert r["top1_cls_error"] == pytest.approx(2 / 3)  # p right; q wrong; r missing
    assert r["missing"] == ["r"]
    assert r["n_unreadable"] == len(bad_gt) + len(bad_lines) + 1
    warnings = [x for x in err.splitlines() if x.startswith("warning:") and "(skipped)" in x]
    assert len(warnings) == r["n_unreadable"]
    for name in bad_gt:
        assert sum(name in w for w in warnings) == 1, name
    for n in (2, 3, 4, 5, 8):  # the bad lines, the cut last line
        assert sum(f"line {n}:" in w for w in warnings) == 1, n


def test_eval_nothing_readable_is_exit_3(eval_corpus, capsys):
    t, gt, cats, _ = eval_corpus
    boxes = t / "junk.jsonl"
    boxes.write_text("{not json\n[]\n")
    with pytest.raises(SystemExit) as ex:
        main(["eval", "--gt", str(gt), "--boxes", str(boxes), "--categories", str(cats)])
    assert ex.value.code == 3 and "no readable record" in capsys.readouterr().err
    only_bad = t / "badgt"
    only_bad.mkdir()
    (only_bad / "x.xml").write_text("<a")
    with pytest.raises(SystemExit) as ex:
        main(["eval", "--gt", str(only_bad), "--boxes", str(t / "junk.jsonl")])
    assert ex.value.code == 3 and "no readable XML file" in capsys.readouterr().err


def test_eval_maps_bad_files_fail_one_by_one_and_never_unpickle(eval_corpus, capsys):
    t, gt, cats, _ = eval_corpus
    maps = t / "maps"
    maps.mkdir()
    m = np.zeros((1, 10, 20), np.float32)
    m[0, 0:5, 0:10] = 1.0
    np.savez(maps / "p.npz", cams=m, class_indices=np.array([0]), image="p.jpg")
    marker = t / "pwned"
    np.savez(maps / "q.npz", cams=np.array([_Evil(str(marker))], dtype=object),
             class_indices=np.array([0]), image="q.jpg")  # fmt: skip
    (maps / "r.npz").write_bytes(b"")
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        main(["eval", "--gt", str(gt), "--maps", str(maps), "--categories", str(cats),
              "--workers", "0", "-o", str(t / "m.json")])  # fmt: skip
    assert ex.value.code == 1
    r = json.loads((t / "m.json").read_text())
    assert not marker.exists()  # the pickled object was refused, never run
    assert r["n_images"] == 3 and r["n_missing"] == 0 and r["n_unmatched"] == 0
    assert [Path(f["image"]).name for f in r["failed"]] == ["q.npz", "r.npz"]
    assert all(f["error"].startswith("cannot read map file") for f in r["failed"])
    assert "camcli never loads pickles" in r["failed"][0]["error"]
    assert r["maxboxacc_v1"] == pytest.approx(1 / 3)  # p right; q, r counted wrong


# --- train: bad images in DATA (when the train command is built in) --------------------------


def test_train_skips_bad_images_once_each(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(4):
            make_image(data / c / f"{c}{i}.jpg", (24, 24), seed=i + (10 if c == "dog" else 0))
    (data / "cat" / "zero.jpg").write_bytes(b"")
    (data / "dog" / "text.jpg").write_text("not an image")
    (data / "dog" / "loop.jpg").symlink_to("loop.jpg")
    (data / "cat" / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    bad = [data / "cat" / "zero.jpg", data / "dog" / "text.jpg", data / "dog" / "loop.jpg",
           data / "cat" / "bomb.png"]  # fmt: skip
    # 12 images, batches of 4: one epoch visits every one (no partial batch to drop)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        main(["train", str(data), "--model", "camnet-small", "--out", str(out), "--epochs", "1",
              "--image-size", "32", "--batch-size", "4", "--workers", "0", "--val-split", "0",
              "--device", "cpu", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert ex.value.code == 1, err  # some inputs failed, the rest done
    assert (out / "last.pt").is_file()
    for p in bad:
        assert sum(str(p) in line for line in err.splitlines()) == 1, (p, err)
