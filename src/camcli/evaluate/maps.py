"""BoxAcc curves, MaxBoxAccV1/V2, the best tau and PxAP from maps saved by ``cam --save-maps``.

wsolevaluation's protocol (Choe et al., CVPR 2020; SPEC.md section 5): every GT image is scored
on the map of its primary GT class, one tau for the whole split. The per-image work is in
:mod:`camcli.evaluate.mapjobs`; the map files are read by :mod:`camcli.data.mapfiles`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from camcli.data.mapfiles import MapFileError, MapHeader, list_map_files, read_map_header
from camcli.evaluate.blacklist import blacklist_flags
from camcli.evaluate.boxacc import BoxAccumulator
from camcli.evaluate.labels import LabelMap
from camcli.evaluate.mapjobs import MapJob, run_jobs
from camcli.evaluate.masks import mask_paths
from camcli.evaluate.matching import Matched, finish_result
from camcli.evaluate.metrics import GtTarget, ImagePrediction
from camcli.evaluate.pxap import PxAPAccumulator
from camcli.evaluate.taus import DEFAULT_TAUS
from camcli.evaluate.truth import GroundTruth

__all__ = ["evaluate_maps", "map_label_names", "map_labels_and_images"]


def map_label_names(maps_dir: str) -> list[str | None]:
    """Class index -> label as the readable map files of ``maps_dir`` store them (None where
    no file names the class): the categories ``bbox --from-maps --gt`` maps GT labels with.

    Raises:
        NoInputError: ``maps_dir`` is not a folder or holds no ``.npz`` file (exit 3).
    """
    return map_labels_and_images(maps_dir)[0]


def map_labels_and_images(maps_dir: str) -> tuple[list[str | None], list[str]]:
    """:func:`map_label_names` and the image each readable map file names (its stored image
    path, else its key), in file order: the inputs of ``bbox --from-maps --gt``.

    Raises:
        NoInputError: ``maps_dir`` is not a folder or holds no ``.npz`` file (exit 3).
    """
    headers = _read_headers(maps_dir, Path(maps_dir))
    images = [h.name for _, h in headers if not isinstance(h, str)]
    return list(_labels_from_maps(headers).names), images


def evaluate_maps(
    maps_dir: str,
    gt: GroundTruth,
    labels: LabelMap | None,
    *,
    taus: Sequence[float] | np.ndarray = DEFAULT_TAUS,
    masks_dir: str | None = None,
    blacklist: str | Sequence[bool] | None = None,
    subset: bool = False,
    wsol_boxes: bool = True,
    workers: int = 0,
    progress: Callable[[], None] | None = None,
    threshold: float = 0.2,
    iou: float = 0.5,
) -> dict:
    """BoxAcc curves, MaxBoxAccV1/V2, best tau and (with masks) PxAP from saved maps.

    Each GT image (not blacklisted) is scored on the map of its primary GT class, found by the
    stored ``image`` path (else the npz's relative path) and the ``class_indices`` entry equal to
    that class. A GT image without a map file (``missing``), whose file has no map of the GT
    class (``missing_gt_class``) or whose map is unusable (``failed``) counts as wrong at every
    tau. Maps outside [0, 1] are min-max normalised first (``n_renormalised``). When the GT gives
    the image size and the map has another, GT boxes are scaled to the map (wsolevaluation's
    ``resize_bbox``). PxAP uses the images with masks (JSON Lines ``mask`` / ``ignore``, or
    ``--masks DIR`` holding ``<name>.png`` and optional ``<name>_ignore.png``; nonzero pixels are
    foreground / ignored).

    Args:
        maps_dir: the folder ``cam --save-maps`` wrote.
        gt: the ground truth.
        labels: the user's label map, or None to infer one from the maps' labels.
        taus: [T] thresholds, ascending in [0, 1).
        masks_dir: the ``--masks`` folder, or None.
        blacklist: a blacklist file, flags per GT image, or None.
        subset: score only the GT images that have a map file.
        wsol_boxes: wsolevaluation's boxes (True) or tight ones
            (:func:`~camcli.evaluate.boxacc.scoremap_boxes`).
        workers: > 1: processes share the maps when the split is slow enough to pay for them
            (the caller's ``__main__`` must be import-safe, as multiprocessing requires; the
            CLI's is).
        progress: called once per scored image, or None.
        threshold: tau of ``gt_known_loc`` (the ``bbox --threshold`` to compare with).
        iou: the IoU of the GT-known figures.

    Returns:
        The ordered result: ``n_images``, ``n_gt_images``, ``n_loc_images``, ``n_blacklisted``,
        ``n_no_gt_box``, ``missing_gt_class`` / ``n_missing_gt_class``, ``n_renormalised``,
        ``wsol_boxes``, ``gt_known_loc`` (GT-known localization with ``bbox``'s paper box at
        ``threshold``: the GT class's map, IoU >= ``iou``), ``gt_known_tau``,
        ``best_tau_gt_known`` and ``max_gt_known_loc`` (the grid's best tau for it and its
        figure), :meth:`~camcli.evaluate.boxacc.BoxAccumulator.result`'s figures and
        curves, ``pxap`` and ``n_mask_images`` (or ``pxap_error``) with masks, and the lists of
        :func:`~camcli.evaluate.matching.finish_result`.

    Raises:
        NoInputError: ``maps_dir`` is not a folder or holds no ``.npz`` file (exit 3).
        GtError: a GT label the map cannot read, or an unusable blacklist.
    """
    base = Path(maps_dir)
    headers = _read_headers(maps_dir, base)
    lm = labels if labels is not None else _labels_from_maps(headers)
    targets, unknown = gt.targets(lm)
    flags = blacklist_flags(gt, blacklist)
    m = Matched()
    file_of = _match_files(headers, gt, base, m)
    tau_t = tuple(float(t) for t in np.asarray(taus, dtype=np.float64).reshape(-1))
    acc = BoxAccumulator(tau_t, wsol_boxes=wsol_boxes)
    pxap = PxAPAccumulator(tau_t)
    keep = [i for i in range(len(gt)) if not subset or i in file_of]
    plan = _plan_jobs(gt, keep, flags, targets, file_of, masks_dir, tau_t, wsol_boxes, acc)
    plan.jobs = [replace(j, gk_tau=float(threshold), iou=float(iou)) for j in plan.jobs]
    scored = _score_jobs(plan, gt, m, acc, pxap, run_jobs(plan.jobs, workers, progress))
    for i in file_of:
        if i not in m.failed:
            m.preds[i] = ImagePrediction()  # a map was there (scored or blacklisted)
    out: dict = {
        "n_images": len(keep),
        "n_gt_images": len(gt),
        "n_loc_images": acc.n,
        "n_blacklisted": plan.n_black,
        "n_no_gt_box": plan.n_no_box,
        "n_missing_gt_class": len(scored.missing_cls),
        "missing_gt_class": scored.missing_cls,
        "n_renormalised": scored.renorm,
        "wsol_boxes": wsol_boxes,
    }
    out.update(acc.result())
    if acc.n:
        curve = scored.gk_curve / acc.n
        best = int(np.argmax(curve)) if len(curve) else 0
        out["gt_known_loc"] = scored.gk_right / acc.n
        out["gt_known_tau"] = float(threshold)
        if len(curve):
            out["best_tau_gt_known"] = tau_t[best]
            out["max_gt_known_loc"] = float(curve[best])
    if scored.n_masked:
        out["n_mask_images"] = scored.n_masked
        try:
            out["pxap"] = pxap.result()
        except ValueError as exc:
            out["pxap_error"] = str(exc)
    return finish_result(out, gt, m, unknown)


def _read_headers(maps_dir: str, base: Path) -> list[tuple[Path, MapHeader | str]]:
    """Each map file with its header, or the message of why it could not be read."""
    headers: list[tuple[Path, MapHeader | str]] = []
    for f in list_map_files(maps_dir, flag="--maps"):
        try:
            headers.append((f, read_map_header(f, base)))
        except MapFileError as exc:
            headers.append((f, str(exc)))
    return headers


def _labels_from_maps(headers: list[tuple[Path, MapHeader | str]]) -> LabelMap:
    """The label map inferred from the (index, label) pairs the readable maps store."""
    lm = LabelMap(explicit=False, source="the maps")
    lm.add_names(
        p
        for _, h in headers
        if not isinstance(h, str)
        for p in zip(h.class_indices.tolist(), h.labels or [])
    )
    return lm


def _match_files(
    headers: list[tuple[Path, MapHeader | str]], gt: GroundTruth, base: Path, m: Matched
) -> dict[int, Path]:
    """The map file of each GT image; unmatched, duplicate and unreadable files go into ``m``."""
    file_of: dict[int, Path] = {}
    for f, h in headers:
        if isinstance(h, str):  # unreadable: matched by its own name, it fails that image
            i = gt.match(f.relative_to(base).as_posix())
            if i is None or i in m.failed:
                m.unmatched.append(str(f))
            else:
                m.failed[i] = {"image": str(f), "error": h}
            continue
        i = gt.match(h.name)
        if i is None:
            m.unmatched.append(h.name)
        elif i in file_of:
            m.duplicates.append(h.name)
        else:
            file_of[i] = f
    return file_of


@dataclass
class _JobPlan:
    """The map jobs to run, the GT image of each, and the images skipped before any job."""

    jobs: list[MapJob] = field(default_factory=list)
    job_of: list[int] = field(default_factory=list)
    n_black: int = 0
    n_no_box: int = 0


def _plan_jobs(
    gt: GroundTruth,
    keep: list[int],
    flags: Sequence[bool],
    targets: list[GtTarget],
    file_of: dict[int, Path],
    masks_dir: str | None,
    tau_t: tuple[float, ...],
    wsol_boxes: bool,
    acc: BoxAccumulator,
) -> _JobPlan:
    """One job per kept GT image with boxes or masks and a map file.

    Blacklisted images and those with neither boxes nor masks are counted; an image with boxes
    but no map file counts as wrong in ``acc`` at once.
    """
    plan = _JobPlan()
    for i in keep:
        im = gt.images[i]
        if flags[i]:
            plan.n_black += 1
            continue
        cls = targets[i].classes[0]
        gboxes = tuple(targets[i].boxes_of(cls))
        mpaths, ignore = mask_paths(im, masks_dir)
        if not gboxes and not mpaths:
            plan.n_no_box += 1
            continue
        if i not in file_of:
            if gboxes:
                acc.add_failed()
            continue
        size = (im.width, im.height) if im.width and im.height else None
        plan.jobs.append(
            MapJob(str(file_of[i]), cls, gboxes, size, tuple(mpaths), ignore, tau_t, wsol_boxes)
        )
        plan.job_of.append(i)
    return plan


@dataclass
class _Scored:
    """What the job results add beyond the accumulators."""

    missing_cls: list[str] = field(default_factory=list)
    renorm: int = 0
    n_masked: int = 0
    gk_right: int = 0
    gk_curve: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _score_jobs(
    plan: _JobPlan,
    gt: GroundTruth,
    m: Matched,
    acc: BoxAccumulator,
    pxap: PxAPAccumulator,
    results: Iterable[tuple],
) -> _Scored:
    """Feed each job's result into ``acc`` / ``pxap``.

    A map without the GT class or a failed one counts as wrong (failures go into ``m``).
    """
    scored = _Scored()
    scored.gk_curve = np.zeros(len(plan.jobs[0].taus) if plan.jobs else 0)
    for i, job, r in zip(plan.job_of, plan.jobs, results):
        if r[0] == "ok":
            _, v1, v2, hist, re_, gk, gk_at = r
            scored.renorm += re_
            if v1 is not None:
                acc.add_ious(v1, v2)
                scored.gk_curve += gk
                scored.gk_right += bool(gk_at)
            if hist is not None:
                pxap.pos += hist[0]
                pxap.neg += hist[1]
                pxap.n += 1
                scored.n_masked += 1
            continue
        if r[0] == "nocls":
            scored.missing_cls.append(gt.images[i].name)
        else:
            m.failed[i] = {"image": job.path, "error": r[1]}
        if job.boxes:
            acc.add_failed()
    return scored
