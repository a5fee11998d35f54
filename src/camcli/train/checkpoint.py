"""camcli checkpoints: make, save, load, rebuild the model; the RNG state a resume restores.

Checkpoints (``format: camcli-checkpoint``) load with ``torch.load(weights_only=True)`` and hold
everything ``camcli predict/cam/bbox --weights`` needs: see :func:`make_checkpoint`.
"""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camcli import __version__
from camcli.atomic import AtomicFile
from camcli.errors import TrainingError, WeightsError
from camcli.models.ckcheck import (
    check_archive,
    check_checkpoint,
    check_finite_state,
    load_failure,
)
from camcli.models.gap import GapModel
from camcli.models.load import build_model, entry_for
from camcli.models.registry import Preprocess
from camcli.train.options import TrainOptions

CHECKPOINT_FORMAT = "camcli-checkpoint"
CHECKPOINT_VERSION = 1


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (else ``net`` itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU, detached copy of a model's state_dict (DDP unwrapped)."""
    return {k: v.detach().to("cpu").clone() for k, v in unwrap(model).state_dict().items()}


def rng_state() -> dict:
    """The torch, Python (and initialised CUDA) random states, for :func:`set_rng_state`."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` saved (after a checkpoint round trip); CUDA states that
    do not fit this machine are skipped."""
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "python" in st:
        v, state, gauss = st["python"]
        random.setstate((v, tuple(state), gauss))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(st["cuda"])


def make_checkpoint(
    model: GapModel,
    *,
    options: TrainOptions,
    epoch: int,
    metrics: dict | None,
    history: list[dict],
    best: dict | None,
    training_state: dict | None = None,
) -> dict:
    """The camcli checkpoint dict (``torch.load(weights_only=True)``-safe).

    Keys: ``format`` ("camcli-checkpoint"), ``format_version`` (1), ``model`` (registry name),
    ``state_dict`` (GapModel: ``trunk.*``, ``fc.*``), ``categories``, ``preprocess``
    (:meth:`Preprocess.to_dict`), ``pool`` ("avg" | "max"), ``arch_options``, ``epoch``
    (completed epochs), ``train_options`` (resolved :class:`TrainOptions`), ``metrics`` (this
    epoch's record), ``history`` (every epoch's record), ``best`` ({"epoch", "val_top1"}),
    ``camcli_version``, ``created``; ``last.pt`` adds ``training_state`` (optimizer, scheduler,
    grad scaler, RNG) for ``--resume``.
    """
    m = unwrap(model)
    ck = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": m.name,
        "state_dict": model_state(m),
        "categories": list(m.categories),
        "preprocess": m.preprocess.to_dict(),
        "pool": m.pool,
        "arch_options": dict(options.arch_options),
        "epoch": int(epoch),
        "train_options": options.to_dict(),
        "metrics": dict(metrics) if metrics else {},
        "history": [dict(h) for h in history],
        "best": dict(best) if best else None,
        "camcli_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if training_state is not None:
        ck["training_state"] = training_state
    return ck


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, rename: never half-written.

    Returns:
        ``path``.
    """
    path = Path(path)
    with AtomicFile(path, fsync=True) as fh:
        torch.save(ckpt, fh)
    return path


def load_checkpoint(path: str | Path, *, resume: bool = False) -> dict:
    """A camcli checkpoint, loaded without executing code (``weights_only``), on the CPU, its
    fields and tensors validated (:mod:`camcli.models.ckcheck`).

    Args:
        path: the file.
        resume: also validate what ``train --resume`` needs (epoch, options, training state).

    Raises:
        TrainingError: no such file, or not a camcli checkpoint.
        WeightsError: not loadable (damaged, truncated, not a torch file; exit 4), a field of
            the wrong type or out of bounds, non-finite weights, or a zip that would expand too
            far.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint")
    check_archive(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise WeightsError(
            f"{path}: not a loadable camcli checkpoint ({load_failure(exc)}): restore it, or rerun "
            "without --resume to start again"
        ) from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a camcli checkpoint")
    check_checkpoint(ck, path, resume=resume)
    if not all(isinstance(v, torch.Tensor) for v in ck["state_dict"].values()):
        raise WeightsError(f"{path}: checkpoint field 'state_dict' holds non-tensor values")
    check_finite_state(ck["state_dict"], path)
    return ck


def model_from_checkpoint(ck: dict) -> GapModel:
    """Rebuild the GapModel a checkpoint describes (eval mode, CPU)."""
    return build_model(
        entry_for(ck["model"]),
        ck["state_dict"],
        num_classes=len(ck["categories"]),
        categories=ck["categories"],
        preprocess=Preprocess.from_dict(ck["preprocess"]),
        pool=ck["pool"],
        arch_options=ck.get("arch_options") or None,
    )
