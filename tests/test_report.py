"""`camcli report` without a browser: data extraction, the page's HTML, thumbnails, errors."""

from __future__ import annotations

import errno
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from camcli.api import report_data as D
from camcli.api import report_html as R
from camcli.api import report_thumbs as T
from report_fixture import EVIL_LABEL, EVIL_NAME, EXPECT, FAILED, GT_BOX, build_run

# ---- data extraction on hand-built records ----------------------------------------------------


def _inputs(cam=(), records=(), evals=()) -> D.ReportInputs:
    inp = D.ReportInputs()
    for folder, recs in cam:
        inp.cam_dirs.append((Path(folder), recs, None))
    for recs in records:
        inp.records.append((Path("boxes.jsonl"), recs))
    inp.evals.extend(evals)
    return inp


PRED = [{"class_index": 3, "label": "cat", "score": 0.8}, {"class_index": 5, "label": "dog",
        "score": 0.1}]  # fmt: skip


def test_rows_join_manifest_and_boxes_by_image():
    man = [{"image": "p/a.jpg", "width": 50, "height": 40, "predictions": PRED, "key": "a",
            "outputs": {"overlays": ["a/1_cat.jpg", "a/2_dog.jpg"]}}]  # fmt: skip
    box = [{"image": "p/a.jpg", "width": 50, "height": 40, "predictions": PRED, "boxes": [
        {"rank": 1, "class_index": 3, "label": "cat", "score": 0.8, "box": [1, 2, 10, 20]},
        {"rank": 2, "class_index": 5, "label": "dog", "score": 0.1, "box": None},
    ]}, {"image": "p/b.jpg", "error": "cannot decode image (bad)\nmore"}]  # fmt: skip
    rows = D.build_rows(_inputs(cam=[("cams", man)], records=[box]))
    assert [r.image for r in rows] == ["p/a.jpg", "p/b.jpg"]
    a, b = rows
    assert (a.width, a.height) == (50, 40)
    assert a.preds == [["cat", 3, 0.8], ["dog", 5, 0.1]]
    assert a.overlays == [[1, "cat", "cams/a/1_cat.jpg"], [2, "dog", "cams/a/2_dog.jpg"]]
    assert a.boxes == [[1, 1, 2, 10, 20]]  # the null box is left out
    assert (a.iou, a.wrong_class, a.box_missed) == (None, None, None)  # no ground truth
    assert b.error == "cannot decode image (bad)"
    assert b.preds == [] and b.iou is None


def test_rows_judge_against_a_records_own_ground_truth():
    def rec(name, box, gt_cls):
        return {"image": name, "width": 200, "height": 200, "predictions": PRED,
                "boxes": [{"rank": 1, "class_index": 3, "box": box}] if box else [],
                "gt": {"label": "x", "class_index": gt_cls, "boxes": [[0, 0, 9, 9]]}}  # fmt: skip

    rows = D.build_rows(
        _inputs(
            records=[
                [
                    rec("hit", [0, 0, 9, 9], 3),
                    rec("half", [0, 0, 4, 9], 3),
                    rec("wrong", [0, 0, 9, 9], 5),
                    rec("none", None, 3),
                ]
            ]
        ),  # fmt: skip
        iou=0.5,
    )
    got = {r.image: (r.iou, r.wrong_class, r.box_missed) for r in rows}
    assert got == {
        "hit": (1.0, False, False),
        "half": (0.5, False, False),  # 50 / 100 pixels: exactly the threshold is found
        "wrong": (1.0, True, False),
        "none": (0.0, False, True),  # no box of the top-1 class: missed
    }
    assert D.build_rows(_inputs(records=[[rec("half", [0, 0, 4, 9], 3)]]), iou=0.6)[0].box_missed


