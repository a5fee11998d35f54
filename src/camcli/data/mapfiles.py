"""camcli's map files: the one reader of the ``.npz`` files ``camcli cam --save-maps`` writes.

One file per image, found recursively under a folder and taken in sorted relative-path order.
Its arrays (``np.load(..., allow_pickle=False)``: a pickled object is refused, never run):

- ``cams``: float [k, H, W] (or [H, W] for k = 1), the maps of the image's classes, in the
  pixels of the ORIGINAL image;
- ``class_indices``: int [k], the class of each map, most confident first;
- optional ``image`` (str, the image's path; without it the file's relative path without
  ``.npz`` names the image), ``labels`` (str [k]) and ``scores`` (float [k]).

A v2 file (``version`` 2: maps at feature resolution and the geometry that maps them onto
the image, written by default since camcli 0.x) is read through
:mod:`camcli.data.mapfiles_v2`; this module dispatches on ``version``.

Files of other tools with only ``cams`` and ``class_indices`` read too. Every problem with one
file is a :class:`MapFileError` with a one-line reason, so that callers can fail that image and
go on; a folder without map files is a :class:`~camcli.errors.NoInputError` (exit 3).
Used by ``camcli eval --maps`` (header first, then one class's map per image) and by
``camcli bbox --from-maps`` (every map of a file at once). numpy only, torch-free.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcli.data import mapfiles_v2
from camcli.data.inputs import DEFAULT_MAX_PIXELS
from camcli.errors import NoInputError

__all__ = [
    "MapFile",
    "MapFileError",
    "MapHeader",
    "check_map_file",
    "list_map_files",
    "load_class_map",
    "read_map_file",
    "read_map_header",
]

#: Bounds checked from each array's .npy header, before any data is decompressed.
MAX_MAP_PIXELS = DEFAULT_MAX_PIXELS  # H * W of one map
MAX_MAPS = 10_000  # k, maps in one file
MAX_TOTAL_VALUES = 4 * DEFAULT_MAX_PIXELS  # k * H * W
MAX_CLASSES = 1_000_000  # entries of class_indices / labels / scores
#: The arrays a map file may hold, with the dtype kinds each accepts.
_KINDS = {"cams": "fiub", "class_indices": "iuf", "scores": "fiub", "labels": "U", "image": "U"}


def _reason(exc: BaseException) -> str:
    """One line on why a map file cannot be read. numpy's refusal of pickled data suggests
    loading it unsafely; camcli never does, so the reason says what the file is instead."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "allow_pickle" in text or "pickled" in text:
        return "it holds pickled objects, not arrays; camcli never loads pickles"
    return text[:300]


