"""Training's own torch.distributed set-up: join the ``torchrun`` job, reduce, leave.

Whether this process runs under ``torchrun`` is :func:`camcli.sysinfo.torchrun_env`'s to say;
this module turns that into a process group and a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camcli.runs.device import resolve_device
from camcli.sysinfo import torchrun_env


@dataclass
class DistContext:
    """This process's place in a torch.distributed job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over all ranks, in place (unchanged when not distributed)."""
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def all_min(self, t: torch.Tensor) -> torch.Tensor:
        """``t``'s minimum over all ranks, in place (unchanged when not distributed)."""
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return t

    def barrier(self) -> None:
        """Wait for every rank (nothing when not distributed)."""
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the torchrun job (env://): nccl with one GPU per local rank, gloo on CPU.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N"; under torchrun anything but "cpu" means
            the local rank's GPU where CUDA is available.

    Returns:
        This process's context and device; outside torchrun world 1 and the requested device.
    """
    env = torchrun_env()
    if env is None:
        return DistContext(), resolve_device(device)
    local = env.local_rank
    want_cuda = device != "cpu" and torch.cuda.is_available()
    if want_cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    ctx = DistContext(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), local, backend
    )
    return ctx, dev


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group :func:`init_distributed` joined, if any."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def local_world(dist: DistContext) -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE, else the world)."""
    env = torchrun_env()
    return env.local_world if env is not None else dist.world
