"""Pure tensor functions of the CAM pipeline (SPEC.md sections 1 and 3).

Nothing here reads files, prints, or picks a device: every function works on the device of its
input tensors and returns tensors on that same device. Maps are computed and returned in float32.

Order of a typical call chain::

    logits, features = model(x)                      # [B, C], [B, K, h, w]
    scores, idx = topk_predictions(logits, k)        # [B, k], [B, k]
    cams = cams_from_features(features, W, idx)      # [B, k, h, w] float32 (no bias)
    up = upsample_to_images(cams, geometries)        # B x [k, H_i, W_i] in original pixels
    maps = [normalize_cams(m, "minmax") for m in up.maps]

Ten-crop evaluation (official ILSVRC pipeline)::

    crops = ten_crop(x256, 224)                      # [B*10, 3, 224, 224]
    logits, features = model(crops)                  # [B*10, C], [B*10, K, h, w]
    probs = ten_crop_scores(logits.view(B, 10, -1))  # [B, C] mean softmax
    scores, idx = probs.topk(k, dim=1)
    cams = cams_from_features(features, W, idx.repeat_interleave(10, dim=0))
    merged = merge_ten_crop(cams.view(B, 10, k, h, w), size=256, crop=224)  # [B, k, 256, 256]
    up = upsample_to_images(merged, [Geometry(H, W, size=256) for ...])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "INTERPOLATIONS",
    "NORMALIZATIONS",
    "TEN_CROP_NAMES",
    "Geometry",
    "UpsampledCams",
    "cams_from_features",
    "merge_ten_crop",
    "normalize_cams",
    "resize_maps",
    "ten_crop",
    "ten_crop_offsets",
    "ten_crop_scores",
    "topk_predictions",
    "upsample_to_images",
]

Interpolation = Literal["bilinear", "bicubic"]
Normalization = Literal["minmax", "max", "none"]
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")
NORMALIZATIONS: tuple[str, ...] = ("minmax", "max", "none")


# --------------------------------------------------------------------------------------------
# Classes and maps
# --------------------------------------------------------------------------------------------


def topk_predictions(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k classes of each image, best first.

    logits: [B, C] any float dtype. ``k`` is clipped to ``C`` (and must be >= 1).
    Returns ``(scores, indices)``: scores [B, k'] float32 softmax probabilities (computed in
    float32), indices [B, k'] int64 class indices, with ``k' = min(k, C)``, sorted by decreasing
    score.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probs = torch.softmax(logits.float(), dim=1)
    scores, indices = probs.topk(min(k, logits.shape[1]), dim=1, largest=True, sorted=True)
    return scores, indices


def cams_from_features(features: Tensor, weight: Tensor, class_indices: Tensor) -> Tensor:
    """Class activation maps ``M_c = sum_k W[c, k] f_k`` (no bias), all classes in one bmm.

    features: [B, K, h, w] (any float dtype; bf16/fp16 are promoted, the product is float32).
    weight: [C, K] weight of the final linear layer (its bias is NOT used).
    class_indices: [B, k] int64 class indices per image (or [k], shared by all images).
    Returns [B, k, h, w] float32 on the device of ``features``. With a GAP head,
    ``cams.mean((-2, -1)) + bias[class_indices] == logits[class_indices]`` up to float error.
    """
    if features.ndim != 4:
        raise ValueError(f"features must be [B, K, h, w], got shape {tuple(features.shape)}")
    if weight.ndim != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"weight must be [C, {features.shape[1]}] for {features.shape[1]} feature channels, "
            f"got shape {tuple(weight.shape)}"
        )
    b, k_ch, h, w = features.shape
    idx = class_indices.to(device=weight.device, dtype=torch.long)
    if idx.ndim == 1:
        idx = idx.unsqueeze(0).expand(b, -1)
    if idx.ndim != 2 or idx.shape[0] != b:
        raise ValueError(f"class_indices must be [{b}, k], got shape {tuple(class_indices.shape)}")
    rows = weight[idx].to(device=features.device, dtype=torch.float32)  # [B, k, K]
    flat = features.to(torch.float32).reshape(b, k_ch, h * w)  # [B, K, h*w]
    return torch.bmm(rows, flat).reshape(b, idx.shape[1], h, w)


def normalize_cams(cams: Tensor, mode: Normalization | str = "minmax") -> Tensor:
    """Normalise each map over its last two dims.

    cams: [..., h, w] float. Returns float32 of the same shape.
    - ``minmax``: ``(M - min) / (max - min)`` in [0, 1].
    - ``max``: ``|M| / max|M|`` in [0, 1] (official ILSVRC pipeline).
    - ``none``: the raw values (as float32).
    A map that holds any NaN/inf or is constant (``max == min``, which includes all zero) becomes
    all zeros in both modes: never NaN. Batched, no loop over maps.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalisation {mode!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )
    cams = cams.to(torch.float32)
    if mode == "none":
        return cams
    if cams.ndim < 2:
        raise ValueError(f"cams must be [..., h, w], got shape {tuple(cams.shape)}")
    if cams.shape[-1] * cams.shape[-2] == 0:
        return cams.clone()
    dims = (-2, -1)
    finite = torch.isfinite(cams).all(dim=-1, keepdim=True).all(dim=-2, keepdim=True)
    safe = torch.where(finite, cams, torch.zeros((), dtype=cams.dtype, device=cams.device))
    lo = safe.amin(dim=dims, keepdim=True)
    hi = safe.amax(dim=dims, keepdim=True)
    valid = finite & (hi > lo)
    if mode == "minmax":
        out = (safe - lo) / torch.where(valid, hi - lo, torch.ones_like(hi))
    else:  # "max"; a non-constant map has max|M| > 0
        mag = safe.abs()
        top = mag.amax(dim=dims, keepdim=True)
        out = mag / torch.where(valid, top, torch.ones_like(top))
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


