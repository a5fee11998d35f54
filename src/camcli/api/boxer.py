"""The boxes of one image's maps (:func:`box_entries`, :func:`gt_known_entry`) and the
worker threads that compute them beside a ``bbox`` job (:class:`Boxer`).

Boxes are ``[x0, y0, x1, y1]`` in original-image pixels, inclusive integer corners (the
ILSVRC convention: ``0 <= x0 <= x1 <= W - 1``), as :mod:`camcli.cam.boxes` gives them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from camcli.api.cam_result import CamResult
from camcli.data import loader


@dataclass
class BoxOptions:
    """How boxes are taken from one image's maps (see :class:`BboxOptions` for the fields)."""

    rule: str = "paper"
    threshold: float = 0.2
    tight_loose: bool = False


def box_entries(res: CamResult, bopts: BoxOptions) -> list[dict]:
    """The ``boxes`` list of a bbox record (see README: JSON record schema).

    Args:
        res: one image's maps, ``cams`` float [k, H, W] normalised, best class first.
        bopts: the box rule.

    Returns:
        One entry per box, by class rank: ``{"rank" (1-based), "class_index", "label",
        "score", "box": [x0, y0, x1, y1] inclusive original-image pixels or None, "kind"}``
        and a ``"reason"`` when a class has no box (or for a tight/loose guess).
    """
    from camcli.cam import dtbox

    preds = res.predictions
    entries: list[dict] = []

    def entry(rank: int, box, kind: str, reason: str | None = None) -> dict:
        p = preds[rank]
        e = {
            "rank": rank + 1,
            "class_index": p["class_index"],
            "label": p["label"],
            "score": p["score"],
            "box": list(box) if box is not None else None,
            "kind": kind,
        }
        if reason:
            e["reason"] = reason
        return e

    if bopts.tight_loose:
        # boxes_for_map gives [loose, tight] per class (tight = loose when there is one box).
        dt = [[b for b, _ in _class_boxes(res, i, "dt-box", 0.0)] for i in range(min(3, res.k))]
        for g in dtbox.tight_loose_boxes(dt):
            entries.append(entry(g.class_rank, g.box, g.kind, g.reason))
        return entries
    for r in range(res.k):
        lst = _class_boxes(res, r, bopts.rule, bopts.threshold)
        if not lst:
            kind = {"paper": "largest", "all": "component", "dt-box": "loose"}[bopts.rule]
            why = (
                f"no pixel above {bopts.threshold:g} x max"
                if bopts.rule != "dt-box"
                else "no dt-box box at thresholds 20/100/110"
            )
            entries.append(entry(r, None, kind, why))
        for box, kind in lst:
            entries.append(entry(r, box, kind))
    return entries


def _class_boxes(res: CamResult, i: int, rule: str, tau: float) -> list:
    """The boxes of class ``i``'s map, upsampled here (in row strips on large images) and
    thresholded or quantised straight to uint8: no full-size float map is kept."""
    from camcli.cam import boxes as B

    return B.boxes_for_rows(lambda: res.cam_rows(i), tuple(res.sample.size), rule, tau)


class Boxer:
    """Boxes computed in worker threads beside the drawings, handed back in input order.

    ``submit`` queues a result (a failed Sample passes through); ``ready`` (``block``: every
    queued one) returns ``(result, (boxes, gt_known) or None)`` pairs in submission order.
    The main thread only runs the network; on the CPU the job drains the threads before each
    forward pass (:func:`camcli.api.cams.iter_cams` ``before_forward``) so that they never
    compete with it.
    """

    def __init__(self, bopts: BoxOptions, profiler=None, workers: int | None = None) -> None:
        import os
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.bopts = bopts
        self.profiler = profiler
        n = workers or min(8, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="camcli-boxes")
        self._pending: deque = deque()

    def submit(self, res) -> None:
        fut = None
        if not isinstance(res, loader.Sample):
            fut = self._pool.submit(self._boxes, res)
        self._pending.append((res, fut))

    def _boxes(self, res: CamResult) -> tuple[list[dict], dict | None]:
        """(:func:`box_entries`, :func:`gt_known_entry`) of one result."""
        stage = self.profiler.stage("boxes") if self.profiler is not None else None
        with stage or contextlib.nullcontext():
            return box_entries(res, self.bopts), gt_known_entry(res, self.bopts)

    def ready(self, block: bool = False):
        while self._pending:
            fut = self._pending[0][1]
            if not (block or fut is None or fut.done()):
                return
            res, fut = self._pending.popleft()
            yield res, (fut.result() if fut is not None else None)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def gt_known_entry(res: CamResult, bopts: BoxOptions) -> dict | None:
    """The ``gt_known`` field of a bbox record: the ground-truth class's box.

    Args:
        res: one image's maps with ``gt`` and the GT class's map
            (:attr:`camcli.api.cams.CamOptions.gt_class`), upsampled here in row strips as
            :func:`box_entries` does.
        bopts: the box rule; ``all`` and ``dt-box`` keep their first (largest / loose) box.

    Returns:
        ``{"class_index", "label", "score", "box": [x0, y0, x1, y1] inclusive original-image
        pixels or None}`` (and ``"reason"`` without a box), or None when the image has no
        known GT class.
    """
    from camcli.cam import boxes as B

    if not res.has_gt_map:
        return None
    rule = "dt-box" if bopts.tight_loose else bopts.rule
    lst = B.boxes_for_rows(res.gt_cam_rows, tuple(res.sample.size), rule, bopts.threshold)
    entry = {**res.gt, "box": list(lst[0][0]) if lst else None}
    if not lst:
        entry["reason"] = f"no pixel above {bopts.threshold:g} x max"
    return entry
