"""Options shared by several commands, defined once as Annotated aliases."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Image files, directories (recursive) or - for paths on stdin.", show_default=False
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Registry name (`camcli models`), torchvision:<name> or timm:<name> "
        "(default: efficientnet_lite0, or the network a camcli checkpoint in --weights names).",
    ),
]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        "-w",
        help="Registry weights name, local .pt/.pth/.safetensors "
        "file or camcli checkpoint, or an https URL.",
    ),
]
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, max=100_000, help="Classes per image.")]
#: ``cam`` writes one overlay per class: at most 1000 per image.
CamTopK = Annotated[
    int, typer.Option("--top-k", "-k", min=1, max=1000, help="Classes (maps) per image.")
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        min=1,
        max=65536,
        help=(
            "Images per forward pass (default: 64 on CUDA; on CPU 8, or the registry's "
            "cpu_batch_size: 4 for EfficientNet-Lite)."
        ),
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Offline = Annotated[
    bool,
    typer.Option("--offline", help="Never touch the network; use cached weights only."),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Decoding worker processes (default: cores, max 4)."),
]
Output = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="JSON Lines to FILE, or - for stdout. Without it: a "
        "table on a terminal, JSON Lines otherwise.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse images larger than this many pixels (decompression-bomb guard).",
    ),
]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
Precision = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, bf16 (autocast; CPUs with AVX512-BF16/AMX and "
        "GPUs) or fp16 (GPU only). Maps are always computed in fp32.",
    ),
]
Profile = Annotated[
    bool,
    typer.Option(
        "--profile",
        help="Print where the time went at the end: decode, transfer, forward, CAM, then "
        "post-process and encode+write (cam) or boxes (bbox).",
    ),
]
Codec = Annotated[
    str,
    typer.Option(
        "--codec",
        help="Where JPEGs are decoded and overlays rendered/encoded: auto "
        "(the device on CUDA, else the CPU), cpu, or device.",
    ),
]
Streams = Annotated[
    int | None,
    typer.Option(
        "--streams",
        min=1,
        max=64,
        help="CPU only: batches run through the network at once, each on threads/N torch "
        "threads, at least 1 (default: 2 when torch has 2 or more threads; 1: one pass on "
        "them all). Outputs may differ from --streams 1 in the last float bits.",
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="torch.compile the network (slow first batch; pays off on long runs, mostly on GPUs).",
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N",
        help="Process only shard I of N (0-based): inputs I, I+N, I+2N, ... of the sorted list. "
        "N jobs with I = 0..N-1 cover the inputs exactly once; each writes its own part "
        "(FILE.shard-I-of-N, DIR/manifest.shard-I-of-N.jsonl); join them with `camcli merge`.",
    ),
]
ResumeFile = Annotated[
    bool,
    typer.Option("--resume", help="Keep the records already in --output FILE; do only the rest."),
]


class Norm(StrEnum):
    minmax = "minmax"
    max = "max"
    none = "none"


class Interp(StrEnum):
    bilinear = "bilinear"
    bicubic = "bicubic"


NormOpt = Annotated[Norm, typer.Option("--norm", help="Map normalisation (SPEC section 1).")]
InterpOpt = Annotated[Interp, typer.Option("--interpolation", help="Map upsampling.")]
TenCrop = Annotated[
    bool,
    typer.Option(
        "--ten-crop",
        help="Official ILSVRC ten-crop merge (256x256 canvas for 224 crops; same ratio otherwise).",
    ),
]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Skip inputs already complete in DIR/manifest.jsonl."),
]


def given(ctx: typer.Context | None, names: tuple[str, ...] | list[str]) -> list[str]:
    """The flags (``--threshold``) of the parameters among ``names`` that the user set on the
    command line or through the environment, rather than left at their defaults."""
    if ctx is None:
        return []
    flags = {p.name: p for p in ctx.command.params}
    out = []
    for name in names:
        try:
            src = ctx.get_parameter_source(name)
        except Exception:  # noqa: BLE001 - no sources (older click): assume not given
            continue
        if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT"):
            p = flags.get(name)
            opts = [x for x in (getattr(p, "opts", None) or []) if x.startswith("--")]
            flag = opts[0] if opts else "--" + name.replace("_", "-")
            off = getattr(p, "secondary_opts", None)
            out.append(f"{flag}/{off[0]}" if off else flag)
    return out


def refuse_unused(ctx: typer.Context | None, names: tuple[str, ...] | list[str], why: str) -> None:
    """A usage error (exit 2) when any option among ``names`` was given although it does
    nothing here: ``why`` says when (``"with --from-maps (...)"``)."""
    flags = given(ctx, names)
    if flags:
        from camcli.errors import UsageError

        it = "does" if len(flags) == 1 else "do"
        raise UsageError(
            f"{', '.join(flags)} {it} nothing {why}: drop {'it' if it == 'does' else 'them'}"
        )


FollowLinks = Annotated[
    bool,
    typer.Option(
        "--follow-links",
        help="Follow folder links that lead out of an input folder (default: only links to "
        "folders inside it).",
    ),
]
