"""``camcli report``: the thumbnails of the page.

JPEG thumbnails under ``OUT/thumbs/`` of each image and each overlay, named by a hash of the
source's path, size and mtime so later reports of the same files reuse them; made by a thread
pool with Pillow's reduce-on-decode (:meth:`PIL.Image.Image.draft`).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from camcli.atomic import LinkError, write_atomic

if TYPE_CHECKING:  # torch-free at run time: camcli.api.progress imports the predict job
    from camcli.api.progress import Progress
    from camcli.api.report_data import Row

__all__ = ["THUMBS", "THUMB_SIZE", "make_thumbnail", "make_thumbnails", "thumb_name"]

THUMBS = "thumbs"
#: longest side of a thumbnail, pixels
THUMB_SIZE = 160


def thumb_name(src: str | os.PathLike, size: int) -> str | None:
    """``thumbs/xx/<hash>.jpg`` for ``src`` (path, byte size and mtime in the hash, so a changed
    file gets a new thumbnail), or None when ``src`` cannot be found."""
    try:
        st = os.stat(src)
    except OSError:
        return None
    key = f"{os.path.abspath(src)}\0{st.st_size}\0{st.st_mtime_ns}\0{size}"
    h = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return f"{THUMBS}/{h[:2]}/{h}.jpg"


def make_thumbnail(src: str | os.PathLike, dst: str | os.PathLike, size: int = THUMB_SIZE) -> None:
    """Write a JPEG thumbnail of ``src`` (longest side ``size`` px) to ``dst``, atomically.

    JPEGs are decoded at a reduced scale (DCT scaling, :meth:`PIL.Image.Image.draft`), then
    shrunk with a box filter.

    Raises:
        OSError: ``src`` cannot be read or decoded (Pillow's ``UnidentifiedImageError`` is one),
            or ``dst`` cannot be written.
    """
    from PIL import Image

    with Image.open(src) as im:
        im.draft("RGB", (size, size))
        rgb = im.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=80)
    write_atomic(dst, buf.getvalue())


def make_thumbnails(
    rows: Sequence[Row],
    outp: Path,
    thumb_size: int,
    workers: int | None,
    progress: Progress | None,
) -> tuple[dict[str, str | None], set[str], dict[str, str], int]:
    """The thumbnails of ``rows`` (each image and overlay) under ``outp``, made once per source.

    A thumbnail already in ``outp`` (a regular file reached through real folders) is reused.

    Returns:
        ``(thumb_of, failed, made, reused)``: the thumbnail name (relative to ``outp``) of each
        source, or None when it cannot be found; the sources without a thumbnail (missing or
        undecodable); ``{source: name}`` of those this call tried to make; how many were reused.

    Raises:
        LinkError: a folder or file below ``outp`` is a symbolic link where a folder is needed.
    """
    # thumbnails: (source file, target name) once per distinct source
    jobs: dict[str, str] = {}
    thumb_of: dict[str, str | None] = {}
    for r in rows:
        srcs = [r.source] if r.source and r.error is None else []
        srcs += [o[2] for o in r.overlays]
        for s in srcs:
            if s not in thumb_of:
                t = thumb_name(s, thumb_size)
                thumb_of[s] = t
                if t is not None:
                    jobs[s] = t
    todo = {s: t for s, t in jobs.items() if not _regular_below(outp, t)}
    reused = len(jobs) - len(todo)
    failed_thumbs = {s for s, t in thumb_of.items() if t is None}
    if progress:
        progress.start(len(todo), reused, len(jobs))
    try:
        n = workers or min(16, os.cpu_count() or 2)

        def one(item):
            s, t = item
            try:
                make_thumbnail(s, outp / t, thumb_size)
                return None
            except LinkError:
                raise  # a link in the report folder: refused, not a missing thumbnail
            except (OSError, ValueError) as exc:
                return s, exc

        with ThreadPoolExecutor(max_workers=n) as pool:
            for res in pool.map(one, todo.items()):
                if res is not None:
                    failed_thumbs.add(res[0])
                if progress:
                    progress.record({"image": res[0]} if res else {"image": ""})
    finally:
        if progress:
            progress.stop()
    return thumb_of, failed_thumbs, todo, reused


def _regular_below(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reached through real folders (no link on the
    way): a thumbnail to reuse. A planted link is not reused; the thumbnail is made again and
    replaces it."""
    import stat

    where = root
    try:
        for part in rel.split("/"):
            where = where / part
            mode = os.lstat(where).st_mode
            if where != root / rel and not stat.S_ISDIR(mode):
                return False
        return stat.S_ISREG(mode)
    except OSError:
        return False
