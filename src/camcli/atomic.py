"""The one atomic writer: a file appears whole under its name, or not at all, and never
through a link.

Every file camcli writes (overlays, maps, records, manifests, submissions, checkpoints, downloaded
weights) is written to a temporary name beside its target, ``.<name>.camcli-tmp<pid>-<thread>``,
and renamed into place with :func:`os.replace` once complete; a failure or an interrupt removes
the temporary file. An output folder's start-up removes stray temporary files of a killed run by
matching :data:`TMP_RE`. torch-free.

Writes stay inside their folder: each folder between the *confining root* and the file is
created or opened one component at a time with ``O_NOFOLLOW`` (a symbolic link there is refused
with :class:`LinkError`, naming it), and the temporary file is created with
``O_CREAT | O_EXCL | O_NOFOLLOW``, so a planted link or file is never written through. The
confining root is the innermost folder registered with :func:`confine` (an output folder, see
:class:`camcli.runs.outdir.OutDir`) that holds the file, else the file's own folder. An error
names the target, never the temporary name.

A file the user names as an output (``--output``, ``--submission``; ``stream_ok``) that is a
character device, a FIFO or a symbolic link (``-o /dev/null``, ``-o /dev/stdout``, a named pipe,
a link to a file) is a stream, not a file: it is opened and written directly, as a shell
redirect would, never replaced (:func:`stream_target`). Files camcli names itself are never
written through a link or into a FIFO planted in their place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".camcli-tmp"
#: ``.<name>.camcli-tmp<pid>-<thread id>``: a file being written; ``name`` is the target's name
#: (cut to :data:`TMP_NAME_MAX` UTF-8 bytes).
TMP_RE = re.compile(r"^\.(?P<name>.*)" + re.escape(TMP_MARK) + r"(?P<pid>\d+)-\d+$", re.DOTALL)
TMP_NAME_MAX = 120  # bytes of the target's name kept in a temporary name (NAME_MAX 255)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRFLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class LinkError(OSError):
    """A symbolic link (or a non-folder) where camcli would create a folder or file: refused,
    nothing is written through it. ``errno`` ELOOP; ``filename`` the link."""


def cut_bytes(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` bytes of its file-system encoding (UTF-8, surrogate
    escapes one byte each), never inside a character."""
    out, n = [], 0
    for c in name:
        k = len(os.fsencode(c))
        if n + k > limit:
            break
        out.append(c)
        n += k
    return "".join(out)


