"""Plumbing shared by the commands: inputs, the session, progress on stderr, record streaming."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from camcli.console import info, print_predictions_table
from camcli.errors import CamcliError, Exit, UsageError

if TYPE_CHECKING:
    from camcli.api.sink import RecordSink
    from camcli.api.split import Split


def resolve_inputs(inputs: list[str], *, follow_links: bool = False):
    from camcli.data.inputs import IMAGE_EXTENSIONS, discover

    if inputs.count("-") > 1:
        raise UsageError("'-' (paths on stdin) may be given once")
    items = discover(inputs, follow_links=follow_links)
    if not items:
        raise CamcliError(
            f"no images found in {' '.join(inputs)}: give image files, folders holding "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))} files, or - with paths on stdin",
            Exit.NO_INPUT,
        )
    return items


# Options every model-running command takes and hands to api.Session.open unchanged.
SESSION_OPTIONS = (
    "device",
    "batch_size",
    "offline",
    "workers",
    "max_pixels",
    "precision",
    "profile",
    "codec",
    "compile",
    "streams",
)


def session_options(values: dict) -> dict:
    """The Session.open keyword arguments among a command's parameters (``locals()``)."""
    return {k: values[k] for k in SESSION_OPTIONS}


def open_session(model, weights, *, split: Split | None = None, renders: bool = False, **kw):
    """The model's :class:`~camcli.api.session.Session` (``kw``: :data:`SESSION_OPTIONS`);
    warnings for a ``--codec device`` or ``--streams`` that cannot be used (``renders``: the
    command renders and encodes images on the device too, as ``cam``'s overlays)."""
    from camcli.api.session import Session
    from camcli.sysinfo import resume_gc

    if split is not None and split.dist is not None:
        from camcli.runs.distributed import device_for_rank

        kw["device"] = device_for_rank(kw.get("device", "auto"), split.dist.local_rank)
    session = Session.open(model, weights, **kw)
    resume_gc()  # the start-up is over (camcli.sysinfo.pause_gc)
    if kw.get("codec") == "device" and session.device.type != "cuda":
        from camcli.console import warn

        what = "JPEGs are decoded and overlays encoded" if renders else "JPEGs are decoded"
        warn(
            f"--codec device: the device is {session.device}, so {what} on the CPU in the main "
            "process (slower than --codec cpu's workers)"
        )
    n = kw.get("streams")
    if n is not None and n > 1 and session.streams is None:
        from camcli.console import warn

        why = "with --compile" if kw.get("compile") else f"on {session.device}"
        warn(f"--streams {n} is ignored {why}: streams are for CPU passes without --compile")
    return session


def fit_top_k(ctx, top_k: int, num_classes: int) -> int:
    """``--top-k`` lowered to the model's class count, with a warning when the user asked for
    more (the default is lowered quietly: a small model's run is not warned about each time)."""
    if top_k <= num_classes:
        return top_k
    from camcli.cli.options import given

    if given(ctx, ("top_k",)):
        from camcli.console import warn

        n = f"{num_classes} class" + ("es" if num_classes != 1 else "")
        warn(f"--top-k {top_k} lowered to {num_classes} (the model has {n})")
    return num_classes


def report_errors(rec: dict, quiet: bool) -> None:
    """One line on stderr for a failed input (records on stdout carry it already)."""
    if "error" in rec and not quiet:
        info(f"{rec['image']}: {rec['error']}")


def progress_bar(total: int, quiet: bool, what: str):
    """A rich progress bar on a terminal's stderr; None otherwise."""
    if quiet or not sys.stderr.isatty():
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from camcli.console import stderr_console

    p = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    p.start()
    p.task = p.add_task(what, total=total)  # type: ignore[attr-defined]
    return p


class CliProgress:
    """A job's progress on stderr (:class:`camcli.api.progress.Progress`): a bar on a terminal
    (main process only), one line per failed input (unless its record went to stdout)."""

    def __init__(self, what: str, quiet: bool, main: bool = True):
        self.what = what
        self.quiet = quiet
        self.main = main
        self.bar = None

    def start(self, todo: int | None, resumed: int, selected: int | None) -> None:
        self.bar = progress_bar(todo or 0, self.quiet or not self.main, self.what)

    def record(self, rec: dict, *, on_stdout: bool = False) -> None:
        if not on_stdout:
            report_errors(rec, self.quiet)
        if self.bar:
            self.bar.advance(self.bar.task)

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()

    def warn(self, message: str) -> None:
        if self.main:
            from camcli.console import warn

            warn(message)


