"""Scoring images on saved maps, one job per image, in worker processes when that pays.

The jobs are the map-side half of ``camcli eval --maps`` (:mod:`camcli.evaluate.maps`): load the
map of the image's GT class (:mod:`camcli.data.mapfiles`), its boxes at every tau against the GT
boxes (wsolevaluation's BoxAcc, :mod:`camcli.evaluate.boxacc`) and its PxAP histograms against
the masks (:mod:`camcli.evaluate.pxap`). A job and its result are picklable.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from camcli.data.mapfiles import MapFileError, load_class_map
from camcli.evaluate.boxacc import best_iou_per_tau, scoremap_boxes
from camcli.evaluate.masks import read_mask
from camcli.evaluate.metrics import Box
from camcli.evaluate.pxap import PxAPAccumulator
from camcli.sysinfo import available_cores

__all__ = [
    "POOL_MIN_SECONDS",
    "MapJob",
    "default_map_workers",
    "gt_known_curve",
    "run_jobs",
    "score_map_job",
]


@dataclass(frozen=True)
class MapJob:
    """What a worker needs to score one image on its map (picklable).

    Attributes:
        path: the map file.
        cls: the image's primary GT class, whose map is scored.
        boxes: that class's GT boxes, inclusive, in the image's pixels.
        size: the GT image size ``(width, height)`` when known (boxes are scaled to a map of
            another size), else None.
        masks: mask files for PxAP (none: no PxAP for this image).
        ignore: an ignore mask file, or None.
        taus: the thresholds.
        wsol_boxes: wsolevaluation's boxes (True) or tight ones.
        gk_tau: the threshold of the GT-known figure (``bbox``'s paper box: the largest
            component of the pixels above ``gk_tau`` x max, IoU >= ``iou``).
        iou: the IoU of the GT-known figure.
    """

    path: str
    cls: int
    boxes: tuple[Box, ...]
    size: tuple[int, int] | None  # GT (width, height) when known
    masks: tuple[str, ...]
    ignore: str | None
    taus: tuple[float, ...]
    wsol_boxes: bool
    gk_tau: float = 0.2
    iou: float = 0.5


def gt_known_curve(
    cam: np.ndarray, boxes: list[Box], taus: tuple[float, ...], iou: float
) -> np.ndarray:
    """GT-known correctness of one map at each threshold: bool [T].

    The box at tau is ``bbox``'s paper box (:func:`camcli.cam.boxes.boxes_for_maps`: the
    tight box of the largest 8-connected component of the pixels above tau x max); it is
    right when its IoU with any of ``boxes`` (inclusive, the map's pixels) reaches ``iou``.
    """
    from camcli.cam.boxes import box_iou, paper_box

    peak = cam.max()
    out = np.zeros(len(taus), dtype=bool)
    for t, tau in enumerate(taus):
        box = paper_box(cam > cam.dtype.type(tau) * peak)
        if box is None:
            continue
        out[t] = float(box_iou([box], boxes).max()) >= iou
    return out


def score_map_job(job: MapJob) -> tuple:
    """Score one image on its map (in a worker process or here).

    A map outside [0, 1] is min-max normalised first; GT boxes are scaled to the map as
    wsolevaluation's ``resize_bbox`` does when the GT gives another image size.

    Args:
        job: the image's job.

    Returns:
        ``("ok", v1 [T] or None, v2 [T] or None, (pos, neg) PxAP histograms or None,
        renormalised, gk [T] or None, gk at ``gk_tau`` or None)`` (v1 / v2:
        :func:`~camcli.evaluate.boxacc.best_iou_per_tau`, gk: :func:`gt_known_curve`, None
        without GT boxes), ``("nocls",)`` when the file holds no map of the class, or
        ``("failed", one-line reason)``.
    """
    try:
        cam = load_class_map(job.path, job.cls)
    except MapFileError as exc:
        return ("failed", str(exc))
    if cam is None:
        return ("nocls",)
    if not np.isfinite(cam).all():
        return ("failed", "the map holds NaN or infinite values")
    renorm = bool(cam.min() < 0 or cam.max() > 1)
    if renorm:
        lo, hi = cam.min(), cam.max()
        cam = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    taus = np.asarray(job.taus)
    v1 = v2 = gk = gk_at = None
    if job.boxes:
        boxes = list(job.boxes)
        h, w = cam.shape
        if job.size is not None and job.size != (w, h):
            sx, sy = w / job.size[0], h / job.size[1]  # wsolevaluation's resize_bbox
            boxes = [(int(a * sx), int(b * sy), int(c * sx), int(d * sy)) for a, b, c, d in boxes]
        sb = scoremap_boxes(cam, taus, wsol_boxes=job.wsol_boxes)
        v1, v2 = best_iou_per_tau(sb, boxes)
        gk = gt_known_curve(cam, boxes, job.taus, job.iou)
        gk_at = bool(gt_known_curve(cam, boxes, (job.gk_tau,), job.iou)[0])
    hist = None
    if job.masks:
        try:
            fg = read_mask(job.masks, cam.shape)
            ig = read_mask([job.ignore], cam.shape) & ~fg if job.ignore else None
        except Exception as exc:  # noqa: BLE001 - OSError, a PIL bomb: that image fails alone
            return ("failed", f"cannot read mask ({exc})")
        acc = PxAPAccumulator(taus)
        acc.add(cam, fg, ig)
        hist = (acc.pos, acc.neg)
    return ("ok", v1, v2, hist, renorm, gk, gk_at)


def _worker_init(parent: int | None = None) -> None:
    """One OpenCV thread per worker process (the workers are the parallelism). Ctrl-C is the
    parent's to handle (it stops the pool); a worker whose parent ``parent`` is gone (kill -9)
    exits by itself."""
    import signal
    import threading

    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if parent is not None:

        def watch() -> None:
            import time

            while True:
                time.sleep(0.5)
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    os._exit(1)
                except OSError:
                    pass

        threading.Thread(target=watch, daemon=True, name="camcli-parent-watch").start()


def _stop_pool(ex) -> None:
    """Stop a process pool now: queued jobs cancelled, workers terminated and reaped."""
    import contextlib

    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    with contextlib.suppress(Exception):
        ex.shutdown(wait=True, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=5)


def _pool_usable() -> bool:
    """forkserver/spawn children re-import ``__main__`` from its file: not possible for code read
    from stdin (``python - <<EOF``)."""
    f = getattr(sys.modules.get("__main__"), "__file__", None)
    return f is None or os.path.exists(f)


POOL_MIN_SECONDS = 2.0
"""Estimated seconds of remaining work above which a process pool pays for its start."""


def run_jobs(
    jobs: list[MapJob], workers: int, progress: Callable[[], None] | None
) -> Iterator[tuple]:
    """Results of the jobs, in order.

    The first 32 jobs run here and time the rest; those go to ``workers`` processes
    (forkserver, else spawn) when the estimate reaches :data:`POOL_MIN_SECONDS` and the caller's
    ``__main__`` can be re-imported, else run here too.

    Args:
        jobs: the jobs.
        workers: processes to use; <= 1: none.
        progress: called once per finished job, or None.

    Yields:
        :func:`score_map_job`'s result per job. On any exit before the end (an exception,
        Ctrl-C, SIGTERM, the generator closed) the pool's workers are terminated and reaped.
    """
    import time

    probe = min(len(jobs), 32)
    t0 = time.perf_counter()
    for j in jobs[:probe]:
        yield score_map_job(j)
        if progress is not None:
            progress()
    rest = jobs[probe:]
    per_job = (time.perf_counter() - t0) / max(probe, 1)
    # A process pool costs about a second to start; worth it above ~2 s of remaining work.
    if workers > 1 and per_job * len(rest) >= POOL_MIN_SECONDS and _pool_usable():
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        ex = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
        )
        try:
            for r in ex.map(score_map_job, rest, chunksize=16):
                yield r
                if progress is not None:
                    progress()
        except BaseException:  # Ctrl-C, SIGTERM, an error, the consumer stopping early
            _stop_pool(ex)
            raise
        ex.shutdown(wait=True)
        return
    for j in rest:
        yield score_map_job(j)
        if progress is not None:
            progress()


def default_map_workers() -> int:
    """The default ``--workers``: the available cores, 1 to 8."""
    return max(1, min(8, available_cores()))
