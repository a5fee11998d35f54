"""Submission files of ``bbox`` records (ILSVRC CLS-LOC, Kaggle) and their class mapping."""

from __future__ import annotations

from pathlib import Path

from camcli.errors import CamcliError


def submission_guesses(entries: list[dict], tight_loose: bool) -> list[tuple[int, tuple]]:
    """Up to five (class_index, box) guesses: the heuristic's five, else each class's first box.

    Args:
        entries: a record's ``boxes`` (:func:`camcli.api.boxer.box_entries`).
        tight_loose: the entries are the heuristic's guesses (keep them all, in order).

    Returns:
        ``[(class_index, (x0, y0, x1, y1)), ...]``, at most 5, boxes inclusive.
    """
    out: list[tuple[int, tuple]] = []
    seen: set[int] = set()
    for e in entries:
        if e["box"] is None:
            continue
        if not tight_loose:
            if e["rank"] in seen:
                continue
            seen.add(e["rank"])
        out.append((e["class_index"], tuple(e["box"])))
    return out[:5]


def maps_num_classes(from_maps: Path) -> int | None:
    """The class count ``cam --save-maps`` recorded in ``from_maps/run.json``; None when
    unknown (no or unreadable run.json: maps of another tool)."""
    import json

    try:
        n = json.loads((from_maps / "run.json").read_text(encoding="utf-8"))["num_classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def load_synsets(path: Path, fmt: str, num_classes: int | None):
    """The class-index -> WNID (and ILSVRC2012_ID) mapping of a submission.

    Args:
        path: meta.mat, map_clsloc.txt or LOC_synset_mapping.txt.
        fmt: the submission format, ``"ilsvrc"`` (needs ILSVRC2012_IDs) or ``"kaggle"``.
        num_classes: the model's; None (maps of unknown origin): any class count is accepted.

    Returns:
        A :class:`camcli.evaluate.submission.SynsetMap`.

    Raises:
        CamcliError: unreadable file, a class count other than ``num_classes``, or an ilsvrc
            submission from a file without ILSVRC2012_IDs (exit 2).
    """
    from camcli.errors import SynsetError
    from camcli.evaluate.synsets import load_synsets as _load

    try:
        m = _load(path, num_classes=num_classes)
    except SynsetError as exc:
        raise CamcliError(str(exc)) from None
    if fmt == "ilsvrc" and not m.has_ilsvrc_ids:
        raise CamcliError(
            f"--synsets {path}: has WNIDs but no ILSVRC2012_IDs; an ilsvrc submission needs "
            "the devkit's meta.mat or map_clsloc.txt (or use --submission-format kaggle)"
        )
    return m


def builtin_synsets(submission: Path, session):
    """The built-in ImageNet-1k WNIDs for a Kaggle submission without ``--synsets``: only when
    the model's classes are ImageNet-1k's (its category names, in order).

    Raises:
        CamcliError: the model has other classes (or the maps' model is unknown): ``--synsets``
            is needed (exit 2).
    """
    from camcli.errors import SynsetError
    from camcli.evaluate.synsets import imagenet1k_synsets

    try:
        builtin = imagenet1k_synsets()
    except SynsetError as exc:
        raise CamcliError(f"--submission {submission}: {exc}") from None
    if session is None or list(session.model.categories) != list(builtin.names):
        raise CamcliError(
            f"--submission {submission}: the model's classes are not ImageNet-1k's, so pass "
            "--synsets (LOC_synset_mapping.txt, map_clsloc.txt or meta.mat) to name them"
        )
    return builtin


def write_submission(
    path: Path,
    fmt: str,
    synmap,
    records: list[dict],
    *,
    tight_loose: bool,
    images: bool,
) -> None:
    """Write a submission file from bbox records.

    Args:
        path: the file.
        fmt: ``"ilsvrc"`` (a line per image, sorted by file name: up to 5 groups
            ``ILSVRC2012_ID x0 y0 x1 y1``) or ``"kaggle"`` (CSV).
        synmap: the :func:`load_synsets` mapping.
        records: bbox records in input order.
        tight_loose: the records hold the tight/loose heuristic's guesses.
        images: records of input images (not map files): an image that failed still gets its
            (empty) line, so the lines stay aligned with the sorted image list the evaluator
            expects.

    Raises:
        CamcliError: two images of one file name, a class the mapping lacks (exit 2).
        WriteError: the file could not be written (exit 5, naming it).
    """
    from camcli.errors import SubmissionError, SynsetError
    from camcli.evaluate.submission import write_ilsvrc_submission, write_kaggle_submission

    items = [
        (r["image"], submission_guesses(r["boxes"], tight_loose) if "boxes" in r else [])
        for r in records
        if "boxes" in r or images
    ]
    try:
        if fmt == "ilsvrc":
            write_ilsvrc_submission(path, items, synmap)
        else:
            write_kaggle_submission(path, items, synmap)
    except (SubmissionError, SynsetError) as exc:
        raise CamcliError(f"--submission {path}: {exc}") from None
    except OSError as exc:
        from camcli.errors import write_error

        raise write_error(exc, path, resumable=False) from None