def is_regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file itself (not a link, FIFO, device or folder); False
    when it does not exist. camcli's own records are always regular files: anything else
    there is never read (a FIFO would block)."""
    import stat

    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False


def tmp_path_for(path: Path) -> Path:
    """The temporary name ``path`` is written under (same folder, so the rename is atomic)."""
    return path.with_name(
        f".{cut_bytes(path.name, TMP_NAME_MAX)}{TMP_MARK}{os.getpid()}-{threading.get_ident()}"
    )


def remove_stray(
    folder: str | os.PathLike, *, legacy: re.Pattern | None = None, only: set[str] | None = None
) -> list[str]:
    """Remove the temporary files a killed run left directly in ``folder`` (names matching
    :data:`TMP_RE` whose process is gone, or ``legacy``); links and folders are left alone.
    ``only``: remove only temporary files of these target names. Returns the names removed. A
    missing folder is fine."""
    import stat

    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = TMP_RE.match(name)
        if not (m or (legacy is not None and legacy.match(name))):
            continue
        if only is not None and not (m and m["name"] in only):
            continue
        if m and _other_live_process(int(m["pid"])):
            continue  # being written by a run that is still going
        p = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(p).st_mode):
                os.unlink(p)
                removed.append(name)
    return removed


def _other_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # there, but not ours to signal
    return True


_ROOTS: dict[str, int] = {}
_ROOTS_LOCK = threading.Lock()


def confine(root: str | os.PathLike) -> None:
    """Register ``root`` (an output folder): files written below it are created through folders
    opened without following links from ``root`` down. Undo with :func:`release`."""
    key = os.path.abspath(root)
    with _ROOTS_LOCK:
        _ROOTS[key] = _ROOTS.get(key, 0) + 1


def release(root: str | os.PathLike) -> None:
    """Undo one :func:`confine` of ``root``."""
    key = os.path.abspath(root)
    with _ROOTS_LOCK:
        n = _ROOTS.get(key, 0) - 1
        if n > 0:
            _ROOTS[key] = n
        else:
            _ROOTS.pop(key, None)


def _root_of(path: Path) -> tuple[Path, tuple[str, ...]]:
    """(confining root, the folder parts below it leading to ``path``'s folder)."""
    parent = os.path.abspath(path.parent)
    with _ROOTS_LOCK:
        roots = sorted(_ROOTS, key=len, reverse=True)
    for r in roots:
        if parent == r or parent.startswith(r.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(parent, r)
            parts = () if rel == "." else tuple(Path(rel).parts)
            if ".." not in parts:
                return Path(r), parts
    return Path(parent), ()


def _open_folder(path: Path) -> int:
    """A descriptor of ``path``'s folder, created as needed: the confining root (made with
    ``mkdir -p``), then each folder below it made and opened with ``O_NOFOLLOW``.

    Raises:
        LinkError: a folder on the way is a symbolic link or not a folder.
        OSError: a folder cannot be created or opened.
    """
    root, parts = _root_of(path)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, _DIRFLAGS)
    where = root
    try:
        for part in parts:
            where = where / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
            try:
                nfd = os.open(part, _DIRFLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _link_error(where) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _link_error(where: Path) -> LinkError:
    if os.path.islink(where):
        why = "is a symbolic link; camcli does not write through links"
    else:
        why = "is in the way (not a folder)"
    return LinkError(
        errno.ELOOP, f"{where} {why}: remove it or choose another output folder", str(where)
    )


def open_nofollow(
    path: str | os.PathLike, mode: str = "a", *, encoding: str | None = "utf-8", fresh: bool = False
) -> IO[Any]:
    """Open ``path`` for appending (``"a"``/``"ab"``) or writing (``"w"``/``"wb"``) without
    following a link on the way (see the module doc) or at ``path`` itself.

    ``fresh``: remove what is at ``path`` first (a file or a planted link, never its target)
    and create it exclusively. Errors name ``path``.

    Raises:
        LinkError: ``path`` or a folder on the way is a symbolic link.
        OSError: it cannot be opened.
    """
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if mode.startswith("a") else (os.O_TRUNC if not fresh else 0)
    try:
        dfd = _open_folder(path)
        try:
            if fresh:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path.name, dir_fd=dfd)
                flags |= os.O_EXCL
            try:
                fd = os.open(path.name, flags, 0o666, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _link_error(path) from None
                raise
        finally:
            os.close(dfd)
    except OSError as exc:
        _name_target(exc, path)
        raise
    return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)


def _name_target(exc: OSError, path: Path) -> None:
    if not isinstance(exc, LinkError):
        with contextlib.suppress(AttributeError, TypeError):
            exc.filename = str(path)
            exc.filename2 = None


def stream_target(path: str | os.PathLike) -> bool:
    """Whether an output the user named is a stream: a character device or FIFO (links
    followed), or a symbolic link (``/dev/stdout`` -> ``/proc/self/fd/1``, a link to a file).
    It is then written directly through the link, as a shell redirect would (no temporary
    file, no rename, no lock or partial file beside it), as ``-`` is stdout.

    Raises:
        UsageError: (exit 2) ``path`` is a block device or socket: nothing is written to it.
    """
    import stat

    link = os.path.islink(path)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return link  # a dangling link: the file is created through it
    if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        from camcli.errors import UsageError

        raise UsageError(f"{path}: a block device or socket, not a file: give a file name")
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or (link and stat.S_ISREG(mode))


class AtomicFile:
    """A file object writing to a temporary name beside ``path``, renamed onto it on
    :meth:`commit`, removed on :meth:`abort`. With ``stream_ok`` (an output the user named), a
    ``path`` that is a character device, FIFO or link (:func:`stream_target`) is opened and
    written directly instead (:attr:`stream` True; no fsync, nothing to rename or remove).

    Used as a context manager it commits when the block ends normally and aborts on any
    exception (``KeyboardInterrupt`` included), re-raising it. The temporary file is created
    exclusively and without following links, through folders opened without following links
    (module doc); an error's ``filename`` is the target.

    Args:
        path: the target.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``"w"``.
        fsync: flush the data to disk before the rename (records, checkpoints, downloads).
        dir_fd: ``path``'s folder, already open (:func:`open_folder`): the folder walk is not
            repeated and the rename is made relative to it (only ``path.name`` is used: the
            caller guarantees ``path`` is in that folder). It must stay open until the commit
            or abort.

    Raises:
        LinkError: a folder on the way is a symbolic link (nothing is written).
        OSError: the folder cannot be created or the file cannot be opened (nothing is left).
    """

    def __init__(
        self, path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
        fsync: bool = False, dir_fd: int | None = None, stream_ok: bool = False,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.tmp = tmp_path_for(self.path)
        self.fsync = fsync
        self.closed = True
        self._dfd = dir_fd
        self.stream = stream_ok and dir_fd is None and stream_target(self.path)
        if self.stream:  # a device, FIFO or link: written through, never replaced (module doc)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            try:
                fd = os.open(self.path, flags, 0o666)
            except OSError as exc:
                _name_target(exc, self.path)
                raise
            self.file = os.fdopen(fd, mode, encoding=encoding)
            self.closed = False
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            dfd = _open_folder(self.path) if dir_fd is None else dir_fd
            try:
                try:
                    fd = os.open(self.tmp.name, flags, 0o666, dir_fd=dfd)
                except FileExistsError:  # left by a killed run of the same pid, or planted
                    os.unlink(self.tmp.name, dir_fd=dfd)
                    fd = os.open(self.tmp.name, flags, 0o666, dir_fd=dfd)
            finally:
                if dir_fd is None:
                    os.close(dfd)
        except OSError as exc:
            _name_target(exc, self.path)
            raise
        self.file: IO[Any] = os.fdopen(fd, mode, encoding=encoding)
        self.closed = False

    def commit(self) -> None:
        """Flush (and fsync), close and rename onto the target; aborts on failure."""
        if self.closed:
            return
        try:
            self.file.flush()
            if self.stream:
                self.file.close()
                self.closed = True
                return
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            if self._dfd is None:
                os.replace(self.tmp, self.path)
            else:
                os.replace(
                    self.tmp.name, self.path.name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd
                )
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                _name_target(exc, self.path)
            raise
        self.closed = True

    def abort(self) -> None:
        """Close and remove the temporary file; the target is left as it was."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.file.close()
        if self.stream:
            return
        with contextlib.suppress(OSError):
            if self._dfd is None:
                self.tmp.unlink(missing_ok=True)
            else:
                os.unlink(self.tmp.name, dir_fd=self._dfd)

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_atomic(
    path: str | os.PathLike, data: bytes, *, fsync: bool = False, dir_fd: int | None = None,
    stream_ok: bool = False,
) -> None:  # fmt: skip
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`; ``dir_fd``: its folder,
    opened by :func:`open_folder`; ``stream_ok``: an output the user named)."""
    with AtomicFile(path, fsync=fsync, dir_fd=dir_fd, stream_ok=stream_ok) as fh:
        fh.write(data)


def save_npz_atomic(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez(path, **arrays)`` (uncompressed), atomically: the archive is built in
    memory and written with one call (numpy's zip writer seeks back over each member's header,
    one system call each on a real file)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getbuffer())


@contextlib.contextmanager
def open_folder(folder: str | os.PathLike) -> Iterator[int]:
    """``folder`` created and opened once, without following links, as each atomic write
    otherwise does: yields its descriptor for ``write_atomic(..., dir_fd=)`` of several files
    (an image's overlays), closed on exit.

    Raises:
        LinkError: ``folder`` or a folder on the way is a symbolic link.
        OSError: it cannot be created or opened (``filename`` names it).
    """
    p = Path(folder)
    try:
        fd = _open_folder(p / "_")
    except OSError as exc:
        _name_target(exc, p)
        raise
    try:
        yield fd
    finally:
        os.close(fd)