def _npy_header(z: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a member's .npy header, reading only the header."""
    import numpy.lib.format as npf

    with z.open(member) as fh:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npf.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npf.read_array_header_2_0(fh)
        else:
            raise ValueError(f"{member}: unsupported .npy format version {version}")
    return tuple(int(n) for n in shape), np.dtype(dtype)


def check_map_file(path: str | os.PathLike) -> None:
    """Refuse, without reading any array data, a map file that is not a regular file, not a
    zip, or whose arrays' .npy headers declare a wrong dtype (structured, object, complex, a
    non-integer class index), a wrong shape, or more than :data:`MAX_MAP_PIXELS` pixels per map
    / :data:`MAX_TOTAL_VALUES` values in all.

    Raises:
        MapFileError: ``cannot read map file (<reason>)``.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file (a FIFO, device or folder); not read")
        if st.st_size == 0:
            raise ValueError("empty file (0 bytes)")
        if not zipfile.is_zipfile(path):
            raise ValueError("not a .npz (zip) file")
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
            for required in ("cams", "class_indices"):
                if required not in names:
                    raise ValueError(f"no {required!r} array")
            heads = {k: _npy_header(z, names[k]) for k in _KINDS if k in names}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError, TypeError) as exc:
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None
    for key, (shape, dtype) in heads.items():
        if dtype.hasobject:
            raise MapFileError(f"cannot read map file ({_reason(ValueError('pickled'))})")
        if dtype.kind not in _KINDS[key] or dtype.fields is not None:
            raise MapFileError(f"cannot read map file ({key} has dtype {dtype.str})")
        if key != "cams" and math.prod(shape) > MAX_CLASSES:
            raise MapFileError(f"cannot read map file ({key} has {math.prod(shape)} values)")
    shape = heads["cams"][0]
    if len(shape) not in (2, 3):
        raise MapFileError(
            f"cannot read map file (cams has shape {list(shape)}, expected [k, H, W])"
        )
    k = shape[0] if len(shape) == 3 else 1
    if (
        shape[-1] * shape[-2] > MAX_MAP_PIXELS
        or k > MAX_MAPS
        or k * shape[-1] * shape[-2] > (MAX_TOTAL_VALUES)
    ):
        raise MapFileError(
            f"cannot read map file (cams of shape {list(shape)} exceed the limit of "
            f"{MAX_MAP_PIXELS} pixels per map, {MAX_MAPS} maps, {MAX_TOTAL_VALUES} values)"
        )


def _class_indices(raw: np.ndarray) -> np.ndarray:
    """int64 [k] class indices; float ones must be finite non-negative integers."""
    arr = np.asarray(raw).reshape(-1)
    if arr.dtype.kind == "f":
        ok = np.isfinite(arr) & (arr == np.round(arr)) & (np.abs(arr) < 2**53)
        if not ok.all():
            raise ValueError(f"class_indices holds non-integer values ({float(arr[~ok][0])})")
    out = arr.astype(np.int64)
    if out.size and out.min() < 0:
        raise ValueError(f"class_indices holds a negative index ({int(out.min())})")
    return out


class MapFileError(ValueError):
    """A map file that cannot be used; the message is one line, e.g. ``cannot read map file
    (<reason>)``. It does not name the file: every caller reports it beside the file's path (a
    failed record's ``image``, an ``eval --maps`` failure), which would name it twice."""


@dataclass(frozen=True)
class MapHeader:
    """What a map file says about its image, without its maps.

    Attributes:
        path: the file.
        key: its path relative to the folder, without ``.npz``, ``/``-separated.
        image: the stored image path, or None when the file has none (or an empty one).
        class_indices: int64 [k], the class of each map.
        labels: the class names [k] when stored, else None.
    """

    path: Path
    key: str
    image: str | None
    class_indices: np.ndarray
    labels: list[str] | None

    @property
    def name(self) -> str:
        """The name the image is matched by: the stored image path, else :attr:`key`."""
        return self.image or self.key


@dataclass(frozen=True)
class MapFile:
    """A whole map file.

    Attributes:
        header: its :class:`MapHeader` (image, class indices, labels).
        cams: float32 [k, H, W] (a stored [H, W] map becomes [1, H, W]), k = len(class_indices),
            H, W >= 1; None for a v2 file (its maps are in ``v2``).
        scores: float32 [k] when stored, else None.
        v2: a v2 file's maps and geometry (:class:`camcli.data.mapfiles_v2.MapFileV2`),
            else None.
    """

    header: MapHeader
    cams: np.ndarray | None
    scores: np.ndarray | None = None
    v2: mapfiles_v2.MapFileV2 | None = None


def list_map_files(root: str | os.PathLike, *, flag: str = "--maps") -> list[Path]:
    """The ``.npz`` files under ``root`` (recursive), sorted by relative path. In a ``cam``
    folder (one with a manifest, :func:`_manifest_maps`) a warning line names how many of them
    its manifest does not list (an earlier run into the same folder without ``--resume``
    leaves its maps there; they are read too: each file is an input, a bad one fails alone),
    and another how many it lists are missing.

    Args:
        root: the folder ``cam --save-maps`` wrote.
        flag: the option that named the folder, for the message (``--maps``, ``--from-maps``).

    Returns:
        The files, in sorted ``/``-separated relative-path order.

    Raises:
        NoInputError: ``root`` is not a folder, or holds no ``.npz`` file (exit 3).
    """
    base = Path(root)
    if not base.is_dir():
        raise NoInputError(f"{flag} {root}: not a folder of .npz map files")
    files = sorted(base.rglob("*.npz"), key=lambda p: p.relative_to(base).as_posix())
    listed = _manifest_maps(base)
    if listed is not None:  # a cam folder: are there maps of an earlier run, or missing ones?
        from camcli.console import warn

        found = {f.relative_to(base).as_posix(): f for f in files}
        others = [rel for rel in found if rel not in listed]
        if others:
            warn(
                f"{flag} {root}: {len(others)} .npz file(s) not in its manifest (an earlier "
                f"run's?), e.g. {others[0]}, read too; give each cam run its own --out to "
                "read one run"
            )
        missing = sorted(rel for rel in listed if rel not in found)
        if missing:
            warn(
                f"{flag} {root}: {len(missing)} map file(s) its manifest lists are missing, "
                f"e.g. {missing[0]}; rerun cam with --resume to make them again"
            )
    if not files:
        raise NoInputError(
            f"{flag} {root}: no .npz files; save maps with `camcli cam ... --save-maps`"
        )
    return files


def _manifest_maps(base: Path) -> set[str] | None:
    """The maps (``outputs.maps``, relative paths) the manifests of ``cam`` folder ``base``
    list: ``manifest.jsonl`` and the shards' ``manifest.shard-I-of-N.jsonl`` (not merged
    yet). None when there is none (not a ``cam`` folder), none holds a record (damaged) or
    one cannot be read; only regular files are read (not a link, FIFO or folder)."""
    from camcli.atomic import is_regular
    from camcli.data.records import iter_jsonl

    manifests = [base / "manifest.jsonl", *sorted(base.glob("manifest.shard-*-of-*.jsonl"))]
    listed: set[str] = set()
    records = 0
    try:
        for m in filter(is_regular, manifests):
            for line in iter_jsonl(m):
                if line.value is None:
                    continue
                records += 1
                outputs = line.value.get("outputs")
                if isinstance(outputs, dict) and isinstance(outputs.get("maps"), str):
                    listed.add(outputs["maps"])
    except OSError:
        return None
    return listed if records else None  # no record at all: not a manifest to go by


def _key(path: Path, root: str | os.PathLike | None) -> str:
    p = path.relative_to(root) if root is not None else Path(path.name)
    return p.with_suffix("").as_posix()


def _header_arrays(z, path: Path, root) -> MapHeader:
    image = str(z["image"]) if "image" in z.files else None
    classes = _class_indices(z["class_indices"])
    labels = [str(x) for x in z["labels"].reshape(-1)] if "labels" in z.files else None
    return MapHeader(Path(path), _key(Path(path), root), image or None, classes, labels)


def read_map_header(path: str | os.PathLike, root: str | os.PathLike | None = None) -> MapHeader:
    """The image name, class indices and labels of a map file, without loading its maps.

    Args:
        path: the ``.npz`` file.
        root: the folder it was listed from (for :attr:`MapHeader.key`); None: the file name.

    Raises:
        MapFileError: ``cannot read map file (<reason>)`` for a file that is not a
            readable ``.npz`` with ``class_indices``.
    """
    check_map_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return _header_arrays(z, Path(path), root)
    except Exception as exc:  # noqa: BLE001 - whatever the file does, it fails alone
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None


def _cams_shape_error(cams: np.ndarray, k: int) -> str | None:
    """None when ``cams`` is [k, H, W] with H, W >= 1, else the reason."""
    if cams.ndim != 3 or cams.shape[0] != k or min(cams.shape[1:]) < 1:
        return f"cams has shape {list(cams.shape)}, expected [k, H, W] with k = {k}"
    return None


def load_class_map(path: str | os.PathLike, cls: int) -> np.ndarray | None:
    """The map of class ``cls`` from a map file, or None when the file holds no map of it.

    Args:
        path: the ``.npz`` file.
        cls: a class index; the first ``class_indices`` entry equal to it selects the map.

    Returns:
        float64 [H, W] (values as stored, not normalised), or None.

    Raises:
        MapFileError: ``cannot read map file (<reason>)``, or ``cams has shape [...], expected
            [k, H, W] with k = <n>``.
    """
    check_map_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = _class_indices(z["class_indices"])
            v2 = mapfiles_v2.read_v2(z, classes.size) if mapfiles_v2.is_v2(z) else None
            cams = v2.raw if v2 is not None else z["cams"]
    except Exception as exc:  # noqa: BLE001 - whatever the file does, it fails alone
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None
    if cams.ndim == 2:
        cams = cams[None]
    # the same checks as read_map_file, whether or not the file holds this class
    why = _cams_shape_error(cams, classes.size) or _empty(classes)
    if why:
        raise MapFileError(f"cannot read map file ({why})")
    hit = np.flatnonzero(classes == cls)
    if hit.size == 0:
        return None
    if v2 is not None:  # the map on the image, as cam computed it
        out = v2.class_map(int(hit[0])).astype(np.float64)
    else:
        out = np.asarray(cams[int(hit[0])], dtype=np.float64)
    if not np.isfinite(out).all():
        raise MapFileError(f"cannot read map file (the map of class {cls} is not finite)")
    return out


def _empty(classes: np.ndarray) -> str | None:
    return "it holds no maps (class_indices is empty)" if classes.size == 0 else None


def read_map_file(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
) -> MapFile:
    """Every map of a map file with its header (what ``bbox --from-maps`` reads).

    Args:
        path: the ``.npz`` file.
        root: the folder it was listed from (for :attr:`MapHeader.key`); None: the file name.
        num_classes: the run's class count when known (``run.json``): a class index at or
            above it is an error.

    Returns:
        A :class:`MapFile`: ``cams`` float32 [k, H, W], ``scores`` float32 [k] or None, and the
        header (``class_indices`` int64 [k], ``labels`` or None, ``image`` or None).

    Raises:
        MapFileError: ``cannot read map file (<reason>)``, the reason naming a bad ``cams``
            shape as ``cams has shape [...], expected [k, H, W] with k = <n> class_indices``.
    """
    check_map_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            head = _header_arrays(z, Path(path), root)
            v2 = None
            if mapfiles_v2.is_v2(z):  # the checks below run on its feature-resolution maps
                v2 = mapfiles_v2.read_v2(z, head.class_indices.size)
            cams = v2.raw if v2 is not None else np.asarray(z["cams"], dtype=np.float32)
            scores = (
                np.asarray(z["scores"], dtype=np.float32).reshape(-1)
                if "scores" in z.files
                else None
            )
    except Exception as exc:  # noqa: BLE001 - whatever the file does, it fails alone
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None
    if cams.ndim == 2:
        cams = cams[None]
    k = head.class_indices.size
    why = _cams_shape_error(cams, k)
    why = f"{why} class_indices" if why else _empty(head.class_indices)
    if not why and num_classes is not None and int(head.class_indices.max()) >= num_classes:
        why = (
            f"class index {int(head.class_indices.max())} is outside 0..{num_classes - 1} "
            "of the run's classes"
        )
    for name, arr in (("labels", head.labels), ("scores", scores)):
        if not why and arr is not None and len(arr) != k:
            why = f"{name} has {len(arr)} values, {k} maps"
    if not why and scores is not None and not np.isfinite(scores).all():
        why = "scores hold non-finite values"
    if not why and not np.isfinite(cams).all():
        why = "cams hold non-finite values"
    if why:
        raise MapFileError(f"cannot read map file ({why})")
    if v2 is not None:
        return MapFile(head, None, scores, v2)
    return MapFile(head, cams, scores)
