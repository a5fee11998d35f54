"""A command's records file (``--output FILE``), resumable and written in input order."""

from __future__ import annotations

from pathlib import Path

from camcli.atomic import write_atomic
from camcli.data.records import dumps, iter_jsonl
from camcli.errors import write_error
from camcli.runs.shards import count_path, partial_path


class RecordFile:
    """JSON Lines records to FILE, resumable: lines go to ``.FILE.partial`` as images finish
    (flushed each), and FILE is written atomically in input order at the end (also on Ctrl-C,
    except for a shard's part, which is written only when the shard is complete).
    ``resume=True`` keeps the error-free records of FILE, of a partial file left by a killed
    run, and of ``also`` (read only: a merged FILE for a part), keyed by ``image``; ``done``
    holds them. A failed write raises a one-line error (exit 5) and keeps the partial file."""

    def __init__(
        self, target: Path, *, resume: bool, part: bool = False, also: tuple[Path, ...] = ()
    ) -> None:
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.part = part
        self.done: dict[str, dict] = {}
        self.failed = False
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            if resume:
                for src in (*also, self.target, self.partial):
                    if src.is_file():
                        self._load(src)
            self._fh = open(self.partial, "w", encoding="utf-8")
            for rec in self.done.values():
                self._fh.write(dumps(rec) + "\n")
            self._fh.flush()
        except OSError as exc:
            raise write_error(exc, self.target) from None
        self.new: dict[str, dict] = {}

    def _load(self, src: Path) -> None:
        # Resumed: a bad line (cut by a kill) is skipped, so its image is done again.
        for line in iter_jsonl(src):
            rec = line.value
            if rec is not None and "image" in rec and "error" not in rec:
                self.done[rec["image"]] = rec

    def write(self, rec: dict) -> None:
        try:
            self._fh.write(dumps(rec) + "\n")
            self._fh.flush()
        except OSError as exc:
            self.failed = True
            raise write_error(exc, self.target) from None
        self.new[rec["image"]] = rec

    def finish(self, order: list[str], *, complete: bool = True) -> list[dict]:
        """Write FILE in input order (records of this run and resumed ones); returns them.

        An incomplete part, or a run whose writes failed, keeps only the partial file (its
        complete lines are what --resume reads)."""
        try:
            self._fh.close()
        except OSError:
            self.failed = True
        by_image = {**self.done, **self.new}
        recs = [by_image[p] for p in order if p in by_image]
        if self.failed or (self.part and not complete):
            return recs
        try:
            write_atomic(self.target, "".join(dumps(r) + "\n" for r in recs).encode("utf-8"))
            if self.part:  # merge checks each part against its input count
                write_atomic(count_path(self.target), dumps({"inputs": len(order)}).encode())
        except OSError as exc:
            self.failed = True
            raise write_error(exc, self.target) from None
        self.partial.unlink(missing_ok=True)
        return recs
