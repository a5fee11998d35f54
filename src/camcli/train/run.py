"""The front door: :func:`train_folder`, what ``camcli train`` runs.

Recipe defaults (:mod:`~camcli.train.options`), the starting network with its backbone weights
(:mod:`~camcli.train.initial`), DistributedDataParallel under ``torchrun``
(:mod:`~camcli.train.distributed`), the images (:mod:`~camcli.train.data`), then the loop
(:mod:`~camcli.train.loop`) or the linear probe (:mod:`~camcli.train.probe`).
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from camcli.atomic import remove_stray
from camcli.console import plural
from camcli.data import inputs
from camcli.errors import TrainingError, UsageError, WeightsError
from camcli.models.gap import GapModel
from camcli.models.load import entry_for
from camcli.models.registry import ModelEntry
from camcli.runs.locks import BusyError, RunLock
from camcli.sysinfo import resume_gc
from camcli.train.checkpoint import load_checkpoint, model_from_checkpoint
from camcli.train.data import (
    FolderData,
    FolderImages,
    default_workers,
    images_per_epoch,
    make_loader,
    scan_folders,
)
from camcli.train.distributed import (
    DistContext,
    init_distributed,
    local_world,
    shutdown_distributed,
)
from camcli.train.initial import initial_model, new_layer_prefixes
from camcli.train.loop import FitResult, fit
from camcli.train.options import TrainOptions, check_options, resolve_options
from camcli.train.probe import linear_probe
from camcli.train.report import Reporter, SilentReporter


def run_dir_state(out: Path) -> Path | None:
    """The run folder's ``last.pt``, if there is one."""
    last = out / "last.pt"
    return last if last.is_file() else None


def train_folder(
    data: str | Path,
    out: str | Path,
    options: TrainOptions,
    *,
    val: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    offline: bool = False,
    reporter: Reporter | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    max_pixels: int = inputs.DEFAULT_MAX_PIXELS,
    on_resume: Callable[[TrainOptions], None] | None = None,
) -> FitResult:
    """``camcli train``: train ``options.model`` on the ImageFolder tree ``data`` into ``out``.

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this; they form a DDP job, shard
    the data, and only rank 0 writes files.

    Args:
        data: one folder per class, or ``train/`` and ``val/`` holding them.
        out: the run folder: ``last.pt``, ``best.pt``, ``metrics.jsonl``.
        options: as given; ``None`` fields take the recipe's defaults.
        val: a validation folder [default: ``data/val``, else a split of ``data``].
        resume: continue ``out/last.pt`` with its saved options (``options.epochs`` and
            ``options.workers`` may change; everything else is taken from the checkpoint, and
            an ``options.lr`` other than the saved one is refused: the optimizer and schedule
            state it resumes set the learning rate).
        device: "auto", "cpu", "cuda" or "cuda:N".
        offline: never download backbone weights; use the cache only.
        reporter: receives progress [default: silence].
        step_callback: ``(epoch, step)`` after every optimisation step.
        max_pixels: larger images are refused (skipped with a warning).
        on_resume: with ``resume``, called with the checkpoint's options once ``last.pt`` is
            loaded and checked (the command line names the options it ignores then, not
            before an error that there is nothing to resume).

    Returns:
        The trained model, its history and best epoch, the inputs that were skipped.

    Raises:
        NonFiniteError: the loss became non-finite (exit 1).
        TrainingError: bad data, options, run folder or checkpoint (exit 2).
        UsageError: ``resume`` with another ``options.lr`` (exit 2).
    """
    out = Path(out)
    reporter = reporter or SilentReporter()
    dist, dev = init_distributed(device)
    lock = made = None
    try:
        if dist.is_main:
            lock, made = _lock_run_folder(out)
        job = _Job(
            data, out, val, resume, offline, reporter, step_callback, max_pixels, dist, dev,
            on_resume,
        )  # fmt: skip
        return _train_folder(job, options)
    finally:
        if lock is not None:
            lock.release()
        if made:
            with contextlib.suppress(OSError):
                out.rmdir()  # a run that wrote nothing leaves no folder behind
        shutdown_distributed(dist)


def _lock_run_folder(out: Path):
    """Lock ``out`` (``out/.camcli.lock``) for this run -> (the lock, whether ``out`` was made
    here).

    Raises:
        TrainingError: another run trains into ``out`` (exit 2), or it cannot be created.
    """
    made = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        return RunLock(out / ".camcli.lock"), made
    except BusyError:
        raise TrainingError(
            f"--out {out}: another camcli run is writing it; wait for it to finish or choose "
            "another --out"
        ) from None
    except OSError as exc:
        from camcli.errors import write_error

        raise write_error(exc, out) from None


