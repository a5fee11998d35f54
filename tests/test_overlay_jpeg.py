"""JPEG overlays blended in the encoder's YCbCr planes (camcli.cam.overlay_jpeg)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from camcli.cam.overlay_jpeg import JpegOverlays, half_planes
from camcli.cam.render import levels_cv2, overlay_cv2
from camcli.data.codec import encode_image


def test_half_planes_is_the_2x2_mean_with_the_edge_repeated():
    p = np.array([[0, 2, 4], [2, 4, 6], [10, 10, 11]], dtype=np.uint8)
    # blocks [0 2 2 4] -> 2, [4 4 6 6] (last column repeated) -> 5, [10 10 10 10] -> 10,
    # [11 11 11 11] (last row and column repeated) -> 11
    assert half_planes(p).tolist() == [[2, 5], [10, 11]]
    two = np.dstack([p, 255 - p])
    assert half_planes(two)[..., 1].tolist() == [[253, 250], [245, 244]]


def _ycc(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb).astype(int)  # Y, Cr, Cb


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_planes_are_the_rgb_overlay_in_ycbcr(alpha):
    """Y within 2 of the RGB overlay's Y; Cb, Cr within 3 of its 2 x 2-averaged chroma where
    the levels are constant over each 2 x 2 block (elsewhere the table is read at the mean).

    Rounding budget: ours rounds the image's plane, its scaled value and the scaled table
    (1.5 at most from the exact blend); the reference rounds the RGB blend and its conversion
    (1 at most; the chroma mean one more half level)."""
    rng = np.random.default_rng(3)
    h, w = 37, 53
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    blocks = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), dtype=np.uint8)
    levels = np.ascontiguousarray(np.kron(blocks, np.ones((2, 2), np.uint8))[:h, :w])
    y, cb, cr = JpegOverlays(image, "jet", alpha).planes(levels)
    ref = _ycc(overlay_cv2(image, levels, "jet", alpha))
    assert y.shape == (h, w) and cb.shape == cr.shape == blocks.shape
    assert np.abs(y.astype(int) - ref[..., 0]).max() <= 2
    ref_cr = half_planes(ref[..., 1].astype(np.uint8)).astype(int)
    ref_cb = half_planes(ref[..., 2].astype(np.uint8)).astype(int)
    assert np.abs(cr.astype(int) - ref_cr).max() <= 3
    assert np.abs(cb.astype(int) - ref_cb).max() <= 3


def test_alpha_zero_is_the_image_and_alpha_one_the_colormap():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    levels = np.full((16, 16), 200, dtype=np.uint8)
    y, _, _ = JpegOverlays(image, "jet", 0.0).planes(levels)
    assert np.abs(y.astype(int) - _ycc(image)[..., 0]).max() <= 0
    y, cb, cr = JpegOverlays(image, "jet", 1.0).planes(levels)
    heat = _ycc(overlay_cv2(image, levels, "jet", 1.0))  # the colormap's colour of level 200
    assert (y == heat[0, 0, 0]).all() and (cr == heat[0, 0, 1]).all()
    assert (cb == heat[0, 0, 2]).all()


@pytest.mark.parametrize("size", [(375, 500), (63, 65), (37, 53), (1, 1), (2, 3)])
def test_encode_is_deterministic_on_sizes_that_are_not_whole_mcus(size):
    """The raw-data encoder reads whole 16 x 16 MCUs: the planes are padded first (without it
    the bytes past a plane's end made the file change from run to run)."""
    h, w = size
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    levels = rng.integers(0, 256, (h, w), dtype=np.uint8)
    enc = JpegOverlays(image, "turbo", 0.5)
    blobs = set()
    for i in range(6):
        _churn = [np.full((h + 40, w + 40), 40 * i, np.uint8) for _ in range(4)]  # noqa: F841
        blobs.add(enc.encode(levels))
    assert len(blobs) == 1
    decoded = cv2.imdecode(np.frombuffer(blobs.pop(), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (h, w, 3)


def test_decoded_file_matches_the_rgb_overlay_encoded_by_opencv():
    """Same libjpeg-turbo, quality and tables: decoded, the two files differ by about one level
    on a smooth map (a CAM upsampled from 7 x 7)."""
    rng = np.random.default_rng(6)
    h, w = 375, 500
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.dstack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)]).astype(np.uint8)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    small = rng.random((7, 7), dtype=np.float32)
    levels = levels_cv2(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))
    ours = cv2.imdecode(np.frombuffer(JpegOverlays(image, "jet", 0.5).encode(levels), np.uint8), 1)
    ref_bytes = encode_image(overlay_cv2(image, levels, "jet", 0.5), "jpg")
    ref = cv2.imdecode(np.frombuffer(ref_bytes, np.uint8), 1)
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6


@pytest.mark.parametrize("size", [(37, 53), (36, 8), (1, 5)])
def test_low_memory_mode_gives_the_same_bytes(monkeypatch, size):
    """Huge images convert the image per map in row strips instead of keeping its planes
    (issue 17: 250 MB less at 13000 x 13000): the same planes and JPEG bytes, strip edges
    (an odd last strip, odd sizes) included."""
    from camcli.cam import overlay_jpeg

    monkeypatch.setattr(overlay_jpeg, "_STRIP_PIXELS", 4 * size[1])  # 4 rows a strip
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    kept = JpegOverlays(image, "turbo", 0.4)
    strips = JpegOverlays(image, "turbo", 0.4, low_memory=True)
    assert kept.y is not None and strips.y is None  # the image's planes are not kept
    for seed in (1, 2):
        levels = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
        want = [p.copy() for p in kept.planes(levels)]
        for a, b in zip(strips.planes(levels), want, strict=True):
            np.testing.assert_array_equal(a, b)
        assert strips.encode(levels) == kept.encode(levels)


def test_low_memory_mode_is_chosen_by_size(monkeypatch):
    from camcli.cam import overlay_jpeg

    image = np.zeros((20, 30, 3), np.uint8)
    assert not JpegOverlays(image, "jet", 0.5).low_memory
    monkeypatch.setattr(overlay_jpeg, "LOW_MEMORY_PIXELS", 600)
    assert JpegOverlays(image, "jet", 0.5).low_memory
    assert not JpegOverlays(image, "jet", 0.5, low_memory=False).low_memory
