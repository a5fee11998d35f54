from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from camcli.cam.render import (
    COLORMAPS,
    blend,
    colorize,
    colormap_lut,
    grid,
    levels_cv2,
    levels_u8,
    overlay,
    overlay_cv2,
)

CV2 = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "parula": cv2.COLORMAP_PARULA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
    "rainbow": cv2.COLORMAP_RAINBOW,
}


def test_colormap_names():
    assert set(COLORMAPS) == set(CV2) | {"gray"}
    assert COLORMAPS[0] == "jet"
    with pytest.raises(ValueError):
        colormap_lut("nope")


@pytest.mark.parametrize("name", sorted(CV2))
def test_colorize_equals_opencv_on_a_ramp(name):
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
    expect_rgb = cv2.applyColorMap(ramp, CV2[name])[..., ::-1]  # OpenCV gives BGR
    maps = torch.arange(256, dtype=torch.float32).reshape(1, 1, 256) / 255.0
    out = colorize(maps, name)
    assert out.shape == (1, 3, 1, 256) and out.dtype == torch.uint8
    assert np.array_equal(out[0].permute(1, 2, 0).numpy(), expect_rgb)


def test_known_jet_anchors_and_gray():
    lut = colormap_lut("jet")
    assert lut.shape == (256, 3) and lut.dtype == torch.uint8
    assert lut[0].tolist() == [0, 0, 128]  # dark blue
    assert lut[255].tolist() == [128, 0, 0]  # dark red
    gray = colormap_lut("gray")
    assert torch.equal(gray, torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 3))


def test_colorize_quantisation_and_out_of_range():
    m = torch.tensor([[[0.0, 0.49 / 255, 0.51 / 255, 1.0, 1.7, -0.3, float("nan"), 0.5]]])
    out = colorize(m, "gray")
    # round(255 * m) clamped; NaN -> 0; 127.5 rounds half to even -> 128
    assert out[0, 0, 0].tolist() == [0, 0, 1, 255, 255, 0, 0, 128]
    assert torch.equal(out[0, 0], out[0, 2])


def test_levels_cv2_equals_levels_u8_on_hand_values_and_random_maps():
    m = np.array(
        [[0.0, 0.49 / 255, 0.51 / 255, 1.0, 1.7, -0.3, np.nan, 0.5, 1.5 / 255]], np.float32
    )
    # round(255 m) clamped to [0, 255], NaN -> 0, halves to even (127.5 -> 128, 1.5 -> 2)
    assert levels_cv2(m).tolist() == [[0, 0, 1, 255, 255, 0, 0, 128, 2]]
    rng = np.random.default_rng(0)
    r = (rng.random((37, 53), dtype=np.float32) * 1.4 - 0.2).astype(np.float32)
    r[3, 4] = np.nan
    assert np.array_equal(levels_cv2(r), levels_u8(torch.from_numpy(r)).numpy())


def test_levels_cv2_nonneg_skips_only_a_pass_that_changes_nothing():
    rng = np.random.default_rng(2)
    m = rng.random((37, 53), dtype=np.float32) * 1.2  # over 1 saturates either way
    m[0, :4] = [0.0, 0.5 / 255, 1.5 / 255, 2.5 / 255]  # halves to even
    want = levels_u8(torch.from_numpy(m)).numpy()
    assert np.array_equal(levels_cv2(m.copy(), nonneg=True), want)
    assert np.array_equal(levels_cv2(m.copy(), nonneg=True, inplace=True), want)
    neg = np.array([[-0.5, 0.5]], np.float32)
    assert levels_cv2(neg).tolist() == [[0, 128]]
    assert levels_cv2(neg, nonneg=True).tolist() == [[128, 128]]  # the caller's promise


def test_overlay_cv2_matches_overlay_in_rgb_and_bgr():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    maps = rng.random((2, 9, 11), dtype=np.float32)
    ref = overlay(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(maps), "turbo", 0.4)
    for i, m in enumerate(maps):
        rgb = overlay_cv2(image, levels_cv2(m), "turbo", 0.4)
        bgr = overlay_cv2(
            np.ascontiguousarray(image[..., ::-1]), levels_cv2(m), "turbo", 0.4, bgr=True
        )
        assert np.array_equal(rgb, bgr[..., ::-1])
        assert np.abs(rgb.astype(int) - ref[i].permute(1, 2, 0).numpy().astype(int)).max() <= 1


