"""Ground truth from ILSVRC / PASCAL VOC XML annotation files (one file per image).

A folder is read recursively (sorted relative paths); each file's path without ``.xml`` names its
image, ``<size>`` gives the image size, and every ``<object>`` a ``<name>`` label and, when
present, a ``<bndbox>`` (``xmin ymin xmax ymax``, used as the devkit uses them: inclusive pixel
indices, fractional values rounded). In a folder an unreadable file is left out and reported
(:attr:`GroundTruth.skipped`); a single file that cannot be read is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

from camcli.errors import Exit, GtError
from camcli.evaluate.truth import GroundTruth, GtImage, opt_int, parse_box

__all__ = ["read_xml_folder"]


def read_xml_folder(path: str | os.PathLike) -> GroundTruth:
    """Read a folder of ILSVRC / PASCAL VOC XML files (recursive), or a single one.

    Args:
        path: the folder or file.

    Returns:
        The images in sorted relative-path order; unreadable files of a folder are left out
        and listed in :attr:`GroundTruth.skipped`.

    Raises:
        GtError: a single file that cannot be read, or a folder without any readable ``.xml``
            file (exit 3).
    """
    import xml.etree.ElementTree as ET

    root = Path(path)
    files = (
        sorted(root.rglob("*.xml"), key=lambda p: p.relative_to(root).as_posix())
        if root.is_dir()
        else [root]
    )
    if not files:
        raise GtError(f"--gt {path}: no .xml files in this folder", Exit.NO_INPUT)
    images = []
    skipped: list[str] = []
    for f in files:
        rel = f.relative_to(root).as_posix() if root.is_dir() else f.name
        try:
            images.append(_read_xml(f, rel, ET))
        except GtError as exc:
            if not root.is_dir():
                raise
            skipped.append(str(exc))  # one bad file of a folder: left out, reported
    if not images:
        raise GtError(
            f"--gt {path}: no readable XML file ({skipped[0]})"
            if skipped
            else f"--gt {path}: no .xml files in this folder",
            Exit.NO_INPUT,
        )
    return GroundTruth(images, str(path), skipped)


def _read_xml(f: Path, rel: str, ET) -> GtImage:
    """One ILSVRC / VOC annotation file; GtError with a one-line reason."""
    if not f.is_file():  # a FIFO would block, a folder named *.xml is no annotation
        raise GtError(f"--gt {f}: not a regular file")
    try:
        tree = ET.parse(f)
    except (ET.ParseError, OSError) as exc:
        raise GtError(f"--gt {f}: not readable XML ({exc})") from None
    ann = tree.getroot()
    im = GtImage(name=rel[: -len(".xml")] if rel.lower().endswith(".xml") else rel)
    size = ann.find("size")
    if size is not None:
        im.width = opt_int(size.findtext("width"), f"--gt {f}")
        im.height = opt_int(size.findtext("height"), f"--gt {f}")
    for k, obj in enumerate(ann.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise GtError(f"--gt {f}: object {k} has no <name>")
        lab = (name,)
        im.add_label(lab)
        bb = obj.find("bndbox")
        if bb is not None:
            vals = [bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
            im.boxes.append((lab, parse_box(vals, f"--gt {f} object {k}")))
    return im
