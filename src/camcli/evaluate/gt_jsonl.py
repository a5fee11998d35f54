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
            im = GtImage(name=name, width=opt_int(rec.get("width")))
            im.height = opt_int(rec.get("height"))
            labels = rec.get("labels", [rec["label"]] if "label" in rec else [])
            for lab in labels:
                im.add_label((str(lab),))
            for k, b in enumerate(rec.get("boxes") or [], 1):
                if isinstance(b, dict):
                    lab = b.get("label", labels[0] if labels else None)
                    b = b.get("box")
                else:
                    lab = labels[0] if labels else None
                if lab is None:
                    raise GtError(f"{where}: box {k} has no label and the image none either")
                im.add_label((str(lab),))
                im.boxes.append(((str(lab),), parse_box(list(b or []), f"{where} box {k}")))
            if not im.labels:
                raise GtError(f'{where}: no "label", "labels" or labelled boxes')
            masks = rec.get("mask") or []
            for m in [masks] if isinstance(masks, str) else masks:
                im.masks.append(str(base / m) if not os.path.isabs(m) else m)
            if rec.get("ignore"):
                ig = str(rec["ignore"])
                im.ignore = ig if os.path.isabs(ig) else str(base / ig)
            images[name] = im
    return GroundTruth(list(images.values()), str(path))
