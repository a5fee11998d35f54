"""The linear probe (paper section 4): pooled features computed once, then the linear layer alone.

The backbone is frozen, so every image's pooled feature vector is the same each epoch: they are
computed once (no augmentation), gathered from all ranks, and :func:`camcli.train.loop.fit`
trains the classifier on mini-batches of the cached tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from camcli.models.gap import GapModel
from camcli.train.batches import autocast_for, prepare_inputs, unpack_batch
from camcli.train.data import FolderImages, make_loader
from camcli.train.distributed import DistContext
from camcli.train.loop import FitResult, fit
from camcli.train.options import TrainOptions
from camcli.train.report import Reporter, SeenErrors


@torch.no_grad()
def pooled_features(
    model: GapModel,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    mirror: bool,
    dist: DistContext,
    on_errors: Callable[[list], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled trunk features of every image of ``loader`` (and of its mirror image with
    ``mirror``), gathered from all ranks.

    ``on_errors`` receives each batch's ``[(path, reason)]`` of undecodable images.

    Returns:
        (float32 [N, K] on the CPU, int64 [N] labels on the CPU).
    """
    model.eval()
    feats, labels = [], []
    for batch in loader:
        x, y, errors = unpack_batch(batch)
        if errors and on_errors is not None:
            on_errors(errors)
        if x is None:
            continue
        xs = [x, x.flip(-1)] if mirror else [x]
        for xi in xs:
            xi = prepare_inputs(xi, model.preprocess, device)
            with autocast_for(device, precision):
                f = model.pooled(model.features(xi))
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    f = torch.cat(feats) if feats else torch.zeros(0, model.fc.in_features)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if dist.enabled:
        parts: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(parts, (f, y))
        f = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
    return f, y


class _TensorBatches:
    """Shuffled (seed, epoch) mini-batches over cached tensors: (x [b, K], y [b])."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int
    ) -> None:
        self.x, self.y, self.b, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.b if self.shuffle and n > self.b else math.ceil(n / self.b)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.b : (i + 1) * self.b]
            yield self.x[idx], self.y[idx]


class _Classifier(nn.Module):
    """The linear layer alone, named ``fc`` so parameter names match the GapModel's."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def linear_probe(
    model: GapModel,
    train_ds: FolderImages,
    val_ds: FolderImages,
    o: TrainOptions,
    *,
    device: torch.device,
    dist: DistContext,
    out: Path,
    resume_ck: dict | None,
    reporter: Reporter,
    step_callback: Callable[[int, int], None] | None,
    loader_kw: dict,
) -> FitResult:
    """Train ``model.fc`` alone on the pooled features of ``train_ds``.

    Args:
        model: the network on ``device``, its backbone kept as it is.
        train_ds, val_ds: the images (``val_ds`` may be empty: no validation).
        o: resolved options (``batch_size`` batches the cached features).
        out: the run folder (rank 0 writes it).
        resume_ck: a ``last.pt`` dict to continue, or None.
        loader_kw: :func:`make_loader`'s ``workers``, ``rank``, ``world`` and ``pin_memory``
            for the feature pass.

    Returns:
        :func:`fit`'s result; the saved checkpoints hold the whole model.
    """
    reporter.info("linear probe: computing the pooled features once")
    seen = SeenErrors(reporter)  # undecodable images of both splits, reported once each

    def features(ds: FolderImages) -> tuple[torch.Tensor, torch.Tensor]:
        batch = max(2, min(o.batch_size, 64))
        loader = make_loader(ds, batch_size=batch, shuffle=False, seed=o.seed, **loader_kw)
        return pooled_features(
            model,
            loader,
            device=device,
            precision=o.precision,
            mirror=False,
            dist=dist,
            on_errors=seen,
        )

    ftr, ytr = features(train_ds)
    fva, yva = features(val_ds) if len(val_ds) else (None, None)
    head = _Classifier(model.fc).to(device)
    train_b = _TensorBatches(ftr, ytr, o.batch_size, shuffle=True, seed=o.seed)
    val_b = _TensorBatches(fva, yva, 1024, shuffle=False, seed=o.seed) if fva is not None else None
    # Features are gathered on every rank, so every rank trains the same linear layer alone.
    return fit(
        model,
        train_b,
        val_b,
        options=o,
        device=device,
        net=head,
        new_prefixes=["fc."],
        out_dir=out if dist.is_main else None,
        resume_from=resume_ck,
        reporter=reporter,
        dist=DistContext(),
        step_callback=step_callback,
        eval_preprocess=model.preprocess,
        seen=seen,
    )
