"""``bbox``: weakly-supervised boxes from thresholded CAMs, their drawings, submission files.

Boxes are ``[x0, y0, x1, y1]`` in original-image pixels, inclusive integer corners (the
ILSVRC convention: ``0 <= x0 <= x1 <= W - 1``), as :mod:`camcli.cam.boxes` gives them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from camcli.api import cams, drawing, map_inputs
from camcli.api.boxer import Boxer, BoxOptions
from camcli.api.progress import JobRun, Progress
from camcli.api.session import Session
from camcli.api.sink import RecordSink
from camcli.api.split import Split
from camcli.api.submission import (
    builtin_synsets,
    load_synsets,
    maps_num_classes,
    write_submission,
)
from camcli.data import inputs, loader
from camcli.runs.outdir import OutDir

RULES = ("paper", "dt-box", "all")
SUBMISSION_FORMATS = ("ilsvrc", "kaggle")


@dataclass(frozen=True)
class BboxOptions:
    """Everything one ``bbox`` run is asked to do; the CLI has checked the flag combinations.

    Attributes:
        top_k: classes per image, best first (3 or more with ``tight_loose``); with
            ``from_maps``: the first ``top_k`` maps of each file.
        rule: ``"paper"`` (largest 8-connected component), ``"dt-box"`` (the official
            generator) or ``"all"`` (every component); ``tight_loose`` needs ``"dt-box"``.
        threshold: tau in [0, 1]: a box covers the pixels above tau x the map's maximum.
        tight_loose: the five dt-box guesses (loose/tight boxes of the top 3 classes) of the
            37.1% ILSVRC entry instead of one box per class.
        norm: CAM normalisation, ``"minmax"``, ``"max"`` or ``"none"`` (see CamOptions).
        interpolation: map upsampling, ``"bilinear"`` or ``"bicubic"``.
        ten_crop: the official ILSVRC ten-crop merge.
        output: the records' JSON Lines FILE; None or ``"-"``: stdout.
        draw: folder for ``<key>/boxes.jpg`` drawings and their ``manifest.jsonl``; None: none.
        submission: an ILSVRC / Kaggle submission file to write; None: none.
        submission_format: ``"ilsvrc"`` or ``"kaggle"``.
        synsets: meta.mat, map_clsloc.txt or LOC_synset_mapping.txt (needed by ``submission``).
        from_maps: boxes from the ``.npz`` maps of ``cam --save-maps`` in this folder instead
            of running a model; None: run the session's model on the inputs.
        resume: keep the records already in ``output`` (and drawings in ``draw``).
        gt_class: ``item -> ground-truth class index or None`` (``--gt``): each record also
            gets ``gt_known``, the box of the GT class's map (same rule and threshold);
            None: no GT-known boxes. With ``from_maps``, from the files that hold the GT
            class's map (``cam --gt --save-maps``).
        gt_path: the ``--gt`` file's absolute path (what run made the records: ``resume``
            and ``merge`` compare it); None without ``--gt``.
    """

    top_k: int = 5
    rule: str = "paper"
    threshold: float = 0.2
    tight_loose: bool = False
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False
    output: str | None = None
    draw: Path | None = None
    submission: Path | None = None
    submission_format: str = "ilsvrc"
    synsets: Path | None = None
    from_maps: Path | None = None
    resume: bool = False
    gt_class: Callable[[inputs.InputItem], int | None] | None = None
    gt_path: str | None = None

    @property
    def box_options(self) -> BoxOptions:
        """The options of :func:`camcli.api.boxer.box_entries`."""
        return BoxOptions(rule=self.rule, threshold=self.threshold, tight_loose=self.tight_loose)

    @property
    def cam_options(self) -> cams.CamOptions:
        """The options of :func:`camcli.api.cams.iter_cams` (top-k classes, never fixed ones)."""
        return cams.CamOptions(
            top_k=self.top_k,
            norm=self.norm,
            interpolation=self.interpolation,
            ten_crop=self.ten_crop,
            gt_class=self.gt_class,
        )


@dataclass
class BboxRun(JobRun):
    """What a ``bbox`` run did (:class:`camcli.api.progress.JobRun`), and its records.

    Attributes:
        records: every record in input order (resumed ones too) on the main process, for the
            submission and ``--gt``; the records of this process elsewhere.
    """

    records: list[dict] = field(default_factory=list)
    not_drawn: list[str] = field(default_factory=list)
    """``--draw`` from maps: why an image could not be drawn (its source image is gone)."""


# --------------------------------------------------------------------------------------------
# The job


def run_bbox(
    opts: BboxOptions,
    session: Session | None,
    items: list[inputs.InputItem] | None,
    split: Split,
    progress: Progress | None = None,
) -> BboxRun:
    """The ``bbox`` job: a record per input (boxes or the error), drawings, the submission.

    Args:
        opts: what to do.
        session: the model to run; None with ``opts.from_maps``.
        items: the discovered inputs of the whole run (every shard's), sorted; None with
            ``opts.from_maps``.
        split: this process's shard (``--shard``, torchrun); under torchrun rank 0 joins the
            ranks' records and drawings when all have finished.
        progress: told the work to do and each record.

    Returns:
        What was done (:class:`BboxRun`); the submission (main process only) is written.

    Raises:
        CamcliError: unusable ``--synsets`` or ``--from-maps`` folder (before any image is
            decoded); a failed write (exit 5: rerun with ``resume`` to finish).
    """
    progress = progress or Progress()
    synmap = _synset_map(opts, session)
    mine = split.select(items) if items is not None else None
    # from maps: counted here; from a model: the session counts
    stats = {"ok": 0, "failed": 0} if opts.from_maps is not None else session.stats
    run = _part_run(opts, session)
    sink = RecordSink(opts.output, split, resume=opts.resume, run=run)
    drawdir = None
    boxer = Boxer(opts.box_options, session.profiler if session is not None else None)
    emit = []  # the record writer, set by _write_box_records (drains before a forward pass)
    # one multi-threaded forward pass at a time on the CPU: the box threads are drained
    # before each (see run_cam); forward streams need no drain
    cpu = session is not None and session.device.type == "cpu" and session.streams is None
    before = (lambda: emit[0](True)) if cpu else None
    try:
        drawdir = drawing.open_drawdir(opts.draw, opts.resume, split, mine, run)
        results, total, skipped = _bbox_results(opts, session, mine, sink, drawdir, before)
    except BaseException:
        boxer.close(cancel=True)
        sink.release()
        if drawdir is not None:
            drawdir.release()
        raise
    progress.start(total, skipped, len(mine) if mine is not None else None)
    not_drawn: list[str] = []
    records, completed = _write_box_records(
        results,
        opts,
        session,
        mine,
        stats,
        sink=sink,
        drawdir=drawdir,
        progress=progress,
        boxer=boxer,
        emit=emit,
        not_drawn=not_drawn,
    )
    if drawdir is not None:
        drawing.finish_drawings(drawdir, completed, split, items, stats, skipped, run)
    if not records and stats["failed"] == 0 and opts.from_maps is None and sink.rfile and sink.done:
        records = list(sink.done.values())
    ok, failed, skipped = split.total([stats["ok"], stats["failed"], skipped])
    split.barrier()
    if split.dist is not None:
        records = _join_ranks(sink, drawdir, split, items, records)
    if split.main and opts.submission is not None:
        write_submission(
            opts.submission,
            opts.submission_format,
            synmap,
            records,
            tight_loose=opts.tight_loose,
            images=opts.from_maps is None,
        )
    return BboxRun(
        stats=stats,
        ok=ok,
        failed=failed,
        skipped=skipped,
        selected=len(mine) if mine is not None else None,
        total=len(items) if items is not None else None,
        main=split.main,
        records=records,
        not_drawn=not_drawn,
    )


def _part_run(opts: BboxOptions, session: Session | None) -> dict:
    """What run a shard's part (or a killed run's partial file) is
    (:func:`camcli.api.sink.part_run`): the model and the options that change the records,
    the most telling first, ``gt`` the ``--gt`` file's absolute path (None without) and
    ``gt_sha256`` its digest (:func:`camcli.runs.samerun.gt_options`), and
    ``--precision``; from maps (never sharded), the command ``bbox --from-maps`` and the
    options."""
    from camcli.api.sink import part_run
    from camcli.runs.samerun import as_stored, gt_options

    keys = ("tight_loose", "rule", "threshold", "top_k", "norm", "interpolation", "ten_crop")
    options: dict = {k: getattr(opts, k) for k in keys}
    # records with "gt_known" from that file, or without (the --gt file's absolute path)
    options.update(gt_options(opts.gt_path if opts.gt_class is not None else None))
    if session is None:  # from maps: recorded too, so that a network run never resumes it
        return as_stored({"command": "bbox --from-maps", "options": options})
    options["precision"] = session.precision
    return part_run(session, "bbox", options)


def _synset_map(opts: BboxOptions, session: Session | None):
    """The ``--synsets`` mapping for the submission (None without ``synsets``), checked
    against the model's (or the map files') number of classes."""
    num_classes = maps_num_classes(opts.from_maps) if opts.from_maps is not None else None
    if session is not None:
        num_classes = session.model.num_classes
    if not opts.synsets and opts.submission is not None:
        return builtin_synsets(opts.submission, session)
    if not opts.synsets:
        return None
    return load_synsets(opts.synsets, opts.submission_format, num_classes)


def _bbox_results(
    opts: BboxOptions,
    session: Session | None,
    mine: list[inputs.InputItem] | None,
    sink: RecordSink,
    drawdir: OutDir | None,
    before_forward=None,
):
    """The maps to box, lazily: (results, inputs to do or None from maps, inputs resumed).

    From a model: the inputs not done yet, i.e. without a record in the output FILE or,
    with ``--draw``, without their drawing in the folder's manifest."""
    if opts.from_maps is not None:
        return (
            map_inputs.iter_maps(str(opts.from_maps), top_k=opts.top_k, gt_class=opts.gt_class),
            None,
            0,
        )
    todo = [
        it
        for it in mine
        if it.path not in sink.done or (drawdir is not None and it.key not in drawdir.done)
    ]
    results = cams.iter_cams(
        session,
        todo,
        opts.cam_options,
        keep_image=drawdir is not None,
        before_forward=before_forward,
    )
    return results, len(todo), len(mine) - len(todo)


