"""ILSVRC CLS-LOC and Kaggle localization submission files: writing and reading (SPEC section 4).

- ILSVRC CLS-LOC: one line per image, in the sorted order of the image FILE NAMES; up to five
  groups ``ILSVRC2012_ID xmin ymin xmax ymax``, most confident first.
- Kaggle "ImageNet Object Localization Challenge": header ``ImageId,PredictionString``; ImageId
  = file name without extension; groups ``WNID xmin ymin xmax ymax``.

Class indices become labels through a :class:`~camcli.evaluate.synsets.SynsetMap`. Boxes
everywhere are ``(x_min, y_min, x_max, y_max)`` integer, 0-based, inclusive pixels of the
original image, written as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from camcli.atomic import write_atomic
from camcli.errors import SubmissionError
from camcli.evaluate.synsets import WNID_RE, SynsetMap

__all__ = [
    "KAGGLE_HEADER",
    "MAX_GUESSES",
    "SubmissionError",
    "read_ilsvrc_submission",
    "read_kaggle_submission",
    "write_ilsvrc_submission",
    "write_kaggle_submission",
]

MAX_GUESSES = 5
KAGGLE_HEADER = "ImageId,PredictionString"

Box = tuple[int, int, int, int]

# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

Item = tuple[str | os.PathLike, Sequence[tuple[int, Sequence[int]]]]


def _check_box(box: Sequence[int], where: str) -> Box:
    try:
        vals = [int(v) for v in box]
        ok = len(vals) == 4 and all(float(v) == int(v) for v in box)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SubmissionError(f"{where}: box {box!r} is not 4 integers x_min y_min x_max y_max")
    x0, y0, x1, y1 = vals
    if not (0 <= x0 <= x1 and 0 <= y0 <= y1):
        raise SubmissionError(
            f"{where}: box {tuple(vals)} needs 0 <= x_min <= x_max and 0 <= y_min <= y_max"
        )
    return (x0, y0, x1, y1)


def _sorted_items(items: Iterable[Item]) -> list[tuple[str, list[tuple[int, Box]]]]:
    """Items keyed by file name, sorted by it, validated (unique names, <= 5 groups)."""
    rows: dict[str, list[tuple[int, Box]]] = {}
    origin: dict[str, str] = {}
    for image, groups in items:
        name = Path(image).name
        if name in rows:
            raise SubmissionError(
                f"two images share the file name {name!r} ({origin[name]!r} and {str(image)!r}); "
                "submissions are keyed by file name, so submit one of them"
            )
        groups = list(groups)
        if len(groups) > MAX_GUESSES:
            raise SubmissionError(
                f"{str(image)!r}: {len(groups)} guesses, at most {MAX_GUESSES} are allowed"
            )
        rows[name] = [(int(c), _check_box(b, str(image))) for c, b in groups]
        origin[name] = str(image)
    return sorted(rows.items())


def write_ilsvrc_submission(
    path: str | os.PathLike, items: Iterable[Item], synsets: SynsetMap
) -> int:
    """Write an ILSVRC CLS-LOC prediction file.

    One line per image, ordered by FILE NAME
    (plain string order; ILSVRC names sort by number), groups ``ID xmin ymin xmax ymax``
    separated by spaces. An image with fewer groups gets a shorter line; one with none gets an
    EMPTY line: the devkit's ``eval_clsloc.m`` reads the file with ``dlmread``, which pads short
    rows with zeros (label 0 matches nothing, so a missing guess simply counts as an error) and
    asserts one row per ground-truth image. (A trailing empty last line may be dropped by some
    readers; :func:`read_ilsvrc_submission` accepts it.) The file is written atomically.

    Args:
        path: the file to write.
        items: ``(image_path, [(class_index, box), ...])`` with at most 5 guesses, most
            confident first; class_index is the network's (sorted-WNID) index, written as its
            ILSVRC2012_ID; boxes inclusive ``[x_min, y_min, x_max, y_max]`` integers.
        synsets: the mapping, with ILSVRC2012_IDs (meta.mat or map_clsloc.txt).

    Returns:
        The number of lines (images).

    Raises:
        SubmissionError: two images share a file name, more than 5 guesses, a bad box.
        SynsetError: the mapping has no IDs, or a class index outside it.
        WriteError: the file cannot be written.
    """
    lines = []
    for _name, groups in _sorted_items(items):
        parts = []
        for c, (x0, y0, x1, y1) in groups:
            parts.append(f"{synsets.ilsvrc_id(c)} {x0} {y0} {x1} {y1}")
        lines.append(" ".join(parts))
    write_atomic(path, "".join(ln + "\n" for ln in lines).encode("utf-8"), stream_ok=True)
    return len(lines)


def write_kaggle_submission(
    path: str | os.PathLike, items: Iterable[Item], synsets: SynsetMap
) -> int:
    """Write a Kaggle "ImageNet Object Localization Challenge" CSV.

    Header ``ImageId,PredictionString``; ImageId = file name without its extension;
    PredictionString = space-separated groups ``WNID xmin ymin xmax ymax`` (at most 5, most
    confident first; empty for an image with no guess). Rows sorted by ImageId. Written
    atomically.

    Args:
        path: the file to write.
        items: as for :func:`write_ilsvrc_submission`.
        synsets: maps class indices to WNIDs (any of the three formats works).

    Returns:
        The number of rows (images).

    Raises:
        SubmissionError: two images share a file name or an ImageId, more than 5 guesses, a
            bad box.
        SynsetError: a class index outside the mapping.
        WriteError: the file cannot be written.
    """
    rows = [KAGGLE_HEADER]
    seen: set[str] = set()
    for name, groups in _sorted_items(items):
        image_id = Path(name).stem
        if image_id in seen:
            raise SubmissionError(f"two images have the ImageId {image_id!r}; rename one")
        seen.add(image_id)
        pred = " ".join(f"{synsets.wnid(c)} {x0} {y0} {x1} {y1}" for c, (x0, y0, x1, y1) in groups)
        rows.append(f"{image_id},{pred}")
    write_atomic(path, "".join(r + "\n" for r in rows).encode("utf-8"), stream_ok=True)
    return len(rows) - 1


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike, encoding: str) -> str:
    """A submission's text; a file that is not UTF-8 is a SubmissionError naming it."""
    try:
        return Path(path).read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise SubmissionError(
            f"submission {str(path)!r}: not UTF-8 text (byte {exc.start}); write it as UTF-8"
        ) from None


