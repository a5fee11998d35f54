"""Classes and maps: top-k, the class activation maps, normalisation (SPEC section 1).

The CAM of class c is ``M_c(x, y) = sum_k W[c, k] f_k(x, y)``, with no bias (Zhou et al.,
CVPR 2016, section 2). Nothing here reads files, prints, or picks a device: every function
works on the device of its input tensors and returns tensors on that same device. Maps are
computed and returned in float32.

Order of a typical call chain (:mod:`camcli.cam.upsample` maps back onto the images,
:mod:`camcli.cam.tencrop` holds the ten-crop variant)::

    logits, features = model(x)                      # [B, C], [B, K, h, w]
    scores, idx = topk_predictions(logits, k)        # [B, k], [B, k]
    cams = cams_from_features(features, W, idx)      # [B, k, h, w] float32 (no bias)
    up = upsample_to_images(cams, geometries)        # B x [k, H_i, W_i] in original pixels
    maps = [normalize_cams(m, "minmax") for m in up.maps]
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NORMALIZATIONS",
    "Normalization",
    "cams_from_features",
    "normalize_cams",
    "topk_predictions",
]

Normalization = Literal["minmax", "max", "none"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "max", "none")
"""The modes of :func:`normalize_cams` (SPEC section 1, Normalisation modes)."""


def topk_predictions(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k classes of each image, best first.

    Args:
        logits: ``[B, C]`` any float dtype, any device.
        k: how many classes; clipped to ``C``.

    Returns:
        ``(scores, indices)`` on the logits' device: scores ``[B, k']`` float32 softmax
        probabilities (computed in float32), indices ``[B, k']`` int64 class indices, with
        ``k' = min(k, C)``, sorted by decreasing score.

    Raises:
        ValueError: ``logits`` is not 2-D, or ``k < 1``.
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

    SPEC section 1; Zhou et al., CVPR 2016, section 2. With a GAP head,
    ``cams.mean((-2, -1)) + bias[class_indices] == logits[class_indices]`` up to float error.

    Args:
        features: ``[B, K, h, w]`` the last conv features, any float dtype (bf16/fp16 are
            promoted; the product is float32), any device.
        weight: ``[C, K]`` weight of the final linear layer (its bias is NOT used); the rows
            needed are gathered on its device, then moved to the features' device.
        class_indices: ``[B, k]`` integer class indices per image (or ``[k]``, shared by all
            images).

    Returns:
        ``[B, k, h, w]`` float32 on the device of ``features``; map ``[b, j]`` is the CAM of
        class ``class_indices[b, j]``.

    Raises:
        ValueError: ``features`` not 4-D, ``weight`` not ``[C, K]`` for the K feature
            channels, or ``class_indices`` not ``[B, k]`` / ``[k]``.
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
    """Normalise each map over its last two dims (SPEC section 1, Normalisation modes).

    - ``minmax`` (default; pytorch_CAM.py and wsolevaluation): ``(M - min) / (max - min)``.
    - ``max`` (official ILSVRC pipeline): ``|M| / max|M|``.
    - ``none``: the raw values (as float32).

    A map that holds any NaN/inf or is constant (``max == min``, which includes all zero)
    becomes all zeros in ``minmax`` and ``max``: never NaN. Batched, no loop over maps.

    Args:
        cams: ``[..., h, w]`` float, any device.
        mode: one of :data:`NORMALIZATIONS`.

    Returns:
        float32 of the same shape on the same device; values in [0, 1] for ``minmax`` and
        ``max``.

    Raises:
        ValueError: an unknown mode, or (``minmax``/``max``) fewer than two dimensions.
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