# --------------------------------------------------------------------------------------------
# Geometry: how an original image became the network input, and back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """How an original ``height x width`` image was turned into the ``size x size`` input.

    mode ``"resize"`` (default): anisotropic resize of the whole image to ``size x size``.
    mode ``"center_crop"``: resize the shorter side to ``short_side`` keeping the aspect ratio
    (longer side ``int(short_side * long / short)``, as torchvision ``Resize(int)``), then centre
    crop ``size x size`` exactly as ``torchvision.transforms.functional.center_crop`` does
    (``top = int(round((h_r - size) / 2.0))``; zero padding when the crop is larger).
    ``short_side`` defaults to ``round(size * 256 / 224)`` (256 for 224, the ImageNet recipe).

    Coordinates below are in pixels, rows (y) first; ranges are half-open ``[start, stop)``.
    """

    height: int
    width: int
    size: int = 224
    mode: Literal["resize", "center_crop"] = "resize"
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.size < 1:
            raise ValueError(f"network input size must be positive, got {self.size}")
        if self.mode not in ("resize", "center_crop"):
            raise ValueError(f"unknown geometry mode {self.mode!r}; use 'resize' or 'center_crop'")
        if self.mode == "center_crop":
            if self.short_side is None:
                object.__setattr__(self, "short_side", round(self.size * 256 / 224))
            elif self.short_side < 1:
                raise ValueError(f"short_side must be positive, got {self.short_side}")

    @property
    def resized_hw(self) -> tuple[int, int]:
        """(h_r, w_r): the image size after the resize step (``(size, size)`` for ``resize``)."""
        if self.mode == "resize":
            return self.size, self.size
        r = int(self.short_side)  # type: ignore[arg-type]
        h, w = self.height, self.width
        if w <= h:
            return int(r * h / w), r
        return r, int(r * w / h)

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(top, left) of the crop in the resized image; negative where the crop was padded."""
        if self.mode == "resize":
            return 0, 0
        h_r, w_r = self.resized_hw
        s = self.size

        def _offset(n: int) -> int:
            if s > n:  # torchvision pads (s - n) // 2 before, then crops at 0
                return -((s - n) // 2)
            return round((n - s) / 2.0)

        return _offset(h_r), _offset(w_r)

    @property
    def crop_region(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the crop's extent in ORIGINAL pixels, rounded to the pixel grid.

        May reach outside ``[0, height) x [0, width)`` when the crop was zero padded. For
        ``resize`` it is the whole image ``(0, height, 0, width)``.
        """
        if self.mode == "resize":
            return 0, self.height, 0, self.width
        h_r, w_r = self.resized_hw
        top, left = self.crop_offset
        sy, sx = self.height / h_r, self.width / w_r
        y0, y1 = round(top * sy), round((top + self.size) * sy)
        x0, x1 = round(left * sx), round((left + self.size) * sx)
        return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)


class UpsampledCams(NamedTuple):
    """Result of :func:`upsample_to_images`.

    maps: B tensors [k, H_i, W_i] float32 in original-image pixels.
    coverage: B entries; ``None`` for ``resize`` geometries (the map covers every pixel), else a
    [H_i, W_i] bool tensor, True where the centre crop saw the pixel (maps are 0 elsewhere).
    """

    maps: list[Tensor]
    coverage: list[Tensor | None]


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}"
        )


def resize_maps(
    maps: Tensor, size: tuple[int, int], interpolation: Interpolation = "bilinear"
) -> Tensor:
    """Resize [N, k, h, w] maps to [N, k, size[0], size[1]] float32 in one ``F.interpolate`` call.

    ``align_corners=False`` (pixel centres map onto pixel centres). When an output dim is smaller
    than its input dim the resize is antialiased (like Matlab's ``imresize``). Bicubic output is
    clamped per map to the input map's [min, max] so it cannot overshoot. A resize to the same
    size returns the values unchanged.
    """
    _check_interpolation(interpolation)
    maps = maps.to(torch.float32)
    out_h, out_w = int(size[0]), int(size[1])
    if maps.shape[-2:] == (out_h, out_w):
        return maps.clone()
    antialias = out_h < maps.shape[-2] or out_w < maps.shape[-1]
    if (
        interpolation == "bilinear"
        and not antialias
        and maps.device.type == "cpu"
        and not maps.requires_grad  # OpenCV is not differentiable
    ):
        return _upsample_bilinear_cv2(maps, out_h, out_w)
    out = F.interpolate(
        maps, size=(out_h, out_w), mode=interpolation, align_corners=False, antialias=antialias
    )
    if interpolation == "bicubic":
        lo = maps.amin(dim=(-2, -1), keepdim=True)
        hi = maps.amax(dim=(-2, -1), keepdim=True)
        out = torch.clamp(out, min=lo, max=hi)
    return out


def _upsample_bilinear_cv2(maps: Tensor, out_h: int, out_w: int) -> Tensor:
    """CPU bilinear upsampling of [..., h, w] maps with OpenCV, one SIMD call per map.

    The same rule as ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel
    centres, edge replicated), equal to it within 1e-6, and 5-6x faster for photo-sized maps.
    """
    import cv2

    lead = maps.shape[:-2]
    src = maps.reshape(-1, *maps.shape[-2:]).contiguous().numpy()
    out = np.empty((src.shape[0], out_h, out_w), dtype=np.float32)
    for i in range(src.shape[0]):
        cv2.resize(src[i], (out_w, out_h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).reshape(*lead, out_h, out_w)


def _groups(keys: Sequence[object]) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def upsample_to_images(
    cams: Tensor, geometries: Sequence[Geometry], interpolation: Interpolation = "bilinear"
) -> UpsampledCams:
    """Map [B, k, h, w] CAMs back onto each ORIGINAL image (SPEC section 1, Upsampling).

    First every map is resized to the network input ``S x S`` (``Geometry.size``; one batched
    call per distinct S), then mapped onto the original image:
    - ``resize``: ``S x S -> H x W``.
    - ``center_crop``: ``S x S`` -> the crop region's size in original pixels
      (:attr:`Geometry.crop_region`), placed at its offset; pixels outside the crop are 0 and
      ``coverage`` is False there.
    Images with the same geometry are resized together. ``align_corners=False``; bicubic output
    is clamped to the input's per-map [min, max] (see :func:`resize_maps`).

    cams: [B, k, h, w] float; geometries: B entries. Returns :class:`UpsampledCams`
    (maps: B tensors [k, H_i, W_i] float32; coverage: B entries, None or [H_i, W_i] bool).
    """
    _check_interpolation(interpolation)
    if cams.ndim != 4:
        raise ValueError(f"cams must be [B, k, h, w], got shape {tuple(cams.shape)}")
    if len(geometries) != cams.shape[0]:
        raise ValueError(f"got {len(geometries)} geometries for a batch of {cams.shape[0]} maps")
    cams = cams.to(torch.float32)

    at_input: list[Tensor | None] = [None] * len(geometries)
    for s, idx in _groups([g.size for g in geometries]).items():
        sel = torch.tensor(idx, device=cams.device)
        resized = resize_maps(cams.index_select(0, sel), (s, s), interpolation)  # type: ignore[arg-type]
        for j, i in enumerate(idx):
            at_input[i] = resized[j]

    maps: list[Tensor | None] = [None] * len(geometries)
    coverage: list[Tensor | None] = [None] * len(geometries)
    for geom, idx in _groups(list(geometries)).items():
        assert isinstance(geom, Geometry)
        batch = torch.stack([at_input[i] for i in idx])  # type: ignore[misc]
        if geom.mode == "resize":
            out = resize_maps(batch, (geom.height, geom.width), interpolation)
            for j, i in enumerate(idx):
                maps[i] = out[j]
            continue
        y0, y1, x0, x1 = geom.crop_region
        region = resize_maps(batch, (y1 - y0, x1 - x0), interpolation)  # [n, k, y1-y0, x1-x0]
        cy0, cy1 = max(y0, 0), min(y1, geom.height)
        cx0, cx1 = max(x0, 0), min(x1, geom.width)
        canvas = region.new_zeros((len(idx), region.shape[1], geom.height, geom.width))
        cover = torch.zeros((geom.height, geom.width), dtype=torch.bool, device=cams.device)
        if cy1 > cy0 and cx1 > cx0:
            canvas[..., cy0:cy1, cx0:cx1] = region[..., cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            cover[cy0:cy1, cx0:cx1] = True
        for j, i in enumerate(idx):
            maps[i] = canvas[j]
            coverage[i] = cover.clone()
    return UpsampledCams(maps=maps, coverage=coverage)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Ten-crop (official ILSVRC evaluation)
# --------------------------------------------------------------------------------------------

TEN_CROP_NAMES: tuple[str, ...] = (
    "top_left",
    "top_right",
    "bottom_left",
    "bottom_right",
    "center",
    "top_left_mirror",
    "top_right_mirror",
    "bottom_left_mirror",
    "bottom_right_mirror",
    "center_mirror",
)


def ten_crop_offsets(height: int, width: int, crop: int = 224) -> list[tuple[int, int, bool]]:
    """The ten crops of a ``height x width`` image as ``(top, left, mirrored)``, in order.

    Order (Caffe's ``oversample``): top-left, top-right, bottom-left, bottom-right, centre, then
    the horizontal mirrors of those same five crops (crop ``j + 5`` is crop ``j`` flipped left to
    right). Note: torchvision's ``ten_crop`` differs (it crops the flipped image, so its 6th crop
    is the mirror of the top-RIGHT crop). Centre offset as torchvision:
    ``int(round((n - crop) / 2.0))``.
    """
    if crop > height or crop > width or crop < 1:
        raise ValueError(f"crop {crop} does not fit in a {height}x{width} image")
    b, r = height - crop, width - crop
    ct, cl = round(b / 2.0), round(r / 2.0)
    five = [(0, 0), (0, r), (b, 0), (b, r), (ct, cl)]
    return [(t, x, False) for t, x in five] + [(t, x, True) for t, x in five]


def ten_crop(x: Tensor, crop: int = 224) -> Tensor:
    """Ten crops of each image: [B, c, H, W] -> [B*10, c, crop, crop] (image-major).

    Row ``b * 10 + j`` is crop ``j`` of image ``b`` in the order of :func:`ten_crop_offsets`
    (four corners, centre, then their horizontal mirrors). Any dtype.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, c, H, W], got shape {tuple(x.shape)}")
    offsets = ten_crop_offsets(x.shape[-2], x.shape[-1], crop)
    crops = []
    for top, left, mirrored in offsets:
        c = x[..., top : top + crop, left : left + crop]
        crops.append(c.flip(-1) if mirrored else c)
    return torch.stack(crops, dim=1).reshape(x.shape[0] * 10, x.shape[1], crop, crop)


def merge_ten_crop(
    cams: Tensor,
    size: int | tuple[int, int] = 256,
    crop: int = 224,
    interpolation: Interpolation = "bilinear",
) -> Tensor:
    """Merge per-crop CAMs into one map per class on the ``size`` canvas.

    cams: [B, 10, k, h, w] float, crops in :func:`ten_crop` order. Each crop map is resized to
    ``crop x crop`` (one batched call), un-mirrored (crops 5..9 flipped back), and its ABSOLUTE
    value is added at its offset on a zero canvas. Returns [B, k, H, W] float32 (``size`` int or
    (H, W)). Where one crop covers a pixel the value is that crop's |map|; centre pixels covered by
    all crops sum ten. Map the result onto the original image with
    ``upsample_to_images(merged, [Geometry(H0, W0, size=256)])``.
    """
    if cams.ndim != 5 or cams.shape[1] != 10:
        raise ValueError(f"cams must be [B, 10, k, h, w], got shape {tuple(cams.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    offsets = ten_crop_offsets(out_h, out_w, crop)
    b, _, k, h, w = cams.shape
    up = resize_maps(cams.reshape(b * 10, k, h, w), (crop, crop), interpolation)
    up = up.reshape(b, 10, k, crop, crop).abs()
    canvas = up.new_zeros((b, k, out_h, out_w))
    for j, (top, left, mirrored) in enumerate(offsets):
        piece = up[:, j].flip(-1) if mirrored else up[:, j]
        canvas[..., top : top + crop, left : left + crop] += piece
    return canvas


def ten_crop_scores(logits: Tensor) -> Tensor:
    """Mean softmax over the ten crops: [B, 10, C] logits -> [B, C] float32 probabilities."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, n_crops, C], got shape {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)
