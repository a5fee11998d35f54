"""Ten-crop evaluation, as the official ILSVRC pipeline ran it (SPEC section 1, Ten-crop).

The image is resized to 256 x 256; four corner and one centre 224 crops and their horizontal
mirrors go through the network; classes are ranked by the mean softmax over the ten crops; each
crop's CAM is upsampled to 224, un-mirrored, and its absolute value summed at its offset on a
256 x 256 canvas::

    crops = ten_crop(x256, 224)                      # [B*10, 3, 224, 224]
    logits, features = model(crops)                  # [B*10, C], [B*10, K, h, w]
    probs = ten_crop_scores(logits.view(B, 10, -1))  # [B, C] mean softmax
    scores, idx = probs.topk(k, dim=1)
    cams = cams_from_features(features, W, idx.repeat_interleave(10, dim=0))
    merged = merge_ten_crop(cams.view(B, 10, k, h, w), size=256, crop=224)  # [B, k, 256, 256]
    up = upsample_to_images(merged, [Geometry(H, W, size=256) for ...])

Nothing here reads files, prints, or picks a device: results are on the device of the inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camcli.cam.upsample import Interpolation, resize_maps

__all__ = ["merge_ten_crop", "ten_crop", "ten_crop_offsets", "ten_crop_scores"]


def ten_crop_offsets(height: int, width: int, crop: int = 224) -> list[tuple[int, int, bool]]:
    """The ten crops of a ``height x width`` image, in order.

    Order (Caffe's ``oversample``): top-left, top-right, bottom-left, bottom-right, centre, then
    the horizontal mirrors of those same five crops (crop ``j + 5`` is crop ``j`` flipped left
    to right). Note: torchvision's ``ten_crop`` differs (it crops the flipped image, so its 6th
    crop is the mirror of the top-RIGHT crop). Centre offset as torchvision:
    ``int(round((n - crop) / 2.0))``.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        crop: the square crop side.

    Returns:
        Ten ``(top, left, mirrored)`` tuples; ``top``/``left`` are the crop's first row/column.

    Raises:
        ValueError: the crop is smaller than 1 or larger than the image.
    """
    if crop > height or crop > width or crop < 1:
        raise ValueError(f"crop {crop} does not fit in a {height}x{width} image")
    b, r = height - crop, width - crop
    ct, cl = round(b / 2.0), round(r / 2.0)
    five = [(0, 0), (0, r), (b, 0), (b, r), (ct, cl)]
    return [(t, x, False) for t, x in five] + [(t, x, True) for t, x in five]


def ten_crop(x: Tensor, crop: int = 224) -> Tensor:
    """Ten crops of each image, image-major.

    Args:
        x: ``[B, c, H, W]`` images, any dtype, any device.
        crop: the square crop side (<= H and <= W).

    Returns:
        ``[B*10, c, crop, crop]``, same dtype and device. Row ``b * 10 + j`` is crop ``j`` of
        image ``b`` in the order of :func:`ten_crop_offsets` (four corners, centre, then their
        horizontal mirrors).

    Raises:
        ValueError: ``x`` is not 4-D, or the crop does not fit.
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

    Each crop map is resized to ``crop x crop`` (one batched call, :func:`resize_maps`),
    un-mirrored (crops 5..9 flipped back), and its ABSOLUTE value is added at its offset on a
    zero canvas. Where one crop covers a pixel the value is that crop's |map|; centre pixels
    covered by all crops sum ten. Map the result onto the original image with
    ``upsample_to_images(merged, [Geometry(H0, W0, size=256)])``.

    Args:
        cams: ``[B, 10, k, h, w]`` float, crops in :func:`ten_crop` order, any device.
        size: the canvas, an int (square) or ``(H, W)``.
        crop: the crop side the network saw.
        interpolation: ``"bilinear"`` or ``"bicubic"``.

    Returns:
        ``[B, k, H, W]`` float32, >= 0, on the device of ``cams``.

    Raises:
        ValueError: ``cams`` is not ``[B, 10, k, h, w]``, the crop does not fit the canvas, or
            an unknown interpolation.
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
    """Mean softmax over the crops (SPEC section 1: classes ranked by it).

    Args:
        logits: ``[B, n_crops, C]`` any float dtype (``[B, 10, C]`` for ten-crop).

    Returns:
        ``[B, C]`` float32 probabilities (softmax computed in float32), on the logits' device.

    Raises:
        ValueError: ``logits`` is not 3-D.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [B, n_crops, C], got shape {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)
