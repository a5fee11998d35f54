"""`camcli cam`: class activation maps for whole folders: overlays, grids, raw maps."""

from __future__ import annotations

import time
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camcli.cli import options as o
from camcli.data.inputs import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from camcli.api.cam_job import CamJobOptions
    from camcli.api.progress import JobRun
    from camcli.api.session import Session
    from camcli.api.split import Split


class MapsFormat(StrEnum):
    small = "small"
    full = "full"


MAX_TOP_K = 100
"""The largest ``--top-k`` of ``cam``: every class is an overlay file per image; a larger
value is lowered to it with a warning."""


class Fmt(StrEnum):
    jpg = "jpg"
    png = "png"


Classes = Annotated[
    list[str] | None,
    typer.Option(
        "--class", "-c", help="Class name or index to map (repeatable); replaces --top-k."
    ),
]


def register(app: typer.Typer) -> None:
    app.command("cam")(cam)


def cam(
    ctx: typer.Context,
    inputs: o.Inputs,
    out: o.OutDir,
    model: o.Model = None,
    weights: o.Weights = None,
    top_k: o.CamTopK = 5,
    classes: Classes = None,
    norm: o.NormOpt = o.Norm.minmax,
    interpolation: o.InterpOpt = o.Interp.bilinear,
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
            "--save-maps",
            help="Write DIR/<name>.npz: the raw maps at feature resolution and the geometry "
            "that maps them onto the image (map file v2; see --maps-format).",
        ),
    ] = False,
    maps_format: Annotated[
        MapsFormat,
        typer.Option(
            "--maps-format",
            help="--save-maps file form: small (v2, maps at feature resolution, exact) or "
            "full (float16 maps at the original size, compressed, for other tools).",
        ),
    ] = MapsFormat.small,
    no_overlay: Annotated[
        bool, typer.Option("--no-overlay", help="Write no per-class overlays.")
    ] = False,
    gt: Annotated[
        Path | None,
        typer.Option(
            "--gt",
            help="Ground truth: also map each image's GT class (added last when not in the "
            "top k), so that `eval --maps` reports GT-known localization for every image.",
        ),
    ] = None,
    ten_crop: o.TenCrop = False,
    resume: o.Resume = False,
    follow_links: o.FollowLinks = False,
    shard: o.Shard = None,
    batch_size: o.BatchSize = None,
    device: o.Device = "auto",
    offline: o.Offline = False,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS,
    precision: o.Precision = "fp32",
    profile: o.Profile = False,
    codec: o.Codec = "auto",
    compile: o.Compile = False,
    streams: o.Streams = None,
    quiet: o.Quiet = False,
) -> int:
    """Class activation maps of the top-k (or named) classes, mapped onto each original image.

    Example: camcli cam images/ --out cams/ --model resnet50 --top-k 5 --grid --save-maps
    """
    from camcli.api.cam_job import run_cam_job
    from camcli.api.split import plan_split
    from camcli.cli.run import check_folders, open_session, resolve_inputs, session_options

    check_folders(out)  # a file (or under one): now, not after the model loads
    from camcli.runs.samerun import refuse_other_command

    refuse_other_command(Path(out), "cam", "--out")  # a bbox --draw folder, e.g.
    colormap = colormap.lower()  # "JET" as OpenCV's COLORMAP_JET is named: the same map
    _check_flags(colormap=colormap, no_overlay=no_overlay, grid=grid, save_maps=save_maps)
    _refuse_unused(ctx, classes=classes, no_overlay=no_overlay, grid=grid, save_maps=save_maps)
    opts = _cam_job_options(
        out=out,
        inputs=inputs,
        top_k=top_k,
        classes=classes,
        norm=norm,
        interpolation=interpolation,
        ten_crop=ten_crop,
        colormap=colormap,
        alpha=alpha,
        fmt=fmt,
        no_overlay=no_overlay,
        grid=grid,
        save_maps=save_maps,
        maps_format=maps_format,
        resume=resume,
        gt=gt,
    )
    if gt is not None:  # a bad file fails now, not once the model has loaded
        from camcli.evaluate.groundtruth import read_ground_truth

        opts = replace(opts, truth=read_ground_truth(str(gt)))
    items = resolve_inputs(inputs, follow_links=follow_links)
    split = plan_split(shard, inputs)
    started = time.time()
    try:
        session = open_session(
            model, weights, split=split, renders=True, **session_options(locals())
        )
        if not classes:
            opts = replace(opts, top_k=_fit_top_k(ctx, top_k, session.model.num_classes))
        run = run_cam_job(
            opts, session, items, split, _progress(quiet, split.main), started=started
        )
        _report_end(run, session, split, out=out, quiet=quiet)
        split.barrier()
    finally:
        split.close()
    return run.exit_code if split.main else 0


