"""Ground truth as read from any format: images, their labels and boxes, and matching.

Boxes are taken as given: ``(x_min, y_min, x_max, y_max)`` integer pixel indices of the original
image, 0-based and inclusive like camcli's own (SPEC.md section 3; the ILSVRC XML and Kaggle
files are used as they are, as the devkit does; fractional values are rounded by
:func:`parse_box`). Labels stay as the source wrote them (WNIDs, names or class indices) until
:meth:`GroundTruth.targets` maps them through a :class:`~camcli.evaluate.labels.LabelMap`.

Matching: a prediction's image path matches the ground-truth image with the same file stem;
when several share the stem, the one sharing the longest run of trailing folder names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from camcli.data.inputs import IMAGE_EXTENSIONS
from camcli.errors import Exit, GtError
from camcli.evaluate.labels import Label, LabelMap, NeedSynsets
from camcli.evaluate.metrics import Box, GtTarget

__all__ = [
    "GroundTruth",
    "GtImage",
    "name_parts",
    "opt_int",
    "parse_box",
    "strip_ext",
]


@dataclass
class GtImage:
    """One ground-truth image.

    Attributes:
        name: as the source names it (a path or a bare name, extension optional).
        labels: image-level labels in order (the first is the primary class); each label is a
            tuple of alternatives (a CSV row's other label columns are fallbacks).
        boxes: ``(label, box)`` per ground-truth box, inclusive ``(x_min, y_min, x_max, y_max)``.
        width, height: the image size when the source gives it (maps of another size get the
            boxes scaled), else None.
        masks: foreground mask files (PxAP), in the source's order.
        ignore: a mask of pixels PxAP leaves out, or None.
    """

    name: str
    labels: list[Label] = field(default_factory=list)
    boxes: list[tuple[Label, Box]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    masks: list[str] = field(default_factory=list)
    ignore: str | None = None

    def add_label(self, label: Label) -> None:
        """Append ``label`` to :attr:`labels` unless it is there already."""
        if label not in self.labels:
            self.labels.append(label)


def strip_ext(name: str) -> str:
    """``name`` with ``/`` separators and without an image, ``.npz`` or ``.xml`` extension."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() in (".npz", ".xml"):
        p = p.with_suffix("")
    return p.as_posix()


def name_parts(name: str) -> tuple[str, ...]:
    """The path parts of ``name`` without its extension (the last one is the stem)."""
    return tuple(x for x in PurePosixPath(strip_ext(name)).parts if x not in ("/", ".", ""))


class GroundTruth:
    """Ground-truth images in source order, with stem-based matching of prediction paths.

    Args:
        images: the images, in source order.
        source: the file or folder read, for messages.
        skipped: one-line reasons of unreadable ground-truth files left out (XML folders).

    Raises:
        GtError: an image with an empty name.
    """

    def __init__(
        self, images: Sequence[GtImage], source: str = "", skipped: Sequence[str] = ()
    ) -> None:
        self.images = list(images)
        self.source = source
        self.skipped = list(skipped)  # one-line reasons of unreadable GT files left out
        self._by_stem: dict[str, list[int]] = {}
        for i, im in enumerate(self.images):
            parts = name_parts(im.name)
            if not parts:
                raise GtError(f"{source}: an image has an empty name")
            self._by_stem.setdefault(parts[-1], []).append(i)

    def __len__(self) -> int:
        return len(self.images)

    def match(self, path: str) -> int | None:
        """Index of the GT image ``path`` (a prediction's image path) refers to, or None.

        Same file stem; among several, the longest common run of trailing path parts; a tie
        is ambiguous (None).
        """
        parts = name_parts(str(path))
        if not parts:
            return None
        cands = self._by_stem.get(parts[-1], [])
        if len(cands) <= 1:
            return cands[0] if cands else None
        best, best_n, tie = None, -1, False
        for i in cands:
            gp = name_parts(self.images[i].name)
            n = 0
            while n < min(len(gp), len(parts)) and gp[-1 - n] == parts[-1 - n]:
                n += 1
            if n > best_n:
                best, best_n, tie = i, n, False
            elif n == best_n:
                tie = True
        return None if tie else best

    def targets(self, labels: LabelMap) -> tuple[list[GtTarget], list[str]]:
        """The images with labels mapped to class indices.

        With an explicit label map an unknown label is an error; with a map inferred from the
        predictions, it becomes a class no prediction has (a negative index, counted wrong).

        Args:
            labels: the label map.

        Returns:
            One :class:`~camcli.evaluate.metrics.GtTarget` per image, in order, and the labels
            no class matched (inferred maps only).

        Raises:
            GtError: (exit 2) an unknown label with an explicit map, or a WNID label without
                synsets.
        """
        out: list[GtTarget] = []
        unknown: dict[str, None] = {}
        for im in self.images:
            try:
                classes = tuple(dict.fromkeys(labels.index(lab) for lab in im.labels))
                objects = tuple((labels.index(lab), b) for lab, b in im.boxes)
            except KeyError as exc:
                if labels.explicit or isinstance(exc, NeedSynsets):
                    raise GtError(
                        f"{self.source}: image {im.name!r}: {exc.args[0]}", Exit.USAGE
                    ) from None
                classes = tuple(dict.fromkeys(labels.index_or_new(lab) for lab in im.labels))
                objects = tuple((labels.index_or_new(lab), b) for lab, b in im.boxes)
                for lab in im.labels:
                    if labels.index_or_new(lab) < 0:
                        unknown[lab[0]] = None
            out.append(GtTarget(classes, objects))
        return out, list(unknown)


# ---- values the readers share ----------------------------------------------------------------


#: The largest |value| of a box coordinate or an image side (pixels).
MAX_COORD = 2**31 - 1


def _brief(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v) -> float:
    """``float(v)`` for a number or numeric text (not a bool); ValueError otherwise."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError("not a number")
    if isinstance(v, str) and len(v) > 100:
        raise ValueError("too long")
    try:
        return float(v)
    except OverflowError:  # an int too large for a float
        return math.inf


def _int_coord(v, where: str) -> int:
    try:
        f = _number(v)
    except (TypeError, ValueError):
        raise GtError(f"{where}: box coordinate {_brief(v)} is not a number") from None
    if not math.isfinite(f) or abs(f) > MAX_COORD:
        raise GtError(f"{where}: box coordinate {_brief(v)} is not a finite number <= {MAX_COORD}")
    return int(math.floor(f + 0.5))


def parse_box(vals: Sequence, where: str) -> Box:
    """A ground-truth box from 4 values ``x_min y_min x_max y_max`` (numbers or text).

    Args:
        vals: the 4 values; fractional ones are rounded half up.
        where: the file and line, for messages.

    Returns:
        The inclusive integer box.

    Raises:
        GtError: not 4 values, a value that is not a finite number, or ``x_max < x_min`` /
            ``y_max < y_min``.
    """
    if not isinstance(vals, list | tuple) or len(vals) != 4:
        raise GtError(f"{where}: a box needs 4 numbers x_min y_min x_max y_max, got {_brief(vals)}")
    x0, y0, x1, y1 = (_int_coord(v, where) for v in vals)
    if x1 < x0 or y1 < y0:
        raise GtError(
            f"{where}: box {[x0, y0, x1, y1]} has x_max < x_min or y_max < y_min; boxes are "
            "[x_min, y_min, x_max, y_max]"
        )
    return (x0, y0, x1, y1)


def opt_int(v, where: str | None = None) -> int | None:
    """An optional size field: its integer value, or None when empty or not a number.

    Raises:
        GtError: (with ``where``) a number that is not finite, negative or above
            :data:`MAX_COORD` (``1e400``, a 400-digit width).
    """
    if v is None or v == "":
        return None
    try:
        f = _number(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or not 0 <= f <= MAX_COORD:
        if where is None:
            return None
        raise GtError(f"{where}: image size {_brief(v)} is not a finite number 0..{MAX_COORD}")
    return int(f)
