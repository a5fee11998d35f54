"""Ground truth from Kaggle's ``LOC_val_solution.csv`` (ImageNet Object Localization Challenge).

Header ``ImageId,PredictionString``; PredictionString holds groups ``WNID x_min y_min x_max
y_max`` (SPEC.md section 4), one per ground-truth box; the boxes are used as they are.
"""

from __future__ import annotations

import csv
import os

from camcli.errors import GtError
from camcli.evaluate.truth import GroundTruth, GtImage, parse_box

__all__ = ["read_kaggle_solution"]


def read_kaggle_solution(path: str | os.PathLike) -> GroundTruth:
    """Read Kaggle's ``LOC_val_solution.csv``.

    Args:
        path: the CSV file.

    Returns:
        The images in file order; labels are WNIDs.

    Raises:
        GtError: not the header ``ImageId,PredictionString``, an ImageId twice, fields that are
            not groups of 5, or a bad box (naming the line).
        OSError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    images: dict[str, GtImage] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh)
        try:
            return _read_rows(path, rows, images)
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() characters
            raise GtError(f"--gt {path} line {rows.line_num}: bad CSV ({exc})") from None


def _read_rows(path, rows, images: dict[str, GtImage]) -> GroundTruth:
    """The rows after the header (the reader is at the start of the file)."""
    header = next(rows, None)
    if not header or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise GtError(f"--gt {path}: expected the header ImageId,PredictionString")
    for n, row in enumerate(rows, 2):
        if not row or not row[0].strip():
            continue
        where = f"--gt {path} line {n}"
        name = row[0].strip()
        if name in images:
            raise GtError(f"{where}: ImageId {name!r} appears twice")
        toks = (row[1] if len(row) > 1 else "").split()
        if len(toks) % 5:
            raise GtError(f"{where}: {len(toks)} fields, not groups of 'WNID x0 y0 x1 y1'")
        im = GtImage(name=name)
        for g in range(0, len(toks), 5):
            lab = (toks[g],)
            im.add_label(lab)
            im.boxes.append((lab, parse_box(toks[g + 1 : g + 5], where)))
        images[name] = im
    return GroundTruth(list(images.values()), str(path))
