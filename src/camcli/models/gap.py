"""The GAP adapter: every network camcli runs is a :class:`GapModel`.

A GapModel is a conv trunk (``features(x) -> [B, K, h, w]``), global pooling (``avg`` or
``max``) and one linear layer (``classifier -> (W [C, K], b [C])``), with the ``preprocess``
spec and ``categories`` it was trained with: exactly the form whose class activation map is
``W[c] . features``. :func:`split_gap_classifier` cuts a torchvision classifier of that form
into trunk, linear layer and pooling kind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from camcli.errors import ModelError
from camcli.models.registry import Preprocess


class GapModel(nn.Module):
    """Adapter: a conv trunk, global pooling, one linear layer.

    Args:
        trunk: [B, 3, S, S] normalised float -> [B, K, h, w] feature map.
        fc: ``Linear(K, C)``, the classifier on the pooled features.
        pool: ``"avg"`` (GAP) or ``"max"`` (GMP).
        name: the registry name (or ``torchvision:<name>``).
        preprocess: how an image becomes the network's input.
        categories: the C class names, in the order of ``fc``'s outputs.

    Attributes:
        weights_sha256, weights_source: the loaded weights file's digest and where it came
            from (None for random init); set by :func:`camcli.models.load.load_model`.
        head_trained: False for a paper network built on backbone weights only.

    Raises:
        ValueError: ``pool`` is neither ``avg`` nor ``max``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        fc: nn.Linear,
        pool: str,
        *,
        name: str,
        preprocess: Preprocess,
        categories: Sequence[str],
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max, got {pool!r}")
        self.trunk = trunk
        self.fc = fc
        self.pool = pool
        self.name = name
        self.preprocess = preprocess
        self.categories = list(categories)
        self.weights_sha256: str | None = None
        self.weights_source: str | None = None
        self.head_trained = True

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return self.fc.out_features

    @property
    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W [C, K], b [C]) of the linear layer, float, on the model's device (b zeros when
        the layer has no bias)."""
        w = self.fc.weight
        b = self.fc.bias if self.fc.bias is not None else torch.zeros(w.shape[0], device=w.device)
        return w, b

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised float -> last feature map [B, K, h, w]."""
        return self.trunk(x)

    def pooled(self, f: torch.Tensor) -> torch.Tensor:
        """[B, K, h, w] -> [B, K] (mean or max over the map, per the model's ``pool``)."""
        return f.mean(dim=(2, 3)) if self.pool == "avg" else f.amax(dim=(2, 3))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, S, S] -> (features [B, K, h, w], logits [B, C]) in one pass."""
        f = self.features(x)
        return f, self.fc(self.pooled(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> logits [B, C]."""
        return self.forward_features(x)[1]


class TransformInput(nn.Module):
    """torchvision GoogLeNet's ``transform_input``: re-normalise ImageNet-normalised input
    [B, 3, H, W] to the [-1, 1] scaling its published weights expect (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ch = [
            x[:, i : i + 1] * (s / 0.5) + (m - 0.5) / 0.5
            for i, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        ]
        return torch.cat(ch, dim=1)


# Pooling that some torchvision models do functionally in forward(): class name -> pool kind.
_FUNCTIONAL_POOL = {"ShuffleNetV2": "avg", "MNASNet": "avg", "MobileNetV2": "avg"}
_SKIP_CHILDREN = ("aux1", "aux2", "AuxLogits")
# Networks whose published torchvision weights expect ``transform_input=True``.
_TRANSFORM_INPUT = ("GoogLeNet", "Inception3")


def _is_global_pool(m: nn.Module) -> str | None:
    if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = m.output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if all(s == 1 for s in size):
            return "avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "max"
    return None


def _single_linear(modules: list[nn.Module]) -> nn.Linear | None:
    """The one Linear among modules that may only add Dropout/Flatten/Identity around it."""
    flat: list[nn.Module] = []
    for m in modules:
        flat.extend(m.children() if isinstance(m, nn.Sequential) else [m])
    linears = [m for m in flat if isinstance(m, nn.Linear)]
    rest = [m for m in flat if not isinstance(m, nn.Linear | nn.Dropout | nn.Flatten | nn.Identity)]
    return linears[0] if len(linears) == 1 and not rest else None


def split_gap_classifier(net: nn.Module, name: str) -> tuple[nn.Module, nn.Linear, str]:
    """Cut a torchvision classifier ending in global pooling + one linear layer into its parts.

    Args:
        net: a torchvision classification network (any weights, any device, meta included).
        name: the network's name, for the error message.

    Returns:
        ``(trunk, fc, pool)``: the modules before the pooling as one ``nn.Sequential``
        ([B, 3, S, S] -> [B, K, h, w]; GoogLeNet/Inception with ``transform_input`` get
        :class:`TransformInput` first), the ``nn.Linear(K, C)`` head (shared with ``net``, not
        copied) and ``"avg"`` or ``"max"``.

    Raises:
        ModelError: the head has another form (e.g. VGG's three linear layers), naming the
            registry's paper networks to use instead.
    """
    cls = type(net).__name__
    if cls == "DenseNet":
        return nn.Sequential(net.features, nn.ReLU()), net.classifier, "avg"
    children = [(n, m) for n, m in net.named_children() if n not in _SKIP_CHILDREN]
    pool_at = next((i for i, (_, m) in enumerate(children) if _is_global_pool(m)), None)
    if pool_at is not None:
        pool = _is_global_pool(children[pool_at][1])
        body, head = children[:pool_at], children[pool_at + 1 :]
    elif cls in _FUNCTIONAL_POOL:
        pool = _FUNCTIONAL_POOL[cls]
        head_at = len(children) - 1
        body, head = children[:head_at], children[head_at:]
    else:
        body = head = None
    fc = _single_linear([m for _, m in head]) if head is not None else None
    if fc is None:
        raise ModelError(
            f"{name}: its head is not global pooling + one linear layer, so it gives no exact "
            "CAM; use a registry network (`camcli models`), e.g. vgg-gap in place of vgg16"
        )
    mods: list[nn.Module] = []
    if cls in _TRANSFORM_INPUT and getattr(net, "transform_input", False):
        mods.append(TransformInput())
    mods.extend(m for _, m in body)
    return nn.Sequential(*mods), fc, pool
