"""`camcli cam`: class activation maps for whole folders: overlays, grids, raw maps."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.io import DEFAULT_MAX_PIXELS


class Norm(StrEnum):
    minmax = "minmax"
    max = "max"
    none = "none"


class Interp(StrEnum):
    bilinear = "bilinear"
    bicubic = "bicubic"


class Fmt(StrEnum):
    jpg = "jpg"
    png = "png"


Classes = Annotated[
    list[str] | None,
    typer.Option(
        "--class", "-c", help="Class name or index to map (repeatable); replaces --top-k."
    ),
]
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


def register(app: typer.Typer) -> None:
    app.command("cam")(cam)


def cam(
    inputs: o.Inputs,
    out: o.OutDir,
    model: o.Model = None,
    weights: o.Weights = None,
    top_k: o.TopK = 5,
    classes: Classes = None,
    norm: NormOpt = Norm.minmax,
    interpolation: InterpOpt = Interp.bilinear,
    colormap: Annotated[
        str,
        typer.Option(
            "--colormap", help="jet (paper), turbo, viridis, inferno, magma, plasma, hot, gray, ..."
        ),
    ] = "jet",
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="Heatmap weight in the overlay.")
    ] = 0.5,
    fmt: Annotated[Fmt, typer.Option("--format", help="Overlay image format.")] = Fmt.jpg,
    grid: Annotated[
        bool,
        typer.Option(
            "--grid",
            help="One image per input: the original and its overlays side by side, captioned.",
        ),
    ] = False,
    save_maps: Annotated[
        bool,
        typer.Option(
            "--save-maps", help="Write DIR/<name>.npz with the raw maps at original resolution."
        ),
    ] = False,
    no_overlay: Annotated[
        bool, typer.Option("--no-overlay", help="Write no per-class overlays.")
    ] = False,
    ten_crop: TenCrop = False,
    resume: Resume = False,
    batch_size: o.BatchSize = None,
    device: o.Device = "auto",
    offline: o.Offline = False,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS,
    precision: o.Precision = "fp32",
    profile: o.Profile = False,
    codec: o.Codec = "auto",
    compile: o.Compile = False,
    quiet: o.Quiet = False,
) -> int:
    """Class activation maps of the top-k (or named) classes, mapped onto each original image.

    Example: camcli cam images/ --out cams/ --model resnet50 --top-k 5 --grid --save-maps
    """
    import time

    from camcli import api, jobs
    from camcli.cli.run import open_session, progress_bar, resolve_inputs
    from camcli.outdir import OutDir
    from camcli.output import CamcliError, info
    from camcli.render import COLORMAPS

    if colormap not in COLORMAPS:
        raise CamcliError(f"--colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    if no_overlay and not grid and not save_maps:
        raise CamcliError("--no-overlay leaves nothing to write: add --grid or --save-maps")
    started = time.time()
    items = resolve_inputs(inputs)
    session = open_session(
        model,
        weights,
        precision=precision,
        profile=profile,
        codec=codec,
        compile=compile,
        device=device,
        batch_size=batch_size,
        offline=offline,
        workers=workers,
        max_pixels=max_pixels,
    )
    opts = api.CamOptions(
        top_k=top_k,
        classes=api.resolve_classes(session.model, classes),
        norm=norm.value,
        interpolation=interpolation.value,
        ten_crop=ten_crop,
    )
    wopts = jobs.CamWriteOptions(
        colormap=colormap,
        alpha=alpha,
        fmt=fmt.value,
        overlays=not no_overlay,
        grid=grid,
        save_maps=save_maps,
        device_render=session.device_codec,
    )
    outdir = OutDir(out, resume=resume)
    todo = [it for it in items if it.key not in outdir.done]
    skipped = len(items) - len(todo)
    if skipped:
        info(f"resume: {skipped} of {len(items)} inputs already complete", quiet)
    bar = progress_bar(len(todo), quiet, "cam")
    interrupted = False
    try:
        jobs.run_cam(
            session,
            todo,
            opts,
            wopts,
            outdir,
            on_record=(lambda _r: bar.advance(bar.task)) if bar else None,
        )
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if bar:
            bar.stop()
        outdir.close(order=[(it.index, it.key) for it in items], cancel=interrupted)
        if not interrupted:
            outdir.write_run_json(
                jobs.run_info(
                    session,
                    "cam",
                    {**jobs.options_dict(opts, wopts), "inputs": list(inputs), "resumed": skipped},
                    started,
                )
            )
    st = session.stats
    if profile:
        session.profiler.images = st["ok"]
        info(session.profiler.report())
    if not quiet:
        info(
            f"cam: {st['ok']} done, {st['failed']} failed, {skipped} skipped; outputs in {out}",
            quiet=not sys.stderr.isatty() and quiet,
        )
    # Inputs completed by an earlier run count as done: a resumed run whose only new input
    # fails has failed partly (1), not found no input (3).
    return api.exit_code({"ok": st["ok"] + skipped, "failed": st["failed"]})
