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

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcli.data import mapfiles_v2
from camcli.errors import NoInputError

__all__ = [
    "MapFile",
    "MapFileError",
    "MapHeader",
    "list_map_files",
    "load_class_map",
    "read_map_file",
    "read_map_header",
]

#: What np.load and the array reads raise for a file that is not a usable map file.
_READ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile)


def _reason(exc: BaseException) -> str:
    """One line on why a map file cannot be read. numpy's refusal of pickled data suggests
    loading it unsafely; camcli never does, so the reason says what the file is instead."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "allow_pickle" in text or "pickled" in text:
        return "it holds pickled objects, not arrays; camcli never loads pickles"
    return text


class MapFileError(ValueError):
    """A map file that cannot be used; the message is one line, e.g. ``cannot read map file
    (<reason>)``."""


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
    """The ``.npz`` files under ``root`` (recursive), sorted by relative path.

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
    if not files:
        raise NoInputError(
            f"{flag} {root}: no .npz files; save maps with `camcli cam ... --save-maps`"
        )
    return files


def _key(path: Path, root: str | os.PathLike | None) -> str:
    p = path.relative_to(root) if root is not None else Path(path.name)
    return p.with_suffix("").as_posix()


def _header_arrays(z, path: Path, root) -> MapHeader:
    image = str(z["image"]) if "image" in z.files else None
    classes = np.asarray(z["class_indices"], dtype=np.int64).reshape(-1)
    labels = [str(x) for x in z["labels"].reshape(-1)] if "labels" in z.files else None
    return MapHeader(Path(path), _key(Path(path), root), image or None, classes, labels)


def read_map_header(path: str | os.PathLike, root: str | os.PathLike | None = None) -> MapHeader:
    """The image name, class indices and labels of a map file, without loading its maps.

    Args:
        path: the ``.npz`` file.
        root: the folder it was listed from (for :attr:`MapHeader.key`); None: the file name.

    Raises:
        MapFileError: ``cannot read map file <path> (<reason>)`` for a file that is not a
            readable ``.npz`` with ``class_indices``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            return _header_arrays(z, Path(path), root)
    except _READ_ERRORS as exc:
        raise MapFileError(f"cannot read map file {path} ({_reason(exc)})") from None


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
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = np.asarray(z["class_indices"]).reshape(-1)
            hit = np.flatnonzero(classes == cls)
            if hit.size == 0:
                return None
            if mapfiles_v2.is_v2(z):
                v2 = mapfiles_v2.read_v2(z, classes.size)
                return v2.class_map(int(hit[0])).astype(np.float64)
            cams = z["cams"]
    except _READ_ERRORS as exc:
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None
    if cams.ndim == 2:
        cams = cams[None]
    why = _cams_shape_error(cams, classes.size)
    if why:
        raise MapFileError(why)
    return np.asarray(cams[int(hit[0])], dtype=np.float64)


def read_map_file(path: str | os.PathLike, root: str | os.PathLike | None = None) -> MapFile:
    """Every map of a map file with its header (what ``bbox --from-maps`` reads).

    Args:
        path: the ``.npz`` file.
        root: the folder it was listed from (for :attr:`MapHeader.key`); None: the file name.

    Returns:
        A :class:`MapFile`: ``cams`` float32 [k, H, W], ``scores`` float32 [k] or None, and the
        header (``class_indices`` int64 [k], ``labels`` or None, ``image`` or None).

    Raises:
        MapFileError: ``cannot read map file (<reason>)``, the reason naming a bad ``cams``
            shape as ``cams has shape [...], expected [k, H, W] with k = <n> class_indices``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            head = _header_arrays(z, Path(path), root)
            if mapfiles_v2.is_v2(z):
                v2 = mapfiles_v2.read_v2(z, head.class_indices.size)
                return MapFile(head, None, v2.scores, v2)
            cams = np.asarray(z["cams"], dtype=np.float32)
            scores = (
                np.asarray(z["scores"], dtype=np.float32).reshape(-1)
                if "scores" in z.files
                else None
            )
    except _READ_ERRORS as exc:
        raise MapFileError(f"cannot read map file ({_reason(exc)})") from None
    if cams.ndim == 2:
        cams = cams[None]
    why = _cams_shape_error(cams, head.class_indices.size)
    if why:
        raise MapFileError(f"cannot read map file ({why} class_indices)")
    return MapFile(head, cams, scores)
