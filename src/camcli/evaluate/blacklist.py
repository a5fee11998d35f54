"""The devkit's localization blacklist: GT images left out of the localization figures.

The official ILSVRC validation figures leave out the 1762 images of the devkit's blacklist from
localization error; classification error keeps them (SPEC.md section 5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from camcli.errors import GtError
from camcli.evaluate.truth import GroundTruth, name_parts

__all__ = ["blacklist_flags", "read_blacklist"]

_TRAILING_NUMBER = re.compile(r"(\d+)$")


def read_blacklist(path: str | os.PathLike, gt: GroundTruth) -> list[bool]:
    """Flags per GT image from a blacklist file.

    Entries are separated by white space: an image name (or path; matched like predictions) or
    an integer N, the ILSVRC devkit's form (1-based image number: the image whose name ends in N,
    e.g. ``ILSVRC2012_val_00000036`` for 36, or the N-th image in name order when the names carry
    no number). Entries naming no GT image are ignored, unless none names one.

    Args:
        path: the blacklist file (e.g. ``ILSVRC2015_clsloc_validation_blacklist.txt``).
        gt: the ground truth it applies to.

    Returns:
        One flag per GT image, in order: True = left out of the localization figures.

    Raises:
        GtError: the file cannot be read, or none of its entries names a GT image.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").split()
    except OSError as exc:
        raise GtError(f"--blacklist {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise GtError(f"--blacklist {path}: not UTF-8 text (byte {exc.start})") from None
    numbers: dict[int, int] = {}
    for i, im in enumerate(gt.images):
        m = _TRAILING_NUMBER.search(name_parts(im.name)[-1])
        if m:
            numbers.setdefault(int(m.group(1)), i)
    by_name = sorted(range(len(gt)), key=lambda i: name_parts(gt.images[i].name)[-1])
    flags = [False] * len(gt)
    unknown = []
    for tok in lines:
        if tok.isascii() and tok.isdigit() and len(tok) <= 18:
            n = int(tok)
            if numbers:
                i = numbers.get(n)
            elif 1 <= n <= len(by_name):
                i = by_name[n - 1]
            else:
                i = None
        else:
            i = gt.match(tok)
        if i is None:
            unknown.append(tok)
        else:
            flags[i] = True
    if unknown and len(unknown) == len(lines):
        raise GtError(
            f"--blacklist {path}: none of its {len(lines)} entries names a ground-truth image "
            f"(first: {unknown[0]!r})"
        )
    return flags


def blacklist_flags(
    gt: GroundTruth, blacklist: str | os.PathLike | Sequence[bool] | None
) -> list[bool]:
    """Blacklist flags per GT image from whatever the caller has.

    Args:
        gt: the ground truth.
        blacklist: a blacklist file (:func:`read_blacklist`), flags per image, or None (none).

    Returns:
        One flag per GT image.

    Raises:
        GtError: as :func:`read_blacklist`.
    """
    if blacklist is None:
        return [False] * len(gt)
    if isinstance(blacklist, str | os.PathLike):
        return read_blacklist(blacklist, gt)
    return [bool(b) for b in blacklist]
