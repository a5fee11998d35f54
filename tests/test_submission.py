"""Synset mapping (SPEC section 4 anchors) and ILSVRC / Kaggle submission round-trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from camcli.cam.dtbox import dt_boxes_inclusive, tight_loose_boxes
from camcli.errors import SubmissionError, SynsetError
from camcli.evaluate.submission import (
    read_ilsvrc_submission,
    read_kaggle_submission,
    write_ilsvrc_submission,
    write_kaggle_submission,
)
from camcli.evaluate.synsets import SynsetMap, load_synsets

TENCH, KIT_FOX, SEA_SNAKE = "n01440764", "n02119789", "n01751748"


def _synthetic_wnids() -> list[str]:
    """1000 sorted WNIDs placing the anchors at class indices 0, 65 and 278."""
    below_sea_snake = [f"n015{k:05d}" for k in range(64)]  # indices 1..64
    below_kit_fox = [f"n018{k:05d}" for k in range(212)]  # indices 66..277
    above = [f"n022{k:05d}" for k in range(721)]  # indices 279..999
    wnids = [TENCH, *below_sea_snake, SEA_SNAKE, *below_kit_fox, KIT_FOX, *above]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    return wnids


def _synthetic_ids(wnids: list[str]) -> dict[str, int]:
    """WNID -> ILSVRC2012_ID with the anchors' IDs; the rest shuffled over the other IDs."""
    fixed = {TENCH: 449, KIT_FOX: 1, SEA_SNAKE: 490}
    rest_ids = [i for i in range(1, 1001) if i not in fixed.values()]
    random.Random(0).shuffle(rest_ids)
    rest = [w for w in wnids if w not in fixed]
    return {**fixed, **dict(zip(rest, rest_ids, strict=True))}


def _write_map_clsloc(path: Path, drop: int = 0, extra: str = "") -> Path:
    ids = _synthetic_ids(_synthetic_wnids())
    names = {TENCH: "tench", KIT_FOX: "kit_fox", SEA_SNAKE: "sea_snake"}
    lines = [
        f"{w} {i} {names.get(w, 'class_' + str(i))}"
        for w, i in sorted(ids.items(), key=lambda x: x[1])
    ]
    path.write_text("\n".join(lines[drop:]) + "\n" + extra)
    return path


@pytest.fixture
def clsloc(tmp_path) -> SynsetMap:
    return load_synsets(_write_map_clsloc(tmp_path / "map_clsloc.txt"))


# --------------------------------------------------------------------------- synsets


def test_anchors_from_map_clsloc(clsloc):
    assert clsloc.fmt == "map_clsloc" and len(clsloc) == 1000 and clsloc.has_ilsvrc_ids
    assert clsloc.wnid(0) == TENCH and clsloc.ilsvrc_id(0) == 449
    assert clsloc.index_of_ilsvrc_id(1) == 278 and clsloc.wnid(278) == KIT_FOX
    assert clsloc.index_of_wnid(SEA_SNAKE) == 65 and clsloc.ilsvrc_id(65) == 490
    assert clsloc.index_of_ilsvrc_id(490) == 65
    assert clsloc.names[278] == "kit_fox"
    # a full bijection
    assert sorted(clsloc.ilsvrc_id(i) for i in range(1000)) == list(range(1, 1001))
    assert all(clsloc.index_of_ilsvrc_id(clsloc.ilsvrc_id(i)) == i for i in range(1000))


def test_anchors_from_meta_mat_ignoring_inner_nodes(tmp_path):
    sio = pytest.importorskip("scipy.io")
    ids = _synthetic_ids(_synthetic_wnids())
    inner = {"n00001740": 1001, "n00002137": 1002}  # WordNet inner nodes: IDs above 1000
    rows = sorted({**ids, **inner}.items(), key=lambda x: x[1])
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    arr = np.zeros((len(rows), 1), dtype=dt)
    for k, (w, i) in enumerate(rows):
        arr[k, 0] = (
            np.array([[i]], np.uint16),
            np.array([w]),
            np.array([f"w{i}"]),
            np.array([[0]]),
        )
    path = tmp_path / "meta.mat"
    sio.savemat(str(path), {"synsets": arr})
    m = load_synsets(path)
    assert m.fmt == "meta.mat" and len(m) == 1000
    assert (m.ilsvrc_id(0), m.index_of_ilsvrc_id(1), m.index_of_wnid(SEA_SNAKE)) == (449, 278, 65)
    assert m.ilsvrc_id(65) == 490 and m.names[0] == "w449"


