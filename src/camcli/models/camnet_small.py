"""camnet-small: a small GAP network for CPU-sized work (64-128 px inputs).

A plain VGG-style trunk: a 3x3 stem at full resolution, then ``stages`` stages of ``blocks``
3x3 conv + BatchNorm + ReLU layers, channels doubling at every stage
(``width``, ``2 width``, ``4 width``, ...). The first conv of a stage has stride 2 while
downsamplings remain: ``downsamplings`` (<= ``stages``) says how many stages halve the
resolution, so the last feature map is ``[width * 2**stages, S / 2**downsamplings, ...]`` for an
``S x S`` input. Removing a downsampling keeps every weight shape and doubles the map's side,
the paper's section 3.1 observation (a larger last map localises better) made a switch.

The options are recorded in camcli checkpoints as ``arch_options`` so ``--weights`` alone
rebuilds the same network.
"""

from __future__ import annotations

from torch import nn

from camcli.errors import SmallArchError

DEFAULT_OPTIONS: dict[str, int] = {"width": 16, "stages": 3, "downsamplings": 3, "blocks": 2}


def small_options(**arch_options: object) -> dict[str, int]:
    """Complete and validate camnet-small options.

    Args:
        **arch_options: ``width`` (4..256), ``stages`` (1..5), ``downsamplings``
            (0..stages), ``blocks`` (1..4); integers or integral floats.

    Returns:
        All four options, defaults (:data:`DEFAULT_OPTIONS`) filled in.

    Raises:
        SmallArchError: an unknown option, a non-integer or a value out of range.
    """
    unknown = sorted(set(arch_options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise SmallArchError(
            f"unknown camnet-small option {unknown[0]!r}; known: {', '.join(DEFAULT_OPTIONS)}"
        )
    opts = dict(DEFAULT_OPTIONS)
    for k, v in arch_options.items():
        try:
            iv = int(v)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise SmallArchError(f"camnet-small option {k}={v!r} must be an integer") from None
        if isinstance(v, float) and v != iv:
            raise SmallArchError(f"camnet-small option {k}={v!r} must be an integer")
        opts[k] = iv
    if not 4 <= opts["width"] <= 256:
        raise SmallArchError(f"width must be in 4..256, got {opts['width']}")
    if not 1 <= opts["stages"] <= 5:
        raise SmallArchError(f"stages must be in 1..5, got {opts['stages']}")
    if not 0 <= opts["downsamplings"] <= opts["stages"]:
        raise SmallArchError(
            f"downsamplings must be in 0..stages ({opts['stages']}), got {opts['downsamplings']}"
        )
    if not 1 <= opts["blocks"] <= 4:
        raise SmallArchError(f"blocks must be in 1..4, got {opts['blocks']}")
    return opts


def _cbr(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def feature_channels(**arch_options: object) -> int:
    """K = ``width * 2**stages``, the channel count of the last feature map.

    Raises:
        SmallArchError: bad options (see :func:`small_options`).
    """
    o = small_options(**arch_options)
    return o["width"] * 2 ** o["stages"]


def feature_size(input_size: int, **arch_options: object) -> int:
    """Side of the last feature map for an ``input_size`` square input.

    Raises:
        SmallArchError: bad options (see :func:`small_options`).
    """
    o = small_options(**arch_options)
    s = input_size
    for _ in range(o["downsamplings"]):
        s = (s + 1) // 2  # 3x3, stride 2, padding 1
    return s


def build_small_trunk(entry=None, **arch_options: object) -> tuple[nn.Module, int]:
    """The camnet-small trunk: [B, 3, S, S] float -> [B, K, S / 2**d, S / 2**d] (ReLU output).

    entry: the registry entry (unused beyond the builder hook's signature).
    arch_options: ``width`` (16), ``stages`` (3), ``downsamplings`` (3), ``blocks`` (2).
    Returns ``(trunk, K)`` with ``K = width * 2**stages``. Weights: Kaiming-normal convs,
    BatchNorm at (1, 0).

    Raises:
        SmallArchError: bad options (see :func:`small_options`).
    """
    o = small_options(**arch_options)
    layers: list[nn.Module] = _cbr(3, o["width"], 1)
    c = o["width"]
    for i in range(o["stages"]):
        c_out = o["width"] * 2 ** (i + 1)
        # The last stages are the ones that keep their resolution when downsamplings < stages.
        stride = 2 if i < o["downsamplings"] else 1
        layers += _cbr(c, c_out, stride)
        for _ in range(o["blocks"] - 1):
            layers += _cbr(c_out, c_out, 1)
        c = c_out
    trunk = nn.Sequential(*layers)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return trunk, c
