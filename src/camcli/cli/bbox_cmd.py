"""`camcli bbox`: weakly-supervised boxes from thresholded CAMs; ILSVRC/Kaggle submissions."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from camcli.cli import options as o
from camcli.cli.cam_cmd import Interp, InterpOpt, Norm, NormOpt, Resume, TenCrop
from camcli.data.codec import DEFAULT_MAX_PIXELS


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
        typer.Option("--threshold", "-t", min=0.0, max=1.0, help="tau: keep pixels > tau x max."),
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
        typer.Option("--gt", help="Ground truth: report the metrics of `camcli eval` at the end."),
    ] = None,
    norm: NormOpt = Norm.minmax,
    interpolation: InterpOpt = Interp.bilinear,
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
    """Boxes of the top-k classes: threshold each CAM, keep its largest component's box.

    Example: camcli bbox images/ --model resnet50 --tight-loose-heuristic --submission sub.txt
    --synsets map_clsloc.txt --output boxes.jsonl
    """
    from camcli.cli.run import plan_split, resolve_inputs, session_options
    from camcli.errors import CamcliError
    from camcli.sysinfo import torchrun_env

    if from_maps is not None and inputs:
        raise CamcliError("give either INPUT paths or --from-maps DIR, not both")
    if from_maps is None and not inputs:
        raise CamcliError("no input: give image files or folders, - for stdin, or --from-maps")
    if resume and output in (None, "-"):
        raise CamcliError("--resume needs --output FILE (records on stdout cannot be resumed)")
    if submission is not None and synsets is None:
        raise CamcliError(
            f"--submission {submission}: pass --synsets (devkit meta.mat or "
            "map_clsloc.txt; LOC_synset_mapping.txt for --submission-format kaggle)"
        )
    if from_maps is not None and (shard is not None or torchrun_env() is not None):
        raise CamcliError("--from-maps runs in one process: drop --shard (or torchrun)")
    if shard is not None and (submission is not None or gt is not None):
        raise CamcliError(
            f"--shard {shard}: a shard holds part of the images, so --submission and --gt "
            "need them all: join the parts with `camcli merge`, then score the joined file "
            "with `camcli eval --boxes`, or run the shards together under torchrun"
        )
    rule = Rule.dt_box.value if tight_loose else box_rule.value
    if tight_loose and box_rule is not Rule.paper and box_rule is not Rule.dt_box:
        raise CamcliError("--tight-loose-heuristic uses the dt-box rule; drop --box-rule all")
    if tight_loose:
        top_k = max(top_k, 3)

    items = resolve_inputs(inputs) if from_maps is None else None
    split = plan_split(shard, inputs, stdout_ok=False, output=output)
    try:
        return _bbox(
            items,
            split,
            model=model,
            weights=weights,
            top_k=top_k,
            threshold=threshold,
            rule=rule,
            tight_loose=tight_loose,
            output=output,
            draw=draw,
            submission=submission,
            submission_format=submission_format,
            synsets=synsets,
            from_maps=from_maps,
            gt=gt,
            norm=norm,
            interpolation=interpolation,
            ten_crop=ten_crop,
            resume=resume,
            session_kw=session_options(locals()),
            quiet=quiet,
        )
    finally:
        split.close()


def _bbox(
    items, split, *, model, weights, top_k, threshold, rule, tight_loose, output, draw,
    submission, submission_format, synsets, from_maps, gt, norm, interpolation, ten_crop,
    resume, session_kw, quiet,
) -> int:  # fmt: skip
    from camcli.api import jobs
    from camcli.api import session as api
    from camcli.cli.run import RecordSink, open_session, progress_bar, report_errors
    from camcli.console import info
    from camcli.data.loader import Sample
    from camcli.errors import Exit
    from camcli.runs.outdir import OutDir
    from camcli.runs.shards import DRAW_MARK

    session = None
    num_classes = _maps_num_classes(from_maps) if from_maps is not None else None
    mine = split.select(items) if items is not None else None
    if from_maps is None:
        session = open_session(model, weights, split=split, **session_kw)
        num_classes = session.model.num_classes
    synmap = _load_synsets(synsets, submission_format, num_classes) if synsets else None
    evaluator = _evaluator(gt, synsets) if gt is not None else None

    bopts = jobs.BoxOptions(rule=rule, threshold=threshold, tight_loose=tight_loose)
    if from_maps is not None:
        stats = {"ok": 0, "failed": 0}
        results = api.iter_maps(str(from_maps), top_k=top_k)
        total = None
    else:
        opts = api.CamOptions(
            top_k=top_k, norm=norm.value, interpolation=interpolation.value, ten_crop=ten_crop
        )
        stats = session.stats

    skipped = 0
    sink = RecordSink(output, split, resume=resume)
    sharded = split.shard is not None
    drawdir = (
        OutDir(
            draw,
            resume=resume,
            shard=split.shard,
            own_keys={it.key for it in mine} if sharded else None,
        )
        if draw is not None
        else None
    )
    if from_maps is None:
        # done: a record in FILE and, with --draw, its drawing in DIR's manifest
        todo = [
            it
            for it in mine
            if it.path not in sink.done or (drawdir is not None and it.key not in drawdir.done)
        ]
        if len(todo) < len(mine):
            info(f"resume: {len(mine) - len(todo)} of {len(mine)} inputs already done", quiet)
        results = api.iter_cams(session, todo, opts, keep_image=draw is not None)
        total = len(todo)
        skipped = len(mine) - len(todo)
    bar = progress_bar(total or 0, quiet or not split.main, "bbox") if total else None
    order: list[str] = []
    records: list[dict] = []
    interrupted = completed = False
    try:
        for res in results:
            if isinstance(res, Sample):
                rec = {"image": res.item.path, "error": res.error}
                if from_maps is not None:
                    stats["failed"] += 1
                if drawdir is not None:  # every input has its manifest line, as in `cam`
                    drawdir.record(res.item.index, {**rec, "key": res.item.key})
            else:
                if from_maps is not None:
                    stats["ok"] += 1
                with session.profiler.stage("boxes") if session else contextlib.nullcontext():
                    rec = {**res.record, "boxes": jobs.box_entries(res, bopts)}
                if drawdir is not None:
                    _draw(drawdir, res, rec)
            order.append(rec["image"])
            records.append(rec)
            sink.write(rec)
            if sink.stdout is None:
                report_errors(rec, quiet)
            if drawdir is not None:
                drawdir.check_errors()
            if bar:
                bar.advance(bar.task)
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if bar:
            bar.stop()
        if drawdir is not None:
            drawdir.close(order=_draw_order(mine, drawdir), cancel=interrupted)
        if from_maps is None:
            order = [it.path for it in mine]
        try:
            got = sink.finish(order, complete=completed and not (drawdir and drawdir.failed))
        except Exception:
            if completed:
                raise
            got = None  # the error in flight says more
        if got is not None:
            records = got
    if drawdir is not None:
        drawdir.check_errors()
        if completed and sharded:
            drawdir.write_run_json(
                {
                    "command": DRAW_MARK,
                    "shard": str(split.shard),
                    "inputs_total": len(items),
                    "counts": dict(stats),
                    "options": {"resumed": skipped},
                }
            )
    if not records and stats["failed"] == 0 and from_maps is None and sink.rfile and sink.done:
        records = list(sink.done.values())
    ok, failed, skipped = split.total([stats["ok"], stats["failed"], skipped])
    split.barrier()
    if split.dist is not None:
        joined = sink.join(items)
        if split.main and drawdir is not None:
            from camcli.runs.merge import merge_outdir

            merge_outdir(drawdir.root, keys=[it.key for it in items])
        if joined is not None:
            records = joined
    if profile_on(session):
        session.profiler.images = stats["ok"]
        info(session.profiler.report())
    if split.main:
        if submission is not None:
            _write_submission(
                submission, submission_format, synmap, records, tight_loose, from_maps is None
            )
            info(f"submission: {submission} ({submission_format.value})", quiet)
        if evaluator is not None:
            evaluator(records)
    where = f" (shard {split.shard}: {len(mine)} of {len(items)} inputs)" if sharded else ""
    if split.dist is not None:
        where = f" ({split.dist.world} ranks)"
    info(
        f"bbox: {ok} done, {failed} failed{where}",
        quiet or not split.main or not sys.stderr.isatty(),
    )
    split.barrier()
    if not split.main:
        return Exit.OK
    if ok + skipped == 0 and failed > 0:  # resumed inputs count as done
        return Exit.NO_INPUT
    return Exit.SOME_FAILED if failed else Exit.OK


def profile_on(session) -> bool:
    return session is not None and session.profiler.enabled


def _draw_order(mine, drawdir) -> list[tuple[int, str]] | None:
    """(index, key) of the inputs for the --draw manifest; from maps: the records' own order."""
    if mine is not None:
        return [(it.index, it.key) for it in mine]
    return None