def stream_records(
    records: Iterable[dict],
    sink: RecordSink,
    *,
    total: int,
    quiet: bool,
    show_progress: bool = True,
    what: str,
) -> bool:
    """Write ``records`` to ``sink`` with a progress bar; True when the stream ended."""
    bar = progress_bar(total, quiet, what) if show_progress else None
    try:
        for rec in records:
            sink.write(rec)
            if not sink.on_stdout:  # records on stdout carry their errors already
                report_errors(rec, quiet)
            if bar:
                bar.advance(bar.task)
    finally:
        if bar:
            bar.stop()
    return True


def print_table(records: list[dict]) -> None:
    print_predictions_table(records)


def check_targets(*paths: str | os.PathLike | None) -> None:
    """Refuse, before any work, an output file the user named that is a folder, a block device
    or a socket (:func:`camcli.atomic.stream_target`; it only looks: nothing is created), or
    that lies under a file (``afile/x.png``: it could never be created), a link that loops,
    or whose name is one camcli keeps for its own files beside an output (``.NAME.run``,
    ``.NAME.partial``, ``.NAME.lock``, ``PART.inputs``, a temporary name; for a link, its own
    name or that of the file it points to; :func:`_refuse_companion`): a run writing NAME
    would overwrite it, or it the record of NAME's run. ``-`` and None (stdout) pass.

    Raises:
        UsageError: one of ``paths`` is a folder, a block device or a socket, the nearest
            part of it that exists is not a folder, a looping link, or its name is a
            companion file's.
    """
    from camcli.atomic import stream_target
    from camcli.errors import UsageError

    for p in paths:
        if p is not None and str(p) != "-":
            if os.path.isdir(p):
                raise UsageError(f"{p}: a folder, not a file: give a file name")
            if os.path.islink(p) and _loops(p):
                raise UsageError(f"{p}: a link that leads back to itself: give a file name")
            _refuse_companion(p)
            on_way = _nearest_existing(Path(p).parent)
            if on_way is not None and not os.path.isdir(on_way):
                raise UsageError(
                    f"{p}: {on_way} is a file, not a folder: give a file name in a folder"
                )
            stream_target(p)


def _loops(p: str | os.PathLike) -> bool:
    """Whether following link ``p`` runs into a loop (ELOOP)."""
    import errno

    try:
        os.stat(p)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _refuse_companion(p: str | os.PathLike) -> None:
    """Raise UsageError when output ``p`` (or the file it links to: written through) has the
    name of a file camcli keeps beside an output (:func:`camcli.runs.shards.companion_name`)."""
    from camcli.errors import UsageError
    from camcli.runs.shards import companion_name

    where = [(Path(p).name, f"{p}: ")]
    if os.path.islink(p):
        target = os.path.realpath(p)
        where.append((Path(target).name, f"{p}: a link to {target}, and "))
    for name, head in where:
        owner = companion_name(name)
        if owner is not None:
            raise UsageError(
                f"{head}camcli keeps a file of this name beside an output {owner!r} (its "
                "run, input count, records so far, lock or temporary file): choose another name"
            )


def _nearest_existing(path: Path) -> Path | None:
    """``path`` or the nearest of its parents that exists (links followed); None if none."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent  # afile/sub does not exist: afile decides
    return path if os.path.exists(path) else None


def check_folders(*paths: str | os.PathLike | None) -> None:
    """Refuse, before any work (before the model loads), an output folder the user named that
    is a file, or that lies under one (``afile/sub``): it could never be created. It only looks
    (links followed): nothing is created. None passes.

    Raises:
        UsageError: ``path`` or the nearest part of it that exists is not a folder.
    """
    for p in paths:
        if p is None:
            continue
        on_way = _nearest_existing(Path(p))
        if on_way is not None and not os.path.isdir(on_way):
            what = "" if on_way == Path(p) else f"{on_way} is "
            raise UsageError(f"{p}: {what}a file, not a folder: give a folder name")


def records_resumable(output: str | None) -> bool:
    """Whether ``--output`` names a file that ``--resume`` can continue: not stdout (``-``,
    or none), nor a device, FIFO or link (:func:`camcli.atomic.stream_target`).

    Raises:
        UsageError: ``output`` is a block device or socket.
    """
    from camcli.atomic import stream_target

    return output not in (None, "-") and not stream_target(output)
