"""The box type and the array helpers that :mod:`camcli.cam.boxes` and
:mod:`camcli.cam.dtbox` share (kept apart so that neither imports the other's internals)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]
"""An inclusive pixel box ``(x_min, y_min, x_max, y_max)`` of Python ints (SPEC section 3)."""


def is_torch_tensor(x: Any) -> bool:
    """True when ``x`` is a torch tensor, without importing torch if nobody else did."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view/copy of ``x`` (numpy array, torch tensor on any device, or array-like).

    A torch tensor is detached and copied to the CPU; anything else goes through
    ``np.asarray``.
    """
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
