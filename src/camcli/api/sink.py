"""Where a command's per-image JSON records go: a resumable FILE, stdout, or a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from camcli.api.split import Split
from camcli.data.records import JsonlWriter

if TYPE_CHECKING:
    from camcli.api.session import Session


class RecordSink:
    """Where a command's JSON records go: a resumable FILE (a shard writes its part
    ``FILE.shard-I-of-N``), JSON Lines on stdout or through a device, FIFO or link the user
    named (:func:`camcli.atomic.stream_target`: no lock or partial file beside it), or a table
    (collected; only when no output is named). :attr:`on_stdout`: the records go to stdout
    (``-`` or none named), so a failed input needs no line on stderr."""

    def __init__(
        self,
        output: str | None,
        split: Split,
        *,
        resume: bool,
        table: bool = False,
        run: dict | None = None,
    ):
        """``run``: what run this is (:func:`part_run`), recorded beside a shard's finished
        part for ``camcli merge``; None: not recorded."""
        from camcli.atomic import stream_target
        from camcli.runs.recordfile import RecordFile

        stream = output not in (None, "-") and stream_target(output)
        self.target = None if output in (None, "-") or stream else Path(output)
        self.split = split
        self.table = table
        self.collected: list[dict] = []
        self.rfile = None
        self.stdout = None
        if self.target is not None:
            part = split.shard is not None
            path = split.shard.part(self.target) if part else self.target
            self.rfile = RecordFile(
                path, resume=resume, part=part, also=(self.target,) if part else (), run=run
            )
        elif not table:
            if stream:  # through a link: the file behind it holds this run's records now
                from camcli.runs.recordfile import record_stream_run

                record_stream_run(output, run)
            self.stdout = JsonlWriter(output if stream else "-")
        # the records go to this process's stdout, which then carries each failed input's
        # error: not a device, FIFO or link named with -o (/dev/null, a pipe)
        self.on_stdout = self.stdout is not None and not stream

    def release(self) -> None:
        """Release FILE's lock without finishing (:meth:`finish` releases it too)."""
        if self.rfile is not None:
            self.rfile.release()

    @property
    def done(self) -> dict[str, dict]:
        """Records of an earlier run kept by ``resume``, by image path."""
        return self.rfile.done if self.rfile is not None else {}

    def write(self, rec: dict) -> None:
        """Write (or collect, for a table) one record."""
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


def part_run(session: Session, command: str, options: dict) -> dict:
    """What run a shard's ``--output`` part is, as ``PART.inputs`` records it and ``camcli
    merge`` compares it (:func:`camcli.runs.samerun.run_difference`): ``command`` (``"bbox"``,
    ``"predict"``), the model, its weights' sha256, class count and preprocessing, and
    ``options``, the options that change the records (run.json's field names)."""
    from camcli.runs.samerun import as_stored

    m = session.model
    return as_stored(
        {
            "command": command,
            "model": m.name,
            "weights_sha256": m.weights_sha256,
            "num_classes": m.num_classes,
            "preprocess": m.preprocess.to_dict(),
            "options": options,
        }
    )


def join_parts(target: Path, count: int, items: list) -> list[dict]:
    """Join the ``count`` shard parts of ``target`` into it in the order of ``items`` (the
    discovered inputs) and remove the parts; returns the joined records.

    Raises:
        CamcliError: the write failed (exit 5).
    """
    import json

    from camcli.runs.merge import merge_records_in_order, write_lines
    from camcli.runs.shards import count_path, part_path

    parts = [part_path(target, i, count) for i in range(count)]
    lines = merge_records_in_order([it.path for it in items], parts)
    try:
        write_lines(target, lines)
    except OSError as exc:
        from camcli.errors import write_error

        raise write_error(exc, target) from None
    for p in parts:
        p.unlink(missing_ok=True)
        count_path(p).unlink(missing_ok=True)
    return [json.loads(x) for x in lines]
