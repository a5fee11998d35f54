"""The training loop: :func:`fit` trains any module over injected loaders; :func:`evaluate`.

Batches are ``(x, y)`` or ``(x, y, errors)``; ``x`` uint8 [B, 3, S, S] is normalised on the
device, float is taken as already normalised. Every epoch is validated; on rank 0 the loop keeps
``RUN/last.pt`` / ``RUN/best.pt`` / ``RUN/metrics.jsonl`` and resumes from a checkpoint's
optimizer, scheduler and RNG state. Progress goes to a
:class:`~camcli.train.report.Reporter`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from camcli.errors import NonFiniteError, TrainingError
from camcli.models.gap import GapModel
from camcli.models.registry import Preprocess
from camcli.train.batches import autocast_for, prepare_inputs, unpack_batch
from camcli.train.checkpoint import (
    make_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from camcli.train.data import set_loader_epoch
from camcli.train.distributed import DistContext
from camcli.train.optim import Optimisation, lr_factor, make_optimizer, param_groups
from camcli.train.options import TrainOptions
from camcli.train.report import Reporter, SeenErrors, SilentReporter


@dataclass
class FitResult:
    """What :func:`fit` / :func:`camcli.train.run.train_folder` hand back."""

    model: GapModel  # final weights, eval mode
    epochs_done: int
    best: dict | None  # {"epoch", "val_top1"} (or train_top1 without validation)
    history: list[dict]
    out_dir: Path | None
    options: TrainOptions | None = None
    skipped: list[str] = field(default_factory=list)  # inputs that could not be decoded


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: Iterable,
    *,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    dist: DistContext | None = None,
    on_errors: Callable[[list], None] | None = None,
) -> dict | None:
    """Loss, top-1 and top-5 (top-min(5, C)) over a loader, summed across ranks.

    ``on_errors`` receives each batch's ``[(path, reason)]`` of undecodable images (so that a
    corrupt validation image is reported like a training one, not dropped silently).

    Returns:
        ``{"loss", "top1", "top5", "images"}``, or None when the loader holds no image.
    """
    dist = dist or DistContext()
    was = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for batch in loader:
        x, y, errors = unpack_batch(batch)
        if errors and on_errors is not None:
            on_errors(errors)
        if x is None:
            continue
        x, y = prepare_inputs(x, preprocess, device), y.to(device)
        with autocast_for(device, precision):
            logits = net(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        sums += torch.stack(
            [
                nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=device),
            ]
        )
    net.train(was)
    dist.all_sum(sums)
    loss, t1, t5, n = sums.tolist()
    if n == 0:
        return None
    return {"loss": loss / n, "top1": t1 / n, "top5": t5 / n, "images": int(n)}


def fit(
    model: GapModel,
    train_loader: Iterable,
    val_loader: Iterable | None,
    *,
    options: TrainOptions,
    device: torch.device,
    net: nn.Module | None = None,
    new_prefixes: Sequence[str] = ("fc.",),
    out_dir: str | Path | None = None,
    resume_from: dict | None = None,
    reporter: Reporter | None = None,
    dist: DistContext | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    eval_preprocess: Preprocess | None = None,
    seen: SeenErrors | None = None,
) -> FitResult:
    """Train ``net`` on ``train_loader`` for ``options.epochs`` epochs (resolved options).

    Every epoch: train, validate (``val_loader``; none -> selection by training top-1), then on
    rank 0 write ``out_dir/best.pt`` when validation top-1 improved, ``out_dir/last.pt`` (with
    training state) and one line of ``out_dir/metrics.jsonl``.

    Args:
        model: the GapModel whose weights are trained and saved.
        net: what runs forward [default: ``model``]; e.g. a DDP wrapper, or ``model.fc`` alone
            for the linear probe.
        new_prefixes: parameter-name prefixes of the layers at ``options.head_lr_mult``.
        out_dir: the run folder; None writes nothing.
        resume_from: a ``last.pt`` dict, to continue after its epoch.
        reporter: receives progress [default: silence].
        dist: this process's place in a DDP job [default: alone].
        step_callback: ``(epoch, step)`` after every optimisation step (tests use it to
            interrupt a run).
        eval_preprocess: normalisation of validation batches [default: ``model.preprocess``].
        seen: collects undecodable inputs (training and validation) [default: a new one
            warning through ``reporter``].

    Returns:
        The final model (eval mode), history, best epoch and the inputs skipped.

    Raises:
        NonFiniteError: the loss became non-finite; the checkpoints of the last completed
            epoch are left untouched.
        TrainingError: nothing to train, or no training batch.
    """
    from camcli.sysinfo import resume_gc

    resume_gc()  # the network is built: the start-up is over (camcli.sysinfo.pause_gc)
    reporter = reporter or SilentReporter()
    dist = dist or DistContext()
    net = net if net is not None else model
    out = Path(out_dir) if out_dir is not None else None
    optim, steps_per_epoch = _optimisation(net, options, new_prefixes, train_loader, device)
    start, history, best = _resume(resume_from, model, optim)
    if out is not None and dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _rewrite_metrics(out / "metrics.jsonl", history)
    seen = seen if seen is not None else SeenErrors(reporter)
    epoch_trainer = _EpochTrainer(
        net=net,
        preprocess=model.preprocess,
        options=options,
        device=device,
        dist=dist,
        optim=optim,
        loss_fn=nn.CrossEntropyLoss(label_smoothing=options.label_smoothing),
        seen=seen,
        reporter=reporter,
        step_callback=step_callback,
        out=out,
    )
    for epoch in range(start, options.epochs):
        set_loader_epoch(train_loader, epoch)
        net.train()
        reporter.epoch_start(epoch + 1, options.epochs, steps_per_epoch)
        train_sums, seconds = epoch_trainer.run(train_loader, epoch)
        val = _validate(
            net, val_loader, eval_preprocess or model.preprocess, device, options, dist, seen
        )
        record = _epoch_record(epoch, options, steps_per_epoch, train_sums, seconds, val)
        bad = _nonfinite_in(record, model)
        if bad is not None:  # never saved: a NaN/inf state is no checkpoint
            raise NonFiniteError(_nonfinite_epoch_message(bad, epoch, options, out))
        best, record["best"] = _update_best(best, record, epoch, validated=val is not None)
        history.append(record)
        if out is not None and dist.is_main:
            _save_epoch(out, model, options, epoch, record, history, best, optim)
        reporter.epoch_end(record)
    dist.barrier()
    final = unwrap(model)
    final.eval()
    return FitResult(final, options.epochs, best, history, out, options, sorted(seen.seen))


def _optimisation(
    net: nn.Module,
    options: TrainOptions,
    new_prefixes: Sequence[str],
    train_loader: Iterable,
    device: torch.device,
) -> tuple[Optimisation, int]:
    """The optimizer over ``net``'s trainable parameters, scheduled per step; steps per epoch."""
    groups = param_groups(
        unwrap(net),
        [] if options.head_lr_mult == 1.0 else new_prefixes,
        options.lr,
        options.head_lr_mult,
        options.weight_decay,
    )
    if not groups:
        raise TrainingError("nothing to train: every parameter is frozen")
    opt = make_optimizer(groups, options)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TrainingError("the training loader must have a length") from None
    if steps_per_epoch == 0:
        raise TrainingError("no training batch: too few images for --batch-size")
    return Optimisation.create(opt, options, steps_per_epoch, device), steps_per_epoch


