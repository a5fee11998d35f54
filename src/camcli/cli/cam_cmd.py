"""`camcli cam`: class activation maps for whole folders: overlays, grids, raw maps."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.data.codec import DEFAULT_MAX_PIXELS


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
    quiet: o.Quiet = False,
) -> int:
    """Class activation maps of the top-k (or named) classes, mapped onto each original image.

    Example: camcli cam images/ --out cams/ --model resnet50 --top-k 5 --grid --save-maps
    """
    from camcli.cam.render import COLORMAPS
    from camcli.cli.run import plan_split, resolve_inputs, session_options
    from camcli.errors import CamcliError

    if colormap not in COLORMAPS:
        raise CamcliError(f"--colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    if no_overlay and not grid and not save_maps:
        raise CamcliError("--no-overlay leaves nothing to write: add --grid or --save-maps")
    items = resolve_inputs(inputs)
    split = plan_split(shard, inputs)
    try:
        return _cam(
            items,
            split,
            inputs=inputs,
            out=out,
            model=model,
            weights=weights,
            top_k=top_k,
            classes=classes,
            norm=norm,
            interpolation=interpolation,
            ten_crop=ten_crop,
            wopts_kw={
                "colormap": colormap,
                "alpha": alpha,
                "fmt": fmt.value,
                "overlays": not no_overlay,
                "grid": grid,
                "save_maps": save_maps,
            },
            resume=resume,
            session_kw=session_options(locals()),
            quiet=quiet,
        )
    finally:
        split.close()


def _cam(
    items, split, *, inputs, out, model, weights, top_k, classes, norm, interpolation, ten_crop,
    wopts_kw, resume, session_kw, quiet,
) -> int:  # fmt: skip
    import time

    from camcli.api import jobs
    from camcli.api import session as api
    from camcli.cli.run import open_session, progress_bar, report_errors
    from camcli.console import info
    from camcli.runs.outdir import OutDir

    started = time.time()
    mine = split.select(items)
    session = open_session(model, weights, split=split, **session_kw)
    opts = api.CamOptions(
        top_k=top_k,
        classes=api.resolve_classes(session.model, classes),
        norm=norm.value,
        interpolation=interpolation.value,
        ten_crop=ten_crop,
    )
    wopts = jobs.CamWriteOptions(**wopts_kw, device_render=session.device_codec)
    sharded = split.shard is not None
    outdir = OutDir(
        out,
        resume=resume,
        shard=split.shard,
        own_keys={it.key for it in mine} if sharded else None,
    )
    todo = [it for it in mine if it.key not in outdir.done]
    skipped = len(mine) - len(todo)
    if skipped:
        info(f"resume: {skipped} of {len(mine)} inputs already complete", quiet)
    bar = progress_bar(len(todo), quiet or not split.main, "cam")

    def on_record(rec: dict) -> None:
        report_errors(rec, quiet)
        if bar:
            bar.advance(bar.task)

    interrupted = completed = False
    try:
        jobs.run_cam(session, todo, opts, wopts, outdir, on_record=on_record)
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if bar:
            bar.stop()
        outdir.close(order=[(it.index, it.key) for it in mine], cancel=interrupted)
        if completed and not outdir.failed:
            options = {
                **jobs.options_dict(opts, wopts),
                "inputs": list(inputs),
                "resumed": skipped,
            }
            info_ = jobs.run_info(session, "cam", options, started)
            if sharded:
                info_["shard"] = str(split.shard)
                info_["inputs_total"] = len(items)
            outdir.write_run_json(info_)
    outdir.check_errors()  # a failed write: one line, exit 5, the manifest lists what is done
    st = session.stats
    ok, failed, skipped_all = split.total([st["ok"], st["failed"], skipped])
    split.barrier()
    if split.dist is not None and split.main:
        from camcli.runs.merge import merge_outdir

        merge_outdir(outdir.root, keys=[it.key for it in items])
    if session.profiler.enabled:
        session.profiler.images = st["ok"]
        info(session.profiler.report())
    where = f"shard {split.shard} ({len(mine)} of {len(items)} inputs), " if sharded else ""
    if split.dist is not None:
        where = f"{split.dist.world} ranks, "
    info(
        f"cam: {ok} done, {failed} failed, {skipped_all} skipped; {where}outputs in {out}",
        quiet=quiet or not split.main,
    )
    split.barrier()
    # Inputs completed by an earlier run count as done: a resumed run whose only new input
    # fails has failed partly (1), not found no input (3).
    code = api.exit_code({"ok": ok + skipped_all, "failed": failed})
    return code if split.main else 0
