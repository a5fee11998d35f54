"""Acceptance tests of `camcli bbox` (issue 4): rules, records, --from-maps, submissions, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from camcli.cam import dtbox
from conftest import CLI_CORRUPT, CLI_IMAGES, full_maps, records, run_main

pytestmark = pytest.mark.usefixtures("cli_one_thread")

GOOD = [rel for rel, _ in CLI_IMAGES]
SIZES = dict(CLI_IMAGES)  # rel -> (H, W)
WNIDS = [f"n0000000{i}" for i in range(10)]  # sorted: class index i <-> WNIDS[i]
IDS = [4, 9, 1, 7, 10, 2, 6, 3, 8, 5]  # ILSVRC ID of class index i (a permutation of 1..10)
ENTRY_KEYS = {"rank", "class_index", "label", "score", "box", "kind"}


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def ids_for(n: int) -> list[int]:
    """ILSVRC IDs of the first n classes: IDS[:n] renumbered to 1..n (IDS for n = 10)."""
    order = sorted(IDS[:n])
    return [order.index(d) + 1 for d in IDS[:n]]


def write_map_clsloc(path: Path, n: int = 10) -> Path:
    """A devkit-style map_clsloc.txt (``WNID ID name``), listed in ID order like the devkit."""
    rows = sorted((d, WNIDS[i]) for i, d in enumerate(ids_for(n)))
    path.write_text("".join(f"{w} {d} name_{d}\n" for d, w in rows))
    return path


def write_loc_mapping(path: Path) -> Path:
    """A Kaggle-style LOC_synset_mapping.txt (``WNID name``)."""
    path.write_text("".join(f"{w} thing {i}, other\n" for i, w in enumerate(WNIDS)))
    return path


def size_of(rec: dict) -> tuple[int, int]:
    return rec["width"], rec["height"]


def check_schema(rec: dict, kinds: set[str]) -> None:
    """A bbox record: boxes refer to the predictions, lie inside the image, kinds as the rule."""
    assert set(rec) == {"image", "width", "height", "predictions", "boxes"}
    w, h = size_of(rec)
    ranks = [e["rank"] for e in rec["boxes"]]
    assert ranks == sorted(ranks) and set(ranks) <= set(range(1, len(rec["predictions"]) + 1))
    for e in rec["boxes"]:
        assert set(e) == ENTRY_KEYS | ({"reason"} if e["box"] is None else set())
        p = rec["predictions"][e["rank"] - 1]
        assert (e["class_index"], e["label"], e["score"]) == (
            p["class_index"],
            p["label"],
            p["score"],
        )
        assert e["kind"] in kinds
        if e["box"] is not None:
            x0, y0, x1, y1 = e["box"]
            assert all(isinstance(v, int) for v in e["box"])
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1


# --- runs shared by several tests --------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cli_images, cli_ckpt):
    """Maps from `cam --save-maps`; bbox on the images and on the maps, plain and tight/loose."""
    t = tmp_path_factory.mktemp("bbox")
    maps = t / "maps"
    w = ("--weights", cli_ckpt)
    q = "--quiet"
    assert run_main("cam", cli_images, "--out", maps, *w, "--save-maps", "--no-overlay", q) == 1
    syn = write_map_clsloc(t / "map_clsloc.txt")
    loc = write_loc_mapping(t / "LOC_synset_mapping.txt")
    codes = {
        "img": run_main("bbox", cli_images, *w, "--output", t / "img.jsonl", "--draw", t / "draw",
                        q),
        "map": run_main("bbox", "--from-maps", maps, "--output", t / "map.jsonl", q),
        "img_tl": run_main("bbox", cli_images, *w, "--tight-loose-heuristic", "--output",
                           t / "img_tl.jsonl", "--submission", t / "sub.txt", "--synsets", syn, q),
        "map_tl": run_main("bbox", "--from-maps", maps, "--tight-loose-heuristic", "--output",
                           t / "map_tl.jsonl", "--submission", t / "sub.csv",
                           "--submission-format", "kaggle", "--synsets", loc, q),
    }  # fmt: skip
    assert codes == {"img": 1, "map": 0, "img_tl": 1, "map_tl": 0}  # 1: the corrupt image
    return t


def good_records(path: Path) -> list[dict]:
    return [r for r in records(path) if "error" not in r]


def test_records_schema_and_paper_boxes(runs, cli_images):
    recs = records(runs / "img.jsonl")
    assert [r["image"] for r in recs] == sorted(
        (str(cli_images / x) for x in [*GOOD, CLI_CORRUPT]),
        key=lambda p: Path(p).relative_to(cli_images).as_posix(),
    )
    bad = [r for r in recs if "error" in r]
    assert bad == [{"image": str(cli_images / CLI_CORRUPT), "error": bad[0]["error"]}]
    maps_dir = runs / "maps"
    for r in recs:
        if "error" in r:
            continue
        rel = Path(r["image"]).relative_to(cli_images).as_posix()
        h, w = SIZES[rel]
        assert size_of(r) == (w, h)
        check_schema(r, {"largest"})
        assert [e["rank"] for e in r["boxes"]] == [1, 2, 3, 4, 5]
        # the paper rule from scratch on the same maps: largest 8-connected component > 0.2 max
        cams = full_maps(maps_dir / f"{rel.rsplit('.', 1)[0]}.npz")
        assert [e["box"] for e in r["boxes"]] == [components(m, 0.2)[0] for m in cams]


def components(m: np.ndarray, tau: float) -> list[list[int]]:
    """Boxes of the 8-connected components of ``m > tau * max``, by size then raster order."""
    lab, n = ndimage.label(m > np.float32(tau) * m.max(), structure=np.ones((3, 3)))
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        size = int((lab == k).sum())
        first = int(np.flatnonzero(lab.ravel() == k)[0])
        out.append((-size, first, [sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1]))
    return [b for *_, b in sorted(out)]


def test_from_maps_gives_the_same_records_as_the_images(runs):
    for a, b in (("img.jsonl", "map.jsonl"), ("img_tl.jsonl", "map_tl.jsonl")):
        assert good_records(runs / a) == records(runs / b)


def test_box_rule_all_and_threshold(runs, cli_images, cli_ckpt):
    out = runs / "all.jsonl"
    code = run_main("bbox", cli_images, "--weights", cli_ckpt, "--box-rule", "all",
                    "--threshold", 0.5, "--top-k", 2, "--output", out, "--quiet")  # fmt: skip
    assert code == 1
    recs = good_records(out)
    assert len(recs) == len(GOOD)
    for r in recs:
        check_schema(r, {"component"})
        rel = Path(r["image"]).relative_to(cli_images).as_posix()
        cams = full_maps(runs / "maps" / f"{rel.rsplit('.', 1)[0]}.npz")[:2]
        want = [(rank, b) for rank, m in enumerate(cams, 1) for b in components(m, 0.5)]
        assert [(e["rank"], e["box"]) for e in r["boxes"]] == want


def test_box_rule_dt_box(runs, cli_images, cli_ckpt):
    out = runs / "dt.jsonl"
    code = run_main("bbox", cli_images, "--weights", cli_ckpt, "--box-rule", "dt-box",
                    "--top-k", 2, "--output", out, "--quiet")  # fmt: skip
    assert code == 1
    for r in good_records(out):
        check_schema(r, {"loose", "tight"})
        rel = Path(r["image"]).relative_to(cli_images).as_posix()
        cams = full_maps(runs / "maps" / f"{rel.rsplit('.', 1)[0]}.npz")[:2]
        want = []
        for rank, m in enumerate(cams, 1):
            bx = [list(b) for b in dtbox.dt_boxes_inclusive(m)]
            want += [(rank, "loose", bx[0]), (rank, "tight", bx[min(1, len(bx) - 1)])]
        assert [(e["rank"], e["kind"], e["box"]) for e in r["boxes"]] == want


def test_tight_loose_records(runs):
    for r in good_records(runs / "img_tl.jsonl"):
        check_schema(r, {"loose", "tight"})
        assert [(e["rank"], e["kind"]) for e in r["boxes"]] == [
            (1, "loose"), (1, "tight"), (2, "loose"), (2, "tight"), (3, "loose"),
        ]  # fmt: skip
        assert all(e["box"] is not None for e in r["boxes"])


def _groups(tokens: list[str]) -> list[tuple[str, list[int]]]:
    assert len(tokens) % 5 == 0
    return [(tokens[i], [int(v) for v in tokens[i + 1 : i + 5]]) for i in range(0, len(tokens), 5)]


def test_ilsvrc_submission(runs, cli_images):
    from camcli.evaluate.synsets import load_synsets

    m = load_synsets(runs / "map_clsloc.txt", num_classes=10)
    assert [m.ilsvrc_id(i) for i in range(10)] == IDS and list(m.wnids) == WNIDS
    lines = (runs / "sub.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(GOOD) + 1  # the corrupt image: empty line
    by_name = {Path(r["image"]).name: r for r in records(runs / "img_tl.jsonl")}
    names = sorted(by_name)
    assert names == sorted(Path(x).name for x in [*GOOD, CLI_CORRUPT])
    for name, line in zip(names, lines, strict=False):
        r = by_name[name]
        if "error" in r:
            assert line == ""
            continue
        groups = _groups(line.split())
        want = [(str(IDS[e["class_index"]]), e["box"]) for e in r["boxes"] if e["box"]]
        assert groups == want and len(groups) == 5
        w, h = size_of(r)
        for _, (x0, y0, x1, y1) in groups:
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1


def test_kaggle_submission_from_maps(runs):
    rows = (runs / "sub.csv").read_text().splitlines()
    assert rows[0] == "ImageId,PredictionString"
    by_id = {Path(r["image"]).stem: r for r in records(runs / "map_tl.jsonl")}
    assert [row.split(",")[0] for row in rows[1:]] == sorted(by_id)
    for row in rows[1:]:
        image_id, pred = row.split(",")
        r = by_id[image_id]
        want = [(WNIDS[e["class_index"]], e["box"]) for e in r["boxes"] if e["box"]]
        assert _groups(pred.split()) == want and len(want) == 5


def test_draw_writes_boxes_at_the_original_size(runs, cli_images):
    draw = runs / "draw"
    assert tree(draw) == {"manifest.jsonl", "run.json"} | {
        f"{x.rsplit('.', 1)[0]}/boxes.jpg" for x in GOOD
    }
    assert json.loads((draw / "run.json").read_text())["command"] == "bbox --draw"
    for rel in GOOD:
        with Image.open(draw / rel.rsplit(".", 1)[0] / "boxes.jpg") as im:
            got = np.asarray(im.convert("RGB"), dtype=np.int16)
        with Image.open(cli_images / rel) as im:
            src = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert got.shape == src.shape == (*SIZES[rel], 3)
        assert np.abs(got - src).mean() > 3  # something was drawn


# --- submission usage errors: exit 2 before any image is processed ----------------------------


@pytest.fixture
def no_images(monkeypatch):
    """Fail the test if any image gets decoded."""
    import camcli.data.loader

    def boom(*a, **k):
        raise AssertionError("an image was processed")

    monkeypatch.setattr(camcli.data.loader, "iter_batches", boom)


@pytest.mark.parametrize("case", ["no-synsets", "9-classes", "ilsvrc-without-ids"])
def test_submission_usage_errors(case, tmp_path, cli_images, cli_ckpt, capsys, no_images):
    syn = {
        "no-synsets": [],
        "9-classes": ["--synsets", write_map_clsloc(tmp_path / "map_clsloc.txt", n=9)],
        "ilsvrc-without-ids": ["--synsets", write_loc_mapping(tmp_path / "LOC.txt")],
    }[case]
    out = tmp_path / "o"
    code = run_main("bbox", cli_images, "--weights", cli_ckpt, "--submission", out / "sub.txt",
                    *syn, "--output", out / "r.jsonl", "--draw", out / "draw")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_from_maps_synsets_checked_against_the_maps_class_count(runs, tmp_path, capsys):
    syn = write_map_clsloc(tmp_path / "map_clsloc.txt", n=9)
    code = run_main("bbox", "--from-maps", runs / "maps", "--submission", tmp_path / "s.txt",
                    "--synsets", syn, "--output", tmp_path / "r.jsonl")  # fmt: skip
    assert code == 2 and "expected 10 classes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map_clsloc.txt"]


# --- hand-made maps: exact boxes, no box, maps of another tool ----------------------------------


@pytest.fixture
def hand_maps(tmp_path) -> Path:
    """blocks.npz: only cams [2, 20, 30] and class_indices; map 0 has a block of ones at rows
    3..7, cols 10..19 and a 0.5 block at rows 12..13, cols 2..4; map 1 is all zeros."""
    m = np.zeros((2, 20, 30), np.float32)
    m[0, 3:8, 10:20] = 1
    m[0, 12:14, 2:5] = 0.5
    d = tmp_path / "hand"
    d.mkdir()
    np.savez(d / "blocks.npz", cams=m, class_indices=np.array([4, 7], np.int64))
    return d


def _bbox_maps(tmp_path: Path, hand: Path, *args) -> dict:
    out = tmp_path / "r.jsonl"
    assert run_main("bbox", "--from-maps", hand, "--output", out, "--quiet", *args) == 0
    (rec,) = records(out)
    return rec


def _entry(rank, cls, box, kind):
    return {"rank": rank, "class_index": cls, "label": f"class_{cls}", "score": None,
            "box": box, "kind": kind}  # fmt: skip


def test_hand_maps_paper_rule_exact_box_and_no_box(tmp_path, hand_maps):
    rec = _bbox_maps(tmp_path, hand_maps)
    reason = rec["boxes"][1].pop("reason")
    assert rec == {
        "image": str(hand_maps / "blocks.npz"),
        "width": 30,
        "height": 20,
        "predictions": [
            {"class_index": 4, "label": "class_4", "score": None},
            {"class_index": 7, "label": "class_7", "score": None},
        ],
        "boxes": [_entry(1, 4, [10, 3, 19, 7], "largest"), _entry(2, 7, None, "largest")],
    }
    assert "0.2" in reason
    rec = _bbox_maps(tmp_path, hand_maps, "--threshold", 1.0)  # nothing is > 1 x max
    assert [e["box"] for e in rec["boxes"]] == [None, None]
    assert all("reason" in e for e in rec["boxes"])


def test_hand_maps_all_rule_and_threshold(tmp_path, hand_maps):
    rec = _bbox_maps(tmp_path, hand_maps, "--box-rule", "all")
    assert [(e["rank"], e["box"], e["kind"]) for e in rec["boxes"]] == [
        (1, [10, 3, 19, 7], "component"), (1, [2, 12, 4, 13], "component"),
        (2, None, "component"),
    ]  # fmt: skip
    rec = _bbox_maps(tmp_path, hand_maps, "--box-rule", "all", "--threshold", 0.6)
    assert [e["box"] for e in rec["boxes"]] == [[10, 3, 19, 7], None]
    rec = _bbox_maps(tmp_path, hand_maps, "--box-rule", "all", "--top-k", 1)
    assert [e["box"] for e in rec["boxes"]] == [[10, 3, 19, 7], [2, 12, 4, 13]]
    assert len(rec["predictions"]) == 1


def test_hand_maps_dt_box_and_tight_loose_submission(tmp_path, hand_maps):
    rec = _bbox_maps(tmp_path, hand_maps, "--box-rule", "dt-box")
    # dt-box: (10, 3, 10, 5) and (2, 12, 3, 2) at each threshold; the C loop's skip keeps a
    # second copy of the large box, which becomes the tight box
    assert [(e["rank"], e["kind"], e["box"]) for e in rec["boxes"]] == [
        (1, "loose", [10, 3, 19, 7]), (1, "tight", [10, 3, 19, 7]),
        (2, "loose", None),
    ]  # fmt: skip
    loc = write_loc_mapping(tmp_path / "LOC_synset_mapping.txt")
    rec = _bbox_maps(tmp_path, hand_maps, "--tight-loose-heuristic", "--submission",
                     tmp_path / "s.csv", "--submission-format", "kaggle",
                     "--synsets", loc)  # fmt: skip
    assert [(e["rank"], e["kind"], e["box"]) for e in rec["boxes"]] == [
        (1, "loose", [10, 3, 19, 7]), (1, "tight", [10, 3, 19, 7]),
        (2, "loose", None), (2, "tight", None),
    ]  # fmt: skip
    assert (tmp_path / "s.csv").read_text() == (
        "ImageId,PredictionString\nblocks,n00000004 10 3 19 7 n00000004 10 3 19 7\n"
    )
    # no run.json beside these maps: any class count of the mapping is accepted
    syn = write_map_clsloc(tmp_path / "map_clsloc.txt", n=8)
    _bbox_maps(tmp_path, hand_maps, "--submission", tmp_path / "s.txt", "--synsets", syn)
    assert (tmp_path / "s.txt").read_text() == f"{ids_for(8)[4]} 10 3 19 7\n"


# --- --output FILE --resume ----------------------------------------------------------------


def test_resume_skips_done_images_and_ends_equal(runs, tmp_path, cli_images, cli_ckpt,
                                                 monkeypatch):  # fmt: skip
    import camcli.api.cams

    full = (runs / "img.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    target = tmp_path / "res.jsonl"
    # what a killed run leaves: complete lines for a.jpg and b.png, then a line cut short
    (tmp_path / ".res.jsonl.partial").write_text(lines[0] + lines[1] + lines[3][:25])
    seen: list[str] = []
    real = camcli.api.cams.iter_cams

    def spy(session, items, *a, **k):
        seen.extend(it.path for it in items)
        return real(session, items, *a, **k)

    monkeypatch.setattr(camcli.api.cams, "iter_cams", spy)
    code = run_main("bbox", cli_images, "--weights", cli_ckpt, "--output", target, "--resume",
                    "--quiet")  # fmt: skip
    assert code == 1
    done = {str(cli_images / "a.jpg"), str(cli_images / "b.png")}
    assert set(seen) == {str(cli_images / x) for x in [*GOOD, CLI_CORRUPT]} - done
    assert target.read_text() == full
    assert sorted(p.name for p in tmp_path.iterdir()) == [".res.jsonl.run", "res.jsonl"]


def test_submission_with_two_images_of_one_file_name_is_a_usage_error(tmp_path, hand_maps, capsys):
    (hand_maps / "sub").mkdir()
    (hand_maps / "sub" / "blocks.npz").write_bytes((hand_maps / "blocks.npz").read_bytes())
    loc = write_loc_mapping(tmp_path / "LOC.txt")
    code = run_main("bbox", "--from-maps", hand_maps, "--submission", tmp_path / "s.csv",
                    "--submission-format", "kaggle", "--synsets", loc, "--quiet")  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "blocks.npz" in err
    assert not (tmp_path / "s.csv").exists()


def test_profile_reports_the_box_stage(camcli_run, cli_ckpt, cli_images, tmp_path):
    # --profile: every stage of the main thread is named; box extraction is one of them
    code, _, err = camcli_run(
        "bbox", cli_images, "--weights", cli_ckpt, "--output", tmp_path / "b.jsonl",
        "--profile", "--quiet",
    )  # fmt: skip
    stages = [line.split()[0] for line in err.splitlines() if line.startswith("  ")]
    assert code in (0, 1) and "profile:" in err
    assert {"forward", "cam", "boxes", "other"} <= set(stages)


def test_from_maps_truncated_and_misshapen_files_fail_alone(tmp_path, hand_maps, capsys):
    """The one map-file reader (camcli.data.mapfiles) behind bbox --from-maps: a cut .npz and
    one whose cams do not match its class_indices each fail their own record (exit 1) with a
    one-line reason; the good file still gets its boxes."""
    good = (hand_maps / "blocks.npz").read_bytes()
    (hand_maps / "cut.npz").write_bytes(good[: len(good) // 2])
    np.savez(hand_maps / "shape.npz", cams=np.zeros((3, 4, 5), np.float32),
             class_indices=np.array([1, 2], np.int64))  # fmt: skip
    out = tmp_path / "r.jsonl"
    assert run_main("bbox", "--from-maps", hand_maps, "--output", out, "--quiet") == 1
    by_name = {Path(r["image"]).name: r for r in records(out)}
    assert by_name["blocks.npz"]["boxes"][0]["box"] == [10, 3, 19, 7]
    assert by_name["cut.npz"]["error"] == "cannot read map file (not a .npz (zip) file)"
    assert by_name["shape.npz"]["error"] == (
        "cannot read map file (cams has shape [3, 4, 5], expected [k, H, W] with k = 2 "
        "class_indices)"
    )


def test_from_maps_draw_manifest_is_in_map_file_order(tmp_path, hand_maps):
    """bbox --from-maps --draw: the drawings' manifest lists the map files in sorted order (it
    followed the order the writer threads finished in)."""
    m = np.zeros((1, 40, 60), np.float32)
    m[0, 5:20, 10:30] = 1
    names = [f"m{i:02d}" for i in range(12)]
    (hand_maps / "blocks.npz").unlink()
    for n in names:
        Image.new("RGB", (60, 40), (90, 120, 30)).save(tmp_path / f"{n}.jpg")
        np.savez(hand_maps / f"{n}.npz", cams=m, class_indices=np.array([3], np.int64),
                 image=np.array(str(tmp_path / f"{n}.jpg")))  # fmt: skip
    draw = tmp_path / "drawn"
    args = ("bbox", "--from-maps", hand_maps, "--output", tmp_path / "r.jsonl", "--quiet")
    assert run_main(*args, "--draw", draw) == 0
    keys = [json.loads(x)["key"] for x in (draw / "manifest.jsonl").read_text().splitlines()]
    assert keys == names
