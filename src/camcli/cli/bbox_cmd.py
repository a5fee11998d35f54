"""`camcli bbox`: weakly-supervised boxes from thresholded CAMs; ILSVRC/Kaggle submissions."""

from __future__ import annotations

import sys
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from camcli.cli import options as o
from camcli.cli.run import SESSION_OPTIONS, check_folders, check_targets, records_resumable
from camcli.data.inputs import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from camcli.api.bbox_job import BboxOptions, BboxRun
    from camcli.api.session import Session
    from camcli.api.split import Split
    from camcli.data.inputs import InputItem
    from camcli.evaluate.truth import GroundTruth


class Rule(StrEnum):
    paper = "paper"
    dt_box = "dt-box"
    all = "all"


class SubFormat(StrEnum):
    ilsvrc = "ilsvrc"
    kaggle = "kaggle"


def register(app: typer.Typer) -> None:
    app.command("bbox")(bbox)


def bbox(
    ctx: typer.Context,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Image files, directories (recursive) or - for paths on stdin "
            "(not with --from-maps).",
            show_default=False,
        ),
    ] = None,
    model: o.Model = None,
    weights: o.Weights = None,
    top_k: o.TopK = 5,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-t",
            min=0.0,
            max=1.0,
            help="tau: keep pixels > tau x max (paper and all rules; dt-box has its own).",
        ),
    ] = 0.2,
    box_rule: Annotated[
        Rule,
        typer.Option(
            "--box-rule",
            help="paper: largest 8-connected "
            "component; dt-box: the official generator; all: "
            "every component.",
        ),
    ] = Rule.paper,
    tight_loose: Annotated[
        bool,
        typer.Option(
            "--tight-loose-heuristic", help="The five dt-box guesses of the 37.1% ILSVRC entry."
        ),
    ] = False,
    output: o.Output = None,
    draw: Annotated[
        Path | None,
        typer.Option("--draw", help="Write each image with its boxes to DIR/<name>/boxes.jpg."),
    ] = None,
    submission: Annotated[
        Path | None, typer.Option("--submission", help="Also write a submission file.")
    ] = None,
    submission_format: Annotated[SubFormat, typer.Option("--submission-format")] = (
        SubFormat.ilsvrc
    ),
    synsets: Annotated[
        Path | None,
        typer.Option(
            "--synsets", help="meta.mat, map_clsloc.txt or LOC_synset_mapping.txt (kaggle only)."
        ),
    ] = None,
    from_maps: Annotated[
        Path | None,
        typer.Option("--from-maps", help="Boxes from maps saved by `cam --save-maps`; no network."),
    ] = None,
    gt: Annotated[
        Path | None,
        typer.Option(
            "--gt",
            help="Ground truth: each record also gets the box of the GT class's map "
            "(gt_known), and the metrics of `camcli eval` are reported at the end.",
        ),
    ] = None,
    norm: o.NormOpt = o.Norm.minmax,
    interpolation: o.InterpOpt = o.Interp.bilinear,
    ten_crop: o.TenCrop = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep the records already in --output FILE (and the drawings in --draw DIR); "
            "do only the rest.",
        ),
    ] = False,
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
    """Boxes of the top-k classes: threshold each CAM, keep its largest component's box.

    Example: camcli bbox images/ --model resnet50 --tight-loose-heuristic --submission sub.txt
    --synsets map_clsloc.txt --output boxes.jsonl
    """
    from camcli.api.bbox_job import run_bbox
    from camcli.api.split import plan_split
    from camcli.cli.run import fit_top_k, open_session, resolve_inputs, session_options
    from camcli.errors import Exit

    _check_flags(
        inputs=inputs,
        from_maps=from_maps,
        resume=resume,
        output=output,
        submission=submission,
        synsets=synsets,
        shard=shard,
        gt=gt,
        tight_loose=tight_loose,
        box_rule=box_rule,
        submission_format=submission_format,
        draw=draw,
    )
    _refuse_unused(ctx, box_rule=box_rule, tight_loose=tight_loose, from_maps=from_maps)
    _refuse_unused_outputs(ctx, submission=submission, gt=gt)
    opts = _bbox_options(
        top_k=top_k,
        box_rule=box_rule,
        threshold=threshold,
        tight_loose=tight_loose,
        norm=norm,
        interpolation=interpolation,
        ten_crop=ten_crop,
        output=output,
        draw=draw,
        submission=submission,
        submission_format=submission_format,
        synsets=synsets,
        from_maps=from_maps,
        resume=resume,
    )

    truth = None
    if gt is not None:  # a bad file fails now, not once the model has loaded
        from camcli.evaluate.groundtruth import read_ground_truth

        truth = read_ground_truth(str(gt))
    items = resolve_inputs(inputs, follow_links=follow_links) if from_maps is None else None
    split = plan_split(shard, inputs, stdout_ok=False, output=output)
    try:
        session = None
        if from_maps is None:
            session = open_session(model, weights, split=split, **session_options(locals()))
            opts = replace(opts, top_k=fit_top_k(ctx, opts.top_k, session.model.num_classes))
        warned: list[str] = []  # GT labels the model does not know, warned about up front
        if gt is not None:
            opts = _with_gt_classes(opts, gt, truth, session, synsets, items, warned, split.main)
        run = run_bbox(opts, session, items, split, _progress(quiet, split.main))
        _report_end(run, session, split, opts, gt=gt, warned=warned, quiet=quiet)
        split.barrier()
    finally:
        split.close()
    return run.exit_code if split.main else Exit.OK


