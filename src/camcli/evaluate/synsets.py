"""ImageNet synset mappings: class index <-> WNID <-> ILSVRC2012_ID (SPEC.md section 4).

Class index = position of the WordNet id (WNID) in the SORTED list of the class set's WNIDs
(torchvision, Caffe and ImageFolder order). ILSVRC2012_ID = the devkit's own label, 1..1000.
The two meet through the WNID. Sources a user has:

- devkit ``data/meta.mat`` (fields ``ILSVRC2012_ID`` and ``WNID``; IDs 1..1000 are the leaf
  classes, higher IDs are inner WordNet nodes and are ignored; the 2014 ``meta_clsloc.mat``
  with ``ILSVRC2014_ID`` is read the same way),
- the 2014/15 devkit ``map_clsloc.txt`` (lines ``WNID ID name``, e.g. ``n02119789 1 kit_fox``),
- Kaggle ``LOC_synset_mapping.txt`` (lines ``WNID name...``): WNIDs and names only, enough for
  Kaggle files but NOT for ILSVRC ones.

Anchors (SPEC section 4): index 0 (n01440764 tench) = ID 449; ID 1 (n02119789) = index 278.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from camcli.errors import SynsetError

__all__ = ["WNID_RE", "SynsetError", "SynsetMap", "load_synsets"]

WNID_RE = re.compile(r"^n\d{8}$")
"""A WordNet id: ``n`` and 8 digits (``n01440764``)."""


@dataclass(frozen=True)
class SynsetMap:
    """class index <-> WNID <-> ILSVRC2012_ID.

    Attributes:
        wnids: the sorted WNIDs; position = class index.
        ilsvrc_ids: ILSVRC2012_ID of each class index, or ``None`` when the source has no IDs
            (Kaggle ``LOC_synset_mapping.txt``).
        names: a human-readable name per class index ("" when unknown).
        source: the file it came from.
        fmt: ``"meta.mat"``, ``"map_clsloc"`` or ``"loc_synset_mapping"``.

    Raises:
        SynsetError: ``wnids`` not sorted.
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
        """Whether the source gave ILSVRC2012_IDs (meta.mat, map_clsloc.txt)."""
        return self.ilsvrc_ids is not None

    def wnid(self, index: int) -> str:
        """WNID of a class index. Raises SynsetError outside ``0..N-1``."""
        if not 0 <= index < len(self.wnids):
            raise SynsetError(f"class index {index} is outside 0..{len(self.wnids) - 1}")
        return self.wnids[index]

    def index_of_wnid(self, wnid: str) -> int:
        """Class index of a WNID. Raises SynsetError for a WNID not in the map."""
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
        """ILSVRC2012_ID of a class index. Raises SynsetError without IDs (Kaggle mapping) or
        outside ``0..N-1``."""
        ids = self._need_ids()
        self.wnid(index)  # range check
        return ids[index]

    def index_of_ilsvrc_id(self, ilsvrc_id: int) -> int:
        """Class index of an ILSVRC2012_ID. Raises SynsetError without IDs or for an unknown
        ID."""
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

        Args:
            records: one per class.
            num_classes: the count required; None: any.
            source: the file, for messages.
            fmt: the file's format.

        Returns:
            The map, classes in sorted WNID order.

        Raises:
            SynsetError: a malformed or repeated WNID, the wrong count, IDs on some classes
                only, or IDs that are not exactly ``1..N``.
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
    for k, rec in enumerate(syn, 1):
        try:
            ident = int(np.asarray(rec[id_field]).ravel()[0])
            if not 1 <= ident <= limit:
                continue  # inner WordNet nodes (IDs above the leaf classes)
            wnid = str(np.asarray(rec["WNID"]).ravel()[0])
            words = str(np.asarray(rec["words"]).ravel()[0]) if "words" in names else ""
        except (IndexError, ValueError, TypeError, OverflowError):
            raise SynsetError(
                f"{where}: synset {k} has an empty or malformed {id_field} or WNID; pass the "
                "devkit's data/meta.mat"
            ) from None
        if not wnid.strip():
            raise SynsetError(f"{where}: synset {k} (ID {ident}) has an empty WNID")
        out.append((wnid, ident, words))
    return out


def _is_id(tok: str) -> bool:
    """An ILSVRC ID: 1 to 9 ASCII digits (``str.isdigit`` also takes ``²``)."""
    return tok.isascii() and tok.isdigit() and len(tok) <= 9


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
    fmt = "map_clsloc" if len(first) >= 2 and _is_id(first[1]) else "loc_synset_mapping"
    out: list[tuple[str, int | None, str]] = []
    for n, ln in lines:
        if fmt == "map_clsloc":
            parts = ln.split(maxsplit=2)
            if len(parts) < 2 or not _is_id(parts[1]):
                raise SynsetError(
                    f"{where} line {n}: expected 'WNID ID name' like 'n02119789 1 kit_fox' (ID "
                    f"1..999999999), got "
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
    exactly ``1..N``.

    Args:
        path: the mapping file.
        num_classes: the class count required (meta.mat: the leaf IDs kept); None: any
            (meta.mat: IDs up to 1000).

    Returns:
        A :class:`SynsetMap`.

    Raises:
        SynsetError: a one-line message naming the file (missing, unreadable, malformed).
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


def _timm_info_file(name: str) -> Path:
    """A file of timm's ImageNet metadata (``timm/data/_info``), found without importing timm
    (which would import torch)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise SynsetError("the built-in ImageNet-1k WNIDs come from timm: `pip install timm`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / name


@functools.cache
def imagenet1k_synsets() -> SynsetMap:
    """The ImageNet-1k class index -> WNID mapping (class index = sorted WNID position, as
    torchvision, timm and Caffe order it), from the list timm ships; names from camcli's
    ``imagenet1k`` category set. No ILSVRC2012_IDs: ILSVRC-format submissions still need the
    devkit's ``meta.mat`` or ``map_clsloc.txt``.

    Returns:
        A 1000-class :class:`SynsetMap` (``fmt="builtin"``).

    Raises:
        SynsetError: timm is not installed or its list is not the 1000 sorted WNIDs.
    """
    from importlib import resources

    path = _timm_info_file("imagenet_synsets.txt")
    try:
        wnids = [w.strip() for w in path.read_text(encoding="ascii").split() if w.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SynsetError(f"{path}: cannot read timm's ImageNet-1k WNIDs ({exc})") from None
    well_formed = all(WNID_RE.match(w) for w in wnids)
    if len(wnids) != 1000 or wnids != sorted(set(wnids)) or not well_formed:
        raise SynsetError(f"{path}: not the 1000 sorted ImageNet-1k WNIDs; reinstall timm")
    names_file = resources.files("camcli") / "categories" / "imagenet1k.txt"
    names = [n for n in names_file.read_text(encoding="utf-8").splitlines() if n]
    return SynsetMap(
        tuple(wnids), None, tuple(names), source="ImageNet-1k (timm's list)", fmt="builtin"
    )
