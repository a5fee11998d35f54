"""One loader batch on its way into the network: unpack, move and normalise, autocast.

Shared by the training loop, evaluation and the linear probe's feature pass.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from camcli.data.loader import normalize_batch
from camcli.models.registry import Preprocess


def unpack_batch(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
    """``(x, y)`` or ``(x, y, errors)`` -> ``(x, y, errors)``.

    Raises:
        TypeError: any other batch shape.
    """
    if isinstance(batch, list | tuple):
        if len(batch) == 3:
            return batch[0], batch[1], list(batch[2])
        if len(batch) == 2:
            return batch[0], batch[1], []
    raise TypeError("loader batches must be (x, y) or (x, y, errors)")


def prepare_inputs(x: torch.Tensor, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``: uint8 is normalised there (float is taken as already normalised);
    images go channels-last on the CPU."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = normalize_batch(x, preprocess)
    if x.ndim == 4 and device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``precision`` ("fp32": none, "bf16", "fp16") on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
