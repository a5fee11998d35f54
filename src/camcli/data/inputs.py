"""Input discovery: the files a run reads and the output key of each.

Inputs are files, directories (recursive, image extensions, sorted) or ``-`` for newline
separated paths on stdin. Every input becomes one :class:`InputItem` whose ``key`` names its
outputs. torch-free.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class InputItem:
    """One input: ``path`` as given/found, ``key`` its output name (relative path, no extension,
    unique within the run, POSIX separators, never absolute and never containing ``..``)."""

    index: int
    path: str
    key: str


#: Images with more pixels are refused before decoding (Pillow's decompression-bomb error
#: limit); ``--max-pixels`` changes it. Here, not in codec, so that the CLI's defaults import
#: no numpy.
DEFAULT_MAX_PIXELS = 178_956_970


def _safe_part(part: str) -> str:
    # Undecodable bytes (surrogate escapes) and separators become '_'; '..' can never survive.
    out = "".join(c if (c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF) else "_" for c in part)
    out = out.replace("/", "_").replace("\\", "_")
    return "_" if out in ("", ".", "..") else out


# Names an output folder keeps for itself (camcli.runs.outdir): no input's key may take them.
_RESERVED = re.compile(r"^\.?(manifest|run)(\.shard-\d+-of-\d+)?\.jsonl?(\.tmp)?$", re.IGNORECASE)


# Suffixes of the files an output folder holds (overlays, grids, drawings, maps, records, lock
# and partial files): a key part ending in one gains '_', so that no input's key can name
# another input's output file (``b.jpg`` -> ``b.npz`` vs ``b.npz.png`` -> ``b.npz_/``).
_OUTPUT_SUFFIXES = (".npz", ".jpg", ".jpeg", ".png", ".json", ".jsonl", ".lock", ".partial", ".tmp")
#: Bytes of one key part at most: room for ``.npz``, a de-duplicating suffix and '_' within
#: NAME_MAX (255). A longer part is cut and ends in ``~`` and 16 hex digits of its sha256.
KEY_PART_MAX = 200


def _bounded_part(part: str) -> str:
    if part.lower().endswith(_OUTPUT_SUFFIXES):
        part += "_"
    raw = os.fsencode(part)
    if len(raw) <= KEY_PART_MAX:
        return part
    import hashlib

    from camcli.atomic import cut_bytes

    return cut_bytes(part, KEY_PART_MAX - 17) + "~" + hashlib.sha256(raw).hexdigest()[:16]


def _key_for(rel: PurePosixPath) -> str:
    parts = [_safe_part(p) for p in rel.parts]
    last = parts[-1]
    stem = last[: -len(rel.suffix)] if rel.suffix and last.endswith(rel.suffix) else last
    parts[-1] = _safe_part(stem)
    if _RESERVED.match(parts[0]):  # an image named manifest.jsonl.jpg or run.json.png
        parts[0] += "_"
    return "/".join(_bounded_part(p) for p in parts)


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def walk_images(root: Path, *, follow_links: bool = False) -> list[Path]:
    """The image files under ``root`` (recursive, sorted by relative path).

    A folder link is followed (once: loops are cut) only when it leads to a folder inside
    ``root``; ``follow_links`` follows links that leave it too (``--follow-links``). File links
    are read wherever they point, as files named on the command line are."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    root_real = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            continue
        if ident in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(ident)
        if not follow_links:
            dirnames[:] = [
                d
                for d in dirnames
                if not os.path.islink(os.path.join(dirpath, d))
                or _inside(os.path.join(dirpath, d), root_real)
            ]
        dirnames.sort()
        for f in filenames:
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def discover(
    inputs: Iterable[str], stdin: Iterable[str] | None = None, *, follow_links: bool = False
) -> list[InputItem]:
    """Expand inputs into items in a deterministic order.

    Directories are walked recursively (image extensions only, sorted by relative path; their key
    is the path relative to the directory). A file argument's key is its name without extension.
    Keys that would collide (``a.jpg`` and ``a.png``, or two roots with the same relative path)
    keep their extension, then gain a numeric suffix, so no two inputs share an output name.
    A path that does not exist still becomes an item: its record will carry the error.
    Key parts never end in an output file's suffix (``.npz``, ``.jpg``, ... gain ``_``) and
    are at most :data:`KEY_PART_MAX` bytes, so keys cannot collide with output files and stay
    within file-name limits. ``follow_links``: see :func:`walk_images`.
    """
    pairs: list[tuple[str, PurePosixPath]] = []
    for raw in inputs:
        if raw == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                line = line.rstrip("\n").rstrip("\r")
                if line.strip():
                    pairs.append((line, PurePosixPath(Path(line).name or "_")))
            continue
        p = Path(raw)
        if p.is_dir():
            for f in walk_images(p, follow_links=follow_links):
                pairs.append((str(f), PurePosixPath(f.relative_to(p).as_posix())))
        else:
            pairs.append((raw, PurePosixPath(p.name or "_")))
    keys = [_key_for(rel) for _, rel in pairs]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    used: set[str] = set()
    items: list[InputItem] = []
    for i, ((path, rel), key) in enumerate(zip(pairs, keys)):
        if counts[key] > 1 and rel.suffix:
            key = f"{key}_{_safe_part(rel.suffix[1:])}"
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        items.append(InputItem(i, path, key))
    return items
