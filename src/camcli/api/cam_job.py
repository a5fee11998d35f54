"""The ``cam`` job: overlays, grids and raw maps of every input, in an output folder.

The per-image loop (:func:`run_cam`) over :func:`camcli.api.cams.iter_cams`; the files of each
image are rendered and queued by :func:`camcli.api.cam_files.cam_outputs`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from camcli.api import cams
from camcli.api.cam_files import CamWriteOptions, cam_outputs
from camcli.api.progress import JobRun, Progress
from camcli.api.session import Session
from camcli.api.split import Split
from camcli.data import inputs, loader
from camcli.errors import WriteError
from camcli.runs.outdir import OutDir

if TYPE_CHECKING:
    from camcli.evaluate.truth import GroundTruth


def run_info(session: Session, command: str, options: dict, started: float) -> dict:
    """The ``run.json`` of an output folder: versions, model and weights, device, batch size,
    ``--max-pixels``, BatchNorm layers folded into convolutions, "same" paddings made static,
    options, counts and wall time (seconds since ``started``, a ``time.time()``)."""
    import platform

    import torchvision

    from camcli import __version__

    m = session.model
    return {
        "command": command,
        "camcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "model": m.name,
        "weights": m.weights_source,
        "weights_sha256": m.weights_sha256,
        "num_classes": m.num_classes,
        "preprocess": m.preprocess.to_dict(),
        "device": str(session.device),
        "batch_size": session.batch_size,
        "max_pixels": session.max_pixels,
        "folded_batchnorm": session.folded_bn,
        "static_same_padding": session.static_pads,
        "streams": session.streams.streams if session.streams is not None else 1,
        "options": options,
        "counts": dict(session.stats),
        "wall_time_s": round(time.time() - started, 3),
    }


def run_cam(
    session: Session,
    items: list[inputs.InputItem],
    opts: cams.CamOptions,
    wopts: CamWriteOptions,
    out: OutDir,
    *,
    on_record=None,
) -> dict:
    """The per-image loop of ``cam`` over ``items`` (already filtered for --resume).

    Args:
        session: the model.
        items: the inputs to process.
        opts: which maps (:class:`camcli.api.cams.CamOptions`).
        wopts: which files (:class:`camcli.api.cam_files.CamWriteOptions`).
        out: the output folder; each input gets its manifest line (files or error).
        on_record: called with each input's manifest record, in input order.

    Returns:
        ``session.stats``, ``{"ok", "failed"}`` counts.

    Raises:
        CamcliError: a failed write (exit 5), as soon as it is seen.
    """
    keep = wopts.overlays or wopts.grid
    out.profiler = session.profiler
    # On the CPU, writer threads running beside one multi-threaded forward pass steal a core
    # from one of its threads and stall the whole parallel region (stragglers): there the
    # previous batch's files are finished, in parallel, before the next forward starts. Forward
    # streams (single-threaded passes side by side, the CPU default) and GPUs overlap them.
    sync = session.device.type == "cpu" and session.streams is None and not wopts.device_render

    def before_forward() -> None:
        with session.profiler.stage("encode+write (waited)"):
            out.drain()

    for res in cams.iter_cams(
        session, items, opts, keep_image=keep, before_forward=before_forward if sync else None
    ):
        if isinstance(res, loader.Sample):
            rec = {"image": res.item.path, "key": res.item.key, "error": res.error}
            out.record(res.item.index, rec)
        else:
            res = res.with_gt_map()
            with session.profiler.stage("post-process"):
                outputs, futures = cam_outputs(res, out, wopts)
            rec = {**res.record, "key": res.sample.item.key, "outputs": outputs}
            out.record(res.sample.item.index, rec, futures)
        out.check_errors()
        if on_record:
            on_record(rec)
    out.drain()
    out.check_errors()
    return session.stats


def options_dict(*objs) -> dict:
    """The fields of option dataclasses merged into one dict (run.json's ``options``); a
    later object's field wins."""
    d: dict = {}
    for o in objs:
        d.update({k: v for k, v in asdict(o).items() if not callable(v)})
    return d


# --------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class CamJobOptions:
    """Everything one ``cam`` run is asked to do; the CLI has checked the combinations.

    Attributes:
        out: the output folder: ``<key>/<rank>_<label>.<fmt>`` overlays, ``<key>/grid.<fmt>``,
            ``<key>.npz`` maps, ``manifest.jsonl`` (a record per input), ``run.json``.
        inputs: the command-line inputs, recorded in run.json.
        top_k: classes per image, best first (unless ``classes``).
        classes: class names or indices (strings) mapped for every image instead of the top k.
        norm: map normalisation, ``"minmax"``, ``"max"`` or ``"none"``.
        interpolation: map upsampling, ``"bilinear"`` or ``"bicubic"``.
        ten_crop: the official ILSVRC ten-crop merge.
        write: what files each image gets (:class:`CamWriteOptions`).
        resume: skip the inputs ``out/manifest.jsonl`` lists as complete.
        gt: ground truth (``--gt``): each image's GT class's map is added to its maps (last,
            ``"gt": true`` in its prediction) when not among them, so that ``eval --maps``
            scores every image; None: no.
        truth: ``gt`` already read (the command line reads it before the model loads, so that
            a bad file fails fast); None: read when the job starts.
    """

    out: Path
    inputs: tuple[str, ...] = ()
    top_k: int = 5
    classes: tuple[str, ...] | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False
    write: CamWriteOptions = CamWriteOptions()
    resume: bool = False
    gt: Path | None = None
    truth: GroundTruth | None = None


def run_cam_job(
    opts: CamJobOptions,
    session: Session,
    items: list[inputs.InputItem],
    split: Split,
    progress: Progress | None = None,
    *,
    started: float | None = None,
) -> JobRun:
    """The ``cam`` job: this process's share of ``items`` into ``opts.out``.

    Args:
        opts: what to do.
        session: the model to run.
        items: the discovered inputs of the whole run (every shard's), sorted.
        split: this process's shard (``--shard``, torchrun); under torchrun rank 0 joins the
            ranks' manifests when all have finished.
        progress: told the work to do and each record.
        started: ``time.time()`` when the run began (run.json's wall time); default now.

    Returns:
        The counts (:class:`camcli.api.progress.JobRun`).

    Raises:
        CamcliError: an unknown ``classes`` entry (exit 2, before any image is decoded); a
            failed write (exit 5; the manifest lists what is done, rerun with ``resume``; an
            unsharded run's run.json says ``"failed": true`` when it could be written).

    A run writes its run json with ``"running": true`` before the first image and again when
    it ends (without it; an unsharded run's with ``"interrupted"`` or ``"failed"`` when so): a
    run killed outright, or a shard that did not finish, leaves ``"running": true`` and its
    options, which ``resume`` checks (``camcli merge`` takes such a shard as unfinished).
    """
    started = time.time() if started is None else started
    progress = progress or Progress()
    mine = split.select(items)
    copts = _cam_options(opts, session, items, progress)
    wopts = replace(opts.write, device_render=session.device_codec)
    from camcli.runs.samerun import check_same_run, gt_options

    gt = gt_options(opts.gt)  # once: a file edited during the run is recorded as it was read
    if opts.resume:
        now = run_info(session, "cam", _options(copts, wopts, gt, session), 0)
        names = ["run.json"]  # a shard: its own finished run json, and a merged run's
        if split.shard is not None:
            from camcli.runs.shards import shard_names

            names.insert(0, shard_names(split.shard.index, split.shard.count)[1])
        for name in names:
            check_same_run(Path(opts.out), now, name, "--out")
    outdir = OutDir(
        opts.out,
        resume=opts.resume,
        shard=split.shard,
        own_keys={it.key for it in mine} if split.shard is not None else None,
    )
    todo = [it for it in mine if it.key not in outdir.done]
    skipped = len(mine) - len(todo)
    progress.start(len(todo), skipped, len(mine))
    interrupted = completed = stopped = False
    try:
        # recorded before the first image: a run stopped or killed outright (SIGKILL, out of
        # memory) leaves "running": true and its options, which --resume checks (and merge
        # takes a shard's as unfinished)
        info = _cam_run_info(session, opts, copts, wopts, gt, split, len(items), skipped, started)
        _write_run_json(outdir, {**info, "running": True}, best_effort=False)
        run_cam(session, todo, copts, wopts, outdir, on_record=progress.record)
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    except WriteError:  # e.g. no shared memory for the decoder workers (exit 5)
        stopped = True
        raise
    finally:
        progress.stop()
        try:
            outdir.close(
                order=[(it.index, it.key) for it in mine], cancel=interrupted, keep_lock=True
            )
            # interrupted (Ctrl-C, SIGTERM) or a failed write (exit 5): run.json says so (and
            # what run it was, for --resume's check); a shard's part stays unfinished
            failed = outdir.failed or stopped
            if (completed and not failed) or ((interrupted or failed) and split.shard is None):
                info = _cam_run_info(
                    session, opts, copts, wopts, gt, split, len(items), skipped, started
                )
                if interrupted:
                    info["interrupted"] = True
                if failed:
                    info["failed"] = True
                _write_run_json(outdir, info, best_effort=failed)
        finally:
            outdir.release()
    outdir.check_errors()  # a failed write: one line, exit 5, the manifest lists what is done
    st = session.stats
    ok, failed, skipped_all = split.total([st["ok"], st["failed"], skipped])
    split.barrier()
    if split.dist is not None and split.main:
        from camcli.runs.merge import merge_outdir

        merge_outdir(outdir.root, keys=[it.key for it in items])
    return JobRun(
        stats=st,
        ok=ok,
        failed=failed,
        skipped=skipped_all,
        selected=len(mine),
        total=len(items),
        main=split.main,
    )


def _options(copts: cams.CamOptions, wopts: CamWriteOptions, gt: dict, session: Session) -> dict:
    """run.json's ``options`` of this run (but inputs and resumed count): the maps' and files'
    options, ``gt`` and ``gt_sha256`` (the ``--gt`` file's absolute path and digest, taken
    once at the job's start: :func:`camcli.runs.samerun.gt_options`), and ``precision``
    (bf16 maps differ from fp32 ones), which ``--resume`` and ``merge`` compare."""
    return {**options_dict(copts, wopts), **gt, "precision": session.precision}


def _cam_options(
    opts: CamJobOptions, session: Session, items: list[inputs.InputItem], progress: Progress
) -> cams.CamOptions:
    """The maps asked for, ``classes`` resolved against the model (raises on an unknown one);
    a ground-truth label of one of ``items`` (the run's inputs) that is not one of the model's
    classes is a warning (its images get no GT map)."""
    gt_class = None
    if opts.gt is not None:
        from camcli.evaluate.report import gt_class_lookup, unknown_gt_lines

        unknown: list[str] = []
        lookup = gt_class_lookup(
            opts.truth if opts.truth is not None else opts.gt,
            session.model.categories,
            num_classes=session.model.num_classes,
            on_unknown=unknown.append,
            images=[it.path for it in items],
        )
        for line in unknown_gt_lines(opts.gt, unknown, session.model.categories, "GT map"):
            progress.warn(line)
        gt_class = lambda item: lookup(item.path)  # noqa: E731
    return cams.CamOptions(
        top_k=opts.top_k,
        classes=cams.resolve_classes(session.model, list(opts.classes) if opts.classes else None),
        norm=opts.norm,
        interpolation=opts.interpolation,
        ten_crop=opts.ten_crop,
        gt_class=gt_class,
    )


def _write_run_json(outdir: OutDir, info: dict, *, best_effort: bool) -> None:
    """Write the folder's run json; ``best_effort``: after a failed write, whose error is the
    one reported (a full disk may refuse run.json too; the run is then resumed unchecked)."""
    from camcli.errors import CamcliError

    try:
        outdir.write_run_json(info)
    except CamcliError:
        if not best_effort:
            raise


def _cam_run_info(
    session: Session,
    opts: CamJobOptions,
    copts: cams.CamOptions,
    wopts: CamWriteOptions,
    gt: dict,
    split: Split,
    inputs_total: int,
    resumed: int,
    started: float,
) -> dict:
    """The ``run.json`` of a completed ``cam`` run (:func:`run_info`); a shard's names its
    shard and the whole run's input count."""
    options = {
        **_options(copts, wopts, gt, session),
        "inputs": list(opts.inputs),
        "resumed": resumed,
    }
    info = run_info(session, "cam", options, started)
    if split.shard is not None:
        info["shard"] = str(split.shard)
        info["inputs_total"] = inputs_total
    return info
