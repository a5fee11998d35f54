"""Concurrent forward passes on the CPU ("streams"): several batches in flight, each on its own
thread with its own share of torch's threads, results handed back in input order.

Why: on a small CPU one multi-threaded forward pass loses much of its time at the barriers of
its parallel regions, the more so for networks of many small layers (EfficientNet's depthwise
convolutions) and whenever another thread (a writer, a decoder) takes a core from one of its
threads for a moment: every other thread of the region then waits. Two batches on two
single-threaded streams have no barrier to wait at. Measured on 2 cores, EfficientNet-Lite0
(BatchNorm folded, batch 4, channels-last): 40-45 images/s on one stream of 2 threads,
59-66 images/s on 2 streams of 1 thread (``benchmarks/bench_cam.py`` has the end-to-end
figures).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar
from weakref import WeakSet

T = TypeVar("T")
R = TypeVar("R")

#: Pixels of kept original images allowed in flight at once: past it a batch waits for the
#: ones before it (a folder of huge images keeps one in memory, not one per stream).
MAX_PIXELS_IN_FLIGHT = 64_000_000

_OPEN: WeakSet = WeakSet()
"""The pools not closed yet (:func:`close_all`)."""


def thread_budget() -> int:
    """The torch intra-op threads this process was given (``OMP_NUM_THREADS``,
    ``torch.set_num_threads``; by default this process's cores), at least 1."""
    import torch

    return max(1, torch.get_num_threads())


def default_streams(budget: int | None = None) -> int:
    """Forward streams for a budget of ``budget`` threads (default: :func:`thread_budget`):
    2 from 2 threads on, else 1 (``OMP_NUM_THREADS=1`` keeps one pass on one thread)."""
    budget = thread_budget() if budget is None else budget
    return 2 if budget >= 2 else 1


def threads_per_stream(streams: int, budget: int | None = None) -> int:
    """Intra-op threads of each stream: the budget shared out, at least 1."""
    budget = thread_budget() if budget is None else budget
    return max(1, budget // max(1, streams))


class Streams:
    """A pool of ``streams`` threads, each running torch with ``threads`` intra-op threads.

    Args:
        streams: batches in flight at once (>= 1).
        threads: torch intra-op threads of each stream thread (``torch.set_num_threads`` is
            called in each, once; the calling thread keeps its own setting).

    Note: torch gives a thread created later the setting of the last
    ``torch.set_num_threads`` call of the process, so threads started after the pool (a
    library user's own) run torch ops on ``threads`` threads (1 by default) unless they call
    ``torch.set_num_threads`` themselves; camcli's writer threads run no multi-threaded torch
    op.
    """

    def __init__(self, streams: int, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if streams < 1 or threads < 1:
            raise ValueError(f"streams={streams}, threads={threads}: both must be >= 1")
        self.streams = streams
        self.threads = threads
        self._pool = ThreadPoolExecutor(
            max_workers=streams, thread_name_prefix="camcli-forward", initializer=self._init
        )
        _OPEN.add(self)

    def _init(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    def ordered(
        self,
        items: Iterable[T],
        fn: Callable[[T], R],
        *,
        needed: Callable[[T], bool] = lambda _: True,
        cost: Callable[[T], int] = lambda _: 0,
        max_cost: int = MAX_PIXELS_IN_FLIGHT,
        waiting: Callable[[], AbstractContextManager] = nullcontext,
    ) -> Iterator[tuple[T, R | None]]:
        """``(item, fn(item))`` for each item, in order, up to ``streams`` computed at once.

        Args:
            items: consumed lazily: at most ``streams + 1`` are submitted and not yet yielded
                (a stream that finishes starts the queued one while this one is handled).
            fn: run in a stream thread; its exception is raised here, at its item's turn.
            needed: False: ``fn`` is not run for that item (its result is None).
            cost: what an item holds in memory while in flight (pixels); a new item waits for
                the ones before it while the total would pass ``max_cost`` (one item is always
                let through).
            max_cost: the bound on the total cost in flight.
            waiting: a context entered while this thread waits for a result (a profiler
                stage).

        Items not yet finished when the consumer stops (an exception, ``close()``) are
        cancelled or, if already running, waited for.
        """
        pending: deque = deque()
        in_flight = 0

        def oldest():
            nonlocal in_flight
            done, fut, dc = pending.popleft()
            in_flight -= dc
            if fut is None:
                return done, None
            with waiting():
                return done, fut.result()

        try:
            for item in items:
                c = cost(item)
                while pending and in_flight + c > max_cost:
                    yield oldest()
                fut = self._pool.submit(fn, item) if needed(item) else None
                pending.append((item, fut, c))
                in_flight += c
                # one more than the streams: a stream that finishes starts the next at once
                while len(pending) > self.streams:
                    yield oldest()
            while pending:
                yield oldest()
        finally:
            for _, fut, _ in pending:
                if fut is not None:
                    fut.cancel()
            for _, fut, _ in pending:
                if fut is not None and not fut.cancelled():
                    fut.exception()  # let a running batch finish before its tensors go

    def close(self) -> None:
        """Cancel what has not started, wait for what has, and end the stream threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        _OPEN.discard(self)


def close_all() -> None:
    """Close every pool of this process that is still open (:meth:`Streams.close`): a session
    keeps its streams for its life; the program closes them before its fast exit
    (:mod:`camcli.cli.entry`), which waits for no thread."""
    for pool in list(_OPEN):
        pool.close()
