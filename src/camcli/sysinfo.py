"""What this process may use: CPU cores and its place in a torchrun launch. torch-free."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TorchrunEnv:
    """This process's place in a ``torchrun`` launch (from its environment variables)."""

    rank: int  # RANK: 0 .. world - 1
    world: int  # WORLD_SIZE: processes in the job (> 1)
    local_rank: int  # LOCAL_RANK: index on this machine (picks the GPU)
    local_world: int  # LOCAL_WORLD_SIZE: processes on this machine


def torchrun_env(env: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The torchrun launch this process belongs to, or None when it runs alone.

    A launch is recognised by ``WORLD_SIZE`` > 1 together with the rendezvous address
    (``MASTER_ADDR`` and ``MASTER_PORT``) that torchrun sets; malformed numbers mean no launch.
    """
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        return None
    if world <= 1 or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    return TorchrunEnv(rank, world, local, local_world)


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in its flags):
    there bf16 autocast pays; elsewhere it is emulated and several times slower than fp32.
    False when the flags cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False
