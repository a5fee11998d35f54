"""Plumbing shared by the commands: inputs, session, record streaming, exit codes."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from camcli.console import info, print_predictions_table
from camcli.data.records import JsonlWriter
from camcli.errors import CamcliError, Exit


def resolve_inputs(inputs: list[str]):
    from camcli.data.inputs import IMAGE_EXTENSIONS, discover

    if inputs.count("-") > 1:
        raise CamcliError("'-' (paths on stdin) may be given once")
    items = discover(inputs)
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
)


def session_options(values: dict) -> dict:
    """The Session.open keyword arguments among a command's parameters (``locals()``)."""
    return {k: values[k] for k in SESSION_OPTIONS}


def open_session(model, weights, *, split: Split | None = None, **kw):
    from camcli.api.session import Session

    if split is not None and split.dist is not None:
        from camcli.runs.distributed import device_for_rank

        kw["device"] = device_for_rank(kw.get("device", "auto"), split.dist.local_rank)
    return Session.open(model, weights, **kw)


# --------------------------------------------------------------------------------------------
# Splitting a run: --shard I/N, torchrun


@dataclass
class Split:
    """How this process's run is split: ``shard`` None for the whole input; ``dist`` the
    torch.distributed group of a torchrun launch (its shard is RANK/WORLD_SIZE)."""

    shard: object | None = None  # camcli.runs.shards.Shard
    dist: object | None = None  # camcli.runs.distributed.Dist

    @property
    def main(self) -> bool:
        """Whether this process prints summaries and writes the joined outputs."""
        return self.dist is None or self.dist.rank == 0

    def select(self, items: list) -> list:
        return items if self.shard is None else self.shard.select(items)

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def total(self, values: list[int]) -> list[int]:
        """Sums over the ranks (the values themselves without torchrun)."""
        return self.dist.all_sum(values) if self.dist is not None else list(values)

    def close(self) -> None:
        if self.dist is not None:
            self.dist.close()


def plan_split(
    shard: str | None,
    inputs: list[str] | None,
    *,
    stdout_ok: bool = True,
    output: str | None = None,
) -> Split:
    """The split of this run: ``--shard I/N``, a torchrun launch, or none (usage errors for
    the combinations that cannot work)."""
    from camcli.runs.distributed import Dist
    from camcli.runs.shards import parse_shard
    from camcli.sysinfo import torchrun_env

    world = torchrun_env()
    if world is None:
        return Split(parse_shard(shard) if shard is not None else None, None)
    if shard is not None:
        raise CamcliError("--shard and torchrun both split the inputs: use one of them")
    if inputs and "-" in inputs:
        raise CamcliError(
            "- (paths on stdin) cannot be shared by torchrun ranks: pass the files or "
            "folders as arguments"
        )
    if not stdout_ok and output in (None, "-"):
        raise CamcliError(
            "under torchrun give --output FILE: each rank writes its part of it "
            "and rank 0 joins them"
        )
    dist = Dist(world)
    return Split(dist.shard, dist)


class RecordSink:
    """Where a command's JSON records go: a resumable FILE (a shard writes its part
    ``FILE.shard-I-of-N``), JSON Lines on stdout, or a table (collected)."""

    def __init__(self, output: str | None, split: Split, *, resume: bool, table: bool = False):
        from camcli.runs.records import RecordFile

        self.target = None if output in (None, "-") else Path(output)
        self.split = split
        self.table = table
        self.collected: list[dict] = []
        self.rfile = None
        self.stdout = None
        if self.target is not None:
            part = split.shard is not None
            path = split.shard.part(self.target) if part else self.target
            self.rfile = RecordFile(
                path, resume=resume, part=part, also=(self.target,) if part else ()
            )
        elif not table:
            self.stdout = JsonlWriter("-")

    @property
    def done(self) -> dict[str, dict]:
        return self.rfile.done if self.rfile is not None else {}

    def write(self, rec: dict) -> None:
        if self.rfile is not None:
            self.rfile.write(rec)
        elif self.table:
            self.collected.append(rec)
        else:
            self.stdout.write(rec)

    def finish(self, order: list[str], *, complete: bool) -> list[dict] | None:
        """Close the output; the records in ``order`` for a FILE (also resumed ones)."""
        if self.rfile is not None:
            return self.rfile.finish(order, complete=complete)
        if self.stdout is not None:
            self.stdout.close()
        return None

    def join(self, items: list) -> list[dict] | None:
        """torchrun, after every rank finished: rank 0 joins the ranks' parts into FILE in input
        order and removes them; returns the joined records on rank 0 (None elsewhere)."""
        if self.split.dist is None or self.target is None:
            return None
        recs = None
        if self.split.main:
            recs = join_parts(self.target, self.split.shard.count, items)
        return recs


def join_parts(target: Path, count: int, items: list) -> list[dict]:
    import json

    from camcli.atomic import write_atomic
    from camcli.runs.merge import merge_records_in_order
    from camcli.runs.shards import part_path

    parts = [part_path(target, i, count) for i in range(count)]
    lines = merge_records_in_order([it.path for it in items], parts)
    try:
        write_atomic(target, "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape"))
    except OSError as exc:
        from camcli.errors import write_error

        raise write_error(exc, target) from None
    for p in parts:
        p.unlink(missing_ok=True)
    return [json.loads(x) for x in lines]


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
            if sink.stdout is None:  # records on stdout carry their errors already
                report_errors(rec, quiet)
            if bar:
                bar.advance(bar.task)
    finally:
        if bar:
            bar.stop()
    return True


def print_table(records: list[dict]) -> None:
    print_predictions_table(records)