def test_rows_with_ground_truth_file_and_gt_known(tmp_path):
    from camcli.evaluate.groundtruth import read_ground_truth

    run = build_run(tmp_path)
    inp = D.load_inputs([run["cams"], run["boxes"], run["eval"]])
    assert len(inp.cam_dirs) == 1 and len(inp.records) == 1 and len(inp.evals) == 1
    # the records of one image may carry a GT-known box (the map of the GT class)
    inp.records[0][1][0]["gt_known"] = {"class_index": 0, "box": [40, 30, 89, 109]}
    rows = D.build_rows(inp, read_ground_truth(str(run["gt"])))
    by = {("evil" if r.image.endswith(EVIL_NAME) else Path(r.image).stem): r for r in rows}
    assert list(by) == [*EXPECT, FAILED]
    for stem, (_lab, _box, gt_label, iou, wc, bm) in EXPECT.items():
        r = by[stem]
        assert r.gt_labels == [gt_label] and r.gt_boxes == [GT_BOX]
        assert (r.iou, r.wrong_class, r.box_missed) == (pytest.approx(iou), wc, bm), stem
        assert len(r.overlays) == 2
    assert by["good"].gt_known_iou == pytest.approx(0.5)
    assert by["missed"].gt_known_iou is None
    assert by[FAILED].error == "cannot decode image (truncated)" and by[FAILED].iou is None

    table = D.class_table(rows)
    assert [t["class"] for t in table] == sorted([EVIL_LABEL, "cat", "dog"])
    cat = next(t for t in table if t["class"] == "cat")
    # cat: good (right, found), missed, wrong (top-1 dog), nobox
    assert cat == {"class": "cat", "images": 4, "top1_acc": 0.75, "loc_acc": 0.25,
                   "mean_iou": pytest.approx((1.0 + 0.0 + 0.9 + 0.0) / 4)}  # fmt: skip


def test_class_table_without_ground_truth():
    rows = [D.Row("a", preds=[["cat", 3, 0.8]]), D.Row("b", preds=[["cat", 3, 0.4]]),
            D.Row("c", preds=[["dog", 5, 0.5]]), D.Row("d", error="bad")]  # fmt: skip
    assert D.class_table(rows) == [
        {"class": "cat", "images": 2, "mean_score": pytest.approx(0.6)},
        {"class": "dog", "images": 1, "mean_score": 0.5},
    ]


def test_boxacc_svg_points():
    res = {"taus": [0.0, 0.5, 1.0], "boxacc": {"v1": [1.0, 0.5, 0.0],
           "v2": {"0.3": [0.0, 0.0, 1.0]}}}  # fmt: skip
    svg = R.boxacc_svg(res, width=172, height=136)  # plot area 100 x 64 after 36 px margins
    assert [c["name"] for c in svg["curves"]] == ["IoU 0.5 (V1)", "IoU 0.3 (V2)"]
    assert svg["curves"][0]["points"] == "36.0,36.0 86.0,68.0 136.0,100.0"
    assert svg["curves"][1]["points"] == "36.0,100.0 86.0,100.0 136.0,36.0"
    assert R.boxacc_svg({"n_images": 3}) is None


def test_make_thumbnail_shrinks_and_keeps_aspect(tmp_path):
    src = tmp_path / "big.jpg"
    Image.new("RGB", (1000, 500), (200, 10, 10)).save(src)
    T.make_thumbnail(src, tmp_path / "t" / "small.jpg", 160)
    with Image.open(tmp_path / "t" / "small.jpg") as im:
        assert im.size == (160, 80)
        assert im.format == "JPEG"
    assert sorted(os.listdir(tmp_path / "t")) == ["small.jpg"]  # no temporary file left


# ---- the page ---------------------------------------------------------------------------------


