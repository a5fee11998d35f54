"""TensorFlow's "same" padding made static for the network's fixed input size.

Networks ported from TensorFlow (EfficientNet-Lite's ``tf_*`` weights in timm) pad the input of
each strided convolution as TensorFlow does: ``total = max((ceil(n / s) - 1) * s + (k - 1) * d
+ 1 - n, 0)`` pixels, ``total // 2`` before and the rest after, so one more at the bottom and
right when ``total`` is odd. timm's ``Conv2dSame`` computes it on every call and pads with
``F.pad``: a new tensor filled with zeros and the input copied into it. On EfficientNet-Lite0
at 224 x 224 (five such layers, the largest reading 96 x 112 x 112 activations) that fill and
copy were about a fifth of a single-threaded CPU forward pass (``torch.profiler``, batch 4).

camcli always feeds the network ``S x S`` inputs (the registry's ``input_size``), so each
layer's input size, and its padding, is known once the network has run once:

- equal padding before and after: the convolution's own ``padding``;
- one pixel more after (``after = before + 1``): the convolution's own symmetric padding
  ``after`` with a kernel one larger whose first row (column) is zero. Output ``i`` then reads
  input rows ``s i - after .. s i - after + k``: the zero row meets ``s i - after`` and the real
  rows ``s i - before .. s i - before + k - 1``, TensorFlow's rows; the output size is
  ``floor((n + 2 after - k - 1) / s) + 1 = floor((n + before + after - k) / s) + 1``, TensorFlow's.
  The zero taps add exact zeros (EfficientNet-Lite0's outputs came out bit-identical).

:func:`static_same_padding` makes the change and keeps it only when the network's outputs match;
each replaced layer still runs the original dynamic padding on an input of another size
(:class:`FixedSizeSameConv`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["FixedSizeSameConv", "static_same_padding", "tf_same_pad"]


def tf_same_pad(n: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" padding of one spatial dimension: (before, after) pixels.

    Args:
        n: the input size; k: the kernel size; s: the stride; d: the dilation.

    Returns:
        ``(total // 2, total - total // 2)`` with ``total = max((ceil(n / s) - 1) s + (k - 1) d
        + 1 - n, 0)`` (timm's ``get_same_padding``, TensorFlow's ``padding="SAME"``).
    """
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


class FixedSizeSameConv(nn.Module):
    """A "same"-padded convolution with its padding fixed for one input size.

    Args:
        same: the original layer (timm's ``Conv2dSame``): kept, and run for inputs of any other
            size.
        conv: the equivalent ``nn.Conv2d`` for inputs of ``size`` (module doc).
        size: the input's ``(height, width)`` that ``conv`` is exact for.
    """

    def __init__(self, same: nn.Module, conv: nn.Conv2d, size: tuple[int, int]) -> None:
        super().__init__()
        self.same = same
        self.conv = conv
        self.size = (int(size[0]), int(size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[-2], x.shape[-1]) == self.size:
            return self.conv(x)
        return self.same(x)


def _static_conv(same: nn.Conv2d, size: tuple[int, int]) -> nn.Conv2d | None:
    """The ``nn.Conv2d`` equal to ``same`` on inputs of ``size`` (module doc), or None when its
    padding is not of the two forms (dilation, two pixels more after, ...)."""
    if tuple(same.dilation) != (1, 1) or not isinstance(same.padding, tuple):
        return None
    kh, kw = same.weight.shape[-2:]
    (t, b), (left, r) = (tf_same_pad(n, k, s) for n, k, s in zip(size, (kh, kw), same.stride))
    if b - t not in (0, 1) or r - left not in (0, 1):
        return None
    # a zero row on top / a zero column on the left where one pixel more is padded after
    weight = nn.functional.pad(same.weight.detach(), (r - left, 0, b - t, 0))
    conv = nn.Conv2d(
        same.in_channels,
        same.out_channels,
        tuple(weight.shape[-2:]),
        stride=same.stride,
        padding=(b, r),
        groups=same.groups,
        bias=same.bias is not None,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if same.bias is not None:
            conv.bias.copy_(same.bias.detach())
    return conv.eval()


def _same_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every timm ``Conv2dSame`` in ``model`` (none without timm)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return []
    return [(n, m) for n, m in model.named_modules() if type(m) is Conv2dSame]


def static_same_padding(model: nn.Module, input_size: int) -> tuple[nn.Module, int]:
    """``model`` with each timm ``Conv2dSame`` replaced, in place, by a
    :class:`FixedSizeSameConv` for the size its input has when the network reads ``[1, 3, S,
    S]`` (``S = input_size``): the same outputs without a padded copy of the input per call.

    The replacement is kept only when the network's outputs on a fixed pseudo-random input
    match the original's within a relative 1e-4 (the check of
    :func:`camcli.models.fold.fold_batchnorm`); otherwise every layer is put back.

    Args:
        model: a network in eval mode (a :class:`camcli.models.gap.GapModel` is called through
            ``forward_features``), on any device.
        input_size: the side ``S`` of the square inputs it will read.

    Returns:
        ``(model, layers replaced)``; ``(model, 0)`` unchanged when it has no such layer, is
        training, or fails the check or the trial forward pass.
    """
    from camcli.models.fold import forward_once, outputs_match

    layers = _same_layers(model)
    if model.training or not layers:
        return model, 0
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, args) -> None:  # returns None: the input is left as it is
            sizes.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, int(input_size), int(input_size), generator=gen).to(device)
    try:
        reference = forward_once(model, x)
    except RuntimeError:
        return model, 0
    finally:
        for h in hooks:
            h.remove()
    swapped = []
    for name, same in layers:
        conv = _static_conv(same, sizes[name]) if name in sizes else None
        if conv is not None:
            swapped.append((name, same))
            _set(model, name, FixedSizeSameConv(same, conv, sizes[name]))
    if swapped and not outputs_match(reference, forward_once(model, x)):
        for name, same in swapped:
            _set(model, name, same)
        return model, 0
    return model, len(swapped)


def _set(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