def _fit_top_k(ctx: typer.Context | None, top_k: int, num_classes: int) -> int:
    """``--top-k`` lowered to the model's class count or to :data:`MAX_TOP_K`, whichever is
    smaller, with one warning saying why."""
    from camcli.cli.run import fit_top_k

    if num_classes < min(top_k, MAX_TOP_K):
        return fit_top_k(ctx, top_k, num_classes)
    if top_k > MAX_TOP_K:
        from camcli.console import warn

        warn(f"--top-k {top_k} lowered to {MAX_TOP_K} (one map, and overlay, per class and image)")
        return MAX_TOP_K
    return top_k


def _check_flags(*, colormap: str, no_overlay: bool, grid: bool, save_maps: bool) -> None:
    """Refuse an unknown colormap and a run with nothing to write (exit 2)."""
    from camcli.cam.render import COLORMAPS
    from camcli.errors import UsageError

    if colormap not in COLORMAPS:
        raise UsageError(f"--colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    if no_overlay and not grid and not save_maps:
        raise UsageError("--no-overlay leaves nothing to write: add --grid or --save-maps")


def _refuse_unused(
    ctx: typer.Context | None,
    *,
    classes: list[str] | None,
    no_overlay: bool,
    grid: bool,
    save_maps: bool,
) -> None:
    """Options that would do nothing in this run are a usage error (exit 2), not ignored."""
    if not save_maps:
        o.refuse_unused(ctx, ("maps_format",), "without --save-maps (it sets the map files' form)")
    if classes:
        o.refuse_unused(ctx, ("top_k",), "with --class (the named classes replace the top k)")
    if no_overlay and not grid:
        o.refuse_unused(
            ctx,
            ("colormap", "alpha", "fmt"),
            "with --no-overlay and no --grid (no image is drawn; --save-maps writes raw maps)",
        )


def _cam_job_options(
    *,
    out: Path,
    inputs: list[str],
    top_k: int,
    classes: list[str] | None,
    norm: o.Norm,
    interpolation: o.Interp,
    ten_crop: bool,
    colormap: str,
    alpha: float,
    fmt: Fmt,
    no_overlay: bool,
    grid: bool,
    save_maps: bool,
    maps_format: MapsFormat = MapsFormat.small,
    resume: bool,
    gt: Path | None = None,
) -> CamJobOptions:
    """The job's options from the command's flags."""
    from camcli.api.cam_files import CamWriteOptions
    from camcli.api.cam_job import CamJobOptions

    return CamJobOptions(
        out=out,
        inputs=tuple(inputs),
        top_k=top_k,
        classes=tuple(classes) if classes else None,
        norm=norm.value,
        interpolation=interpolation.value,
        ten_crop=ten_crop,
        write=CamWriteOptions(
            colormap=colormap,
            alpha=alpha,
            fmt=fmt.value,
            overlays=not no_overlay,
            grid=grid,
            save_maps=save_maps,
            maps_format=maps_format.value,
        ),
        resume=resume,
        gt=gt,
    )


def _report_end(run: JobRun, session: Session, split: Split, *, out: Path, quiet: bool) -> None:
    """On stderr at the end: the --profile report; the counts and the output folder (main
    process)."""
    from camcli.console import info, plural

    if session.profiler.enabled:
        session.profiler.images = run.stats["ok"]
        info(session.profiler.report(), multiline=True)
    where = ""
    if split.shard is not None:
        where = f"shard {split.shard} ({run.selected} of {plural(run.total, 'input')}), "
    if split.dist is not None:
        where = f"{split.dist.world} ranks, "
    info(
        f"cam: {run.ok} done, {run.failed} failed, {run.skipped} skipped; {where}outputs in {out}",
        quiet=quiet or not split.main,
    )


def _progress(quiet: bool, main: bool):
    from camcli.cli.run import CliProgress
    from camcli.console import info, plural

    class CamProgress(CliProgress):
        def start(self, todo: int | None, resumed: int, selected: int | None) -> None:
            if resumed:
                info(
                    f"resume: {resumed} of {plural(selected, 'input')} already complete", self.quiet
                )
            super().start(todo, resumed, selected)

    return CamProgress("cam", quiet, main)
