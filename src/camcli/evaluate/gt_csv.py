"""Ground truth from a CSV with one row per box.

The header names an image column (``path``, ``image``, ``file``, ``filename``, ``ImageId`` or
``image_id``), label columns (``label``, ``class_index``, ``class``, ``name``, ``wnid``: the first
present is the label, the others its fallbacks) and ``xmin,ymin,xmax,ymax`` (empty cells: a
label without a box); optional ``width``, ``height``. Several rows per image.
"""

from __future__ import annotations

import csv
import os

from camcli.errors import GtError
from camcli.evaluate.truth import GroundTruth, GtImage, opt_int, parse_box

__all__ = ["read_box_csv"]

_IMAGE_COLS = ("path", "image", "file", "filename", "imageid", "image_id")
_LABEL_COLS = ("label", "class_index", "class", "name", "wnid")


def read_box_csv(path: str | os.PathLike) -> GroundTruth:
    """Read a ground-truth CSV with one row per box (see the module docstring).

    Args:
        path: the CSV file.

    Returns:
        The images in order of first appearance.

    Raises:
        GtError: an empty file, a header without an image or label column, an empty image name
            or label, or a bad box (naming the line).
        OSError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    images: dict[str, GtImage] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            return _read_rows(path, reader, images)
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() characters
            raise GtError(f"--gt {path} line {reader.line_num}: bad CSV ({exc})") from None


def _read_rows(path, reader, images: dict[str, GtImage]) -> GroundTruth:
    """The rows after the header (the reader is at the start of the file)."""
    header = next(reader, None)
    if not header:
        raise GtError(f"--gt {path}: empty file")
    cols = {h.strip().lower(): i for i, h in enumerate(header)}
    img_col = next((cols[c] for c in _IMAGE_COLS if c in cols), None)
    lab_cols = [cols[c] for c in _LABEL_COLS if c in cols]
    box_cols = [cols.get(c) for c in ("xmin", "ymin", "xmax", "ymax")]
    if img_col is None or not lab_cols:
        raise GtError(
            f"--gt {path}: the CSV header needs an image column ({', '.join(_IMAGE_COLS)}) "
            f"and a label column ({', '.join(_LABEL_COLS)}), plus xmin,ymin,xmax,ymax"
        )
    has_box = all(c is not None for c in box_cols)
    wcol, hcol = cols.get("width"), cols.get("height")
    for n, row in enumerate(reader, 2):
        if not row or not "".join(row).strip():
            continue
        where = f"--gt {path} line {n}"

        def cell(i, row=row):
            return row[i].strip() if i is not None and i < len(row) else ""

        name = cell(img_col)
        if not name:
            raise GtError(f"{where}: empty image name")
        lab = tuple(v for v in (cell(c) for c in lab_cols) if v)
        if not lab:
            raise GtError(f"{where}: empty label")
        im = images.setdefault(name, GtImage(name=name))
        im.add_label(lab)
        if wcol is not None and im.width is None:
            im.width, im.height = opt_int(cell(wcol), where), opt_int(cell(hcol), where)
        if has_box:
            vals = [cell(c) for c in box_cols]
            if any(vals):
                im.boxes.append((lab, parse_box(vals, where)))
    return GroundTruth(list(images.values()), str(path))
