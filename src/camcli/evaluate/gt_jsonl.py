"""Ground truth from JSON Lines, one object per image.

``{"image": path, "label": L or "labels": [L...], "boxes": [[x0, y0, x1, y1] or {"box": [...],
"label": L}...], "width", "height", "mask": path or [paths], "ignore": path}``: a box without a
label takes the image's first; ``mask`` / ``ignore`` (PxAP) are relative to the file's folder.
Boxes are inclusive pixel indices of the original image, fractional values rounded.
"""

from __future__ import annotations

import os
from pathlib import Path

from camcli.data.records import iter_jsonl
from camcli.errors import GtError
from camcli.evaluate.truth import GroundTruth, GtImage, opt_int, parse_box

__all__ = ["read_gt_jsonl"]


def read_gt_jsonl(path: str | os.PathLike) -> GroundTruth:
    """Read JSON Lines ground truth (see the module docstring).

    Args:
        path: the file (UTF-8, an optional byte-order mark).

    Returns:
        The images in file order.

    Raises:
        GtError: a line that is not JSON, not an object with an ``"image"`` path, an image
            twice, a box without a label, no label at all, or a bad box (naming the line).
        OSError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    images: dict[str, GtImage] = {}
    base = Path(path).parent
    # Strict UTF-8 (not iter_jsonl's surrogate escapes): a non-UTF-8 file is "not UTF-8 text".
    with open(path, encoding="utf-8-sig") as fh:
        for line in iter_jsonl(fh):
            where = f"--gt {line.where(path)}"
            rec = line.value
            if line.error is not None and line.error.startswith("not JSON"):
                raise GtError(f"{where}: {line.error}")
            if rec is None or not isinstance(rec.get("image"), str):
                raise GtError(f'{where}: expected an object with an "image" path')
            name = rec["image"]
            if name in images:
                raise GtError(f"{where}: image {name!r} appears twice")
            im = GtImage(name=name, width=opt_int(rec.get("width"), where))
            im.height = opt_int(rec.get("height"), where)
            labels = rec.get("labels", [rec["label"]] if "label" in rec else [])
            if not isinstance(labels, list):  # a string is not a list of labels
                raise GtError(f'{where}: "labels" must be a list, got {_brief(labels)}')
            labels = [_label(lab, where) for lab in labels]
            for lab in labels:
                im.add_label((lab,))
            boxes = rec.get("boxes") or []
            if not isinstance(boxes, list):
                raise GtError(f'{where}: "boxes" must be a list of boxes, got {_brief(boxes)}')
            for k, b in enumerate(boxes, 1):
                if isinstance(b, dict):
                    lab = b.get("label", labels[0] if labels else None)
                    lab = None if lab is None else _label(lab, f"{where} box {k}")
                    b = b.get("box")
                else:
                    lab = labels[0] if labels else None
                if lab is None:
                    raise GtError(f"{where}: box {k} has no label and the image none either")
                im.add_label((lab,))
                im.boxes.append(((lab,), parse_box(b, f"{where} box {k}")))
            if not im.labels:
                raise GtError(f'{where}: no "label", "labels" or labelled boxes')
            masks = rec.get("mask") or []
            masks = [masks] if isinstance(masks, str) else masks
            if not isinstance(masks, list) or not all(isinstance(m, str) and m for m in masks):
                raise GtError(f'{where}: "mask" must be a path or a list of paths')
            for m in masks:
                im.masks.append(str(base / m) if not os.path.isabs(m) else m)
            if rec.get("ignore"):
                ig = rec["ignore"]
                if not isinstance(ig, str):
                    raise GtError(f'{where}: "ignore" must be a path, got {_brief(ig)}')
                im.ignore = ig if os.path.isabs(ig) else str(base / ig)
            images[name] = im
    return GroundTruth(list(images.values()), str(path))


def _brief(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(v, where: str) -> str:
    """A label: a non-empty string or a class index (an int, not a bool)."""
    if isinstance(v, str) and v.strip() and len(v) <= 1000:
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise GtError(f"{where}: label {_brief(v)} is not a class name or index")
