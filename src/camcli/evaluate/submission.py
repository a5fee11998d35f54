"""ImageNet synset mappings and ILSVRC / Kaggle localization submission files (SPEC section 4).

Class index = position of the WordNet id (WNID) in the SORTED list of the class set's WNIDs
(torchvision, Caffe and ImageFolder order). ILSVRC2012_ID = the devkit's own label, 1..1000.
The two meet through the WNID:

- devkit ``data/meta.mat`` (fields ``ILSVRC2012_ID`` and ``WNID``; IDs 1..1000 are the leaf
  classes, higher IDs are inner WordNet nodes and are ignored; the 2014 ``meta_clsloc.mat``
  with ``ILSVRC2014_ID`` is read the same way),
- the 2014/15 devkit ``map_clsloc.txt`` (lines ``WNID ID name``, e.g. ``n02119789 1 kit_fox``),
- Kaggle ``LOC_synset_mapping.txt`` (lines ``WNID name...``): WNIDs and names only, enough for
  Kaggle files but NOT for ILSVRC ones.

Boxes everywhere are ``(x_min, y_min, x_max, y_max)`` integer, 0-based, inclusive pixels of
the original image, written as they are.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from camcli.atomic import write_atomic
from camcli.errors import SubmissionError, SynsetError

__all__ = [
    "SubmissionError",
    "SynsetError",
    "SynsetMap",
    "load_synsets",
    "read_ilsvrc_submission",
    "read_kaggle_submission",
    "write_ilsvrc_submission",
    "write_kaggle_submission",
]

WNID_RE = re.compile(r"^n\d{8}$")
MAX_GUESSES = 5
KAGGLE_HEADER = "ImageId,PredictionString"

Box = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------
# Synset mapping
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynsetMap:
    """class index <-> WNID <-> ILSVRC2012_ID.

    wnids: the sorted WNIDs; position = class index.
    ilsvrc_ids: ILSVRC2012_ID of each class index, or ``None`` when the source has no IDs
    (Kaggle ``LOC_synset_mapping.txt``).
    names: a human-readable name per class index ("" when unknown).
    source: the file it came from; fmt: ``"meta.mat"``, ``"map_clsloc"`` or
    ``"loc_synset_mapping"``.
    """

    wnids: tuple[str, ...]
    ilsvrc_ids: tuple[int, ...] | None
    names: tuple[str, ...]
    source: str = ""
    fmt: str = ""
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _by_id: dict[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if list(self.wnids) != sorted(self.wnids):
            raise SynsetError("SynsetMap.wnids must be sorted (class index = sorted position)")
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.wnids)})
        by_id = {} if self.ilsvrc_ids is None else {d: i for i, d in enumerate(self.ilsvrc_ids)}
        object.__setattr__(self, "_by_id", by_id)

    def __len__(self) -> int:
        return len(self.wnids)

    @property
    def has_ilsvrc_ids(self) -> bool:
        return self.ilsvrc_ids is not None

    def wnid(self, index: int) -> str:
        """WNID of a class index."""
        if not 0 <= index < len(self.wnids):
            raise SynsetError(f"class index {index} is outside 0..{len(self.wnids) - 1}")
        return self.wnids[index]

    def index_of_wnid(self, wnid: str) -> int:
        """Class index of a WNID."""
        try:
            return self._index[wnid]
        except KeyError:
            raise SynsetError(f"WNID {wnid!r} is not in {self._where()}") from None

    def _need_ids(self) -> tuple[int, ...]:
        if self.ilsvrc_ids is None:
            raise SynsetError(
                f"{self._where()} has WNIDs but no ILSVRC2012_IDs (Kaggle LOC_synset_mapping.txt "
                "cannot give ILSVRC labels); pass the devkit's data/meta.mat or map_clsloc.txt"
            )
        return self.ilsvrc_ids

    def ilsvrc_id(self, index: int) -> int:
        """ILSVRC2012_ID of a class index (needs meta.mat or map_clsloc.txt)."""
        ids = self._need_ids()
        self.wnid(index)  # range check
        return ids[index]

    def index_of_ilsvrc_id(self, ilsvrc_id: int) -> int:
        """Class index of an ILSVRC2012_ID."""
        self._need_ids()
        try:
            return self._by_id[int(ilsvrc_id)]
        except KeyError:
            raise SynsetError(f"ILSVRC2012_ID {ilsvrc_id} is not in {self._where()}") from None

    def _where(self) -> str:
        return f"synsets file {self.source!r}" if self.source else "the synset mapping"

    @classmethod
    def from_records(
        cls,
        records: Iterable[tuple[str, int | None, str]],
        *,
        num_classes: int | None = 1000,
        source: str = "",
        fmt: str = "",
    ) -> SynsetMap:
        """Build and validate from ``(wnid, ilsvrc_id or None, name)`` records (any order).

        Checks: every WNID well formed and unique; the count equals ``num_classes`` (unless
        ``None``); IDs either all absent or exactly ``1..N`` without duplicates.
        """
        where = f"synsets file {source!r}" if source else "synset mapping"
        fix = "use the unmodified devkit meta.mat, map_clsloc.txt or Kaggle LOC_synset_mapping.txt"
        recs = list(records)
        seen: dict[str, int] = {}
        for k, (w, _, _) in enumerate(recs):
            if not WNID_RE.match(w):
                raise SynsetError(f"{where}: {w!r} is not a WNID like n01440764; {fix}")
            if w in seen:
                raise SynsetError(f"{where}: WNID {w} appears twice; {fix}")
            seen[w] = k
        if num_classes is not None and len(recs) != num_classes:
            raise SynsetError(
                f"{where}: expected {num_classes} classes, found {len(recs)}; {fix} "
                "(or set the number of classes)"
            )
        ids = [d for _, d, _ in recs]
        has_ids = any(d is not None for d in ids)
        if has_ids:
            if any(d is None for d in ids):
                raise SynsetError(f"{where}: some classes have an ILSVRC ID and some not; {fix}")
            dup = sorted(d for d, n in Counter(ids).items() if n > 1)
            if dup:
                raise SynsetError(f"{where}: ILSVRC ID {dup[0]} appears twice; {fix}")
            if sorted(ids) != list(range(1, len(ids) + 1)):
                raise SynsetError(f"{where}: ILSVRC IDs are not exactly 1..{len(ids)}; {fix}")
        recs.sort(key=lambda r: r[0])
        return cls(
            wnids=tuple(r[0] for r in recs),
            ilsvrc_ids=tuple(int(r[1]) for r in recs) if has_ids else None,
            names=tuple(r[2] for r in recs),
            source=source,
            fmt=fmt,
        )


def _read_meta_mat(path: Path, num_classes: int | None) -> list[tuple[str, int | None, str]]:
    import numpy as np
    import scipy.io  # lazy: only this reader needs scipy

    where = f"synsets file {str(path)!r}"
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
    except NotImplementedError:  # v7.3 (HDF5) files
        raise SynsetError(
            f"{where} is a MATLAB v7.3 file scipy cannot read; re-save it with "
            "save(..., '-v7') or pass map_clsloc.txt"
        ) from None
    except Exception as e:  # noqa: BLE001 - any parse failure becomes one line
        raise SynsetError(
            f"{where} is not a readable .mat file ({e}); pass data/meta.mat"
        ) from None
    if "synsets" not in mat:
        raise SynsetError(f"{where} has no 'synsets' variable; pass the devkit's data/meta.mat")
    syn = np.atleast_1d(mat["synsets"])
    names = syn.dtype.names or ()
    id_field = next((f for f in ("ILSVRC2012_ID", "ILSVRC2014_ID") if f in names), None)
    if id_field is None or "WNID" not in names:
        raise SynsetError(
            f"{where}: synsets lack ILSVRC2012_ID/WNID fields; pass the devkit's data/meta.mat"
        )
    limit = num_classes if num_classes is not None else 1000
    out = []
    for rec in syn:
        ident = int(np.asarray(rec[id_field]).ravel()[0])
        if not 1 <= ident <= limit:
            continue  # inner WordNet nodes (IDs above the leaf classes)
        wnid = str(np.asarray(rec["WNID"]).ravel()[0])
        words = str(np.asarray(rec["words"]).ravel()[0]) if "words" in names else ""
        out.append((wnid, ident, words))
    return out


def _read_text_mapping(path: Path) -> tuple[str, list[tuple[str, int | None, str]]]:
    where = f"synsets file {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SynsetError(
            f"{where} is not UTF-8 text; pass meta.mat, map_clsloc.txt or LOC_synset_mapping.txt"
        ) from None
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise SynsetError(
            f"{where} is empty; pass meta.mat, map_clsloc.txt or LOC_synset_mapping.txt"
        )
    first = lines[0][1].split()
    fmt = "map_clsloc" if len(first) >= 2 and first[1].isdigit() else "loc_synset_mapping"
    out: list[tuple[str, int | None, str]] = []
    for n, ln in lines:
        if fmt == "map_clsloc":
            parts = ln.split(maxsplit=2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise SynsetError(
                    f"{where} line {n}: expected 'WNID ID name' like 'n02119789 1 kit_fox', got "
                    f"{ln[:60]!r}; fix the line or pass the devkit's map_clsloc.txt"
                )
            out.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
        else:
            parts = ln.split(maxsplit=1)
            out.append((parts[0], None, parts[1] if len(parts) > 1 else ""))
    return fmt, out


def load_synsets(path: str | os.PathLike, num_classes: int | None = 1000) -> SynsetMap:
    """Read a synset mapping file, detecting its format.

    ``.mat`` extension or a MATLAB header -> devkit ``meta.mat``; otherwise text: if the second
    field of the first line is an integer -> ``map_clsloc.txt`` (``WNID ID name``), else
    ``LOC_synset_mapping.txt`` (``WNID name...``, no IDs). Blank lines and ``#`` comments are
    skipped. Validation: exactly ``num_classes`` classes (``None``: any), unique WNIDs, IDs
    exactly ``1..N``. Raises :class:`SynsetError` with a one-line message naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise SynsetError(
            f"synsets file {str(p)!r} does not exist; pass the devkit's data/meta.mat, "
            "map_clsloc.txt or Kaggle LOC_synset_mapping.txt"
        )
    with p.open("rb") as fh:
        head = fh.read(128)
    if p.suffix.lower() == ".mat" or head.startswith((b"MATLAB", b"\x89HDF")):
        fmt, records = "meta.mat", _read_meta_mat(p, num_classes)
    else:
        fmt, records = _read_text_mapping(p)
    return SynsetMap.from_records(records, num_classes=num_classes, source=str(p), fmt=fmt)


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
    """Write an ILSVRC CLS-LOC prediction file; returns the number of lines (images).

    items: ``(image_path, [(class_index, box), ...])`` with at most 5 guesses, most confident
    first; class_index is the network's (sorted-WNID) index, written as its ILSVRC2012_ID
    through ``synsets`` (which therefore needs IDs). One line per image, ordered by FILE NAME
    (plain string order; ILSVRC names sort by number), groups ``ID xmin ymin xmax ymax``
    separated by spaces. An image with fewer groups gets a shorter line; one with none gets an
    EMPTY line: the devkit's ``eval_clsloc.m`` reads the file with ``dlmread``, which pads short
    rows with zeros (label 0 matches nothing, so a missing guess simply counts as an error) and
    asserts one row per ground-truth image. (A trailing empty last line may be dropped by some
    readers; :func:`read_ilsvrc_submission` accepts it.) The file is written atomically.
    """
    lines = []
    for _name, groups in _sorted_items(items):
        parts = []
        for c, (x0, y0, x1, y1) in groups:
            parts.append(f"{synsets.ilsvrc_id(c)} {x0} {y0} {x1} {y1}")
        lines.append(" ".join(parts))
    write_atomic(path, "".join(ln + "\n" for ln in lines).encode("utf-8"))
    return len(lines)