def test_kaggle_mapping_gives_wnids_but_not_ids(tmp_path):
    wnids = _synthetic_wnids()
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("".join(f"{w} name {k}, other name\n" for k, w in enumerate(wnids)))
    m = load_synsets(path)
    assert m.fmt == "loc_synset_mapping" and not m.has_ilsvrc_ids
    assert m.wnid(0) == TENCH and m.index_of_wnid(KIT_FOX) == 278 and m.wnid(65) == SEA_SNAKE
    assert m.names[1] == "name 1, other name"
    with pytest.raises(SynsetError, match="LOC_synset_mapping.*meta.mat") as e:
        m.ilsvrc_id(0)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_wrong_count_duplicates_and_garbage_are_one_line_errors(tmp_path):
    bad = _write_map_clsloc(tmp_path / "short.txt", drop=1)
    with pytest.raises(SynsetError, match="expected 1000 classes, found 999") as e:
        load_synsets(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    dup = _write_map_clsloc(tmp_path / "dup.txt", drop=1, extra=f"{TENCH} 7 again\n")
    with pytest.raises(SynsetError, match=f"WNID {TENCH} appears twice"):
        load_synsets(dup)
    dup_id = _write_map_clsloc(tmp_path / "dupid.txt", drop=1, extra="n09999999 449 x\n")
    with pytest.raises(SynsetError, match="ID 449 appears twice"):
        load_synsets(dup_id)
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(SynsetError, match="not a WNID"):
        load_synsets(tmp_path / "junk.txt")
    with pytest.raises(SynsetError, match="does not exist"):
        load_synsets(tmp_path / "missing.txt")
    small = tmp_path / "small.txt"
    small.write_text("n00000002 2 b\nn00000001 1 a\n")
    assert load_synsets(small, num_classes=2).wnids == ("n00000001", "n00000002")
    with pytest.raises(SynsetError, match="outside"):
        load_synsets(small, num_classes=2).wnid(2)


# --------------------------------------------------------------------------- submissions


def _items_from_maps(clsloc: SynsetMap):
    """Three images (listed out of order, in different folders) with tight/loose guesses."""
    rng = np.random.default_rng(1)
    items, sizes = [], {}
    specs = [
        ("b/ILSVRC2012_val_00000003.JPEG", 40, 70),
        ("a/ILSVRC2012_val_00000001.JPEG", 64, 48),
        ("ILSVRC2012_val_00000002.JPEG", 33, 33),
    ]
    for path, h, w in specs:
        per_class = []
        for _ in range(3):
            m = np.zeros((h, w))
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            m[y0 : y0 + h // 2, x0 : x0 + w // 2] = 0.4
            m[y0 + 2 : y0 + h // 4, x0 + 2 : x0 + w // 4] = 1.0
            per_class.append(dt_boxes_inclusive(m))
        guesses = tight_loose_boxes(per_class)
        classes = [0, 278, 65]
        items.append((path, [(classes[g.class_rank], g.box) for g in guesses if g.box is not None]))
        sizes[Path(path).name] = (h, w)
    return items, sizes


def test_ilsvrc_round_trip_sorted_five_groups_inside_images(tmp_path, clsloc):
    items, sizes = _items_from_maps(clsloc)
    out = tmp_path / "pred.txt"
    assert write_ilsvrc_submission(out, items, clsloc) == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    back = read_ilsvrc_submission(out, [p for p, _ in items])
    assert list(back) == sorted(sizes)  # file-name order, not input order or folder order
    for path, groups in items:
        name = Path(path).name
        got = back[name]
        assert len(got) == 5
        assert got == [(clsloc.ilsvrc_id(c), tuple(b)) for c, b in groups]
        assert [g[0] for g in got] == [449, 449, 1, 1, 490]
        h, w = sizes[name]
        for _, (x0, y0, x1, y1) in got:
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
    # the text itself: integers, groups of five tokens
    assert all(len(ln.split()) == 25 and all(t.isdigit() for t in ln.split()) for ln in lines)


def test_ilsvrc_exact_text_and_images_without_boxes(tmp_path, clsloc):
    items = [
        ("x/img_c.JPEG", []),
        ("img_a.JPEG", [(0, (1, 2, 30, 40)), (278, (0, 0, 5, 5))]),
        ("img_b.JPEG", []),
    ]
    out = tmp_path / "sub" / "pred.txt"
    write_ilsvrc_submission(out, items, clsloc)
    assert out.read_text() == "449 1 2 30 40 1 0 0 5 5\n\n\n"
    back = read_ilsvrc_submission(out, ["img_b.JPEG", "img_a.JPEG", "img_c.JPEG"])
    assert back == {
        "img_a.JPEG": [(449, (1, 2, 30, 40)), (1, (0, 0, 5, 5))],
        "img_b.JPEG": [],
        "img_c.JPEG": [],
    }
    # a reader that lost the trailing empty line is tolerated; a really short file is not
    out.write_text("449 1 2 30 40\n\n")
    assert (
        read_ilsvrc_submission(out, ["img_a.JPEG", "img_b.JPEG", "img_c.JPEG"])["img_c.JPEG"] == []
    )
    with pytest.raises(SubmissionError, match="1 lines for 3 images"):
        out.write_text("449 1 2 30 40\n")
        read_ilsvrc_submission(out, ["img_a.JPEG", "img_b.JPEG", "img_c.JPEG"])
    out.write_text("449 1 2 30\n\n\n")
    with pytest.raises(SubmissionError, match="groups of 5"):
        read_ilsvrc_submission(out, ["img_a.JPEG", "img_b.JPEG", "img_c.JPEG"])


def test_ilsvrc_needs_ids(tmp_path):
    kaggle = SynsetMap.from_records([("n00000001", None, "a")], num_classes=1)
    with pytest.raises(SynsetError, match="no ILSVRC2012_IDs"):
        write_ilsvrc_submission(tmp_path / "p.txt", [("a.jpg", [(0, (0, 0, 1, 1))])], kaggle)
    assert not (tmp_path / "p.txt").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_kaggle_round_trip(tmp_path, clsloc):
    items, _ = _items_from_maps(clsloc)
    items.append(("c/ILSVRC2012_val_00000004.JPEG", []))
    out = tmp_path / "kaggle.csv"
    assert write_kaggle_submission(out, items, clsloc) == 4
    text = out.read_text().splitlines()
    assert text[0] == "ImageId,PredictionString"
    assert [ln.split(",")[0] for ln in text[1:]] == [
        f"ILSVRC2012_val_0000000{k}" for k in (1, 2, 3, 4)
    ]
    assert text[-1] == "ILSVRC2012_val_00000004,"
    back = read_kaggle_submission(out)
    for path, groups in items:
        image_id = Path(path).stem
        assert back[image_id] == [(clsloc.wnid(c), tuple(b)) for c, b in groups]
    assert [w for w, _ in back["ILSVRC2012_val_00000001"]] == [
        TENCH,
        TENCH,
        KIT_FOX,
        KIT_FOX,
        SEA_SNAKE,
    ]
    assert text[1].split(",")[1].split()[:5] == [
        TENCH,
        *map(str, back["ILSVRC2012_val_00000001"][0][1]),
    ]


def test_kaggle_reader_rejects_bad_files(tmp_path):
    p = tmp_path / "k.csv"
    p.write_text("id,pred\n")
    with pytest.raises(SubmissionError, match="header"):
        read_kaggle_submission(p)
    p.write_text("ImageId,PredictionString\na,n01440764 1 2 3 4\na,\n")
    with pytest.raises(SubmissionError, match="appears twice"):
        read_kaggle_submission(p)
    p.write_text("ImageId,PredictionString\na,449 1 2 3 4\n")
    with pytest.raises(SubmissionError, match="not a WNID"):
        read_kaggle_submission(p)


def test_writer_validation_keeps_old_file(tmp_path, clsloc):
    out = tmp_path / "out" / "pred.txt"
    out.parent.mkdir()
    out.write_text("old\n")
    six = [(0, (0, 0, 1, 1))] * 6
    with pytest.raises(SubmissionError, match="at most 5"):
        write_ilsvrc_submission(out, [("a.jpg", six)], clsloc)
    with pytest.raises(SubmissionError, match="share the file name"):
        write_kaggle_submission(out, [("x/a.jpg", []), ("y/a.jpg", [])], clsloc)
    with pytest.raises(SubmissionError, match="x_min <= x_max"):
        write_ilsvrc_submission(out, [("a.jpg", [(0, (5, 0, 1, 1))])], clsloc)
    with pytest.raises(SubmissionError, match="4 integers"):
        write_ilsvrc_submission(out, [("a.jpg", [(0, (0.5, 0, 1, 1))])], clsloc)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.txt"]
    # numpy integer boxes and class indices are fine
    write_ilsvrc_submission(out, [("a.jpg", [(np.int64(65), np.array([1, 2, 3, 4]))])], clsloc)
    assert out.read_text() == "490 1 2 3 4\n"


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, clsloc, monkeypatch):
    out = tmp_path / "out" / "pred.csv"
    out.parent.mkdir()
    out.write_text("old\n")

    def boom(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr("camcli.atomic.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_kaggle_submission(out, [("a.jpg", [(0, (0, 0, 1, 1))])], clsloc)
    assert out.read_text() == "old\n"
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]
