"""What this process may use: CPU cores and its place in a torchrun launch. torch-free."""

from __future__ import annotations

import os
import sys
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


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size (32 MiB, glibc's largest allowed) come from the heap once the
allocator is tuned; larger ones (a huge image's full-size maps) are mapped and returned to the
system when freed."""
TRIM_THRESHOLD = 512 << 20
"""Free memory a heap keeps (at its top) before returning it to the system, once tuned."""


def tune_allocator(env: Mapping[str, str] | None = None) -> bool:
    """Keep freed memory for reuse in glibc's allocator (``mallopt``), as the command line does
    at start-up: the CPU path's short-lived blocks (activations of a few MB per layer, decoded
    images, full-size maps) then come from memory already mapped, not from fresh pages.

    glibc's default maps every block above a threshold that it adapts to the main thread's
    frees and returns the freed tops of the forward threads' heaps, so each batch faults its
    activations in again: 89,000 against 14,000 page faults for 40 forwards of a small CNN in
    two threads, and a third less system time for ``camcli cam`` (about 1.5 s per 256 images
    with EfficientNet-Lite0 on a 2-core machine). Peak memory is about the same (blocks over
    :data:`MMAP_THRESHOLD` are still mapped and unmapped); memory freed after the peak may stay
    with the process until it exits.

    Nothing is changed where ``CAMCLI_MALLOC=system`` is set, where the user tuned glibc's
    allocator (any ``MALLOC_*`` variable, ``glibc.malloc`` tunables), where another allocator
    is preloaded (an ``LD_PRELOAD`` library with "alloc" or "hoard" in its name), or outside
    glibc (macOS, Windows, musl). Another ``CAMCLI_MALLOC`` value than ``system`` or
    ``tuned`` is warned about (one line) and tuned.

    Args:
        env: the environment to read (default ``os.environ``).

    Returns:
        True when both thresholds were set.
    """
    env = os.environ if env is None else env
    choice = env.get("CAMCLI_MALLOC", "").strip().lower()
    if choice == "system":
        return False
    # glibc's own variables: MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_...
    if any(k.startswith("MALLOC_") for k in env):
        return False
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return False
    preload = env.get("LD_PRELOAD", "").lower()
    if "alloc" in preload or "hoard" in preload:  # jemalloc, tcmalloc, mimalloc, snmalloc, Hoard
        return False
    if choice not in ("", "tuned"):
        from camcli.console import warn

        warn(f"CAMCLI_MALLOC={choice[:40]!r} is not 'system' or 'tuned': the allocator is tuned")
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"; unset elsewhere
    except (AttributeError, ValueError, OSError):
        return False
    if not sys.platform.startswith("linux") or not libc_name.startswith("glibc"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either one ends glibc's adaptive threshold, and the
    # trim threshold alone would leave it at 128 KiB (every larger block mapped: 3 x the faults)
    global _TUNED
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    _TUNED = True
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


_TUNED = False
"""Whether :func:`tune_allocator` changed glibc's thresholds in this process."""


def release_free_memory() -> None:
    """Give the allocator's free memory back to the system (glibc's ``malloc_trim(0)``): before
    the largest allocations of a huge image, so that the blocks :func:`tune_allocator` keeps for
    reuse (the strips of earlier maps, about 100 MB at 13000 x 13000) do not add to its peak.
    A few milliseconds; does nothing unless the allocator was tuned in this process."""
    if not _TUNED:
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


_GC_LOCK = __import__("threading").Lock()
_GC_TIMER = None
"""The timer that ends :func:`pause_gc`'s pause at the latest; None when GC is not paused."""


def pause_gc(at_most_s: float = 15.0) -> None:
    """Turn Python's cyclic garbage collector off for a command's start-up (the console script
    calls this first): importing torch, torchvision and timm and building the network makes
    about a million objects, and the full collections that growth sets off cost 0.8 s of a
    3.9 s start-up on the 2-core CI machine (median of five). :func:`resume_gc` turns it back
    on once the network is ready; a daemon timer does so after ``at_most_s`` seconds in any
    case (a command that never loads one). Nothing happens when the collector is already off.
    """
    import gc
    import threading

    global _GC_TIMER
    with _GC_LOCK:
        if _GC_TIMER is not None or not gc.isenabled():
            return
        if hasattr(os, "register_at_fork") and not _GC_FORK_HOOK:
            os.register_at_fork(after_in_child=_resume_gc_in_child)
            _GC_FORK_HOOK.append(True)
        gc.disable()
        _GC_TIMER = threading.Timer(at_most_s, resume_gc)
        _GC_TIMER.daemon = True
        _GC_TIMER.name = "camcli-gc-resume"
        _GC_TIMER.start()


_GC_FORK_HOOK: list[bool] = []
"""Whether :func:`_resume_gc_in_child` is registered (once a process)."""


def _resume_gc_in_child() -> None:
    """In a child forked during the pause (a DataLoader worker started before the network
    was ready, e.g. ``train --freeze-backbone``'s feature cache): the timer thread did not
    come along, so collection resumes here, as :func:`resume_gc` would."""
    import gc
    import threading

    global _GC_LOCK, _GC_TIMER
    _GC_LOCK = threading.Lock()  # another thread may have held it at the fork
    if _GC_TIMER is not None:
        _GC_TIMER = None
        gc.freeze()
        gc.enable()


def resume_gc() -> None:
    """End :func:`pause_gc`'s pause (idempotent; nothing when there was none): the objects made
    so far, the modules and the network that live as long as the process, go to the
    collector's permanent generation (``gc.freeze``, so later collections and the
    copy-on-write pages of forked DataLoader workers leave them alone), and collection
    resumes."""
    import gc

    global _GC_TIMER
    with _GC_LOCK:
        if _GC_TIMER is None:
            return
        _GC_TIMER.cancel()
        _GC_TIMER = None
        gc.freeze()
        gc.enable()