def _maps_num_classes(from_maps: Path) -> int | None:
    """The class count `cam --save-maps` recorded in DIR/run.json; None when unknown."""
    import json

    try:
        n = json.loads((from_maps / "run.json").read_text(encoding="utf-8"))["num_classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def _load_synsets(path: Path, fmt: SubFormat, num_classes: int | None):
    """num_classes: the model's; None (maps of unknown origin): any class count is accepted."""
    from camcli.errors import CamcliError
    from camcli.evaluate.synsets import SynsetError, load_synsets

    try:
        m = load_synsets(path, num_classes=num_classes)
    except SynsetError as exc:
        raise CamcliError(str(exc)) from None
    if fmt is SubFormat.ilsvrc and not m.has_ilsvrc_ids:
        raise CamcliError(
            f"--synsets {path}: has WNIDs but no ILSVRC2012_IDs; an ilsvrc submission needs "
            "the devkit's meta.mat or map_clsloc.txt (or use --submission-format kaggle)"
        )
    return m


def _write_submission(
    path: Path, fmt: SubFormat, synmap, records: list[dict], tight_loose: bool, images: bool
) -> None:
    """images: records of input images (not map files): an image that failed still gets its
    (empty) line, so the lines stay aligned with the sorted image list the evaluator expects."""
    from camcli.api import jobs
    from camcli.errors import CamcliError, SubmissionError, SynsetError
    from camcli.evaluate.submission import write_ilsvrc_submission, write_kaggle_submission

    items = [
        (r["image"], jobs.submission_guesses(r["boxes"], tight_loose) if "boxes" in r else [])
        for r in records
        if "boxes" in r or images
    ]
    try:
        if fmt is SubFormat.ilsvrc:
            write_ilsvrc_submission(path, items, synmap)
        else:
            write_kaggle_submission(path, items, synmap)
    except (SubmissionError, SynsetError) as exc:
        raise CamcliError(f"--submission {path}: {exc}") from None


def _draw(drawdir, res, rec: dict) -> None:
    import os

    from camcli.api import jobs
    from camcli.data.codec import decode_image

    img = res.sample.image
    if img is None:  # from maps: the source image, when it is still there
        if not os.path.isfile(res.sample.item.path):
            return
        try:
            arr = decode_image(res.sample.item.path)
        except ValueError:
            return
        import torch

        img = torch.from_numpy(arr).permute(2, 0, 1)
        if tuple(img.shape[1:]) != tuple(res.sample.size):
            return
    path = drawdir.root / res.sample.item.key / "boxes.jpg"
    fut = drawdir.submit(jobs._encode_and_write, path, jobs.draw_boxes(img, rec["boxes"]), "jpg")
    drawdir.record(
        res.sample.item.index,
        {**rec, "key": res.sample.item.key, "outputs": {"files": [drawdir.rel(path)]}},
        [fut],
    )


def _evaluator(gt: Path, synsets: Path | None):
    from camcli.cli.eval_cmd import report_for_records

    return lambda records: report_for_records(records, gt, synsets)
