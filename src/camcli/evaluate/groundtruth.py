"""Reading ground truth: the format is detected from the path, then its reader runs.

- a folder of ILSVRC / PASCAL VOC XML files, or one (:mod:`camcli.evaluate.gt_xml`);
- Kaggle's ``LOC_val_solution.csv`` (:mod:`camcli.evaluate.gt_kaggle`);
- a CSV with one row per box (:mod:`camcli.evaluate.gt_csv`);
- JSON Lines, one object per image (:mod:`camcli.evaluate.gt_jsonl`).

Detection: a folder or ``.xml`` is XML; ``.jsonl`` / ``.json`` / ``.ndjson`` is JSON Lines;
otherwise the first line decides (``ImageId,PredictionString``: Kaggle; ``{``: JSON Lines; else
CSV).
"""

from __future__ import annotations

import os
from pathlib import Path

from camcli.errors import Exit, GtError
from camcli.evaluate.gt_csv import read_box_csv
from camcli.evaluate.gt_jsonl import read_gt_jsonl
from camcli.evaluate.gt_kaggle import read_kaggle_solution
from camcli.evaluate.gt_xml import read_xml_folder
from camcli.evaluate.truth import GroundTruth

__all__ = ["GT_FORMATS", "read_ground_truth"]


GT_FORMATS = ("auto", "xml", "kaggle", "csv", "jsonl")
"""The values of ``--gt-format``."""

_READERS = {
    "xml": read_xml_folder,
    "kaggle": read_kaggle_solution,
    "csv": read_box_csv,
    "jsonl": read_gt_jsonl,
}


def read_ground_truth(path: str | os.PathLike, fmt: str = "auto") -> GroundTruth:
    """Read ground truth in any format, detecting it from the path (see the module docstring).

    Args:
        path: a file or a folder (XML).
        fmt: one of :data:`GT_FORMATS`; ``auto`` detects it.

    Returns:
        The :class:`~camcli.evaluate.truth.GroundTruth`, at least one image.

    Raises:
        GtError: no such path or no image (exit 3); an unknown format, a file that is not
            UTF-8 text, or what the format's reader refuses (exit 2).
    """
    p = Path(path)
    if not p.exists():
        raise GtError(f"--gt {path}: no such file or folder", Exit.NO_INPUT)
    if not p.is_dir() and not p.is_file():  # a FIFO or device would block or never end
        raise GtError(f"--gt {path}: not a regular file or folder (a FIFO or device?)")
    if fmt not in GT_FORMATS:
        raise GtError(f"--gt-format {fmt!r}: use one of {', '.join(GT_FORMATS)}")
    if fmt == "auto":
        if p.is_dir() or p.suffix.lower() == ".xml":
            fmt = "xml"
        elif p.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            fmt = "jsonl"
        else:
            with open(p, encoding="utf-8-sig", errors="replace") as fh:
                first = fh.readline().strip()
            if first.replace(" ", "").startswith("ImageId,PredictionString"):
                fmt = "kaggle"
            elif first.startswith("{"):
                fmt = "jsonl"
            else:
                fmt = "csv"
    reader = _READERS[fmt]
    try:
        gt = reader(p)
    except UnicodeDecodeError:
        raise GtError(f"--gt {path}: not UTF-8 text") from None
    if len(gt) == 0:
        raise GtError(f"--gt {path}: no images in the ground truth", Exit.NO_INPUT)
    return gt
