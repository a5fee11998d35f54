"""`camcli train`: fine-tune or train a GAP network on an ImageFolder tree.

Thin: parses, checks flag combinations, builds :class:`camcli.train.options.TrainOptions`,
runs :func:`camcli.train.run.train_folder` and prints progress (a bar on a terminal, one plain
line per epoch otherwise) on stderr. Errors carry their own exit codes (:mod:`camcli.errors`):
a non-finite loss is a :class:`~camcli.errors.NonFiniteError` (exit 1), any other training
error exit 2.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camcli.cli import options as o
from camcli.cli.train_progress import CliReporter
from camcli.data.inputs import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from camcli.train.loop import FitResult
    from camcli.train.options import TrainOptions


class Optim(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(StrEnum):
    step = "step"
    cosine = "cosine"


class Pool(StrEnum):
    gap = "gap"
    gmp = "gmp"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"
    auto = "auto"


def register(app: typer.Typer) -> None:
    app.command("train")(train)


# Options whose value --resume takes from the checkpoint instead of the command line (a
# different --lr is an error: camcli.train.run refuses it).
_FROM_CHECKPOINT = (
    "model",
    "val_split",
    "batch_size",
    "optimizer",
    "schedule",
    "image_size",
    "pretrained",
    "head_lr_mult",
    "freeze_backbone",
    "pool",
    "precision",
    "seed",
    "weight_decay",
    "warmup_epochs",
    "arch_option",
)


def train(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(
            help="ImageFolder tree: one folder per class, or train/ and val/ holding them.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Run folder: last.pt, best.pt, metrics.jsonl.", show_default=False
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Registry name (`camcli models`) or torchvision:<name>, e.g. camnet-small "
            "(from scratch, CPU-sized), vgg-gap, resnet50. Not needed with --resume.",
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option("--val", help="Validation ImageFolder (default: DATA/val if present)."),
    ] = None,
    val_split: Annotated[
        float,
        typer.Option(
            "--val-split",
            min=0.0,
            max=0.9,
            help="Share of each class held out for validation when there is no val folder.",
        ),
    ] = 0.1,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, help="(default: 10 fine-tuning, 30 from scratch)"),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            "-b",
            min=2,
            max=65536,
            help="Images per step and process (default: 64).",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Base learning rate (default: 1e-3 sgd fine-tuning, 2e-3 adamw)."
        ),
    ] = None,
    optimizer: Annotated[
        Optim | None,
        typer.Option("--optimizer", help="(default: sgd fine-tuning, adamw from scratch)"),
    ] = None,
    schedule: Annotated[
        Schedule | None,
        typer.Option(
            "--schedule",
            help="step: x0.1 every third of the epochs; cosine: decays to 0 after the warm-up "
            "(default: step fine-tuning, cosine from scratch and with --freeze-backbone). "
            "Either starts with --warmup-epochs of linear warm-up (default: 1 from scratch, "
            "else 0).",
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", min=16, help="Network input side S (default: the model's)."),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Start from the registry's backbone weights (default: where they exist).",
        ),
    ] = None,
    head_lr_mult: Annotated[
        float | None,
        typer.Option(
            "--head-lr-mult",
            help="Learning-rate multiplier of the new layers (default: 10 fine-tuning).",
        ),
    ] = None,
    freeze_backbone: Annotated[
        bool,
        typer.Option(
            "--freeze-backbone",
            help="Linear probe: train only the linear layer on pooled features, computed once.",
        ),
    ] = False,
    pool: Annotated[
        Pool | None,
        typer.Option(
            "--pool", help="Global average (gap) or max (gmp) pooling (default: model's)."
        ),
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="bf16/fp16 autocast (fp16 on CUDA, with loss scaling); auto: bf16 on a GPU or a "
            "CPU with AVX512-BF16/AMX, else fp32.",
        ),
    ] = Precision.fp32,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Decoding worker processes per training process (default: half the cores, "
            "max 4, on CPU; up to 8 on CUDA).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Initialisation, split, order, crops.")] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue RUN/last.pt after its last completed epoch (its options; --epochs "
            "may be raised).",
        ),
    ] = False,
    weight_decay: Annotated[
        float | None,
        typer.Option("--weight-decay", help="(default: 5e-4 sgd, 0.05 adamw)"),
    ] = None,
    warmup_epochs: Annotated[
        float | None,
        typer.Option(
            "--warmup-epochs",
            min=0.0,
            help="Linear warm-up before --schedule: the learning rate climbs in equal steps "
            "to --lr over this many epochs (fractions allowed; default: 1 from scratch, 0 "
            "fine-tuning and with --freeze-backbone).",
        ),
    ] = None,
    arch_option: Annotated[
        list[str] | None,
        typer.Option(
            "--arch-option",
            help="KEY=VALUE architecture option (repeatable), e.g. camnet-small width=24, "
            "downsamplings=2 (a larger last feature map).",
        ),
    ] = None,
    device: o.Device = "auto",
    offline: o.Offline = False,
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS,
    quiet: o.Quiet = False,
) -> int:
    """Train a GAP network on labelled folders; checkpoints load with `--weights` alone.

    DATA holds one folder per class (or train/ and val/ holding them). RUN gets last.pt (every
    epoch), best.pt (best validation top-1) and metrics.jsonl.

    From scratch on a CPU: camcli train shapes/ -m camnet-small --out runs/shapes --epochs 20

    Fine-tune the paper's VGG-GAP: camcli train birds/ -m vgg-gap --out runs/birds

    Linear probe: camcli train birds/ -m resnet50 --freeze-backbone --out runs/probe

    Several GPUs: torchrun --standalone --nproc-per-node 4 -m camcli train birds/ -m vgg-gap
    --out runs/birds
    """
    from camcli.cli.run import check_folders
    from camcli.train.run import train_folder

    check_folders(out)  # a file (or under one): now, not after the data is read
    _require_model(model, resume)
    if val is not None:
        o.refuse_unused(ctx, ("val_split",), f"with --val {val} (it validates on that folder)")
    opts = _train_options(
        model=model or "",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        schedule=schedule,
        image_size=image_size,
        pretrained=pretrained,
        head_lr_mult=head_lr_mult,
        freeze_backbone=freeze_backbone,
        pool=pool,
        precision=precision,
        workers=workers,
        seed=seed,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        val_split=val_split,
        arch_option=arch_option,
    )
    rank0 = _rank() == 0
    reporter = CliReporter(quiet=quiet or not rank0)
    try:
        result = train_folder(
            data,
            out,
            opts,
            val=val,
            resume=resume,
            device=device,
            offline=offline,
            reporter=reporter,
            max_pixels=max_pixels,
            on_resume=lambda saved: _warn_ignored_on_resume(ctx, saved),
        )
    finally:
        reporter.close()
    return _finish(result, out, show=rank0 and not quiet, reporter=reporter)


def _require_model(model: str | None, resume: bool) -> None:
    """A new run needs ``--model``; a resumed one takes it from the checkpoint."""
    from camcli.errors import UsageError

    if model is None and not resume:
        raise UsageError(
            "--model is required: a registry name (`camcli models`), e.g. camnet-small or vgg-gap"
        )


def _train_options(
    *,
    optimizer: Optim | None,
    schedule: Schedule | None,
    pool: Pool | None,
    precision: Precision,
    arch_option: list[str] | None,
    **plain,
) -> TrainOptions:
    """The command line's :class:`TrainOptions` (``None``: the recipe's default).

    Raises:
        TrainOptionError: an ``--arch-option`` that is not KEY=VALUE; a ``--lr``,
            ``--head-lr-mult`` or ``--weight-decay`` out of bounds (before a run is resumed).
    """
    from camcli.train.options import TrainOptions, check_rates, parse_arch_options

    check_rates(plain["lr"], plain["head_lr_mult"], plain["weight_decay"])
    return TrainOptions(
        **plain,
        optimizer=optimizer.value if optimizer else None,
        schedule=schedule.value if schedule else None,
        pool=pool.value if pool else None,
        precision=precision.value,
        arch_options=parse_arch_options(arch_option or []),
    )


def _warn_ignored_on_resume(ctx: typer.Context, saved: TrainOptions) -> None:
    """Name the options given on the command line that ``--resume`` takes from the checkpoint
    ``saved`` (once it is loaded: a run with nothing to resume gets its error alone) and that
    differ from it: repeating the original command with ``--resume`` is not warned about."""
    from camcli.console import warn

    def differs(name: str) -> bool:
        value = ctx.params.get(name)
        return getattr(value, "value", value) != getattr(saved, name, None)

    given = [n for n in _FROM_CHECKPOINT if _explicit(ctx, n) and differs(n)]
    if given:
        warn(
            "--resume continues with the checkpoint's options; ignoring "
            + ", ".join("--" + n.replace("_", "-") for n in given)
        )


def _finish(result: FitResult, out: Path, *, show: bool, reporter: CliReporter) -> int:
    """Name the best checkpoint; exit 1 when some images could not be used, else 0."""
    from camcli.console import warn
    from camcli.errors import Exit

    if show and result.best:
        b = result.best
        what = b["by"].replace("_top1", " top-1")
        reporter.info(
            f"best {what} {100 * b['val_top1']:.2f}% at epoch {b['epoch']}: {out / 'best.pt'}"
            f"  (try: camcli predict IMAGES --weights {out / 'best.pt'})"
        )
    if result.skipped:
        if show:
            warn(
                f"{len(result.skipped)} image(s) could not be used (see above); trained on the rest"
            )
        return Exit.SOME_FAILED
    return Exit.OK


def _explicit(ctx: typer.Context, name: str) -> bool:
    try:
        src = ctx.get_parameter_source(name)
    except Exception:  # noqa: BLE001 - older click: no sources, assume not given
        return False
    return src is not None and getattr(src, "name", "") == "COMMANDLINE"


def _rank() -> int:
    from camcli.sysinfo import torchrun_env

    env = torchrun_env()
    return env.rank if env is not None else 0