def _check_flags(
    *,
    inputs: list[str] | None,
    from_maps: Path | None,
    resume: bool,
    output: str | None,
    submission: Path | None,
    synsets: Path | None,
    shard: str | None,
    gt: Path | None,
    tight_loose: bool,
    box_rule: Rule,
    submission_format: str = "ilsvrc",
    draw: Path | None = None,
) -> None:
    """Refuse the flag combinations ``bbox`` cannot run (exit 2), before any input is read."""
    from camcli.errors import UsageError
    from camcli.sysinfo import torchrun_env

    check_targets(output, submission)  # a folder, block device or socket: now, not after the run
    check_folders(draw)  # a file (or under one): now, not after the model loads
    if draw is not None:  # a cam folder's manifest would be replaced
        from camcli.runs.samerun import refuse_other_command
        from camcli.runs.shards import DRAW_MARK

        refuse_other_command(Path(draw), DRAW_MARK, "--draw")
    if from_maps is not None and inputs:
        raise UsageError("give either INPUT paths or --from-maps DIR, not both")
    if from_maps is None and not inputs:
        raise UsageError("no input: give image files or folders, - for stdin, or --from-maps")
    if resume and not records_resumable(output):
        raise UsageError(
            "--resume needs --output FILE (records on stdout, a device, a FIFO or a link cannot "
            "be resumed)"
        )
    if submission is not None and synsets is None and submission_format == "ilsvrc":
        raise UsageError(
            f"--submission {submission}: an ilsvrc submission labels classes by ILSVRC2012_ID; "
            "pass --synsets (devkit meta.mat or map_clsloc.txt), or use --submission-format "
            "kaggle (WNIDs: built in for ImageNet-1k models)"
        )
    if from_maps is not None and (shard is not None or torchrun_env() is not None):
        raise UsageError("--from-maps runs in one process: drop --shard (or torchrun)")
    if shard is not None and (submission is not None or gt is not None):
        raise UsageError(
            f"--shard {shard}: a shard holds part of the images, so --submission and --gt "
            "need them all: join the parts with `camcli merge`, then score the joined file "
            "with `camcli eval --boxes`, or run the shards together under torchrun"
        )
    if tight_loose and box_rule is not Rule.paper and box_rule is not Rule.dt_box:
        raise UsageError("--tight-loose-heuristic uses the dt-box rule; drop --box-rule all")


# What --from-maps leaves out: the network and everything that feeds it.
_MODEL_OPTIONS = (
    "model",
    "weights",
    "ten_crop",
    "norm",
    "interpolation",
    *SESSION_OPTIONS,
)


def _refuse_unused(
    ctx: typer.Context | None, *, box_rule: Rule, tight_loose: bool, from_maps: Path | None
) -> None:
    """Options that would do nothing in this run are a usage error (exit 2), not ignored."""
    if tight_loose:
        o.refuse_unused(
            ctx,
            ("threshold",),
            "with --tight-loose-heuristic (the official dt-box generator thresholds at "
            "20, 100 and 110 of 255)",
        )
        o.refuse_unused(
            ctx,
            ("top_k",),
            "with --tight-loose-heuristic (its five guesses always come from the top 3 classes)",
        )
    elif box_rule is Rule.dt_box:
        o.refuse_unused(
            ctx,
            ("threshold",),
            "with --box-rule dt-box (the official generator thresholds at 20, 100 and 110 of "
            "255; -t sets the paper and all rules' tau)",
        )
    if from_maps is not None:
        o.refuse_unused(
            ctx,
            _MODEL_OPTIONS,
            "with --from-maps (the boxes come from the saved maps: no network runs; the maps "
            "were made, normalised and upsampled by `cam`)",
        )


def _refuse_unused_outputs(
    ctx: typer.Context | None, *, submission: Path | None, gt: Path | None
) -> None:
    """--submission-format needs --submission; --synsets needs --submission or --gt."""
    if submission is None:
        o.refuse_unused(ctx, ("submission_format",), "without --submission")
        if gt is None:
            o.refuse_unused(
                ctx, ("synsets",), "without --submission or --gt (it maps their class ids)"
            )


