"""What defines a training run: :class:`TrainOptions`, the recipes that fill them, validation.

torch-free. A :class:`TrainOptions` left partly ``None`` means "the recipe's default";
:func:`resolve_options` picks the recipe (``finetune``, ``scratch`` or ``linear-probe``), fills
every field and validates, and the resolved copy is what checkpoints keep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from camcli.errors import TrainOptionError
from camcli.models.registry import ModelEntry

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: command-line and registry pool names -> the model's ("avg" | "max")
POOL_NAMES = {"gap": "avg", "gmp": "max", "avg": "avg", "max": "max"}


@dataclass
class TrainOptions:
    """Everything that defines a run. ``None`` means "the recipe's default" (see
    :func:`resolve_options`); a resolved copy has every field set and is what checkpoints keep.
    """

    model: str
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    image_size: int | None = None
    pretrained: bool | None = None
    head_lr_mult: float | None = None
    freeze_backbone: bool = False
    pool: str | None = None  # "avg" | "max" (CLI: gap | gmp)
    precision: str = "fp32"
    workers: int | None = None
    seed: int = 0
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    val_split: float = 0.1
    arch_options: dict = field(default_factory=dict)
    recipe: str | None = None  # filled in by resolve_options: finetune | scratch | linear-probe

    def to_dict(self) -> dict:
        """The options as a plain dict (what a checkpoint's ``train_options`` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        """Options from :meth:`to_dict`'s output; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Recipe defaults. finetune: SPEC section 6 (official GoogLeNet-CAM / wsolevaluation: SGD
# nesterov momentum 0.9, lr 1e-3, x0.1 steps, wd 5e-4, batch 64, new layers at lr x10).
# scratch: AdamW + cosine with one warm-up epoch, robust for small nets on small data.
# linear-probe: the linear layer alone on cached pooled features.
RECIPES: dict[str, dict[str, Any]] = {
    "finetune": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "sgd",
        "schedule": "step",
        "head_lr_mult": 10.0,
        "weight_decay": 5e-4,
        "warmup_epochs": 0.0,
    },
    "scratch": {
        "epochs": 30,
        "batch_size": 64,
        "lr": 2e-3,
        "optimizer": "adamw",
        "schedule": "cosine",
        "head_lr_mult": 1.0,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
    },
    "linear-probe": {
        "epochs": 30,
        "batch_size": 256,
        "lr": 1e-3,
        "optimizer": "adamw",
        "schedule": "cosine",
        "head_lr_mult": 1.0,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.0,
    },
}


def has_backbone_weights(entry: ModelEntry) -> bool:
    """Whether the registry entry names weights to start from (its ``url``, or for
    ``timm:<name>`` a Hugging Face Hub id)."""
    return bool(entry.url or entry.extra.get("hf_hub_id"))


def resolve_options(opts: TrainOptions, entry: ModelEntry) -> TrainOptions:
    """Fill every ``None`` from the recipe that fits and validate.

    The recipe: ``linear-probe`` with ``freeze_backbone``, else ``finetune`` where backbone
    weights exist and are used, else ``scratch``.

    Args:
        opts: the options as given (``None`` = recipe default); not modified.
        entry: the registry entry of ``opts.model``.

    Returns:
        A copy with every field set, ``recipe`` named and ``pool`` as "avg" | "max".

    Raises:
        TrainOptionError: pretrained weights asked for but missing, ``freeze_backbone`` without
            them, a value out of range, or ``arch_options`` the network does not take (a
            :class:`~camcli.errors.TrainingError` and, on the command line, a usage error).
    """
    pretrained = opts.pretrained
    if pretrained is None:
        pretrained = has_backbone_weights(entry)
    elif pretrained and not has_backbone_weights(entry):
        raise TrainOptionError(
            f"--pretrained: {entry.name} has no pretrained weights to start from; "
            "use --no-pretrained"
        )
    if opts.freeze_backbone and not pretrained:
        raise TrainOptionError(
            "--freeze-backbone trains only the linear layer on top of a pretrained backbone; "
            f"{entry.name} would have a random one: drop --freeze-backbone or use --pretrained"
        )
    recipe = "linear-probe" if opts.freeze_backbone else ("finetune" if pretrained else "scratch")
    d = RECIPES[recipe]
    out = replace(
        opts,
        pretrained=pretrained,
        recipe=recipe,
        pool=POOL_NAMES.get(opts.pool or entry.pool, opts.pool),
        image_size=opts.image_size or entry.preprocess.input_size,
        arch_options=dict(opts.arch_options or {}),
        **{k: (getattr(opts, k) if getattr(opts, k) is not None else v) for k, v in d.items()},
    )
    _validate(out)
    _check_arch_options(out.arch_options, entry)
    return out


def _check_arch_options(arch: dict, entry: ModelEntry) -> None:
    """``--arch-option`` values the network takes: camnet-small's (checked by its builder's
    own rules); any other network takes none (they would be ignored silently).

    Raises:
        TrainOptionError: an unknown key or a bad value.
    """
    if not arch:
        return
    if entry.builder != "small":
        k = next(iter(arch))
        raise TrainOptionError(
            f"--arch-option {k}={arch[k]}: {entry.name} takes no architecture options "
            "(camnet-small does: width, stages, downsamplings, blocks); drop it"
        )
    from camcli.errors import SmallArchError
    from camcli.models.camnet_small import small_options

    try:
        small_options(**arch)
    except SmallArchError as exc:
        raise TrainOptionError(f"--arch-option: {exc}") from None


def check_options(o: TrainOptions) -> None:
    """Validate resolved options (bounds and choices).

    Raises:
        TrainOptionError: the first option out of bounds.
        TypeError: an option of the wrong type (a hand-edited checkpoint).
    """
    _validate(o)


def check_rates(
    lr: float | None, head_lr_mult: float | None, weight_decay: float | None = None
) -> None:
    """The learning rate and head multiplier (positive numbers) and the weight decay (a number
    >= 0) as given; None (the recipe's default) passes. A value is shown as typed (``--lr 0``,
    not ``0.0``).

    Raises:
        TrainOptionError: the first value out of bounds, NaN or infinite.
    """
    for flag, v, ok, what in (
        ("--lr", lr, lr is not None and lr > 0, "a positive number"),
        ("--head-lr-mult", head_lr_mult, head_lr_mult is not None and head_lr_mult > 0,
         "a positive number"),
        ("--weight-decay", weight_decay, weight_decay is not None and weight_decay >= 0,
         "a number >= 0 (0: no decay)"),
    ):  # fmt: skip
        if v is not None and not (ok and math.isfinite(v)):
            raise TrainOptionError(f"{flag} {v:g}: must be {what}")


def _validate(o: TrainOptions) -> None:
    check_rates(o.lr, o.head_lr_mult, o.weight_decay)
    checks = [
        (o.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (o.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
        (o.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
        (o.pool in ("avg", "max"), "--pool must be gap or gmp"),
        (o.epochs >= 1, f"--epochs {o.epochs}: must be >= 1"),
        (
            o.batch_size >= 2,
            f"--batch-size {o.batch_size}: must be >= 2 (BatchNorm needs two images)",
        ),
        (o.batch_size <= 65536, f"--batch-size {o.batch_size}: must be <= 65536"),
        (0 <= o.val_split < 1, f"--val-split {o.val_split}: must be in [0, 1)"),
        (16 <= o.image_size <= 1024, f"--image-size {o.image_size}: must be 16..1024"),
        (0 <= o.label_smoothing < 1, "label smoothing must be in [0, 1)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TrainOptionError(msg)


def parse_arch_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``--arch-option KEY=VALUE`` pairs as a dict.

    ``["width=24", "downsamplings=2"]`` -> ``{"width": 24, "downsamplings": 2}``: values become
    ints, floats, ``true``/``false`` booleans, or else stay strings.

    Raises:
        TrainOptionError: a pair without ``=``.
    """
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise TrainOptionError(f"--arch-option {p!r}: use KEY=VALUE, e.g. width=24")
        k, v = p.split("=", 1)
        out[k.strip()] = _arch_value(v)
    return out


def _arch_value(v: str) -> Any:
    val: Any = v.strip()
    for conv in (int, float):
        try:
            val = conv(v)
            break
        except ValueError:
            continue
    if isinstance(val, str) and val.lower() in ("true", "false"):
        val = val.lower() == "true"
    return val