@dataclass
class _Job:
    """What :func:`train_folder` was asked, and where this process runs."""

    data: str | Path
    out: Path
    val: str | Path | None
    resume: bool
    offline: bool
    reporter: Reporter
    step_callback: Callable[[int, int], None] | None
    max_pixels: int
    dist: DistContext
    dev: torch.device
    on_resume: Callable[[TrainOptions], None] | None = None


# temporary checkpoint names of camcli versions before camcli.atomic
_LEGACY_TMP = re.compile(r"^\.(last|best)\.pt\.tmp\d*$")


def _train_folder(job: _Job, options: TrainOptions) -> FitResult:
    """:func:`train_folder` once this process has its place in the job."""
    resume_ck = None
    if job.dist.is_main:  # a run killed while saving left its temporary checkpoint
        remove_stray(job.out, legacy=_LEGACY_TMP)
    if job.resume:
        resume_ck, o = _resumed_options(job.out, options)
        if job.on_resume is not None:
            job.on_resume(o)
        entry = entry_for(o.model)
        if resume_ck["epoch"] >= o.epochs:
            return _nothing_to_resume(job, resume_ck, o)
    else:
        entry, o = _new_run_options(job.out, options)
    if o.precision == "auto":  # bf16 where it is native, else fp32 (recorded resolved)
        o = replace(o, precision=_auto_precision(job.dev))
    if o.precision == "fp16" and job.dev.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    folders = _scan(job, o, resume_ck)
    torch.manual_seed(o.seed)
    random.seed(o.seed)
    model, new_prefixes = _starting_model(job, entry, o, folders.classes, resume_ck)
    model = _to_device(model, job.dev)
    resume_gc()  # the network is built: the start-up is over (camcli.sysinfo.pause_gc)
    train_ds, val_ds = _datasets(job, folders, model, o)
    if job.dist.is_main:
        job.reporter.info(_summary(job, entry, o, folders, len(train_ds), len(val_ds)))
    loader_kw = _loader_kw(job, o)
    if o.freeze_backbone:
        return linear_probe(
            model,
            train_ds,
            val_ds,
            o,
            device=job.dev,
            dist=job.dist,
            out=job.out,
            resume_ck=resume_ck,
            reporter=job.reporter,
            step_callback=job.step_callback,
            loader_kw=loader_kw,
        )
    return _fit_images(job, model, new_prefixes, train_ds, val_ds, o, resume_ck, loader_kw)


def _new_run_options(out: Path, options: TrainOptions) -> tuple[ModelEntry, TrainOptions]:
    """The model's registry entry and the resolved options; ``out`` must not hold a run."""
    if run_dir_state(out) is not None:
        raise TrainingError(
            f"{out} already holds a run (last.pt); pass --resume to continue it, "
            "or choose another --out"
        )
    entry = entry_for(options.model)
    return entry, resolve_options(options, entry)


def _resumed_options(out: Path, options: TrainOptions) -> tuple[dict, TrainOptions]:
    """``out/last.pt`` and its saved options, with ``epochs`` and ``workers`` as given."""
    last = run_dir_state(out)
    if last is None:
        raise TrainingError(
            f"--resume: {out / 'last.pt'} not found; nothing to resume (no epoch of a run in "
            f"{out} was saved): rerun without --resume to start it"
        )
    ck = load_checkpoint(last, resume=True)
    try:
        saved = TrainOptions.from_dict(ck["train_options"])
        check_options(saved)
        if not isinstance(saved.model, str):
            raise TypeError(f"model is {saved.model!r}")
    except (TypeError, ValueError, KeyError, AttributeError, TrainingError) as exc:
        raise WeightsError(
            f"{last}: checkpoint field 'train_options' cannot be used ({exc})"
        ) from None
    if options.lr is not None and options.lr != saved.lr:
        raise UsageError(
            f"--lr {options.lr:g}: a resumed run keeps its learning rate ({saved.lr:g}, set by "
            f"the optimizer and schedule state {last} resumes); drop --lr to continue it"
        )
    saved.epochs = options.epochs or saved.epochs
    saved.workers = options.workers if options.workers is not None else saved.workers
    return ck, saved


def _nothing_to_resume(job: _Job, ck: dict, o: TrainOptions) -> FitResult:
    """A finished run asked to resume: say so and hand back its checkpoint."""
    job.reporter.info(
        f"{job.out}: already trained for {ck['epoch']} of {plural(o.epochs, 'epoch')}; "
        "nothing to do (raise --epochs to train on)"
    )
    model = model_from_checkpoint(ck)
    return FitResult(
        model, int(ck["epoch"]), ck.get("best"), list(ck.get("history", [])), job.out, o
    )


def _scan(job: _Job, o: TrainOptions, resume_ck: dict | None) -> FolderData:
    """The labelled images; a resumed run must see the checkpoint's classes."""
    folders = scan_folders(job.data, val=job.val, val_split=o.val_split, seed=o.seed)
    if resume_ck is not None and list(resume_ck["categories"]) != folders.classes:
        raise TrainingError(
            f"--resume: the classes in {job.data} differ from the checkpoint's "
            f"({len(folders.classes)} vs {len(resume_ck['categories'])}); resume with the same DATA"
        )
    return folders


