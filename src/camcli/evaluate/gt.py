"""Ground truth for ``camcli eval``: readers, label mapping, matching predictions to images.

Ground-truth sources (:func:`read_ground_truth`, format detected from the path):

- a folder of ILSVRC / PASCAL VOC XML files (recursive; one file per image, its path without
  ``.xml`` names the image; every ``<object>`` gives a ``<name>`` label and a ``<bndbox>``);
- Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``, groups ``WNID x0 y0 x1 y1``);
- a CSV with a header naming an image column (``path``, ``image``, ``file``, ``filename`` or
  ``ImageId``), a label column (``label``, ``class_index``, ``class``, ``name`` or ``wnid``; the
  others, when present, are fallbacks) and ``xmin,ymin,xmax,ymax`` (empty: no box), one row per
  box, several rows per image; optional ``width``, ``height``;
- JSON Lines: ``{"image": path, "label": L or "labels": [L...], "boxes": [[x0, y0, x1, y1] or
  {"box": [...], "label": L}...], "width", "height", "mask": path or [paths], "ignore": path}``.

Boxes are taken as given: integer pixel indices, 0-based and inclusive like camcli's own (the
ILSVRC XML and Kaggle files are used as they are, as the devkit does; fractional values are
rounded). Labels are WNIDs (``n01440764``), class names or class indices, mapped to class
indices through a :class:`LabelMap` (the model's categories, ``--synsets`` or ``--categories``).

Matching: a prediction's image path matches the ground-truth image with the same file stem;
when several share the stem, the one sharing the longest run of trailing folder names.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from camcli.data.loader import IMAGE_EXTENSIONS
from camcli.errors import Exit, GtError
from camcli.evaluate.boxacc import BoxAccumulator, best_iou_per_tau, scoremap_boxes
from camcli.evaluate.metrics import GtTarget, ImagePrediction, score_predictions
from camcli.evaluate.pxap import PxAPAccumulator
from camcli.evaluate.taus import DEFAULT_TAUS
from camcli.sysinfo import available_cores

__all__ = [
    "GroundTruth",
    "GtImage",
    "LabelMap",
    "evaluate_maps",
    "evaluate_records",
    "evaluate_submission",
    "load_label_map",
    "read_blacklist",
    "read_box_records",
    "read_ground_truth",
]

Box = tuple[int, int, int, int]
Label = tuple[str, ...]  # a label and its fallbacks (other columns of the same row)
WNID_RE = re.compile(r"^n\d{8}$")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class NeedSynsets(KeyError):
    """A WNID label, and no WNID mapping to read it with."""


# --------------------------------------------------------------------------------------------
# Ground-truth data
# --------------------------------------------------------------------------------------------


@dataclass
class GtImage:
    """One ground-truth image.

    name: as the source names it (a path or a bare name, extension optional).
    labels: image-level labels in order (the first is the primary class).
    boxes: ``(label, box)`` per ground-truth box.
    """

    name: str
    labels: list[Label] = field(default_factory=list)
    boxes: list[tuple[Label, Box]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    masks: list[str] = field(default_factory=list)
    ignore: str | None = None

    def add_label(self, label: Label) -> None:
        if label not in self.labels:
            self.labels.append(label)


def _strip_ext(name: str) -> str:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.suffix.lower() in IMAGE_EXTENSIONS or p.suffix.lower() in (".npz", ".xml"):
        p = p.with_suffix("")
    return p.as_posix()


def _parts(name: str) -> tuple[str, ...]:
    return tuple(x for x in PurePosixPath(_strip_ext(name)).parts if x not in ("/", ".", ""))


class GroundTruth:
    """Ground-truth images in source order, with stem-based matching of prediction paths."""

    def __init__(
        self, images: Sequence[GtImage], source: str = "", skipped: Sequence[str] = ()
    ) -> None:
        self.images = list(images)
        self.source = source
        self.skipped = list(skipped)  # one-line reasons of unreadable GT files left out
        self._by_stem: dict[str, list[int]] = {}
        for i, im in enumerate(self.images):
            parts = _parts(im.name)
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
        parts = _parts(str(path))
        if not parts:
            return None
        cands = self._by_stem.get(parts[-1], [])
        if len(cands) <= 1:
            return cands[0] if cands else None
        best, best_n, tie = None, -1, False
        for i in cands:
            gp = _parts(self.images[i].name)
            n = 0
            while n < min(len(gp), len(parts)) and gp[-1 - n] == parts[-1 - n]:
                n += 1
            if n > best_n:
                best, best_n, tie = i, n, False
            elif n == best_n:
                tie = True
        return None if tie else best

    def targets(self, labels: LabelMap) -> tuple[list[GtTarget], list[str]]:
        """GT images as :class:`GtTarget` (class indices) and the labels no class matched.

        With an explicit label map an unknown label is an error; with a map inferred from the
        predictions, it becomes a class no prediction has (counted wrong) and is returned.
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


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