def _parse_groups(tokens: list[str], where: str, label_is_int: bool) -> list[tuple]:
    if len(tokens) % 5:
        raise SubmissionError(
            f"{where}: {len(tokens)} fields, not groups of 5 (label xmin ymin xmax ymax)"
        )
    out = []
    for g in range(0, len(tokens), 5):
        label_tok, coords = tokens[g], tokens[g + 1 : g + 5]
        try:
            if any(len(t) > 12 for t in coords) or (label_is_int and len(label_tok) > 9):
                raise ValueError("too many digits")  # beyond any image: 400-digit numbers
            label = int(label_tok) if label_is_int else label_tok
            box = tuple(int(v) for v in coords)
        except ValueError:
            raise SubmissionError(
                f"{where}: group {g // 5 + 1} {' '.join(tokens[g : g + 5])!r} is not "
                f"'{'ID' if label_is_int else 'WNID'} xmin ymin xmax ymax' with integers"
            ) from None
        if not label_is_int and not WNID_RE.match(label):
            raise SubmissionError(f"{where}: {label!r} is not a WNID like n01440764")
        out.append((label, box))
    return out


def read_ilsvrc_submission(
    path: str | os.PathLike, image_names: Iterable[str | os.PathLike]
) -> dict[str, list[tuple[int, Box]]]:
    """Read an ILSVRC CLS-LOC prediction file back.

    The number of lines must equal the number of images (a missing empty last line is
    tolerated).

    Args:
        path: the file.
        image_names: the images the file covers (paths or names); lines belong to them in the
            sorted order of their FILE NAMES, as :func:`write_ilsvrc_submission` writes them.

    Returns:
        ``{file name: [(ILSVRC2012_ID, (xmin, ymin, xmax, ymax)), ...]}``, groups in file order.

    Raises:
        SubmissionError: the wrong number of lines, a line that is not groups of 5 integers
            (of at most 12 digits), or a file that is not UTF-8 text.
        OSError: the file cannot be read.
    """
    names = sorted({Path(n).name for n in image_names})
    text = _read_text(path, "utf-8")
    lines = text.splitlines()
    if len(lines) == len(names) - 1 and names:
        lines.append("")  # the last image had no guess and its empty line was dropped
    if len(lines) != len(names):
        raise SubmissionError(
            f"ILSVRC submission {str(path)!r} has {len(lines)} lines for {len(names)} images; "
            "write one line per image, in file-name order"
        )
    return {
        name: _parse_groups(ln.split(), f"{str(path)!r} line {k}", True)
        for k, (name, ln) in enumerate(zip(names, lines, strict=True), 1)
    }


def read_kaggle_submission(path: str | os.PathLike) -> dict[str, list[tuple[str, Box]]]:
    """Read a Kaggle localization CSV.

    Args:
        path: the file, starting with the header ``ImageId,PredictionString``.

    Returns:
        ``{ImageId: [(WNID, (xmin, ymin, xmax, ymax)), ...]}``, groups in file order.

    Raises:
        SubmissionError: no header, a malformed row or group, an ImageId twice, or a file
            that is not UTF-8 text.
        OSError: the file cannot be read.
    """
    lines = _read_text(path, "utf-8-sig").splitlines()
    if not lines or lines[0].strip() != KAGGLE_HEADER:
        raise SubmissionError(
            f"Kaggle submission {str(path)!r} must start with the header {KAGGLE_HEADER!r}"
        )
    out: dict[str, list[tuple[str, Box]]] = {}
    for k, ln in enumerate(lines[1:], 2):
        if not ln.strip():
            continue
        image_id, sep, pred = ln.partition(",")
        image_id = image_id.strip()
        if not sep or not image_id:
            raise SubmissionError(f"{str(path)!r} line {k}: expected 'ImageId,PredictionString'")
        if image_id in out:
            raise SubmissionError(f"{str(path)!r} line {k}: ImageId {image_id!r} appears twice")
        out[image_id] = _parse_groups(pred.split(), f"{str(path)!r} line {k}", False)
    return out