def _resume(
    ck: dict | None, model: GapModel, optim: Optimisation
) -> tuple[int, list[dict], dict | None]:
    """Load a ``last.pt``'s weights and training state; -> (first epoch, history, best)."""
    if ck is None:
        return 0, [], None
    unwrap(model).load_state_dict(ck["state_dict"])
    ts = ck.get("training_state") or {}
    optim.load_state_dict(ts)
    if "rng" in ts:
        set_rng_state(ts["rng"])
    start = int(ck["epoch"])
    return start, [dict(h) for h in ck.get("history", [])][:start], ck.get("best")


@dataclass
class _EpochTrainer:
    """One pass over the training loader: forward, finite-loss check, step, running sums."""

    net: nn.Module
    preprocess: Preprocess
    options: TrainOptions
    device: torch.device
    dist: DistContext
    optim: Optimisation
    loss_fn: nn.Module
    seen: SeenErrors
    reporter: Reporter
    step_callback: Callable[[int, int], None] | None
    out: Path | None

    def run(self, loader: Iterable, epoch: int) -> tuple[list[float], float]:
        """-> ([loss sum, top-1 hits, images] over all ranks, seconds)."""
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, top1, n
        t0 = time.perf_counter()
        for step, batch in enumerate(loader):
            x, y, errors = unpack_batch(batch)
            self.seen(errors)
            if x is None:
                raise TrainingError("a training batch holds no decodable image")
            logits, loss, y = self._step(x, y, epoch, step)
            with torch.no_grad():
                sums += torch.stack(
                    [
                        loss.detach().double() * len(y),
                        (logits.detach().argmax(1) == y).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=self.device),
                    ]
                )
            self.reporter.step(float(loss.detach()))
            if self.step_callback is not None:
                self.step_callback(epoch, step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.dist.all_sum(sums)
        return sums.tolist(), seconds

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward, stop on a non-finite loss (on any rank), one optimisation step.

        Returns:
            (logits, loss, labels on the device).
        """
        x = prepare_inputs(x, self.preprocess, self.device)
        y = y.to(self.device, non_blocking=True)
        with autocast_for(self.device, self.options.precision):
            logits = self.net(x)
            loss = self.loss_fn(logits.float(), y)
        finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        if not bool(self.dist.all_min(finite).item()):
            raise NonFiniteError(_nonfinite_message(loss, epoch, step, self.options, self.out))
        self.optim.step(loss)
        return logits, loss, y


def _validate(
    net: nn.Module,
    val_loader: Iterable | None,
    preprocess: Preprocess,
    device: torch.device,
    options: TrainOptions,
    dist: DistContext,
    seen: SeenErrors | None = None,
) -> dict | None:
    """:func:`evaluate` on the validation loader (the unwrapped net under DDP), if any."""
    if val_loader is None:
        return None
    return evaluate(
        unwrap(net) if dist.enabled else net,
        val_loader,
        preprocess=preprocess,
        device=device,
        precision=options.precision,
        dist=dist,
        on_errors=seen,
    )


def _epoch_record(
    epoch: int,
    options: TrainOptions,
    steps_per_epoch: int,
    train_sums: list[float],
    seconds: float,
    val: dict | None,
) -> dict:
    """One line of ``metrics.jsonl`` (``best`` is added by the caller)."""
    tr_loss, tr_top1, n_train = train_sums
    last_step = max(0, (epoch + 1) * steps_per_epoch - 1)
    return {
        "epoch": epoch + 1,
        "epochs": options.epochs,
        "train_loss": tr_loss / max(1, n_train),
        "train_top1": tr_top1 / max(1, n_train),
        "val_loss": val["loss"] if val else None,
        "val_top1": val["top1"] if val else None,
        "val_top5": val["top5"] if val else None,
        "lr": options.lr * lr_factor(last_step, o=options, steps_per_epoch=steps_per_epoch),
        "images_per_s": n_train / seconds if seconds > 0 else None,
        "epoch_seconds": seconds,
        "train_images": int(n_train),
        "val_images": val["images"] if val else 0,
    }


def _update_best(
    best: dict | None, record: dict, epoch: int, *, validated: bool
) -> tuple[dict | None, bool]:
    """-> (best so far, whether this epoch is it): by validation top-1, else training top-1."""
    score = record["val_top1"] if validated else record["train_top1"]
    if best is not None and not score > best["val_top1"]:
        return best, False
    by = "val_top1" if validated else "train_top1"
    return {"epoch": epoch + 1, "val_top1": score, "by": by}, True


def _save_epoch(
    out: Path,
    model: GapModel,
    options: TrainOptions,
    epoch: int,
    record: dict,
    history: list[dict],
    best: dict | None,
    optim: Optimisation,
) -> None:
    """``best.pt`` if this epoch is the best, ``last.pt`` with training state, a metrics line."""
    common = {"options": options, "epoch": epoch + 1, "metrics": record, "history": history}
    if record["best"]:
        save_checkpoint(make_checkpoint(model, best=best, **common), out / "best.pt")
    state = {**optim.state_dict(), "rng": rng_state()}
    save_checkpoint(
        make_checkpoint(model, best=best, training_state=state, **common), out / "last.pt"
    )
    from camcli.atomic import open_nofollow

    with open_nofollow(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record, allow_nan=False) + "\n")


def _nonfinite_in(record: dict, model: nn.Module) -> str | None:
    """What is non-finite after an epoch: a loss of ``record`` or a parameter or buffer of
    ``model`` (e.g. BatchNorm's running_var); None when all are finite."""
    for key in ("train_loss", "val_loss"):
        v = record.get(key)
        if v is not None and not math.isfinite(v):
            return f"{key.replace('_', ' ')} ({v})"
    with torch.no_grad():
        for name, t in unwrap(model).state_dict().items():
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                return f"{name}"
    return None


def _nonfinite_epoch_message(bad: str, epoch: int, o: TrainOptions, out: Path | None) -> str:
    msg = (
        f"non-finite {bad} after epoch {epoch + 1}: training stopped, this epoch not saved; "
        f"lower --lr (now {o.lr:g})"
    )
    if o.precision != "fp32":
        msg += " or use --precision fp32"
    return msg + _last_good(epoch, out)


def _last_good(epoch: int, out: Path | None) -> str:
    """Where the last good state is: ``epoch`` epochs were completed and saved before."""
    if out is None:
        return ""
    if epoch:
        return f"; {out / 'last.pt'} keeps epoch {epoch}, the last good one"
    return "; no good checkpoint exists (none was written): rerun with a lower --lr"


def _nonfinite_message(
    loss: torch.Tensor, epoch: int, step: int, o: TrainOptions, out: Path | None
) -> str:
    msg = (
        f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step + 1}: "
        f"training stopped; lower --lr (now {o.lr:g})"
    )
    if o.precision != "fp32":
        msg += " or use --precision fp32"
    return msg + _last_good(epoch, out)


def _rewrite_metrics(path: Path, history: list[dict]) -> None:
    from camcli.atomic import write_atomic

    write_atomic(
        path, "".join(json.dumps(h, allow_nan=False) + "\n" for h in history).encode("utf-8")
    )
