"""Geometry, resize_maps and upsample_to_images: maps back onto the original image."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from camcli.cam.upsample import Geometry, resize_maps, upsample_to_images

# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "h,w,size,short",
    [
        (300, 500, 224, 256),
        (500, 300, 224, 256),
        (256, 256, 224, 256),
        (333, 201, 224, 255),
        (100, 50, 224, 200),
        (31, 77, 24, 27),
    ],
)
def test_geometry_matches_torchvision_resize_and_center_crop(h, w, size, short):
    g = Geometry(h, w, size=size, mode="center_crop", short_side=short)
    img = torch.zeros(1, h, w)
    resized = TF.resize(img, [short], antialias=True)
    assert tuple(resized.shape[-2:]) == g.resized_hw
    h_r, w_r = g.resized_hw
    # index image: value = row * w_r + col + 1 (0 marks padding)
    index = (torch.arange(h_r * w_r, dtype=torch.float64) + 1).reshape(1, h_r, w_r)
    crop = TF.center_crop(index, [size, size])
    top, left = g.crop_offset
    expect = torch.zeros(size, size, dtype=torch.float64)
    for r in range(size):
        for c in range(size):
            rr, cc = top + r, left + c
            if 0 <= rr < h_r and 0 <= cc < w_r:
                expect[r, c] = rr * w_r + cc + 1
    assert torch.equal(crop[0], expect)


def test_geometry_defaults_and_validation():
    g = Geometry(300, 500, mode="center_crop")
    assert g.short_side == 256 and g.size == 224
    assert g.resized_hw == (256, 426) and g.crop_offset == (16, 101)
    assert g.crop_region == (19, 281, 119, 381)
    r = Geometry(300, 500)
    assert r.resized_hw == (224, 224) and r.crop_offset == (0, 0)
    assert r.crop_region == (0, 300, 0, 500)
    with pytest.raises(ValueError):
        Geometry(0, 10)
    with pytest.raises(ValueError):
        Geometry(10, 10, mode="letterbox")  # type: ignore[arg-type]


def _hot(h: int, w: int, r: int, c: int) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    m[0, 0, r, c] = 1.0
    return m


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
@pytest.mark.parametrize("cell", [(2, 5), (0, 0), (6, 6), (3, 3)])
def test_hot_cell_lands_in_its_original_pixel_cell_non_square(interp, cell):
    r, c = cell
    g = Geometry(300, 500, size=224)
    up = upsample_to_images(_hot(7, 7, r, c), [g], interp)
    assert up.coverage == [None]
    m = up.maps[0]
    assert m.shape == (1, 300, 500) and m.dtype == torch.float32
    y, x = divmod(int(m[0].argmax()), 500)
    assert r * 300 / 7 <= y < (r + 1) * 300 / 7
    assert c * 500 / 7 <= x < (c + 1) * 500 / 7
    ys, xs = (m[0] == m[0].max()).nonzero(as_tuple=True)  # every maximal pixel is in the cell
    assert r * 300 / 7 <= ys.min() and ys.max() < (r + 1) * 300 / 7
    assert c * 500 / 7 <= xs.min() and xs.max() < (c + 1) * 500 / 7
    if 0 < r < 6 and 0 < c < 6:  # inner cell: the peak sits on the cell centre within a pixel
        assert abs(ys.float().mean().item() + 0.5 - (r + 0.5) * 300 / 7) <= 1.0
        assert abs(xs.float().mean().item() + 0.5 - (c + 0.5) * 500 / 7) <= 1.0


def test_center_crop_hot_cell_and_coverage_mask_exact():
    g = Geometry(300, 500, size=224, mode="center_crop")  # resized 256x426, offset (16, 101)
    y0, y1, x0, x1 = g.crop_region
    assert (y0, y1, x0, x1) == (19, 281, 119, 381)
    for r, c in [(3, 3), (0, 0), (6, 1)]:
        up = upsample_to_images(_hot(7, 7, r, c), [g])
        m, cov = up.maps[0][0], up.coverage[0]
        assert cov.dtype == torch.bool and cov.shape == (300, 500)
        expect = torch.zeros(300, 500, dtype=torch.bool)
        expect[19:281, 119:381] = True
        assert torch.equal(cov, expect)
        assert (m[~cov] == 0).all()
        y, x = divmod(int(m.argmax()), 500)
        # cell (r, c) covers crop pixels [32r, 32r+32) -> resized rows +16, cols +101
        sy, sx = 300 / 256, 500 / 426
        assert (16 + 32 * r) * sy - 1 <= y < (16 + 32 * (r + 1)) * sy + 1
        assert (101 + 32 * c) * sx - 1 <= x < (101 + 32 * (c + 1)) * sx + 1
    # constant map: exactly 1 inside the crop, 0 outside
    up = upsample_to_images(torch.ones(1, 2, 7, 7), [g], "bicubic")
    assert torch.equal(up.maps[0], expect.float().expand(2, -1, -1))


def test_center_crop_padded_crop_region_is_clipped():
    g = Geometry(100, 50, size=224, mode="center_crop", short_side=200)  # resized 400x200
    assert g.resized_hw == (400, 200) and g.crop_offset == (88, -12)
    y0, y1, x0, x1 = g.crop_region
    assert (y0, y1, x0, x1) == (22, 78, -3, 53)
    up = upsample_to_images(torch.ones(1, 1, 7, 7), [g])
    cov = up.coverage[0]
    assert cov[22:78].all() and not cov[:22].any() and not cov[78:].any()
    assert up.maps[0].shape == (1, 100, 50)
    assert up.maps[0][0, 50].tolist() == [1.0] * 50


def test_upsample_mixed_batch_equals_single_calls():
    torch.manual_seed(1)
    cams = torch.randn(4, 3, 7, 7)
    geoms = [
        Geometry(30, 50, size=28),
        Geometry(41, 17, size=28, mode="center_crop", short_side=32),
        Geometry(30, 50, size=28),
        Geometry(20, 20, size=14),
    ]
    for interp in ("bilinear", "bicubic"):
        up = upsample_to_images(cams, geoms, interp)
        for i, g in enumerate(geoms):
            one = upsample_to_images(cams[i : i + 1], [g], interp)
            assert up.maps[i].shape == (3, g.height, g.width)
            torch.testing.assert_close(up.maps[i], one.maps[0], atol=1e-6, rtol=0)
            assert (up.coverage[i] is None) == (g.mode == "resize")


def test_upsample_two_stage_matches_explicit_interpolate():
    cams = torch.arange(12.0).reshape(1, 1, 3, 4)
    up = upsample_to_images(cams, [Geometry(10, 30, size=8)]).maps[0]
    step1 = torch.nn.functional.interpolate(cams, size=(8, 8), mode="bilinear", align_corners=False)
    step2 = torch.nn.functional.interpolate(
        step1, size=(10, 30), mode="bilinear", align_corners=False
    )
    # CPU bilinear upsampling runs through OpenCV: the same rule, float rounding apart.
    torch.testing.assert_close(up, step2[0], atol=1e-5, rtol=0)
    one_stage = torch.nn.functional.interpolate(
        cams, size=(10, 30), mode="bilinear", align_corners=False
    )
    assert (up - one_stage[0]).abs().max() > 0.1  # the tolerance still tells the rules apart


def test_cpu_bilinear_upsampling_equals_torch_interpolate():
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 7, 7) * 10 - 5
    for size in [(224, 224), (375, 500), (7, 640), (1000, 9)]:
        ref = torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        out = resize_maps(maps, size)
        assert out.shape == ref.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # maps that need gradients keep the differentiable torch path
    g = maps.clone().requires_grad_(True)
    resize_maps(g, (30, 40)).sum().backward()
    assert g.grad is not None and g.grad.shape == maps.shape


def test_bicubic_is_clamped_to_input_range_and_downsampling_is_smooth():
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1.0
    raw = torch.nn.functional.interpolate(step, size=(32, 32), mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 1  # bicubic overshoots ...
    out = resize_maps(step, (32, 32), "bicubic")
    assert out.min() == 0 and out.max() == 1  # ... camcli clamps
    stripes = torch.zeros(1, 1, 4, 9)
    stripes[..., ::2] = 1.0
    # 9 -> 3 columns: a plain bilinear resize samples columns 1, 4, 7 -> (0, 1, 0); the
    # antialiased one weighs columns 2..6 by (1, 2, 3, 2, 1) / 9 in the middle -> 5 / 9
    small = resize_maps(stripes, (4, 3), "bilinear")
    torch.testing.assert_close(small[..., 1], torch.full((1, 1, 4), 5 / 9), atol=1e-6, rtol=0)
    assert torch.equal(resize_maps(stripes, (4, 9)), stripes)


def test_upsample_validates_inputs():
    with pytest.raises(ValueError):
        upsample_to_images(torch.zeros(2, 1, 7, 7), [Geometry(10, 10)])
    with pytest.raises(ValueError):
        upsample_to_images(torch.zeros(1, 1, 7, 7), [Geometry(10, 10)], "nearest")  # type: ignore[arg-type]
