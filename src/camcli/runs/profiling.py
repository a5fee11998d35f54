"""``--profile``: where the time of a run went, per stage, printed at the end."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from camcli.console import plural

STAGES = (
    "wait for decode",
    "decode (device)",
    "wait for forward",
    "transfer",
    "forward",
    "cam",
    "boxes (waited)",
    "boxes",
    "post-process",
    "encode+write (waited)",
    "encode+write",
)

THREADED = {"encode+write": "writer threads, overlapped", "boxes": "box threads, overlapped"}
"""Stages timed in worker threads (busy time beside the main thread's wall time)."""


class Profiler:
    """Accumulates wall seconds per stage. Stages of the main thread add up to its wall time;
    ``encode+write`` and ``boxes`` run in worker threads (overlapped) and decode in loader
    workers, so those are reported as busy time beside it. On CUDA each stage synchronises the
    device when profiling is on, so the GPU's time lands in the stage that queued it."""

    def __init__(self, enabled: bool, device=None) -> None:
        self.enabled = enabled
        self.sync = enabled and device is not None and getattr(device, "type", "") == "cuda"
        self.totals: dict[str, float] = {}
        self.decode_worker_s = 0.0
        self.images = 0
        self._lock = threading.Lock()
        #: stage -> where it runs, for stages timed outside the main thread (overlapped)
        self.threaded: dict[str, str] = dict(THREADED)
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        if not self.enabled:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                import torch

                torch.cuda.synchronize()
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.totals[name] = self.totals.get(name, 0.0) + seconds

    def report(self) -> str:
        wall = time.perf_counter() - self.started
        lines = [
            f"profile: {plural(self.images, 'image')} in {wall:.2f} s "
            f"({self.images / wall if wall else 0:.2f} images/s; start-up and model load not "
            "counted)"
        ]
        main = sum(v for k, v in self.totals.items() if k not in self.threaded)
        # the name column as wide as the longest name shown ("encode+write (waited)")
        n = max(16, *(len(k) for k in self.totals))
        for name in STAGES:
            if name in self.totals:
                v = self.totals[name]
                where = self.threaded.get(name, "main")
                share = 100 * v / wall
                lines.append(f"  {name:{n}s} {v:8.2f} s  {share:5.1f} % of wall  ({where})")
        if self.decode_worker_s:
            lines.append(
                f"  {'decode (workers)':{n}s} {self.decode_worker_s:8.2f} s  busy time "
                "in loader workers, overlapped"
            )
        lines.append(f"  {'other':{n}s} {max(0.0, wall - main):8.2f} s  (records, final writes)")
        return "\n".join(lines)
