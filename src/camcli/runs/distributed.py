"""A torchrun launch: one process per rank, each one shard of the inputs.

Under torchrun (``WORLD_SIZE`` > 1 with a rendezvous address in the environment, see
:func:`camcli.sysinfo.torchrun_env`) the shard is ``RANK/WORLD_SIZE``; the ranks exchange only
counts and barriers, over gloo, and rank 0 merges the parts (:mod:`camcli.runs.merge`) when
every rank has finished.
"""

from __future__ import annotations

from camcli.runs.shards import Shard
from camcli.sysinfo import TorchrunEnv


class Dist:
    """The torch.distributed group of a torchrun launch (gloo: only counts and barriers travel,
    so the same backend serves CPU and GPU runs).

    Args:
        env: this process's place in the launch (:func:`camcli.sysinfo.torchrun_env`).
    """

    def __init__(self, env: TorchrunEnv) -> None:
        import datetime

        import torch.distributed as dist

        self.rank, self.world, self.local_rank = env.rank, env.world, env.local_rank
        self._dist = dist
        if not dist.is_initialized():
            # Ranks wait at the end for the slowest one: allow long, uneven shards.
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def barrier(self) -> None:
        self._dist.barrier()

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sum of ``values`` over the ranks (every rank gets the result)."""
        import torch

        t = torch.tensor(values, dtype=torch.int64)
        self._dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def device_for_rank(device: str, local_rank: int) -> str:
    """``auto``/``cuda`` under torchrun -> ``cuda:LOCAL_RANK`` (modulo the GPUs) when CUDA is
    there; anything else as given."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device
