"""Optimisation: parameter groups, the optimizer, the learning-rate schedule, one step.

:class:`Optimisation` bundles what a step and a resume need (optimizer, LambdaLR schedule of
:func:`lr_factor`, fp16 grad scaler) so the loop handles them as one thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camcli.train.options import TrainOptions


def param_groups(
    model: nn.Module, new_prefixes: Sequence[str], lr: float, head_lr_mult: float, wd: float
) -> list[dict]:
    """Parameter groups: (old | new layers) x (decayed weights | biases and norm parameters).

    Args:
        model: the module whose trainable (``requires_grad``) parameters are grouped.
        new_prefixes: parameter-name prefixes of the layers that start untrained (lr x
            ``head_lr_mult``).
        lr: the base learning rate.
        head_lr_mult: the new layers' learning-rate multiplier.
        wd: weight decay, applied to tensors with ndim > 1 only.

    Returns:
        Optimizer parameter groups with ``lr``, ``weight_decay`` and a ``name`` such as
        ``new-decay`` or ``pretrained-no_decay``; empty when every parameter is frozen.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = any(name.startswith(pre) for pre in new_prefixes)
        groups.setdefault((new, p.ndim > 1), []).append(p)
    out = []
    for (new, decay), ps in sorted(groups.items()):
        out.append(
            {
                "params": ps,
                "lr": lr * (head_lr_mult if new else 1.0),
                "weight_decay": wd if decay else 0.0,
                "name": f"{'new' if new else 'pretrained'}-{'decay' if decay else 'no_decay'}",
            }
        )
    return out


def make_optimizer(groups: list[dict], o: TrainOptions) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum when ``o.momentum`` > 0) or AdamW over ``groups``."""
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


def lr_factor(step: int, *, o: TrainOptions, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rates at optimisation step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs``; then ``cosine`` decays to 0 over the remaining
    steps, ``step`` multiplies by 0.1 every ``ceil(epochs / 3)`` epochs (torchvision's
    30-of-90; the official GoogLeNet-CAM stepped every quarter).
    """
    total = max(1, o.epochs * steps_per_epoch)
    warm = round((o.warmup_epochs or 0) * steps_per_epoch)
    if step < warm:
        return (step + 1) / (warm + 1)
    if o.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    every = max(1, math.ceil(o.epochs / 3)) * steps_per_epoch
    return 0.1 ** (step // every)


@dataclass
class Optimisation:
    """The optimizer, its per-step schedule and the grad scaler (enabled for fp16 only)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_scaler: bool

    @classmethod
    def create(
        cls,
        optimizer: torch.optim.Optimizer,
        options: TrainOptions,
        steps_per_epoch: int,
        device: torch.device,
    ) -> Optimisation:
        """Schedule ``optimizer`` by :func:`lr_factor` and add a scaler for ``--precision fp16``."""
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, o=options, steps_per_epoch=steps_per_epoch)
        )
        use_scaler = options.precision == "fp16"
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        return cls(optimizer, sched, scaler, use_scaler)

    def step(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled), step the optimizer, the scaler and the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dict(self) -> dict:
        """``optimizer``, ``scheduler`` and ``scaler`` states (a checkpoint's training state)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_scaler else {},
        }

    def load_state_dict(self, ts: dict) -> None:
        """Restore what :meth:`state_dict` saved; missing parts stay as they are."""
        if "optimizer" in ts:
            self.optimizer.load_state_dict(ts["optimizer"])
        if "scheduler" in ts:
            self.scheduler.load_state_dict(ts["scheduler"])
        if "scaler" in ts and self.use_scaler:
            self.scaler.load_state_dict(ts["scaler"])
