"""The result of an evaluation run, assembled: what ``camcli eval`` and ``bbox --gt`` compute.

Nothing here prints: the command layer shows the result (warnings, a table or JSON, the plot)
and exits with :func:`exit_status`. A result is a dict whose keys start in
:data:`camcli.evaluate.matching.RESULT_ORDER` order, with ``source`` (``boxes``, ``maps`` or
``submission``) first.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from camcli.errors import CamcliError, Exit
from camcli.evaluate.groundtruth import read_ground_truth
from camcli.evaluate.labels import LabelMap, load_label_map
from camcli.evaluate.maps import evaluate_maps
from camcli.evaluate.matching import order_result
from camcli.evaluate.predictions import read_box_records
from camcli.evaluate.scoring import evaluate_records, evaluate_submission
from camcli.evaluate.taus import DEFAULT_TAUS
from camcli.evaluate.truth import GroundTruth

__all__ = [
    "SOURCE_KEYS",
    "check_matched",
    "eval_result",
    "exit_status",
    "gt_class_lookup",
    "is_subset",
    "labels_like",
    "records_result",
    "unknown_gt_lines",
]

SOURCE_KEYS = ("boxes", "maps", "submission")
"""What an evaluation scores: ``--boxes`` records, ``--maps`` or a ``--submission`` file."""


def eval_result(
    truth: GroundTruth,
    labels: LabelMap | None,
    *,
    boxes: Sequence[str] | None = None,
    maps: str | None = None,
    submission: str | None = None,
    submission_format: str = "auto",
    masks: str | None = None,
    blacklist: str | None = None,
    iou: float = 0.5,
    taus: Sequence[float] | np.ndarray = DEFAULT_TAUS,
    subset: bool = False,
    wsol_boxes: bool = True,
    workers: int = 0,
    progress: Callable[[], None] | None = None,
    threshold: float = 0.2,
) -> dict:
    """The result of ``camcli eval``: score one source against the ground truth.

    Exactly one of ``boxes``, ``maps`` and ``submission`` is given. Unreadable ground-truth
    files (XML folders) and record lines are skipped and listed in ``unreadable``.

    Args:
        truth: the ground truth (:func:`~camcli.evaluate.groundtruth.read_ground_truth`).
        labels: the user's label map, or None to infer one.
        boxes: JSON Lines record files (``-``: stdin), scored together.
        maps: a folder of saved maps.
        submission: an ILSVRC / Kaggle submission file.
        submission_format: ``auto``, ``ilsvrc`` or ``kaggle``.
        masks: a folder of PxAP masks (``maps``).
        blacklist: a blacklist file.
        iou: the IoU a box needs (``boxes``, ``submission``).
        taus: the thresholds (``maps``).
        subset: score only the GT images that have a prediction.
        wsol_boxes: wsolevaluation's boxes or tight ones (``maps``).
        workers: processes scoring maps.
        progress: called once per scored map, or None.
        threshold: tau of the GT-known figure from maps (``bbox``'s paper box).

    Returns:
        The ordered result with ``source`` first, ``unreadable`` and ``n_unreadable`` when
        something was skipped.

    Raises:
        CamcliError: no readable record in ``boxes`` (exit 3), and what the evaluation raises
            (:class:`~camcli.errors.GtError`, :class:`~camcli.errors.NoInputError`).
    """
    unreadable = list(truth.skipped)
    if boxes is not None:
        source = "boxes"
        recs = _read_records(boxes, unreadable)
        result = evaluate_records(
            recs,
            truth,
            labels,
            iou=iou,
            blacklist=blacklist,
            subset=subset,
        )
    elif submission is not None:
        source = "submission"
        result = evaluate_submission(
            submission,
            truth,
            labels,
            fmt=submission_format,
            iou=iou,
            blacklist=blacklist,
            subset=subset,
        )
    else:
        source = "maps"
        result = evaluate_maps(
            str(maps),
            truth,
            labels,
            taus=taus,
            masks_dir=masks,
            blacklist=blacklist,
            subset=subset,
            wsol_boxes=wsol_boxes,
            workers=workers,
            progress=progress,
            threshold=threshold,
            iou=iou,
        )
    if unreadable:
        result["unreadable"] = unreadable
        result["n_unreadable"] = len(unreadable)
    return order_result({"source": source, **result})


def _read_records(boxes: Sequence[str], unreadable: list[str]) -> list[dict]:
    """The readable records of the ``--boxes`` files, together (bad lines go into
    ``unreadable``); none at all is an error (exit 3)."""
    recs = [r for b in boxes for r in read_box_records(b, bad=unreadable)]
    if not recs:
        raise CamcliError(
            f"--boxes {' '.join(boxes)}: no readable record"
            + (f" ({unreadable[-1]})" if unreadable else ""),
            Exit.NO_INPUT,
        )
    return recs


def records_result(
    records: list[dict],
    gt: str | os.PathLike,
    synsets: str | os.PathLike | None = None,
    *,
    categories: str | None = None,
    iou: float = 0.5,
    blacklist: str | None = None,
) -> dict:
    """The result ``camcli bbox --gt`` reports: the run's records scored against ``gt``.

    Args:
        records: the run's records (error records included).
        gt: the ground truth, any format (detected).
        synsets: a WNID mapping file, or None.
        categories: class names (a file or a packaged set), or None.
        iou: the IoU a box needs.
        blacklist: a blacklist file, or None.

    Returns:
        The ordered result, ``source`` ``boxes``.

    Raises:
        CamcliError: the ground truth, synsets or categories cannot be used.
    """
    truth = read_ground_truth(str(gt))
    labels = load_label_map(synsets=str(synsets) if synsets else None, categories=categories)
    result = evaluate_records(records, truth, labels, iou=iou, blacklist=blacklist)
    return order_result({"source": "boxes", **result})


def gt_class_lookup(
    gt: str | os.PathLike | GroundTruth,
    categories: Sequence[str | None],
    synsets: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    on_unknown: Callable[[str], None] | None = None,
    images: Iterable[str] | None = None,
) -> Callable[[str], int | None]:
    """Each image's ground-truth class, for the GT-known maps of ``bbox --gt`` / ``cam --gt``.

    Args:
        gt: the ground truth, any format (detected), or one already read.
        categories: the model's class names, in class-index order (an ImageNet-1k model's
            adopt the built-in WNIDs, so WNID labels work).
        synsets: a WNID mapping file for the model's classes, or None.
        num_classes: the model's class count: a class index label outside it is unknown too;
            None: not checked (maps of another tool).
        on_unknown: called once with each primary label that is not one of the model's
            classes (in ground-truth order), whose images get no GT class.
        images: the paths of the images being processed: only their labels are given to
            ``on_unknown`` (a ground truth of the whole dataset, a run on part of it); None:
            every GT image's.

    Returns:
        ``image path -> primary GT class index``, None for an image the ground truth does not
        know or whose label is not one of the model's classes.

    Raises:
        CamcliError: the ground truth or the synsets cannot be read.
    """
    truth = gt if isinstance(gt, GroundTruth) else read_ground_truth(str(gt))
    wnids = None
    if synsets:
        lm0 = load_label_map(synsets=str(synsets))
        wnids = lm0.wnids if lm0 is not None else None
    lm = LabelMap(list(categories), wnids=wnids, explicit=False, source="the model's categories")
    targets, _ = truth.targets(lm)
    used = None if images is None else {truth.match(str(x)) for x in images}
    primary: list[int | None] = []
    unknown: dict[str, None] = {}
    for i, (im, t) in enumerate(zip(truth.images, targets, strict=True)):
        c = t.classes[0] if t.classes else None
        if c is not None and (c < 0 or (num_classes is not None and c >= num_classes)):
            if used is None or i in used:
                unknown[im.labels[0][0]] = None
            c = None
        primary.append(c)
    if on_unknown is not None:
        for label in unknown:
            on_unknown(label)

    def lookup(path: str) -> int | None:
        i = truth.match(path)
        return None if i is None else primary[i]

    return lookup


def labels_like(categories: Sequence[str | None], n: int = 3) -> str:
    """What a model's labels look like, for a message: ``'cat', 'dog', 'fox', ... or a class
    index 0..9``."""
    names = [repr(c) for c in categories if c]
    span = f"class index 0..{len(categories) - 1}"
    if not names:
        return span
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "") + f" or a {span}"


UNKNOWN_SHOWN = 10
"""Ground-truth labels named one warning each by :func:`unknown_gt_lines`; the rest are
counted in one more line."""


def unknown_gt_lines(
    gt: str | os.PathLike, unknown: Sequence[str], categories: Sequence[str | None], what: str
) -> list[str]:
    """The warnings of ``cam --gt`` / ``bbox --gt`` about ground-truth labels that are not one
    of the model's classes (:func:`gt_class_lookup`'s ``on_unknown``): one line per label, at
    most :data:`UNKNOWN_SHOWN`, then one line counting the rest.

    Args:
        gt: the ground truth's path, for the message.
        unknown: the labels, in ground-truth order.
        categories: the model's class names (what its labels look like).
        what: what those labels' images go without (``"GT map"``, ``"GT-known box"``).
    """
    like = labels_like(categories)
    lines = [
        f"--gt {gt}: label {label!r} is not one of the model's classes (they look like "
        f"{like}): its images get no {what}"
        for label in unknown[:UNKNOWN_SHOWN]
    ]
    if len(unknown) > UNKNOWN_SHOWN:
        lines.append(
            f"--gt {gt}: {len(unknown) - UNKNOWN_SHOWN} more "
            f"{'label is' if len(unknown) - UNKNOWN_SHOWN == 1 else 'labels are'} not the "
            f"model's classes: their images get no {what}"
        )
    return lines


def is_subset(result: dict) -> bool:
    """Whether ``--subset`` left GT images out of the denominators."""
    return result.get("n_images", 0) < result.get("n_gt_images", 0)


def check_matched(result: dict, gt: str | os.PathLike = "") -> None:
    """Refuse a result in which no prediction matched a GT image.

    Args:
        result: the result.
        gt: the ground truth's path, for the message.

    Raises:
        CamcliError: (exit 3) every GT image is missing; names the first unmatched prediction.
    """
    if len(result.get("missing", [])) >= result.get("n_gt_images", result["n_images"]):
        first = result.get("unmatched", [])[:1]
        hint = f" (first prediction: {first[0]!r})" if first else ""
        raise CamcliError(
            f"no prediction matches an image of the ground truth {gt}{hint}: images are matched "
            "by file name without extension",
            Exit.NO_INPUT,
        )


def exit_status(result: dict) -> int:
    """The exit status of an evaluation: 1 when images failed, were missing (unless left out
    by ``--subset``) or inputs were unreadable, else 0."""
    bad = (
        result.get("n_failed", 0)
        or (result.get("n_missing", 0) and not is_subset(result))
        or result.get("n_unreadable", 0)
    )
    return Exit.SOME_FAILED if bad else Exit.OK