def _write_box_records(
    results,
    opts: BboxOptions,
    session: Session | None,
    mine: list[inputs.InputItem] | None,
    stats: dict,
    *,
    sink: RecordSink,
    drawdir: OutDir | None,
    progress: Progress,
    boxer: Boxer,
    emit: list,
    not_drawn: list[str],
) -> tuple[list[dict], bool]:
    """Box each result and write its record (and drawing); then close the drawings and
    finish the output in input order, also when interrupted or a write failed.

    Returns:
        (the records, in input order when the sink gives them back; whether every result was
        written)."""
    order: list[str] = []
    seen: list[tuple[int, str]] = []  # (index, key) of each result, for the --draw manifest
    records: list[dict] = []
    interrupted = completed = False

    def write_ready(block: bool = False) -> None:
        with session.profiler.stage("boxes (waited)") if session else contextlib.nullcontext():
            done = list(boxer.ready(block))
        for res, boxed in done:
            rec = _box_record(res, boxed, opts, stats, drawdir, not_drawn)
            order.append(rec["image"])
            records.append(rec)
            sink.write(rec)
            progress.record(rec, on_stdout=sink.on_stdout)
            if drawdir is not None:
                drawdir.check_errors()

    emit.append(write_ready)
    try:
        for res in results:
            item = res.item if isinstance(res, loader.Sample) else res.sample.item
            seen.append((item.index, item.key))
            boxer.submit(res)
            write_ready()
        write_ready(block=True)
        completed = True
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        boxer.close(cancel=not completed)
        progress.stop()
        if drawdir is not None:
            drawdir.close(
                order=drawing.draw_order(mine, seen), cancel=interrupted, keep_lock=completed
            )
        if opts.from_maps is None:
            order = [it.path for it in mine]
        try:
            got = sink.finish(order, complete=completed and not (drawdir and drawdir.failed))
        except Exception:
            if completed:
                raise
            got = None  # the error in flight says more
        if got is not None:
            records = got
    return records, completed