def test_blend_hand_values():
    img = torch.tensor([[[[100, 0, 255, 1]]]], dtype=torch.uint8)
    heat = torch.tensor([[[[200, 255, 0, 2]]]], dtype=torch.uint8)
    assert blend(img, heat, 0.3)[0, 0, 0].tolist() == [130, 76, 178, 1]  # 76.5 -> 76 (even)
    assert blend(img, heat, 0.5)[0, 0, 0].tolist() == [150, 128, 128, 2]  # 127.5 -> 128, 1.5 -> 2
    assert torch.equal(blend(img, heat, 0.0), img) and torch.equal(blend(img, heat, 1.0), heat)
    with pytest.raises(ValueError):
        blend(img, heat, 1.5)


def test_blend_matches_opencv_add_weighted_within_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for alpha in (0.25, 0.4, 0.5):
        ref = cv2.addWeighted(a, 1 - alpha, b, alpha, 0).astype(int)
        ours = blend(torch.from_numpy(a), torch.from_numpy(b), alpha).numpy().astype(int)
        assert np.abs(ref - ours).max() <= 1


def test_overlay_all_classes_at_once():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    maps = torch.rand(4, 5, 6)
    out = overlay(image, maps, "turbo", 0.4)
    assert out.shape == (4, 3, 5, 6) and out.dtype == torch.uint8
    for i in range(4):
        heat = colorize(maps[i : i + 1], "turbo")[0]
        assert torch.equal(out[i], blend(image, heat, 0.4))
    # a zero map with alpha 1 is the colormap's first colour everywhere
    zero = overlay(image, torch.zeros(1, 5, 6), "jet", 1.0)
    assert zero[0, :, 2, 3].tolist() == [0, 0, 128]
    with pytest.raises(ValueError):
        overlay(image, torch.zeros(1, 4, 6))


def test_grid_layout_and_captions():
    image = torch.full((3, 40, 50), 10, dtype=torch.uint8)
    overlays = torch.stack([torch.full((3, 40, 50), v, dtype=torch.uint8) for v in (100, 200)])
    out = grid(image, overlays, ["tabby cat 0.91", "tiger cat 0.05"])
    assert out.dtype == torch.uint8 and out.shape[0] == 3
    assert out.shape[2] == 3 * 50 + 2 * 4
    h = out.shape[1]
    assert h > 40
    for i, v in enumerate((10, 100, 200)):
        x0 = i * 54
        assert (out[:, :40, x0 : x0 + 50] == v).all()
        strip = out[:, 40:, x0 : x0 + 50]
        assert (strip < 128).any() and (strip == 255).any()  # dark text on white
    assert (out[:, :, 50:54] == 255).all()  # white gap
    with pytest.raises(ValueError):
        grid(image, overlays, ["only one"])


def test_grid_scales_very_wide_rows_down():
    image = torch.zeros(3, 300, 2000, dtype=torch.uint8)
    overlays = torch.full((2, 3, 300, 2000), 255, dtype=torch.uint8)
    out = grid(image, overlays, ["a " * 200, "b"])  # an over-long caption is cut, not overflowing
    assert out.shape[2] <= 4096
    w = (4096 - 2 * 4) // 3
    assert out.shape[2] == 3 * w + 8
    assert (out[:, :150, :w] == 0).all() and (out[:, :150, w + 4 : 2 * w + 4] == 255).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu():
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    maps = torch.rand(2, 30, 40)
    cpu = overlay(image, maps, "viridis", 0.5)
    gpu = overlay(image.cuda(), maps.cuda(), "viridis", 0.5)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    g = grid(image.cuda(), gpu, ["a 0.5", "b 0.2"])
    assert g.device.type == "cuda" and torch.equal(g.cpu(), grid(image, cpu, ["a 0.5", "b 0.2"]))
