"""Issue 17: map files v2 (feature-resolution maps + geometry), boxes off the main thread with
one OpenCV threshold, bounded-memory box steps, the --top-k cap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camcli.cam import boxes as B
from camcli.cam import dtbox
from camcli.cam.pipeline import normalize_cams
from camcli.cam.upsample import Geometry, upsample_to_images
from camcli.data import mapfiles_v2
from camcli.data.mapfiles import read_map_file
from conftest import full_maps, records, run_main


def good(path: Path) -> list[dict]:
    return [r for r in records(path) if "error" not in r]


# --- the reader rebuilds exactly what cam computed -------------------------------------------


@pytest.mark.parametrize(
    ("geom", "interp", "norm"),
    [
        (Geometry(37, 53, size=64), "bilinear", "minmax"),
        (Geometry(53, 37, size=64, mode="center_crop"), "bicubic", "max"),
        (Geometry(20, 90, size=48, mode="center_crop", short_side=60), "bilinear", "none"),
    ],
)
def test_v2_file_rebuilds_the_batched_upsampling_exactly(tmp_path, geom, interp, norm):
    raw = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "x.npz"
    arrays = mapfiles_v2.v2_arrays(
        raw.numpy(), class_indices=[4, 1, 7], scores=[0.5, 0.3, 0.1], labels=["a", "b", "c"],
        image="img.jpg", geometry=geom.to_dict(), norm=norm, interpolation=interp,
    )  # fmt: skip
    np.savez(path, **arrays)
    # what cam computed before maps were kept small: the whole batch normalised and upsampled
    other = torch.randn(1, 3, 2, 2)
    want = upsample_to_images(
        normalize_cams(torch.cat([raw[None], other]), norm), [geom, Geometry(9, 9, size=64)], interp
    ).maps[0]
    mf = read_map_file(path)
    assert mf.cams is None and mf.v2 is not None
    assert mf.header.class_indices.tolist() == [4, 1, 7] and mf.header.image == "img.jpg"
    got = mf.v2.stack()
    assert got.shape == (3, geom.height, geom.width)
    assert np.array_equal(got, want.numpy())  # bit for bit


def test_v2_file_is_small_and_full_form_is_float16(tmp_path, cli_images, cli_ckpt):
    small, full = tmp_path / "small", tmp_path / "full"
    args = ["--weights", cli_ckpt, "--top-k", 3, "--no-overlay", "--save-maps", "--quiet"]
    assert run_main("cam", cli_images, "--out", small, *args) == 1  # the corrupt image
    assert run_main("cam", cli_images, "--out", full, *args, "--maps-format", "full") == 1
    for f in sorted(small.rglob("*.npz")):
        rel = f.relative_to(small)
        with np.load(f) as z:
            assert int(z["version"]) == 2 and z["cams"].dtype == np.float32
            h, w = int(z["height"]), int(z["width"])
        with np.load(full / rel) as z:
            assert "version" not in z.files
            assert z["cams"].dtype == np.float16 and z["cams"].shape == (3, h, w)
            np.testing.assert_allclose(z["cams"], full_maps(f), atol=1e-3)
        assert f.stat().st_size < 4000  # a few hundred bytes per class plus the header
    # bbox --from-maps reads the full form too
    out = tmp_path / "b.jsonl"
    assert run_main("bbox", "--from-maps", full, "--output", out, "--top-k", 3, "--quiet") == 0
    assert len(good(out)) == len(list(full.rglob("*.npz")))


@pytest.mark.parametrize(
    "extra",
    [["--interpolation", "bicubic", "--norm", "max"], ["--box-rule", "all", "--threshold", 0.4]],
)
def test_bbox_from_v2_maps_equals_bbox_on_the_images(tmp_path, cli_images, cli_ckpt, extra):
    maps = tmp_path / "maps"
    cam_opts = [x for x in extra if x not in ("--box-rule", "all", "--threshold", 0.4)]
    assert run_main("cam", cli_images, "--out", maps, "--weights", cli_ckpt, "--top-k", 3,
                    "--no-overlay", "--save-maps", "--quiet", *cam_opts) == 1  # fmt: skip
    box_opts = [x for x in extra if x not in ("--interpolation", "bicubic", "--norm", "max")]
    img, frm = tmp_path / "img.jsonl", tmp_path / "frm.jsonl"
    assert run_main("bbox", cli_images, "--weights", cli_ckpt, "--top-k", 3, "--output", img,
                    "--quiet", *extra) == 1  # fmt: skip
    assert run_main("bbox", "--from-maps", maps, "--top-k", 3, "--output", frm, "--quiet",
                    *box_opts) == 0  # fmt: skip
    a, b = good(img), good(frm)
    assert len(a) == len(b) > 0
    assert [r["boxes"] for r in a] == [r["boxes"] for r in b]
    assert [(r["width"], r["height"]) for r in a] == [(r["width"], r["height"]) for r in b]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": np.asarray(3)}, "map file version 3"),
        ({"norm": np.asarray("zscore")}, "unknown norm 'zscore'"),
        ({"height": np.asarray(10**6), "width": np.asarray(10**6)}, "image size 1000000x1000000"),
        ({"input_size": np.asarray(10**6)}, "input_size 1000000"),
        ({"cams": np.zeros((2, 2, 2), np.float32)}, "cams has shape [2, 2, 2]"),
    ],
)
def test_bad_v2_file_is_an_error_record(tmp_path, change, reason):
    d = tmp_path / "maps"
    d.mkdir()
    arrays = mapfiles_v2.v2_arrays(
        np.ones((3, 2, 2), np.float32), class_indices=[0, 1, 2], scores=[0.5, 0.2, 0.1],
        labels=["a", "b", "c"], image="x.jpg", geometry=Geometry(10, 10, size=8).to_dict(),
        norm="minmax", interpolation="bilinear",
    )  # fmt: skip
    np.savez(d / "bad.npz", **{**arrays, **change})
    np.savez(d / "ok.npz", **arrays)
    out = tmp_path / "b.jsonl"
    assert run_main("bbox", "--from-maps", d, "--output", out, "--quiet") == 1
    bad, ok = records(out)
    assert reason in bad["error"] and "boxes" in ok


# --- boxes: one OpenCV threshold to uint8, equal to the torch threshold ----------------------


def test_threshold_u8_equals_threshold_masks_including_ties():
    rng = np.random.default_rng(3)
    for shape in [(5, 7), (64, 33), (1, 1)]:
        m = rng.random(shape, dtype=np.float32)
        for tau in (0.0, 0.2, 0.5, 1.0):
            want = B.threshold_masks(torch.from_numpy(m), tau).numpy()
            got = B.threshold_u8(m, tau)
            assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
            assert np.array_equal(got > 0, want)
    # a pixel exactly at tau * max (in float32) is dropped, as in threshold_masks
    m = np.array([[1.0, 0.0], [np.float32(1.0) * np.float32(0.2), 0.3]], np.float32)
    assert np.array_equal(B.threshold_u8(m, 0.2) > 0, [[True, False], [False, True]])
    assert not B.threshold_u8(np.full((3, 3), np.nan, np.float32), 0.2).any()
    with pytest.raises(ValueError, match="not a finite number"):
        B.threshold_u8(m, float("nan"))


def test_box_steps_in_row_strips_equal_the_whole_map(monkeypatch):
    rng = np.random.default_rng(5)
    small = rng.random((6, 8)).astype(np.float32)
    big = torch.nn.functional.interpolate(
        torch.from_numpy(small)[None, None], size=(150, 210), mode="bilinear"
    )[0, 0].numpy()
    big[3, 4] = np.nan  # non-finite values are cleaned per strip too
    q_whole = dtbox.quantize_map(big)
    e_whole = dtbox._dt_erode(q_whole > 100)
    b_whole = dtbox.dt_boxes(big)
    monkeypatch.setattr(dtbox, "_STRIP_PIXELS", 1000)  # 4 rows per strip
    assert np.array_equal(dtbox.quantize_map(big), q_whole)
    assert np.array_equal(dtbox._dt_erode(q_whole > 100), e_whole)
    assert dtbox.dt_boxes(big) == b_whole


def test_top_k_is_capped_with_a_warning(tmp_path, cli_images, cli_ckpt, camcli_run, monkeypatch):
    """One warning, naming the smaller of the two limits: the model's classes or cam's cap."""
    code, _, err = camcli_run("cam", cli_images / "a.jpg", "--out", tmp_path / "o",
                              "--weights", cli_ckpt, "--top-k", 1000, "--no-overlay",
                              "--save-maps", "-q")  # fmt: skip
    assert code == 0
    assert err.splitlines() == ["warning: --top-k 1000 lowered to 10 (the model has 10 classes)"]
    with np.load(tmp_path / "o" / "a.npz") as z:
        assert z["cams"].shape[0] == 10  # the model's 10 classes
    from camcli.cli import cam_cmd

    monkeypatch.setattr(cam_cmd, "MAX_TOP_K", 3)
    code, _, err = camcli_run("cam", cli_images / "a.jpg", "--out", tmp_path / "p",
                              "--weights", cli_ckpt, "--top-k", 8, "--no-overlay",
                              "--save-maps", "-q")  # fmt: skip
    assert code == 0
    assert err.splitlines() == [
        "warning: --top-k 8 lowered to 3 (one map, and overlay, per class and image)"
    ]
    with np.load(tmp_path / "p" / "a.npz") as z:
        assert z["cams"].shape[0] == 3


# --- large images: maps in row strips, never a whole float map -------------------------------


def test_bilinear_rows_match_opencv_and_do_not_depend_on_the_strip_height():
    import cv2

    from camcli.cam.upsample import bilinear_rows

    rng = np.random.default_rng(7)
    src = rng.random((9, 13), dtype=np.float32)
    want = cv2.resize(src, (301, 257), interpolation=cv2.INTER_LINEAR)
    whole = np.concatenate([s for _, _, s in bilinear_rows(src, 257, 301, rows=257)])
    np.testing.assert_allclose(whole, want, atol=1e-6, rtol=0)
    for rows in (1, 7, 100):
        parts = list(bilinear_rows(src, 257, 301, rows=rows))
        assert parts[0][0] == 0 and parts[-1][1] == 257
        assert np.array_equal(np.concatenate([s for _, _, s in parts]), whole)


def test_large_maps_come_in_strips_equal_to_the_whole_map(monkeypatch):
    from camcli.cam import upsample as U

    monkeypatch.setattr(U, "LARGE_PIXELS", 1000)
    monkeypatch.setattr(U, "STRIP_PIXELS", 500)
    cam = normalize_cams(torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(2)))[0]
    geom = Geometry(97, 61, size=32)
    strips = list(U.upsample_rows(cam, geom))
    assert len(strips) > 5
    whole, _ = U.upsample_one(cam[None], geom)
    assert np.array_equal(np.concatenate([s for _, _, s in strips]), whole[0].numpy())
    rows = lambda: U.upsample_rows(cam, geom)  # noqa: E731
    m = whole[0].numpy()
    assert np.array_equal(B.threshold_rows(rows, m.shape, 0.2), B.threshold_u8(m, 0.2))
    assert np.array_equal(dtbox.quantize_rows(rows, m.shape), dtbox.quantize_map(m))
    for rule in ("paper", "all", "dt-box"):
        assert B.boxes_for_rows(rows, m.shape, rule) == B.boxes_for_map(m, rule)


def test_bbox_from_v2_maps_equals_bbox_on_images_in_strips(
    tmp_path, cli_images, cli_ckpt, monkeypatch
):
    # every map upsampled in strips (as on a huge image): same boxes from images and from maps
    from camcli.cam import upsample as U

    monkeypatch.setattr(U, "LARGE_PIXELS", 100)
    monkeypatch.setattr(U, "STRIP_PIXELS", 300)
    maps = tmp_path / "maps"
    assert run_main("cam", cli_images, "--out", maps, "--weights", cli_ckpt, "--top-k", 3,
                    "--save-maps", "--grid", "--quiet") == 1  # fmt: skip
    img, frm = tmp_path / "img.jsonl", tmp_path / "frm.jsonl"
    for extra in (["--top-k", 3], ["--tight-loose-heuristic"]):
        assert run_main("bbox", cli_images, "--weights", cli_ckpt, "--output", img, "--quiet",
                        *extra) == 1  # fmt: skip
        assert run_main("bbox", "--from-maps", maps, "--output", frm, "--quiet",
                        *extra) == 0  # fmt: skip
        assert [r["boxes"] for r in good(img)] == [r["boxes"] for r in good(frm)]


def test_eval_maps_reads_v2_as_the_maps_on_the_images(tmp_path, capsys):
    """eval --maps on v2 files scores exactly what it scores on the same maps stored whole
    (v1, float32 at the original size)."""
    from test_eval_cli import _cats, run, write_gt_csv

    gt = write_gt_csv(
        tmp_path / "gt.csv", [("a.jpg", "0", 2, 2, 30, 20), ("b.jpg", "1", 10, 5, 40, 35)]
    )
    v2, v1 = tmp_path / "v2", tmp_path / "v1"
    v2.mkdir()
    v1.mkdir()
    rng = np.random.default_rng(11)
    geoms = {"a": Geometry(25, 45, size=32), "b": Geometry(40, 50, size=32, mode="center_crop")}
    for name, geom in geoms.items():
        arrays = mapfiles_v2.v2_arrays(
            rng.standard_normal((2, 3, 3)).astype(np.float32), class_indices=[0, 1],
            scores=[0.6, 0.3], labels=["x", "y"], image=f"{name}.jpg", geometry=geom.to_dict(),
            norm="minmax", interpolation="bilinear",
        )  # fmt: skip
        np.savez(v2 / f"{name}.npz", **arrays)
        np.savez(v1 / f"{name}.npz", cams=full_maps(v2 / f"{name}.npz"),
                 class_indices=np.array([0, 1]), image=f"{name}.jpg")  # fmt: skip
    got = {}
    for tag, folder in (("v2", v2), ("v1", v1)):
        res = tmp_path / f"{tag}.json"
        code, _, err = run(
            ["eval", "--gt", str(gt), "--maps", str(folder), "--taus", "0:1:0.05", "--categories",
             str(_cats(tmp_path)), "-o", str(res), "--workers", "0"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        got[tag] = json.loads(res.read_text())
    assert got["v2"]["n_loc_images"] == 2
    assert got["v2"]["boxacc"] == got["v1"]["boxacc"]
    assert got["v2"]["maxboxacc_v1"] == got["v1"]["maxboxacc_v1"]