class LabelMap:
    """Labels (WNIDs, names, class indices, ILSVRC2012_IDs) -> class indices.

    names: class index -> name (``None`` entries unknown). wnids: class index -> WNID (sorted
    order) when known. ilsvrc_ids: class index -> ILSVRC2012_ID when known. explicit: the map
    came from the user (categories, synsets, model), so an unknown label is an error.
    """

    def __init__(
        self,
        names: Sequence[str | None] = (),
        *,
        wnids: Sequence[str] | None = None,
        ilsvrc_ids: Sequence[int] | None = None,
        explicit: bool = True,
        source: str = "",
    ) -> None:
        self.names = list(names)
        self.wnids = list(wnids) if wnids is not None else None
        self.ilsvrc_ids = list(ilsvrc_ids) if ilsvrc_ids is not None else None
        self.explicit = explicit
        self.source = source
        self._new: dict[str, int] = {}
        self._reindex()

    def _reindex(self) -> None:
        full: dict[str, int | None] = {}
        part: dict[str, int | None] = {}
        for i, n in enumerate(self.names):
            if not n:
                continue
            k = _norm(n)
            full[k] = i if full.get(k, i) == i else None
            for p in n.split(","):
                kp = _norm(p)
                if kp and kp != k:
                    part[kp] = i if part.get(kp, i) == i else None
        self._full, self._part = full, part
        self._wnid = {w: i for i, w in enumerate(self.wnids)} if self.wnids else {}
        self._id = {d: i for i, d in enumerate(self.ilsvrc_ids)} if self.ilsvrc_ids else {}

    @property
    def num_classes(self) -> int | None:
        n = max(len(self.names), len(self.wnids or ()))
        return n or None

    def add_names(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Learn ``class_index -> name`` pairs (from prediction records) where unknown."""
        changed = False
        for i, n in pairs:
            i = int(i)
            if i < 0:
                continue
            if i >= len(self.names):
                self.names.extend([None] * (i + 1 - len(self.names)))
            if self.names[i] is None and n:
                self.names[i] = str(n)
                changed = True
        if changed:
            self._reindex()

    def index(self, label: Label | str | int) -> int:
        """Class index of a label (its fallbacks tried in turn). Raises KeyError(reason)."""
        alts = (label,) if isinstance(label, str | int) else tuple(label)
        errors: list[KeyError] = []
        for alt in alts:
            try:
                return self._one(alt)
            except KeyError as exc:
                errors.append(exc)
        if errors and all(isinstance(e, NeedSynsets) for e in errors):
            raise errors[0]
        raise KeyError(errors[0].args[0] if errors else "empty label")

    def index_or_new(self, label: Label | str) -> int:
        """Like :meth:`index`, but an unknown label gets its own negative index."""
        try:
            return self.index(label)
        except KeyError:
            key = label if isinstance(label, str) else label[0]
            return self._new.setdefault(key, -1 - len(self._new))

    def _one(self, label: str | int) -> int:
        s = str(label).strip()
        if re.fullmatch(r"-?\d+", s):
            i = int(s)
            n = self.num_classes
            if i < 0 or (n is not None and self.explicit and i >= n):
                raise KeyError(f"class index {i} is outside 0..{(n or 1) - 1}")
            return i
        if WNID_RE.match(s):
            if not self.wnids:
                raise NeedSynsets(
                    f"label {s!r} is a WordNet id; pass --synsets (Kaggle "
                    "LOC_synset_mapping.txt, devkit map_clsloc.txt or meta.mat) to map WNIDs "
                    "to class indices"
                )
            if s not in self._wnid:
                raise KeyError(f"WNID {s!r} is not in {self.source or 'the synsets'}")
            return self._wnid[s]
        k = _norm(s)
        for table in (self._full, self._part):
            if k in table:
                if table[k] is None:
                    raise KeyError(f"label {s!r} names several classes; use WNIDs or class indices")
                return table[k]  # type: ignore[return-value]
        where = self.source or "the model's categories"
        raise KeyError(f"label {s!r} is not a class of {where}; check --synsets/--categories")

    def index_of_ilsvrc_id(self, ident: int) -> int:
        if not self.ilsvrc_ids:
            raise KeyError(
                "an ILSVRC submission labels classes by ILSVRC2012_ID: pass --synsets with the "
                "devkit's map_clsloc.txt or data/meta.mat (LOC_synset_mapping.txt has no IDs)"
            )
        if int(ident) not in self._id:
            raise KeyError(f"ILSVRC2012_ID {ident} is not in {self.source or 'the synsets'}")
        return self._id[int(ident)]


def load_label_map(
    *,
    synsets: str | None = None,
    categories: str | None = None,
    model: str | None = None,
) -> LabelMap | None:
    """The label map the user asked for, or None (then it is inferred from the predictions).

    synsets: devkit ``meta.mat``, ``map_clsloc.txt`` or Kaggle ``LOC_synset_mapping.txt`` (read
    by :mod:`camcli.evaluate.synsets`): WNIDs in sorted order = class indices, names, ILSVRC IDs.
    categories: a file with one class name per line (class index order) or a packaged set name
    (``imagenet1k``). model: a registry name, for its categories. Names from ``categories`` or
    ``model`` take precedence over the synsets' names.
    """
    names: list[str | None] = []
    wnids = ids = None
    src = []
    if synsets:
        from camcli.evaluate.synsets import SynsetError, load_synsets

        try:
            sm = load_synsets(synsets, num_classes=None)
        except SynsetError as exc:
            raise GtError(str(exc)) from None
        wnids = list(sm.wnids)
        ids = list(sm.ilsvrc_ids) if sm.ilsvrc_ids is not None else None
        names = [n or None for n in sm.names]
        src.append(f"synsets {synsets}")
    cat_names: list[str] | None = None
    if categories:
        p = Path(categories)
        if p.is_file():
            cat_names = [
                ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines() if ln.strip()
            ]
        else:
            from camcli.models.registry import RegistryError, load_categories

            try:
                cat_names = list(load_categories(categories))
            except RegistryError:
                raise GtError(
                    f"--categories {categories!r}: neither a file (one class name per line) "
                    "nor a packaged set like imagenet1k"
                ) from None
        src.append(f"categories {categories}")
    elif model:
        from camcli.models.registry import get_entry, load_categories

        cat_set = "imagenet1k" if model.startswith("torchvision:") else get_entry(model).categories
        cat_names = list(load_categories(cat_set))
        src.append(f"model {model}")
    if cat_names is not None:
        if wnids is not None and len(wnids) != len(cat_names):
            raise GtError(
                f"--synsets has {len(wnids)} classes but the categories have {len(cat_names)}; "
                "use the mapping of the model's class set"
            )
        names = list(cat_names)
    if not src:
        return None
    return LabelMap(names, wnids=wnids, ilsvrc_ids=ids, explicit=True, source=", ".join(src))


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _int_coord(v, where: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise GtError(f"{where}: box coordinate {v!r} is not a number") from None
    if not math.isfinite(f):
        raise GtError(f"{where}: box coordinate {v!r} is not finite")
    return int(math.floor(f + 0.5))


def _box(vals: Sequence, where: str) -> Box:
    if len(vals) != 4:
        raise GtError(f"{where}: a box needs 4 numbers x_min y_min x_max y_max, got {vals!r}")
    x0, y0, x1, y1 = (_int_coord(v, where) for v in vals)
    if x1 < x0 or y1 < y0:
        raise GtError(
            f"{where}: box {[x0, y0, x1, y1]} has x_max < x_min or y_max < y_min; boxes are "
            "[x_min, y_min, x_max, y_max]"
        )
    return (x0, y0, x1, y1)


def _opt_int(v) -> int | None:
    try:
        return int(float(v)) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_xml_folder(path: str | os.PathLike) -> GroundTruth:
    """A folder (recursive) or a single ILSVRC / PASCAL VOC XML file."""
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
        im.width = _opt_int(size.findtext("width"))
        im.height = _opt_int(size.findtext("height"))
    for k, obj in enumerate(ann.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise GtError(f"--gt {f}: object {k} has no <name>")
        lab = (name,)
        im.add_label(lab)
        bb = obj.find("bndbox")
        if bb is not None:
            vals = [bb.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
            im.boxes.append((lab, _box(vals, f"--gt {f} object {k}")))
    return im


def read_kaggle_solution(path: str | os.PathLike) -> GroundTruth:
    """Kaggle ``LOC_val_solution.csv``: ``ImageId,PredictionString`` with WNID groups."""
    images: dict[str, GtImage] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh)
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
                im.boxes.append((lab, _box(toks[g + 1 : g + 5], where)))
            images[name] = im
    return GroundTruth(list(images.values()), str(path))


_IMAGE_COLS = ("path", "image", "file", "filename", "imageid", "image_id")
_LABEL_COLS = ("label", "class_index", "class", "name", "wnid")


def read_box_csv(path: str | os.PathLike) -> GroundTruth:
    """CSV with a header: image column, label column(s), ``xmin,ymin,xmax,ymax``; one row per
    box (an empty box: a label without a box), several rows per image."""
    images: dict[str, GtImage] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
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
                im.width, im.height = _opt_int(cell(wcol)), _opt_int(cell(hcol))
            if has_box:
                vals = [cell(c) for c in box_cols]
                if any(vals):
                    im.boxes.append((lab, _box(vals, where)))
    return GroundTruth(list(images.values()), str(path))


def read_gt_jsonl(path: str | os.PathLike) -> GroundTruth:
    """JSON Lines ground truth (see the module docstring)."""
    images: dict[str, GtImage] = {}
    base = Path(path).parent
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"--gt {path} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GtError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
                raise GtError(f'{where}: expected an object with an "image" path')
            name = rec["image"]
            if name in images:
                raise GtError(f"{where}: image {name!r} appears twice")
            im = GtImage(name=name, width=_opt_int(rec.get("width")))
            im.height = _opt_int(rec.get("height"))
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
                im.boxes.append(((str(lab),), _box(list(b or []), f"{where} box {k}")))
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


GT_FORMATS = ("auto", "xml", "kaggle", "csv", "jsonl")


def read_ground_truth(path: str | os.PathLike, fmt: str = "auto") -> GroundTruth:
    """Read ground truth, detecting the format (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise GtError(f"--gt {path}: no such file or folder", Exit.NO_INPUT)
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
    reader = {
        "xml": read_xml_folder,
        "kaggle": read_kaggle_solution,
        "csv": read_box_csv,
        "jsonl": read_gt_jsonl,
    }[fmt]
    try:
        gt = reader(p)
    except UnicodeDecodeError:
        raise GtError(f"--gt {path}: not UTF-8 text") from None
    if len(gt) == 0:
        raise GtError(f"--gt {path}: no images in the ground truth", Exit.NO_INPUT)
    return gt


def read_blacklist(path: str | os.PathLike, gt: GroundTruth) -> list[bool]:
    """Flags per GT image from a blacklist file: one entry per line, either an image name (or
    path; matched like predictions) or an integer N, the ILSVRC devkit's form (1-based image
    number: the image whose name ends in N, e.g. ``ILSVRC2012_val_00000036`` for 36, or the N-th
    image in name order when the names carry no number). Raises GtError for an entry that names
    no GT image."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").split()
    except OSError as exc:
        raise GtError(f"--blacklist {path}: cannot read ({exc.strerror})") from None
    numbers: dict[int, int] = {}
    for i, im in enumerate(gt.images):
        m = _TRAILING_NUMBER.search(_parts(im.name)[-1])
        if m:
            numbers.setdefault(int(m.group(1)), i)
    by_name = sorted(range(len(gt)), key=lambda i: _parts(gt.images[i].name)[-1])
    flags = [False] * len(gt)
    unknown = []
    for tok in lines:
        if tok.isdigit():
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


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def read_box_records(path: str, bad: list[str] | None = None) -> Iterator[dict]:
    """JSON Lines records from a file or ``-`` (stdin). A bad line is a usage error, or, with
    ``bad`` given, appended to it as a one-line reason and skipped."""
    enc = {"encoding": "utf-8-sig", "errors": "surrogateescape"}
    fh = sys.stdin if path == "-" else open(path, **enc)  # noqa: SIM115
    try:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                why = f"--boxes {path} line {n}: not JSON ({exc.msg})"
            else:
                if isinstance(rec, dict) and isinstance(rec.get("image"), str):
                    yield rec
                    continue
                why = f'--boxes {path} line {n}: a record needs an "image" path'
            if bad is None:
                raise GtError(why)
            bad.append(why)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _rec_box(b) -> Box | None:
    if b is None:
        return None
    return tuple(int(v) for v in b)  # type: ignore[return-value]


def record_prediction(rec: dict) -> ImagePrediction:
    """A ``predict`` / ``bbox`` JSON record -> :class:`ImagePrediction`.

    classes: ``predictions[*].class_index`` in order; guesses: ``boxes[*]`` (class_index, box)
    in order (None without a ``boxes`` key); gt_known: ``gt_known`` (class_index, box).
    """
    classes = [int(p["class_index"]) for p in rec.get("predictions") or []]
    guesses = None
    if "boxes" in rec:
        guesses = [(int(b["class_index"]), _rec_box(b.get("box"))) for b in rec["boxes"] or []]
    gk = rec.get("gt_known")
    gt_known = (int(gk["class_index"]), _rec_box(gk.get("box"))) if isinstance(gk, dict) else None
    return ImagePrediction(classes, guesses, gt_known)


# --------------------------------------------------------------------------------------------
# Evaluation: records, submissions, maps
# --------------------------------------------------------------------------------------------


@dataclass
class _Matched:
    """Predictions assigned to GT images (by index), and what could not be assigned."""

    preds: dict[int, ImagePrediction] = field(default_factory=dict)
    failed: dict[int, dict] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    @property
    def attempted(self) -> set[int]:
        return set(self.preds) | set(self.failed)


def _match(gt: GroundTruth, named: Iterable[tuple[str, ImagePrediction | str]]) -> _Matched:
    """Assign predictions to GT images; a ``str`` instead of a prediction is an error reason."""
    m = _Matched()
    for name, pred in named:
        i = gt.match(name)
        if i is None:
            m.unmatched.append(name)
        elif i in m.preds or i in m.failed:
            m.duplicates.append(name)
        elif isinstance(pred, str):
            m.failed[i] = {"image": name, "error": pred}
        else:
            m.preds[i] = pred
    return m


RESULT_ORDER = (
    "source",
    "n_images",
    "n_gt_images",
    "n_missing",
    "top1_cls_error",
    "top5_cls_error",
    "top1_loc_error",
    "top5_loc_error",
    "gt_known_loc",
    "maxboxacc_v1",
    "maxboxacc_v2",
    "best_tau",
    "pxap",
    "maxboxacc_v2_by_iou",
    "best_tau_v2",
    "iou",
    "wsol_boxes",
    "n_loc_images",
    "n_blacklisted",
    "n_no_gt_box",
    "n_missing_gt_known",
    "n_missing_gt_class",
    "n_mask_images",
    "n_renormalised",
    "n_failed",
    "n_unmatched",
    "n_duplicates",
)


def order_result(out: dict) -> dict:
    """Headline figures first, then counts, then the long lists and curves."""
    head = {k: out[k] for k in RESULT_ORDER if k in out}
    return head | {k: v for k, v in out.items() if k not in head}


def _finish(out: dict, gt: GroundTruth, m: _Matched, unknown_labels: list[str]) -> dict:
    """The lists every result carries: what was missing, unmatched, failed, duplicated."""
    tried = m.attempted
    out["missing"] = [gt.images[i].name for i in range(len(gt)) if i not in tried]
    out["n_missing"] = len(out["missing"])
    out["n_unmatched"] = len(m.unmatched)
    out["unmatched"] = m.unmatched
    out["n_failed"] = len(m.failed)
    out["failed"] = [m.failed[i] for i in sorted(m.failed)]
    out["n_duplicates"] = len(m.duplicates)
    if unknown_labels:
        out["unknown_labels"] = unknown_labels
    return order_result(out)


def _label_map_for(labels: LabelMap | None, records: Iterable[dict] = ()) -> LabelMap:
    lm = labels if labels is not None else LabelMap(explicit=False, source="the predictions")
    pairs = []
    for r in records:
        for p in r.get("predictions") or []:
            pairs.append((p.get("class_index", -1), p.get("label")))
        for b in r.get("boxes") or []:
            pairs.append((b.get("class_index", -1), b.get("label")))
    lm.add_names(pairs)
    return lm


def _blacklist_flags(gt: GroundTruth, blacklist: str | Sequence[bool] | None) -> list[bool]:
    if blacklist is None:
        return [False] * len(gt)
    if isinstance(blacklist, str | os.PathLike):
        return read_blacklist(blacklist, gt)
    return [bool(b) for b in blacklist]


def _score(
    gt: GroundTruth,
    m: _Matched,
    labels: LabelMap,
    *,
    iou: float,
    blacklist,
    subset: bool,
) -> dict:
    targets, unknown = gt.targets(labels)
    flags = _blacklist_flags(gt, blacklist)
    tried = m.attempted
    keep = [i for i in range(len(gt)) if not subset or i in tried]
    out = score_predictions(((targets[i], m.preds.get(i), flags[i]) for i in keep), iou=iou)
    out["n_gt_images"] = len(gt)
    out["iou"] = iou
    return _finish(out, gt, m, unknown)


def evaluate_records(
    records: Iterable[dict],
    gt: GroundTruth,
    labels: LabelMap | None = None,
    *,
    iou: float = 0.5,
    blacklist: str | Sequence[bool] | None = None,
    subset: bool = False,
) -> dict:
    """Score ``predict`` / ``bbox`` records against ground truth (what ``bbox --gt`` reports).

    Returns the metrics of :func:`camcli.evaluate.metrics.score_predictions` plus ``missing``
    (GT image
    names without any record), ``failed`` (error records of GT images), ``unmatched`` (record
    images matching no GT image), ``n_duplicates``, ``n_gt_images`` and ``iou``. A missing or
    failed image counts as wrong; with ``subset`` the missing ones are left out of the
    denominators (still counted in ``n_missing`` and listed).
    """
    records = list(records)
    lm = _label_map_for(labels, records)
    named = [
        (r["image"], str(r["error"]) if "error" in r else record_prediction(r)) for r in records
    ]
    m = _match(gt, named)
    return _score(gt, m, lm, iou=iou, blacklist=blacklist, subset=subset)


def read_submission(
    path: str, gt: GroundTruth, labels: LabelMap, fmt: str = "auto"
) -> dict[str, ImagePrediction]:
    """An ILSVRC CLS-LOC or Kaggle submission -> ``{image name: ImagePrediction}``.

    ILSVRC lines belong to the GT images in file-name order (the devkit's convention) and carry
    ILSVRC2012_IDs; Kaggle rows carry WNIDs. The classification of a submission is its guesses'
    labels, in order (duplicates kept, as the devkit counts them).
    """
    from camcli.evaluate.submission import (
        SubmissionError,
        read_ilsvrc_submission,
        read_kaggle_submission,
    )

    if fmt == "auto":
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline().strip()
        fmt = "kaggle" if first.replace(" ", "").startswith("ImageId,") else "ilsvrc"
    try:
        if fmt == "kaggle":
            raw = read_kaggle_submission(path)
            to_index = labels.index
        elif fmt == "ilsvrc":
            raw = read_ilsvrc_submission(path, [Path(im.name).name for im in gt.images])
            to_index = labels.index_of_ilsvrc_id
        else:
            raise GtError(f"--submission-format {fmt!r}: use auto, ilsvrc or kaggle")
    except (SubmissionError, OSError) as exc:
        raise GtError(f"--submission {path}: {exc}") from None
    out: dict[str, ImagePrediction] = {}
    for name, groups in raw.items():
        try:
            guesses = [(to_index(lab), tuple(int(v) for v in box)) for lab, box in groups]
        except KeyError as exc:
            raise GtError(f"--submission {path}: image {name!r}: {exc.args[0]}") from None
        out[name] = ImagePrediction([c for c, _ in guesses], guesses, None)  # type: ignore[arg-type]
    return out


def evaluate_submission(
    path: str,
    gt: GroundTruth,
    labels: LabelMap | None,
    *,
    fmt: str = "auto",
    iou: float = 0.5,
    blacklist: str | Sequence[bool] | None = None,
    subset: bool = False,
) -> dict:
    """Score an ILSVRC / Kaggle submission file; keys as :func:`evaluate_records`."""
    if labels is None:
        raise GtError(
            "--submission needs --synsets (devkit map_clsloc.txt or meta.mat for ILSVRC files, "
            "any of them or LOC_synset_mapping.txt for Kaggle files) to map labels to classes"
        )
    preds = read_submission(path, gt, labels, fmt)
    m = _match(gt, preds.items())
    return _score(gt, m, labels, iou=iou, blacklist=blacklist, subset=subset)


# ---- maps ------------------------------------------------------------------------------------


def iter_map_files(root: str | os.PathLike) -> list[Path]:
    base = Path(root)
    if not base.is_dir():
        raise GtError(f"--maps {root}: not a folder of .npz map files", Exit.NO_INPUT)
    files = sorted(base.rglob("*.npz"), key=lambda p: p.relative_to(base).as_posix())
    if not files:
        raise GtError(
            f"--maps {root}: no .npz files; save maps with `camcli cam ... --save-maps`",
            Exit.NO_INPUT,
        )
    return files


def _map_header(path: Path, base: Path) -> tuple[str, list[tuple[int, str]]] | str:
    """(image name, [(class_index, label)]) of a map file, or an error string."""
    try:
        with np.load(path, allow_pickle=False) as z:
            image = str(z["image"]) if "image" in z.files else None
            classes = np.asarray(z["class_indices"]).reshape(-1).tolist()
            labels = [str(x) for x in z["labels"].reshape(-1)] if "labels" in z.files else []
    except (OSError, KeyError, ValueError, EOFError) as exc:
        return f"cannot read map file {path} ({exc})"
    name = image if image else path.relative_to(base).with_suffix("").as_posix()
    return name, list(zip(classes, labels))


def _load_map(path: Path, cls: int) -> np.ndarray | str | None:
    """The map of class ``cls`` [H, W] float64 from a map file, None when the file has no map of
    that class, or an error string."""
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = np.asarray(z["class_indices"]).reshape(-1)
            hit = np.flatnonzero(classes == cls)
            if hit.size == 0:
                return None
            cams = z["cams"]
    except (OSError, KeyError, ValueError, EOFError) as exc:
        return f"cannot read map file ({exc})"
    if cams.ndim == 2:
        cams = cams[None]
    if cams.ndim != 3 or cams.shape[0] != classes.size or min(cams.shape[1:]) < 1:
        return f"cams has shape {list(cams.shape)}, expected [k, H, W] with k = {classes.size}"
    return np.asarray(cams[int(hit[0])], dtype=np.float64)


def _read_mask(paths: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    out = np.zeros(shape, dtype=bool)
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"))
        if a.shape != shape:
            import cv2

            a = cv2.resize(a, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        out |= a > 0
    return out


def _mask_paths(im: GtImage, masks_dir: str | None) -> tuple[list[str], str | None]:
    if im.masks:
        return im.masks, im.ignore
    if not masks_dir:
        return [], None
    base = Path(masks_dir)
    key = _strip_ext(im.name)
    for cand in (key, _parts(im.name)[-1]):
        p = base / f"{cand}.png"
        if p.is_file():
            ig = base / f"{cand}_ignore.png"
            return [str(p)], str(ig) if ig.is_file() else None
    return [], None


@dataclass(frozen=True)
class _MapJob:
    """What a worker needs to score one image on its map (picklable)."""

    path: str
    cls: int
    boxes: tuple[Box, ...]
    size: tuple[int, int] | None  # GT (width, height) when known
    masks: tuple[str, ...]
    ignore: str | None
    taus: tuple[float, ...]
    wsol_boxes: bool


def _score_map_job(job: _MapJob) -> tuple:
    """("ok", v1 [T], v2 [T], (pos, neg) histograms or None, renormalised) or ("nocls",) or
    ("failed", reason)."""
    cam = _load_map(Path(job.path), job.cls)
    if cam is None:
        return ("nocls",)
    if isinstance(cam, str):
        return ("failed", cam)
    if not np.isfinite(cam).all():
        return ("failed", "the map holds NaN or infinite values")
    renorm = bool(cam.min() < 0 or cam.max() > 1)
    if renorm:
        lo, hi = cam.min(), cam.max()
        cam = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    taus = np.asarray(job.taus)
    v1 = v2 = None
    if job.boxes:
        boxes = list(job.boxes)
        h, w = cam.shape
        if job.size is not None and job.size != (w, h):
            sx, sy = w / job.size[0], h / job.size[1]  # wsolevaluation's resize_bbox
            boxes = [(int(a * sx), int(b * sy), int(c * sx), int(d * sy)) for a, b, c, d in boxes]
        sb = scoremap_boxes(cam, taus, wsol_boxes=job.wsol_boxes)
        v1, v2 = best_iou_per_tau(sb, boxes)
    hist = None
    if job.masks:
        try:
            fg = _read_mask(job.masks, cam.shape)
            ig = _read_mask([job.ignore], cam.shape) & ~fg if job.ignore else None
        except OSError as exc:
            return ("failed", f"cannot read mask ({exc})")
        acc = PxAPAccumulator(taus)
        acc.add(cam, fg, ig)
        hist = (acc.pos, acc.neg)
    return ("ok", v1, v2, hist, renorm)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _pool_usable() -> bool:
    """forkserver/spawn children re-import ``__main__`` from its file: not possible for code read
    from stdin (``python - <<EOF``)."""
    f = getattr(sys.modules.get("__main__"), "__file__", None)
    return f is None or os.path.exists(f)


POOL_MIN_SECONDS = 2.0


def _run_jobs(jobs: list[_MapJob], workers: int, progress) -> Iterator[tuple]:
    """Results of the jobs in order. The first jobs run here; the rest go to ``workers``
    processes when that pays (slow maps, many of them), else run here too."""
    import time

    probe = min(len(jobs), 32)
    t0 = time.perf_counter()
    for j in jobs[:probe]:
        yield _score_map_job(j)
        if progress is not None:
            progress()
    rest = jobs[probe:]
    per_job = (time.perf_counter() - t0) / max(probe, 1)
    # A process pool costs about a second to start; worth it above ~2 s of remaining work.
    if workers > 1 and per_job * len(rest) >= POOL_MIN_SECONDS and _pool_usable():
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as ex:
            for r in ex.map(_score_map_job, rest, chunksize=16):
                yield r
                if progress is not None:
                    progress()
        return
    for j in rest:
        yield _score_map_job(j)
        if progress is not None:
            progress()


def default_map_workers() -> int:
    return max(1, min(8, available_cores()))


def evaluate_maps(
    maps_dir: str,
    gt: GroundTruth,
    labels: LabelMap | None,
    *,
    taus: Sequence[float] | np.ndarray = DEFAULT_TAUS,
    masks_dir: str | None = None,
    blacklist: str | Sequence[bool] | None = None,
    subset: bool = False,
    wsol_boxes: bool = True,
    workers: int = 0,
    progress: Callable[[], None] | None = None,
) -> dict:
    """BoxAcc curves, MaxBoxAccV1/V2, best tau and (with masks) PxAP from saved maps.

    Each GT image (not blacklisted) is scored on the map of its primary GT class, found by the
    stored ``image`` path (else the npz's relative path) and the ``class_indices`` entry equal to
    that class. A GT image without a map file (``missing``), whose file has no map of the GT
    class (``missing_gt_class``) or whose map is unusable (``failed``) counts as wrong at every
    tau. Maps outside [0, 1] are min-max normalised first (``n_renormalised``). When the GT gives
    the image size and the map has another, GT boxes are scaled to the map (wsolevaluation's
    ``resize_bbox``). PxAP uses the images with masks (JSON Lines ``mask`` / ``ignore``, or
    ``--masks DIR`` holding ``<name>.png`` and optional ``<name>_ignore.png``; nonzero pixels are
    foreground / ignored). ``workers`` > 1: processes share the maps when the split is slow
    enough to pay for them (the caller's ``__main__`` must be import-safe, as multiprocessing
    requires; the CLI's is); ``progress`` is called once per scored image.
    """
    base = Path(maps_dir)
    headers = [(f, _map_header(f, base)) for f in iter_map_files(maps_dir)]
    lm = labels if labels is not None else LabelMap(explicit=False, source="the maps")
    if labels is None:
        lm.add_names(p for _, h in headers if not isinstance(h, str) for p in h[1])
    targets, unknown = gt.targets(lm)
    flags = _blacklist_flags(gt, blacklist)
    m = _Matched()
    file_of: dict[int, Path] = {}
    for f, h in headers:
        if isinstance(h, str):  # unreadable: matched by its own name, it fails that image
            i = gt.match(f.relative_to(base).as_posix())
            if i is None or i in m.failed:
                m.unmatched.append(str(f))
            else:
                m.failed[i] = {"image": str(f), "error": h}
            continue
        i = gt.match(h[0])
        if i is None:
            m.unmatched.append(h[0])
        elif i in file_of:
            m.duplicates.append(h[0])
        else:
            file_of[i] = f
    tau_t = tuple(float(t) for t in np.asarray(taus, dtype=np.float64).reshape(-1))
    acc = BoxAccumulator(tau_t, wsol_boxes=wsol_boxes)
    pxap = PxAPAccumulator(tau_t)
    keep = [i for i in range(len(gt)) if not subset or i in file_of]
    n_black = n_no_box = 0
    jobs: list[_MapJob] = []
    job_of: list[int] = []
    for i in keep:
        im = gt.images[i]
        if flags[i]:
            n_black += 1
            continue
        cls = targets[i].classes[0]
        gboxes = tuple(targets[i].boxes_of(cls))
        mpaths, ignore = _mask_paths(im, masks_dir)
        if not gboxes and not mpaths:
            n_no_box += 1
            continue
        if i not in file_of:
            if gboxes:
                acc.add_failed()
            continue
        size = (im.width, im.height) if im.width and im.height else None
        jobs.append(
            _MapJob(str(file_of[i]), cls, gboxes, size, tuple(mpaths), ignore, tau_t, wsol_boxes)
        )
        job_of.append(i)
    missing_cls: list[str] = []
    renorm = n_masked = 0
    for i, job, r in zip(job_of, jobs, _run_jobs(jobs, workers, progress)):
        if r[0] == "ok":
            _, v1, v2, hist, re_ = r
            renorm += re_
            if v1 is not None:
                acc.add_ious(v1, v2)
            if hist is not None:
                pxap.pos += hist[0]
                pxap.neg += hist[1]
                pxap.n += 1
                n_masked += 1
            continue
        if r[0] == "nocls":
            missing_cls.append(gt.images[i].name)
        else:
            m.failed[i] = {"image": job.path, "error": r[1]}
        if job.boxes:
            acc.add_failed()
    for i in file_of:
        if i not in m.failed:
            m.preds[i] = ImagePrediction()  # a map was there (scored or blacklisted)
    out: dict = {
        "n_images": len(keep),
        "n_gt_images": len(gt),
        "n_loc_images": acc.n,
        "n_blacklisted": n_black,
        "n_no_gt_box": n_no_box,
        "n_missing_gt_class": len(missing_cls),
        "missing_gt_class": missing_cls,
        "n_renormalised": renorm,
        "wsol_boxes": wsol_boxes,
    }
    out.update(acc.result())
    if n_masked:
        out["n_mask_images"] = n_masked
        try:
            out["pxap"] = pxap.result()
        except ValueError as exc:
            out["pxap_error"] = str(exc)
    return _finish(out, gt, m, unknown)