class _Page(HTMLParser):
    """Scripts, option texts, tag names and asset URLs of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict, str]] = []
        self.options: list[str] = []
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.cells: list[str] = []
        self._in: str | None = None
        self._attrs: dict = {}
        self._text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        self.urls += [a[k] for k in ("src", "href") if a.get(k)]
        if tag in ("script", "option", "td"):
            self._in, self._attrs, self._text = tag, a, ""

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag == self._in == "script":
            self.scripts.append((self._attrs, self._text))
        elif tag == self._in == "option":
            self.options.append(self._text)
        elif tag == self._in == "td":
            self.cells.append(self._text)
        if tag == self._in:
            self._in = None


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from camcli.cli import main

    root = tmp_path_factory.mktemp("report")
    run = build_run(root)
    out = root / "out"
    with pytest.raises(SystemExit) as ex:
        main(["report", str(run["cams"]), str(run["boxes"]), str(run["eval"]), "--gt",
              str(run["gt"]), "--out", str(out), "-q", "--title", "run <b>1</b>"])  # fmt: skip
    assert ex.value.code == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    p = _Page()
    p.feed(html)
    return html, p, out, run


def test_page_shows_file_names_and_labels_as_text(page):
    html, p, _out, _run = page
    # the path holding </script><script> and the label holding an <img> never become markup
    assert "</script><script>window.pwned" not in html
    assert EVIL_LABEL not in html
    assert p.tags.count("img") == 1 and "b" not in p.tags  # the viewer's <img> only
    assert len(p.scripts) == 2  # the data blob and the page's script, nothing injected
    (blob_attrs, blob), (_a, code) = p.scripts
    assert blob_attrs == {"type": "application/json", "id": "report-data"}
    rows = json.loads(blob)  # the blob parses back to the exact strings
    assert any(r["n"].endswith(EVIL_NAME) for r in rows)
    assert [r["p"][0][0] for r in rows if "p" in r].count(EVIL_LABEL) == 1
    assert "innerHTML" not in code and "insertAdjacentHTML" not in code
    # the label is an <option>'s text and a per-class table cell, escaped
    assert EVIL_LABEL in p.options
    assert EVIL_LABEL in p.cells
    assert "<title>run &lt;b&gt;1&lt;/b&gt;</title>" in html


def test_page_rows_and_flags(page):
    _html, p, out, run = page
    rows = json.loads(p.scripts[0][1])
    assert len(rows) == len(EXPECT) + 1
    for r, (_stem, (label, _box, gt, iou, wc, bm)) in zip(rows, EXPECT.items()):
        assert (r["p"][0][0], r["gl"], r["u"], r["wc"], r["bm"]) == (label, [gt], iou, wc, bm)
        assert (r["w"], r["h"]) == (240, 180)
        # thumbnails of the image and both overlays are in the report folder
        for t in [r["t"]] + [o[2] for o in r["o"]]:
            assert t.startswith("thumbs/") and (out / t).is_file()
        # full-resolution files are linked relative to the report folder
        assert r["o"][0][3].startswith("../cams/")
    assert rows[-1] == {"i": 6, "n": str(run["images"] / f"{FAILED}.jpg"),
                        "e": "cannot decode image (truncated)"}  # fmt: skip
    assert "%3C/script%3E" in rows[3]["f"]  # the evil path is percent-encoded in its link


def test_page_is_self_contained(page):
    html, p, _out, _run = page
    assert "link" not in p.tags  # styles inline
    assert all(not u.startswith(("http:", "https:", "//")) for u in p.urls)
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        '"http://www.w3.org/2000/svg"', ""
    )
    # run summary and eval figures
    assert "ab" * 32 in html and "MaxBoxAccV2" in html and "40.00 %" in html
    assert html.count("<polyline") == 4  # V1 and three V2 curves


# ---- the command ------------------------------------------------------------------------------


def test_cli_reuses_thumbnails_and_remakes_changed_ones(tmp_path, camcli_run):
    run = build_run(tmp_path)
    out = tmp_path / "rep"
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0
    # 6 images + 12 overlays (the failed image has none)
    assert "report: 7 images (1 failed), thumbnails 18 made, 0 reused" in err
    thumbs = sorted(out.glob("thumbs/*/*.jpg"))
    assert len(thumbs) == 18
    before = {t: t.stat().st_mtime_ns for t in thumbs}
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0 and "thumbnails 0 made, 18 reused" in err
    assert {t: t.stat().st_mtime_ns for t in thumbs} == before
    # an overlay rewritten since: its thumbnail is made again
    ov = run["cams"] / "good" / "1_0.jpg"
    Image.new("RGB", (240, 180), (0, 0, 255)).save(ov)
    os.utime(ov, ns=(ov.stat().st_atime_ns, ov.stat().st_mtime_ns + 10**9))
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0 and "thumbnails 1 made, 17 reused" in err


def test_cli_unreadable_overlay_is_shown_without_thumbnail(tmp_path, camcli_run):
    run = build_run(tmp_path)
    (run["cams"] / "good" / "2_0.jpg").write_bytes(b"garbage")
    out = tmp_path / "rep"
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0
    assert "1 image or overlay could not be read" in err  # trial E3: singular
    assert "thumbnails 17 made" in err
    html = (out / "index.html").read_text()
    p = _Page()
    p.feed(html)
    good = json.loads(p.scripts[0][1])[0]
    assert good["o"][1][2] is None and good["o"][1][3].endswith("good/2_0.jpg")


def test_cli_write_failure_leaves_no_page(tmp_path, camcli_run, monkeypatch):
    import camcli.atomic

    run = build_run(tmp_path)
    out = tmp_path / "rep"
    real = os.replace

    def full(src, dst):
        if str(dst).endswith("index.html"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(camcli.atomic.os, "replace", full)
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 5
    assert "cannot write to" in err and "index.html: No space left on device" in err
    assert not (out / "index.html").exists()
    assert [f for f in os.listdir(out) if f.startswith(".")] == []  # no temporary file
    assert len(list(out.glob("thumbs/*/*.jpg"))) == 18  # the thumbnails are whole and kept


def test_cli_input_errors(tmp_path, camcli_run):
    (tmp_path / "empty").mkdir()
    code, _o, err = camcli_run("report", tmp_path / "empty", "--out", tmp_path / "r")
    assert code == 2 and "empty: no manifest.jsonl" in err
    code, _o, err = camcli_run("report", tmp_path / "nope.jsonl", "--out", tmp_path / "r")
    assert code == 3 and "nope.jsonl: no such file or folder" in err
    (tmp_path / "blank.jsonl").write_text("\n")
    code, _o, err = camcli_run("report", tmp_path / "blank.jsonl", "--out", tmp_path / "r")
    assert code == 3 and "no image records and no eval result" in err
    assert not (tmp_path / "r").exists()


def test_cli_eval_only_and_bad_lines(tmp_path, camcli_run):
    run = build_run(tmp_path)
    recs = tmp_path / "some.jsonl"
    recs.write_text(run["boxes"].read_text().splitlines()[0] + "\nnot json\n")
    code, _o, err = camcli_run("report", run["eval"], recs, "--out", tmp_path / "r")
    assert code == 0
    assert "warning: skipped" in err and "some.jsonl line 2: not JSON" in err
    assert "report: 1 image (0 failed)" in err


def test_cli_undecodable_file_name(tmp_path, camcli_run):
    """A path that is not UTF-8 (surrogate escapes in the record) gets its thumbnail and link;
    the page stays valid UTF-8."""
    raw = os.fsencode(tmp_path) + b"/bad\xff.jpg"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(raw.decode("utf-8", "surrogateescape"))
    name = os.fsdecode(raw)
    recs = tmp_path / "r.jsonl"
    rec = {"image": name, "width": 64, "height": 48, "predictions": PRED}
    recs.write_text(json.dumps(rec) + "\n")
    code, _o, err = camcli_run("report", recs, "--out", tmp_path / "rep")
    assert code == 0 and "thumbnails 1 made" in err
    html = (tmp_path / "rep" / "index.html").read_bytes().decode("utf-8")  # strict
    p = _Page()
    p.feed(html)
    (row,) = json.loads(p.scripts[0][1])
    assert row["n"] == name and row["f"] == "../bad%FF.jpg"
    assert (tmp_path / "rep" / row["t"]).is_file()
