"""How a run's inputs are split between processes: ``--shard I/N`` or a torchrun launch."""

from __future__ import annotations

from dataclasses import dataclass

from camcli.errors import UsageError


@dataclass
class Split:
    """How this process's run is split: ``shard`` None for the whole input; ``dist`` the
    torch.distributed group of a torchrun launch (its shard is RANK/WORLD_SIZE)."""

    shard: object | None = None  # camcli.runs.shards.Shard
    dist: object | None = None  # camcli.runs.distributed.Dist

    @property
    def main(self) -> bool:
        """Whether this process prints summaries and writes the joined outputs."""
        return self.dist is None or self.dist.rank == 0

    def select(self, items: list) -> list:
        """This process's inputs: all of them, or its shard's (global indices kept)."""
        return items if self.shard is None else self.shard.select(items)

    def barrier(self) -> None:
        """Wait for every torchrun rank (nothing without torchrun)."""
        if self.dist is not None:
            self.dist.barrier()

    def total(self, values: list[int]) -> list[int]:
        """Sums over the ranks (the values themselves without torchrun)."""
        return self.dist.all_sum(values) if self.dist is not None else list(values)

    def close(self) -> None:
        """Leave the torchrun process group."""
        if self.dist is not None:
            self.dist.close()


def plan_split(
    shard: str | None,
    inputs: list[str] | None,
    *,
    stdout_ok: bool = True,
    output: str | None = None,
) -> Split:
    """The split of this run: ``--shard I/N``, a torchrun launch, or none.

    Args:
        shard: the ``--shard`` value, ``"I/N"``, or None.
        inputs: the command-line inputs (``-``, paths on stdin, cannot be shared by ranks).
        stdout_ok: the command may write its records to stdout under torchrun.
        output: its ``--output``.

    Raises:
        CamcliError: a malformed shard, ``--shard`` under torchrun, stdin or stdout under
            torchrun (exit 2).
    """
    from camcli.runs.distributed import Dist
    from camcli.runs.shards import parse_shard
    from camcli.sysinfo import torchrun_env

    world = torchrun_env()
    if world is None:
        return Split(parse_shard(shard) if shard is not None else None, None)
    if shard is not None:
        raise UsageError("--shard and torchrun both split the inputs: use one of them")
    if inputs and "-" in inputs:
        raise UsageError(
            "- (paths on stdin) cannot be shared by torchrun ranks: pass the files or "
            "folders as arguments"
        )
    if not stdout_ok and output in (None, "-"):
        raise UsageError(
            "under torchrun give --output FILE: each rank writes its part of it "
            "and rank 0 joins them"
        )
    dist = Dist(world)
    return Split(dist.shard, dist)