def write_kaggle_submission(
    path: str | os.PathLike, items: Iterable[Item], synsets: SynsetMap
) -> int:
    """Write a Kaggle "ImageNet Object Localization Challenge" CSV; returns the number of rows.

    Header ``ImageId,PredictionString``; ImageId = file name without its extension;
    PredictionString = space-separated groups ``WNID xmin ymin xmax ymax`` (at most 5, most
    confident first; empty for an image with no guess). Rows sorted by ImageId. Written
    atomically. ``synsets`` maps class indices to WNIDs (any of the three formats works).
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
    write_atomic(path, "".join(r + "\n" for r in rows).encode("utf-8"))
    return len(rows) - 1


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _parse_groups(tokens: list[str], where: str, label_is_int: bool) -> list[tuple]:
    if len(tokens) % 5:
        raise SubmissionError(
            f"{where}: {len(tokens)} fields, not groups of 5 (label xmin ymin xmax ymax)"
        )
    out = []
    for g in range(0, len(tokens), 5):
        label_tok, coords = tokens[g], tokens[g + 1 : g + 5]
        try:
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

    image_names: the images the file covers (paths or names); lines belong to them in the
    sorted order of their FILE NAMES, as :func:`write_ilsvrc_submission` writes them. Returns
    ``{file name: [(ILSVRC2012_ID, (xmin, ymin, xmax, ymax)), ...]}`` in file order. The number
    of lines must equal the number of images (a missing empty last line is tolerated).
    """
    names = sorted({Path(n).name for n in image_names})
    text = Path(path).read_text(encoding="utf-8")
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
    """Read a Kaggle localization CSV: ``{ImageId: [(WNID, (xmin, ymin, xmax, ymax)), ...]}``."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
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
