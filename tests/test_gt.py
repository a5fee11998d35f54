"""Ground-truth readers, label mapping, matching, and scoring records and maps (camcli.evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from camcli.errors import GtError, NoInputError
from camcli.evaluate import mapjobs
from camcli.evaluate.blacklist import read_blacklist
from camcli.evaluate.groundtruth import read_ground_truth
from camcli.evaluate.labels import LabelMap, load_label_map
from camcli.evaluate.maps import evaluate_maps
from camcli.evaluate.scoring import evaluate_records
from camcli.evaluate.truth import GroundTruth, GtImage

XML = """<annotation>
  <folder>val</folder>
  <filename>{name}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>
"""
OBJ = (
    "<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
    "<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
)


def write_xml(folder: Path, name: str, w: int, h: int, objects: list[tuple[str, tuple]]) -> None:
    objs = "\n".join(OBJ.format(label=lab, b=b) for lab, b in objects)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.xml").write_text(XML.format(name=name, w=w, h=h, objects=objs))


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def test_xml_folder_reader(tmp_path):
    write_xml(tmp_path, "ILSVRC2012_val_00000001", 500, 375, [("n01751748", (111, 108, 441, 193))])
    write_xml(
        tmp_path / "sub",
        "ILSVRC2012_val_00000002",
        500,
        333,
        [("n09193705", (1, 2, 30, 40)), ("n09193705", (50, 60, 70, 80.4))],
    )
    gt = read_ground_truth(tmp_path)
    assert [im.name for im in gt.images] == [
        "ILSVRC2012_val_00000001",
        "sub/ILSVRC2012_val_00000002",
    ]
    a, b = gt.images
    assert (a.width, a.height) == (500, 375)
    assert a.labels == [("n01751748",)]
    assert a.boxes == [(("n01751748",), (111, 108, 441, 193))]
    assert b.labels == [("n09193705",)]  # one class, two boxes
    assert [box for _, box in b.boxes] == [(1, 2, 30, 40), (50, 60, 70, 80)]  # 80.4 rounded
    # A single file works too.
    one = read_ground_truth(tmp_path / "ILSVRC2012_val_00000001.xml")
    assert one.images[0].name == "ILSVRC2012_val_00000001"


def test_xml_reader_errors(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(GtError, match="not readable XML"):
        read_ground_truth(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GtError, match="no .xml files"):
        read_ground_truth(empty)


def test_kaggle_solution_reader(tmp_path):
    p = tmp_path / "LOC_val_solution.csv"
    p.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n"
        "ILSVRC2012_val_00024576,n03584829 17 0 372 333 \n"
    )
    gt = read_ground_truth(p)
    assert [im.name for im in gt.images] == ["ILSVRC2012_val_00008726", "ILSVRC2012_val_00024576"]
    assert gt.images[0].boxes == [
        (("n02119789",), (255, 142, 454, 329)),
        (("n02119789",), (44, 21, 322, 295)),
    ]
    p.write_text("ImageId,PredictionString\nx,n02119789 1 2 3\n")
    with pytest.raises(GtError, match="line 2"):
        read_ground_truth(p)


def test_box_csv_reader_rows_per_box_and_fallback_labels(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text(
        "split,wnid,class,path,width,height,xmin,ymin,xmax,ymax\n"
        "val,n03447447,gondola,val/gondola/val_1.JPEG,64,64,20,0,54,63\n"
        "val,n03447447,gondola,val/gondola/val_1.JPEG,64,64,1,1,5,5\n"
        "val,n07615774,ice_cream,val/ice_cream/val_2.JPEG,64,48,,,,\n"
    )
    gt = read_ground_truth(p)
    a, b = gt.images
    assert a.name == "val/gondola/val_1.JPEG"
    # 'class' is preferred over 'wnid' (which stays as a fallback).
    assert a.labels == [("gondola", "n03447447")]
    assert [box for _, box in a.boxes] == [(20, 0, 54, 63), (1, 1, 5, 5)]
    assert (b.width, b.height) == (64, 48)
    assert b.boxes == []  # a label without a box
    p.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,cat,5,5,1,1\n")
    with pytest.raises(GtError, match="x_max < x_min"):
        read_ground_truth(p)
    p.write_text("file_name,whatever\na.jpg,cat\n")
    with pytest.raises(GtError, match="image column"):
        read_ground_truth(p)


def test_jsonl_reader(tmp_path):
    p = tmp_path / "gt.jsonl"
    lines = [
        {"image": "a.jpg", "label": 3, "boxes": [[0, 0, 9, 9], [20, 20, 29, 29]], "mask": "a.png"},
        {"image": "b.jpg", "labels": ["dog"], "boxes": [{"box": [1, 1, 2, 2], "label": "cat"}]},
        {"image": "c.jpg", "label": "cat"},
    ]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    gt = read_ground_truth(p)
    a, b, c = gt.images
    assert a.labels == [("3",)] and [bx for _, bx in a.boxes] == [(0, 0, 9, 9), (20, 20, 29, 29)]
    assert a.masks == [str(tmp_path / "a.png")]
    assert b.labels == [("dog",), ("cat",)] and b.boxes == [(("cat",), (1, 1, 2, 2))]
    assert c.boxes == []
    p.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(GtError, match='no "label"'):
        read_ground_truth(p)


def test_missing_gt_path(tmp_path):
    with pytest.raises(GtError, match="no such file") as e:
        read_ground_truth(tmp_path / "nope.csv")
    assert e.value.code == 3


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def test_label_map_wnids_names_indices():
    lm = LabelMap(
        ["tench, Tinca tinca", "great white shark", "crane", "crane"],
        wnids=["n01440764", "n01491361", "n02012849", "n03126707"],
        ilsvrc_ids=[449, 391, 900, 1],
    )
    assert lm.index("n01491361") == 1
    assert lm.index("2") == 2 and lm.index(3) == 3
    assert lm.index("Great_White_Shark") == 1  # case, underscores
    assert lm.index("tench") == 0  # the first comma part of a synset name
    assert lm.index_of_ilsvrc_id(1) == 3
    with pytest.raises(KeyError, match="several classes"):
        lm.index("crane")
    with pytest.raises(KeyError, match="outside"):
        lm.index("4")
    with pytest.raises(KeyError, match="not in"):
        lm.index("n99999999")
    with pytest.raises(KeyError, match="not a class"):
        lm.index("zebra")
    # Fallbacks: the second alternative maps when the first does not.
    assert lm.index(("zebra", "n01440764")) == 0


def test_label_map_without_synsets_explains_wnids():
    lm = LabelMap(["a", "b"])
    with pytest.raises(KeyError, match="--synsets"):
        lm.index("n01440764")
    with pytest.raises(KeyError, match="map_clsloc"):
        lm.index_of_ilsvrc_id(3)


def test_inferred_label_map_counts_unknown_labels_as_new_classes():
    gt = GroundTruth([GtImage("a", [("cat",)]), GtImage("b", [("okapi",)])])
    lm = LabelMap(explicit=False)
    lm.add_names([(0, "cat"), (1, "dog")])
    targets, unknown = gt.targets(lm)
    assert targets[0].classes == (0,)
    assert targets[1].classes[0] < 0
    assert unknown == ["okapi"]
    with pytest.raises(GtError, match="okapi"):
        gt.targets(LabelMap(["cat", "dog"]))
    # WNIDs cannot be guessed from the predictions' names: an error, not a silent 100 % error.
    wn = GroundTruth([GtImage("a", [("n01440764",)])])
    with pytest.raises(GtError, match="--synsets"):
        wn.targets(lm)
    # ... unless another column of the row maps.
    assert GroundTruth([GtImage("a", [("n01440764", "dog")])]).targets(lm)[0][0].classes == (1,)


def test_load_label_map_categories(tmp_path):
    p = tmp_path / "cats.txt"
    p.write_text("cat\ndog\n\n")
    lm = load_label_map(categories=str(p))
    assert lm.names == ["cat", "dog"] and lm.explicit
    inet = load_label_map(categories="imagenet1k")
    assert inet.index("goldfish") == 1
    assert load_label_map() is None
    with pytest.raises(GtError, match="neither a file"):
        load_label_map(categories="no-such-set")


# --------------------------------------------------------------------------------------------
# Matching and blacklist
# --------------------------------------------------------------------------------------------


def test_match_by_stem_then_trailing_folders():
    gt = GroundTruth(
        [
            GtImage("ILSVRC2012_val_00000001", [("a",)]),
            GtImage("train/cat/x.jpg", [("a",)]),
            GtImage("train/dog/x.jpg", [("a",)]),
            GtImage("p/q/y.jpg", [("a",)]),
            GtImage("r/q/y.jpg", [("a",)]),
        ]
    )
    assert gt.match("/data/val/ILSVRC2012_val_00000001.JPEG") == 0
    assert gt.match("/data/train/dog/x.png") == 2
    assert gt.match("cat/x.jpg") == 1
    assert gt.match("x.jpg") is None  # two candidates, nothing to tell them apart
    assert gt.match("/z/q/y.jpg") is None  # tie on the last folder
    assert gt.match("/r/q/y.jpg") == 4
    assert gt.match("nothing.jpg") is None
    assert gt.match("C:\\data\\train\\cat\\x.jpg") == 1  # Windows separators


def test_blacklist_numbers_and_names(tmp_path):
    gt = GroundTruth(
        [GtImage(f"ILSVRC2012_val_{i:08d}", [("a",)]) for i in (1, 2, 36, 50)]
        + [GtImage("other", [("a",)])]
    )
    bl = tmp_path / "bl.txt"
    bl.write_text("36\n50\n99999\nother\n")
    assert read_blacklist(bl, gt) == [False, False, True, True, True]
    bl.write_text("nothing\n77777\n")
    with pytest.raises(GtError, match="none of its 2 entries"):
        read_blacklist(bl, gt)
    # Names without numbers: N is the N-th image in name order.
    gt2 = GroundTruth([GtImage("b", [("a",)]), GtImage("a", [("a",)])])
    bl.write_text("1\n")
    assert read_blacklist(bl, gt2) == [False, True]


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def rec(image, classes, boxes=None, gt_known=None, names=("cat", "dog", "fox")):
    r = {
        "image": image,
        "width": 100,
        "height": 100,
        "predictions": [
            {"class_index": c, "label": names[c], "score": 0.5 / (k + 1)}
            for k, c in enumerate(classes)
        ],
    }
    if boxes is not None:
        r["boxes"] = [
            {
                "rank": k + 1,
                "class_index": c,
                "label": names[c],
                "score": 0.1,
                "box": list(b) if b is not None else None,
                "kind": "largest",
                **({"reason": "empty mask"} if b is None else {}),
            }
            for k, (c, b) in enumerate(boxes)
        ]
    if gt_known is not None:
        r["gt_known"] = {"class_index": gt_known[0], "box": list(gt_known[1])}
    return r


def small_gt():
    return GroundTruth(
        [
            GtImage(
                "imgs/a.jpg", [("cat",)], [(("cat",), (0, 0, 9, 9)), (("cat",), (20, 20, 29, 29))]
            ),
            GtImage("imgs/b.jpg", [("dog",)], [(("dog",), (5, 5, 14, 14))]),
            GtImage("imgs/c.jpg", [("dog",)], [(("dog",), (0, 0, 4, 4))]),
            GtImage("imgs/d.jpg", [("fox",)], [(("fox",), (0, 0, 4, 4))]),
        ],
        "gt",
    )


def small_records():
    return [
        # a: right class, the second GT box -> right
        rec("/x/imgs/a.jpg", [0, 1], [(0, (20, 20, 29, 29)), (1, (0, 0, 3, 3))], (0, (0, 0, 9, 9))),
        # b: dog ranked second; its box right -> top-1 wrong, top-2 right
        rec("/x/imgs/b.jpg", [0, 1], [(0, (5, 5, 14, 14)), (1, (5, 5, 14, 14))], (1, (0, 0, 1, 1))),
        # c: an error record -> wrong
        {"image": "/x/imgs/c.jpg", "error": "cannot decode image"},
        # d: missing; z: matches nothing
        rec("/x/imgs/z.jpg", [2], [(2, None)]),
    ]


def test_evaluate_records_exact():
    r = evaluate_records(small_records(), small_gt())
    assert r["n_images"] == 4 and r["n_gt_images"] == 4
    assert r["n_missing"] == 1 and r["missing"] == ["imgs/d.jpg"]
    assert r["n_failed"] == 1 and r["failed"] == [
        {"image": "/x/imgs/c.jpg", "error": "cannot decode image"}
    ]
    assert r["unmatched"] == ["/x/imgs/z.jpg"]
    assert r["top1_cls_error"] == 0.75
    assert r["top1_loc_error"] == 0.75
    assert r["gt_known_loc"] == 0.25
    assert "top5_cls_error" not in r  # two classes ranked at most
    assert list(r)[:3] == ["n_images", "n_gt_images", "n_missing"]


def test_evaluate_records_blacklist_and_subset(tmp_path):
    flags = [False, True, False, False]  # b blacklisted: out of localization only
    r = evaluate_records(small_records(), small_gt(), blacklist=flags)
    assert r["top1_cls_error"] == 0.75
    assert r["n_loc_images"] == 3 and r["n_blacklisted"] == 1
    assert r["top1_loc_error"] == pytest.approx(2 / 3)
    # --subset: d (no record at all) leaves the denominators; c (failed) stays in.
    s = evaluate_records(small_records(), small_gt(), subset=True)
    assert s["n_images"] == 3 and s["n_missing"] == 1 and s["n_failed"] == 1
    assert s["top1_cls_error"] == pytest.approx(2 / 3)
    assert s["missing"] == ["imgs/d.jpg"]
    # A blacklist file of names.
    bl = tmp_path / "bl.txt"
    bl.write_text("b\n")
    r2 = evaluate_records(small_records(), small_gt(), blacklist=str(bl))
    assert r2["n_blacklisted"] == 1


def test_evaluate_records_duplicates_and_empty_predictions():
    recs = small_records()[:2] + [
        rec("/y/imgs/a.jpg", [1]),  # a second record of a: ignored, counted
        rec("/x/imgs/d.jpg", [], []),  # empty predictions: wrong
    ]
    r = evaluate_records(recs, small_gt())
    assert r["n_duplicates"] == 1
    assert r["missing"] == ["imgs/c.jpg"] and r["n_missing"] == 1
    assert r["top1_cls_error"] == 0.75
    assert r["top1_loc_error"] == 0.75


def test_evaluate_records_with_explicit_label_map_and_indices():
    g = GroundTruth([GtImage("a", [("1",)], [(("1",), (0, 0, 9, 9))])])
    r = evaluate_records([rec("a.png", [1], [(1, (0, 0, 9, 9))])], g, LabelMap(["x", "y"]))
    assert r["top1_cls_error"] == 0.0 and r["top1_loc_error"] == 0.0


# --------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------


def save_map(path: Path, image: str | None, cams, classes, labels=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "cams": np.asarray(cams, dtype=np.float32),
        "class_indices": np.asarray(classes, dtype=np.int64),
    }
    if image is not None:
        arrays["image"] = np.asarray(image)
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    np.savez(path, **arrays)


def block(h, w, y0, y1, x0, x1, v=1.0, base=0.0):
    m = np.full((h, w), base, dtype=np.float32)
    m[y0 : y1 + 1, x0 : x1 + 1] = v
    return m


def test_evaluate_maps_exact(tmp_path):
    gt = GroundTruth(
        [
            GtImage("a.jpg", [("cat",)], [(("cat",), (2, 2, 6, 6))]),  # exact wsol box
            GtImage("b.jpg", [("dog",)], [(("dog",), (0, 0, 3, 3))]),  # map of cat only
            GtImage("c.jpg", [("cat",)], [(("cat",), (0, 0, 9, 9))]),  # no map file
            GtImage("d.jpg", [("dog",)], [(("dog",), (10, 10, 14, 14))]),  # far off
            GtImage("e.jpg", [("cat",)], [(("cat",), (2, 2, 6, 6))]),  # blacklisted
        ]
    )
    maps = tmp_path / "maps"
    two = np.stack([block(10, 10, 2, 5, 2, 5), block(10, 10, 0, 1, 0, 1)])
    save_map(maps / "a.npz", "/data/a.jpg", two, [0, 1], ["cat", "dog"])
    save_map(maps / "sub/b.npz", "/data/b.jpg", two[:1], [0], ["cat"])
    save_map(maps / "d.npz", None, two, [0, 1], ["cat", "dog"])  # no image: its own path
    save_map(maps / "e.npz", "/data/e.jpg", two, [0, 1], ["cat", "dog"])
    save_map(maps / "zzz.npz", "/data/zzz.jpg", two, [0, 1], ["cat", "dog"])
    r = evaluate_maps(
        str(maps), gt, None, taus=[0.0, 0.5], blacklist=[False] * 4 + [True], workers=0
    )
    assert r["n_images"] == 5 and r["n_loc_images"] == 4 and r["n_blacklisted"] == 1
    assert r["missing"] == ["c.jpg"] and r["n_missing"] == 1
    assert r["missing_gt_class"] == ["b.jpg"]
    assert r["unmatched"] == ["/data/zzz.jpg"]
    assert r["boxacc"]["v1"] == [0.25, 0.25]
    assert r["maxboxacc_v1"] == 0.25 and r["best_tau"] == 0.0
    assert r["maxboxacc_v2"] == 0.25
    assert "pxap" not in r


def test_evaluate_maps_renormalises_and_scales_boxes(tmp_path):
    gt = GroundTruth([GtImage("a.jpg", [("0",)], [(("0",), (4, 4, 12, 12))], width=20, height=20)])
    maps = tmp_path / "maps"
    raw = block(10, 10, 2, 5, 2, 5, v=7.0, base=-3.0)  # map half the GT size, raw values
    save_map(maps / "a.npz", "a.jpg", raw[None], [0])
    r = evaluate_maps(str(maps), gt, LabelMap(["x"]), taus=[0.0], workers=0)
    # GT box scaled to the 10x10 map: (2, 2, 6, 6) = the wsol box of the block.
    assert r["n_renormalised"] == 1
    assert r["maxboxacc_v1"] == 1.0


def test_evaluate_maps_pxap_with_masks_dir(tmp_path):
    from PIL import Image

    gt = GroundTruth([GtImage("im/a.jpg", [("0",)], [(("0",), (2, 2, 5, 5))])])
    maps, masks = tmp_path / "maps", tmp_path / "masks"
    masks.mkdir()
    cam = block(8, 8, 2, 5, 2, 5, v=0.9, base=0.1)
    save_map(maps / "a.npz", "im/a.jpg", cam[None], [0])
    mask = (block(8, 8, 2, 5, 2, 5) * 255).astype(np.uint8)
    Image.fromarray(mask).save(masks / "a.png")
    r = evaluate_maps(str(maps), gt, LabelMap(["x"]), masks_dir=str(masks), workers=0)
    assert r["pxap"] == 1.0 and r["n_mask_images"] == 1
    mask[0, 0] = 255  # a foreground pixel the map scores low
    Image.fromarray(mask).save(masks / "a.png")
    r = evaluate_maps(str(maps), gt, LabelMap(["x"]), masks_dir=str(masks), workers=0)
    # 16 positives at 0.9, then 1 positive among 48 pixels at 0.1: AP = 16/17 * 1 + 1/17 * 17/64
    assert r["pxap"] == pytest.approx(16 / 17 + (1 / 17) * (17 / 64))
    # An ignore mask over that pixel restores 1.0.
    Image.fromarray((block(8, 8, 0, 0, 0, 0) * 255).astype(np.uint8)).save(masks / "a_ignore.png")
    mask[0, 0] = 0
    Image.fromarray(mask).save(masks / "a.png")
    r = evaluate_maps(str(maps), gt, LabelMap(["x"]), masks_dir=str(masks), workers=0)
    assert r["pxap"] == 1.0


def test_evaluate_maps_parallel_equals_serial(tmp_path, monkeypatch):
    import concurrent.futures as cf

    used = []

    class Pool(cf.ProcessPoolExecutor):
        def __init__(self, *a, **k):
            used.append(True)
            super().__init__(*a, **k)

    # camcli.evaluate.mapjobs.run_jobs looks both up when it runs: ProcessPoolExecutor from
    # concurrent.futures, POOL_MIN_SECONDS from its own module.
    monkeypatch.setattr(cf, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(mapjobs, "POOL_MIN_SECONDS", 0.0)  # use the pool however fast the maps
    rng = np.random.default_rng(0)
    images, maps = [], tmp_path / "maps"
    for i in range(70):
        m = rng.random((12, 16)).astype(np.float32)
        save_map(maps / f"{i:03d}.npz", f"{i:03d}.jpg", m[None], [0])
        x0, y0 = rng.integers(0, 8, 2)
        images.append(GtImage(f"{i:03d}.jpg", [("0",)], [(("0",), (x0, y0, x0 + 7, y0 + 3))]))
    gt = GroundTruth(images)
    serial = evaluate_maps(str(maps), gt, LabelMap(["x"]), workers=0)
    assert not used
    parallel = evaluate_maps(str(maps), gt, LabelMap(["x"]), workers=2)
    assert used
    assert serial == parallel
    assert serial["n_loc_images"] == 70


def test_evaluate_maps_errors(tmp_path):
    gt = GroundTruth([GtImage("a.jpg", [("0",)], [(("0",), (0, 0, 1, 1))])])
    with pytest.raises(NoInputError, match="--maps .*: not a folder") as e:
        evaluate_maps(str(tmp_path / "nope"), gt, None)
    assert e.value.code == 3
    (tmp_path / "m").mkdir()
    with pytest.raises(NoInputError, match="no .npz"):
        evaluate_maps(str(tmp_path / "m"), gt, None)
    save_map(tmp_path / "m" / "a.npz", "a.jpg", np.full((1, 4, 4), np.nan), [0])
    r = evaluate_maps(str(tmp_path / "m"), gt, None, workers=0)
    assert r["n_failed"] == 1 and "not finite" in r["failed"][0]["error"]
    assert r["maxboxacc_v1"] == 0.0
    # A truncated file (a kill during --save-maps) fails its image; it used to end the run.
    f = tmp_path / "m" / "a.npz"
    f.write_bytes(f.read_bytes()[:100])
    r = evaluate_maps(str(tmp_path / "m"), gt, None, workers=0)
    assert r["n_failed"] == 1 and r["failed"][0]["error"].startswith("cannot read map file")