def _starting_model(
    job: _Job, entry: ModelEntry, o: TrainOptions, classes: list[str], resume_ck: dict | None
) -> tuple[GapModel, list[str]]:
    """The checkpoint's model when resuming, else :func:`initial_model`; and its new layers."""
    if resume_ck is not None:
        model = model_from_checkpoint(resume_ck)
        new_prefixes = new_layer_prefixes(entry, o, model)
    else:
        model, new_prefixes = initial_model(entry, o, classes, offline=job.offline)
    if o.freeze_backbone and entry.builder == "paper":
        job.reporter.warn(
            f"{entry.name}: --freeze-backbone keeps the new conv layer of the GAP head at its "
            "random initialisation; only the linear layer is trained"
        )
    return model, new_prefixes


def _to_device(model: GapModel, dev: torch.device) -> GapModel:
    """The model on ``dev`` (channels-last on the CPU)."""
    model = model.to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _datasets(
    job: _Job, folders: FolderData, model: GapModel, o: TrainOptions
) -> tuple[FolderImages, FolderImages]:
    """Training images (augmented, except for the linear probe) and validation images."""
    train_ds = FolderImages(
        folders.train,
        model.preprocess,
        train=not o.freeze_backbone,
        seed=o.seed,
        max_pixels=job.max_pixels,
    )
    val_ds = FolderImages(folders.val, model.preprocess, train=False, max_pixels=job.max_pixels)
    if len(train_ds) < 2:
        raise TrainingError(f"{job.data}: need at least two training images")
    return train_ds, val_ds


def _loader_kw(job: _Job, o: TrainOptions) -> dict:
    """:func:`make_loader`'s workers, shard and pinning for this process."""
    workers = o.workers
    if workers is None:
        workers = default_workers(job.dev, local_world(job.dist))
    return {
        "workers": workers,
        "rank": job.dist.rank,
        "world": job.dist.world,
        "pin_memory": job.dev.type == "cuda",
    }


def _summary(
    job: _Job, entry: ModelEntry, o: TrainOptions, folders: FolderData, n_train: int, n_val: int
) -> str:
    """The one line that says what is about to be trained, on what, how and where."""
    dist = job.dist
    # the linear probe trains one layer on every rank's gathered features: no sharding
    world = dist.world if dist.enabled and not o.freeze_backbone else 1
    used = images_per_epoch(n_train, o.batch_size, world)
    classes = plural(len(folders.classes), "class", "classes")
    images = f"{plural(n_train, 'image')} of {classes}"
    if used != n_train:
        images = (
            f"{used} of {plural(n_train, 'image')} of {classes} per epoch (the last "
            "partial batch of each epoch's shuffle is dropped)"
        )
    return (
        f"train {entry.name} ({o.recipe}, pool {'GAP' if o.pool == 'avg' else 'GMP'}) on "
        f"{images}, validation: "
        f"{plural(n_val, 'image')} ({folders.val_source}); {plural(o.epochs, 'epoch')}, batch "
        f"{o.batch_size}{f' x {dist.world} processes' if dist.enabled else ''}, "
        f"{o.optimizer} lr {o.lr:g} ({o.schedule}), {o.image_size} px, {o.precision}, "
        f"{job.dev.type}{f' ({dist.backend})' if dist.enabled else ''} -> {job.out}"
    )


def _fit_images(
    job: _Job,
    model: GapModel,
    new_prefixes: list[str],
    train_ds: FolderImages,
    val_ds: FolderImages,
    o: TrainOptions,
    resume_ck: dict | None,
    loader_kw: dict,
) -> FitResult:
    """The whole network trained on the images (DDP-wrapped under torchrun)."""
    kw = {"batch_size": o.batch_size, "seed": o.seed, **loader_kw}
    train_loader = make_loader(train_ds, shuffle=True, **kw)
    val_loader = make_loader(val_ds, shuffle=False, **kw) if len(val_ds) else None
    net: nn.Module = model
    if job.dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[job.dev.index] if job.dev.type == "cuda" else None
        )
    return fit(
        model,
        train_loader,
        val_loader,
        options=o,
        device=job.dev,
        net=net,
        new_prefixes=new_prefixes,
        out_dir=job.out,
        resume_from=resume_ck,
        reporter=job.reporter,
        dist=job.dist,
        step_callback=job.step_callback,
    )


def _auto_precision(dev: torch.device) -> str:
    """``--precision auto``: bf16 on a CUDA device that supports it or a CPU with native bf16
    (AVX512-BF16 / AMX), else fp32 (emulated bf16 is slower than fp32)."""
    from camcli.sysinfo import cpu_has_fast_bf16

    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if dev.type == "cpu" and cpu_has_fast_bf16() else "fp32"