def _box_record(
    res: cams.CamResult | loader.Sample,
    boxed: tuple[list[dict], dict | None] | None,
    opts: BboxOptions,
    stats: dict,
    drawdir: OutDir | None,
    not_drawn: list[str],
) -> dict:
    """One input's record, its boxes and GT-known box (``boxed``:
    :func:`camcli.api.boxer.box_entries`, :func:`camcli.api.boxer.gt_known_entry`) or its
    error; its drawing (or error line) queued in ``drawdir``; from maps, ``stats`` counts it."""
    if isinstance(res, loader.Sample):
        rec = {"image": res.item.path, "error": res.error}
        if opts.from_maps is not None:
            stats["failed"] += 1
        if drawdir is not None:  # every input has its manifest line, as in `cam`
            drawdir.record(res.item.index, {**rec, "key": res.item.key})
        return rec
    if opts.from_maps is not None:
        stats["ok"] += 1
    entries, gk = boxed
    rec = {**res.record, "boxes": entries}
    if gk is not None:
        rec["gt_known"] = gk
    if drawdir is not None:
        why = drawing.draw_record(drawdir, res, rec)
        if why is not None:
            not_drawn.append(why)
    return rec


def _join_ranks(
    sink: RecordSink,
    drawdir: OutDir | None,
    split: Split,
    items: list[inputs.InputItem] | None,
    records: list[dict],
) -> list[dict]:
    """Under torchrun: rank 0 joins the ranks' records (returned) and drawings."""
    joined = sink.join(items)
    if split.main and drawdir is not None:
        from camcli.runs.merge import merge_outdir

        merge_outdir(drawdir.root, keys=[it.key for it in items])
    return joined if joined is not None else records