def _with_gt_classes(
    opts: BboxOptions,
    gt: Path,
    truth: GroundTruth,
    session: Session | None,
    synsets: Path | None,
    items: list[InputItem] | None,
    warned: list[str],
    main: bool,
) -> BboxOptions:
    """``opts`` with each image's GT class (for the records' ``gt_known``), by the model's
    categories (from maps: the labels the map files store). ``truth`` is ``gt`` as read before
    the model loaded (a file that cannot be read stopped the run there: exit 2 or 3, naming
    the file and line, as ``eval``); classes that cannot be matched (synsets) are a warning and
    the run goes on without GT-known boxes. A label of one of the inputs (``items``; from maps:
    the images the files name) that is not one of the model's classes is warned about now,
    once (main process), and appended to ``warned``."""
    from camcli.console import warn
    from camcli.errors import CamcliError, GtError
    from camcli.evaluate.report import gt_class_lookup, unknown_gt_lines

    try:
        num_classes = None
        if session is not None:
            names, num_classes = session.model.categories, session.model.num_classes
            images = [it.path for it in items or []]
        else:
            from camcli.evaluate.maps import map_labels_and_images

            names, images = map_labels_and_images(str(opts.from_maps))
        lookup = gt_class_lookup(truth, names, synsets, num_classes=num_classes,
                                 on_unknown=warned.append, images=images)  # fmt: skip
    except GtError:
        raise
    except CamcliError as exc:
        warn(f"--gt {gt}: no GT-known boxes ({exc})")
        return opts
    for line in unknown_gt_lines(gt, warned, names, "GT-known box") if main else []:
        warn(line)
    gt_path = str(Path(gt).resolve())
    return replace(opts, gt_class=lambda item: lookup(item.path), gt_path=gt_path)


def _bbox_options(
    *,
    top_k: int,
    box_rule: Rule,
    threshold: float,
    tight_loose: bool,
    norm: o.Norm,
    interpolation: o.Interp,
    ten_crop: bool,
    output: str | None,
    draw: Path | None,
    submission: Path | None,
    submission_format: SubFormat,
    synsets: Path | None,
    from_maps: Path | None,
    resume: bool,
) -> BboxOptions:
    """The job's options from the command's flags (``--tight-loose-heuristic``: the dt-box
    rule and at least 3 classes)."""
    from camcli.api.bbox_job import BboxOptions

    return BboxOptions(
        top_k=max(top_k, 3) if tight_loose else top_k,
        rule=Rule.dt_box.value if tight_loose else box_rule.value,
        threshold=threshold,
        tight_loose=tight_loose,
        norm=norm.value,
        interpolation=interpolation.value,
        ten_crop=ten_crop,
        output=output,
        draw=draw,
        submission=submission,
        submission_format=submission_format.value,
        synsets=synsets,
        from_maps=from_maps,
        resume=resume,
    )


def _report_end(
    run: BboxRun,
    session: Session | None,
    split: Split,
    opts: BboxOptions,
    *,
    gt: Path | None,
    warned: list[str],
    quiet: bool,
) -> None:
    """On stderr at the end: the --profile report, the submission written and the --gt
    metrics (main process; GT labels in ``warned`` are not named again), the counts (main
    process, on a terminal)."""
    from camcli.console import info, plural

    if session is not None and session.profiler.enabled:
        session.profiler.images = run.stats["ok"]
        info(session.profiler.report(), multiline=True)
    if run.main:
        if opts.submission is not None:
            info(f"submission: {opts.submission} ({opts.submission_format})", quiet)
        if gt is not None:
            from camcli.cli.eval_cmd import report_for_records

            report_for_records(run.records, gt, opts.synsets, warned=warned)
    if run.not_drawn:
        from camcli.console import warn

        more = f" and {len(run.not_drawn) - 1} more" if len(run.not_drawn) > 1 else ""
        warn(f"--draw: {len(run.not_drawn)} image(s) not drawn: {run.not_drawn[0]}{more}")
    where = ""
    if split.shard is not None:
        where = f" (shard {split.shard}: {run.selected} of {plural(run.total, 'input')})"
    if split.dist is not None:
        where = f" ({split.dist.world} ranks)"
    info(
        f"bbox: {run.ok} done, {run.failed} failed{where}",
        quiet or not split.main or not sys.stderr.isatty(),
    )


def _progress(quiet: bool, main: bool):
    from camcli.cli.run import CliProgress
    from camcli.console import info, plural

    class BboxProgress(CliProgress):
        def start(self, todo: int | None, resumed: int, selected: int | None) -> None:
            if todo is None:  # from map files: no bar
                return
            if resumed:
                info(f"resume: {resumed} of {plural(selected, 'input')} already done", self.quiet)
            if todo:
                super().start(todo, resumed, selected)

    return BboxProgress("bbox", quiet, main)
