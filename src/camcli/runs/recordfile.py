"""A command's records file (``--output FILE``), resumable and written in input order."""

from __future__ import annotations

import os
from pathlib import Path

from camcli.atomic import (
    TMP_NAME_MAX,
    cut_bytes,
    is_regular,
    open_nofollow,
    remove_stray,
    write_atomic,
)
from camcli.data.records import dumps, iter_jsonl
from camcli.errors import CamcliError, Exit, write_error
from camcli.evaluate.predictions import record_problem
from camcli.runs.locks import BusyError, RunLock
from camcli.runs.shards import count_path, partial_path

RUN_KEY = "camcli_run"
"""The key of the first line of ``.FILE.partial``: the run that writes it (no ``image``: never
read as a record)."""


class RecordFile:
    """JSON Lines records to FILE, resumable: lines go to ``.FILE.partial`` as images finish
    (flushed each), and FILE is written atomically in input order at the end (also on Ctrl-C,
    except for a shard's part, which is written only when the shard is complete).
    ``resume=True`` keeps the error-free records of FILE, of a partial file left by a killed
    run, and of ``also`` (read only: a merged FILE for a part), keyed by ``image``; ``done``
    holds them (a record whose ``image`` is not a string is done again; a link or other
    non-regular file is not read). A failed write raises a one-line error (exit 5) and keeps the
    partial file. ``.FILE.lock`` keeps a second run off FILE until :meth:`finish` (exit 2).
    A finished part gets ``PART.inputs`` beside it: its input count and ``run``, what run made
    it (see :func:`camcli.runs.merge.plan_jsonl`), when given; ``resume`` of a part made by
    another run is refused (:func:`_check_part_run`). The partial file's first line records
    ``run`` too (``{"camcli_run": run}``), so that ``resume`` after a kill is refused when the
    killed run was another (:func:`_check_partial_run`). A whole FILE (not a part) keeps
    ``.FILE.run`` beside it, from the run's start on: ``{"camcli_run": run, "file": whether
    FILE holds this run's records}``; ``resume`` after a finished, interrupted or killed run
    is refused when that run was another, and does not read a FILE of an earlier run that a
    new run (without ``resume``) was about to replace (:func:`_check_sidecar_run`)."""

    def __init__(
        self,
        target: Path,
        *,
        resume: bool,
        part: bool = False,
        also: tuple[Path, ...] = (),
        run: dict | None = None,
    ) -> None:
        self.target = Path(target)
        self.partial = partial_path(self.target)
        # beside the file written: a FILE that is a link is written through it
        self.sidecar = None if part else _sidecar_of(self.target)
        self.part = part
        self.run = run
        self.done: dict[str, dict] = {}
        self.failed = False
        self._lock = None
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.target.with_name(f".{self.target.name}.lock"))
            file_is_this_runs = True  # FILE's records are of the run resumed
            if resume and run is not None:  # before anything is read or written
                if part:
                    _check_part_run(self.target, run)
                    # the merged FILE a part resumes from: checked as FILE itself would be
                    also = tuple(a for a in also if _check_sidecar_run(a, _sidecar_of(a), run))
                _check_partial_run(self.target, self.partial, run)
                records = is_regular(self.target) or is_regular(self.partial)
                if self.sidecar is not None and records:
                    file_is_this_runs = _check_sidecar_run(self.target, self.sidecar, run)
            # FILE's temporary file, left by a run killed as it wrote FILE
            remove_stray(self.target.parent, only={cut_bytes(self.target.name, TMP_NAME_MAX)})
            if resume:
                for src in (*also, self.target, self.partial):
                    if src == self.target and not file_is_this_runs:
                        continue  # an earlier run's FILE, which this run is replacing
                    if is_regular(src):
                        self._load(src)
            loaded_file = resume and file_is_this_runs and is_regular(self.target)
            self._write_sidecar(file=loaded_file)
            self._fh = open_nofollow(self.partial, "w", fresh=True)
            if run is not None:  # what run this is, for --resume after a kill
                self._fh.write(dumps({RUN_KEY: run}) + "\n")
            for rec in self.done.values():
                self._fh.write(dumps(rec) + "\n")
            self._fh.flush()
        except CamcliError:
            self.release()
            raise
        except BusyError as exc:
            raise CamcliError(
                f"--output {self.target}: {exc.strerror}; wait for it to finish or choose "
                "another --output",
                Exit.USAGE,
            ) from None
        except OSError as exc:
            self.release()
            raise write_error(exc, self.target) from None
        self.new: dict[str, dict] = {}

    def _write_sidecar(self, *, file: bool) -> None:
        """``.FILE.run`` (a whole FILE, ``run`` given): this run, and whether FILE holds its
        records."""
        if self.sidecar is None:
            return
        try:
            if self.run is not None:
                write_atomic(self.sidecar, dumps({RUN_KEY: self.run, "file": file}).encode())
            else:  # a run that records nothing: an older run's record would lie
                self.sidecar.unlink(missing_ok=True)
        except OSError as exc:
            raise write_error(exc, self.sidecar) from None

    def _load(self, src: Path) -> None:
        # Resumed: a bad line (cut by a kill) is skipped, so its image is done again.
        for line in iter_jsonl(src):
            rec = line.value
            if (
                rec is not None
                and isinstance(rec.get("image"), str)
                and "error" not in rec
                and record_problem(rec) is None  # predictions/boxes of the wrong types: redo
            ):
                self.done[rec["image"]] = rec

    def release(self) -> None:
        """Release FILE's lock (:meth:`finish` does)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

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
            return self._finish(order, complete)
        finally:
            self.release()

    def _finish(self, order: list[str], complete: bool) -> list[dict]:
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
            self._write_sidecar(file=True)
            if self.part:  # merge checks each part against its input count and run
                count = {"inputs": len(order), **({"run": self.run} if self.run else {})}
                write_atomic(count_path(self.target), dumps(count).encode())
        except OSError as exc:
            self.failed = True
            raise write_error(exc, self.target) from None
        self.partial.unlink(missing_ok=True)
        return recs


def _check_part_run(part: Path, run: dict) -> None:
    """Refuse ``--resume`` of a shard's part whose ``PART.inputs`` records another run (command,
    model, weights, classes, preprocessing or option, :func:`camcli.runs.samerun.run_difference`)
    than ``run``: its records would be kept under this run's name, and ``merge`` would join
    records of two runs. A part without a recorded run (a killed shard's, an older camcli's) or
    with an unreadable ``PART.inputs`` is resumed as before.

    Raises:
        CamcliError: (exit 2) the part, the first difference as typed and the fix.
    """
    _refuse_another(
        _recorded_run(count_path(part), "run", first_line=False, older_key="inputs"),
        run,
        lambda was, now: (
            f"--resume: {part} was made {was}, this run {now}; rerun that shard "
            "without --resume (the part is rewritten) or resume it with the part's options"
        ),
    )


def _check_partial_run(target: Path, partial: Path, run: dict) -> None:
    """Refuse ``--resume`` when ``partial`` (the records of a run killed before it wrote
    ``target``) begins with the record of another run (:data:`RUN_KEY`; command, model,
    weights, classes, preprocessing or option, :func:`camcli.runs.samerun.run_difference`):
    its records would be kept under this run's name. A partial file without that line (an
    older camcli's), unreadable or not a regular file, is resumed as before.

    Raises:
        CamcliError: (exit 2) the file, the first difference as typed and the fix.
    """
    _refuse_another(
        _recorded_run(partial, RUN_KEY, first_line=True, older_key="image", empty_ok=True),
        run,
        lambda was, now: (
            f"--resume: {partial} holds the records of an unfinished run made "
            f"{was}, this run {now}; resume with the options of that run, or rerun without "
            f"--resume (the records of {target.name} are done again)"
        ),
    )


def _written(target: Path) -> Path:
    """The file ``target`` names: itself, or where it points when it is a link."""
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def record_stream_run(output: str | os.PathLike, run: dict | None) -> None:
    """An ``--output`` link written through as a stream (:func:`camcli.atomic.stream_target`)
    replaces the records of the file it points to: when that file has a ``.FILE.run`` (an
    earlier camcli run wrote it by its own name), it then records ``run`` (``"file": true``;
    removed when ``run`` is None), so that a later ``--resume`` of the file does not take
    these records for the earlier run's. Nothing is created beside a file that has none (a
    shell redirect's, ``-o /dev/stdout``).

    Raises:
        CamcliError: (exit 5) ``.FILE.run`` cannot be written."""
    if not os.path.islink(output):
        return
    sidecar = _sidecar_of(Path(output))
    if not is_regular(sidecar):
        return
    try:
        if run is not None:
            write_atomic(sidecar, dumps({RUN_KEY: run, "file": True}).encode())
        else:
            sidecar.unlink(missing_ok=True)
    except OSError as exc:
        raise write_error(exc, sidecar) from None


def _sidecar_of(target: Path) -> Path:
    """``.FILE.run`` of the file ``target`` names (beside the file a link points to)."""
    return sidecar_path(_written(Path(target)))


def sidecar_path(target: Path) -> Path:
    """``.NAME.run`` beside a whole ``--output`` FILE: the run that writes (or wrote) it."""
    return target.with_name(f".{target.name}.run")


def _check_sidecar_run(target: Path, sidecar: Path, run: dict) -> bool:
    """Refuse ``--resume`` of ``target`` when its ``.FILE.run`` records another run (finished,
    interrupted or killed); a missing or unreadable one (an older camcli's) is resumed as
    before.

    Returns:
        Whether ``target``'s records are of the run resumed (False: FILE is an earlier run's,
        which the recorded run, started without ``--resume``, was replacing).

    Raises:
        CamcliError: (exit 2) the file, the first difference as typed and the fix.
    """
    data = _json_object(sidecar, first_line=False) or {}
    holds = data.get("file") is not False  # FILE holds the recorded run's records
    _refuse_another(
        _recorded_run(sidecar, RUN_KEY, first_line=False),
        run,
        lambda was, now: (
            f"--resume: {target} "
            + ("holds records" if holds else "was being replaced by an unfinished run")
            + f" made {was}, this run {now}; resume with the options of that run, or rerun "
            "without --resume (the records are done again)"
        ),
    )
    return holds


def _json_object(path: Path, *, first_line: bool) -> dict | None:
    """The JSON object in ``path`` (in its first line only, with ``first_line``); None when
    ``path`` is unreadable, not a JSON object or not a regular file."""
    import json

    if not is_regular(path):
        return None
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.readline(1 << 20) if first_line else fh.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _recorded_run(
    path: Path,
    key: str,
    *,
    first_line: bool,
    older_key: str | None = None,
    empty_ok: bool = False,
) -> dict | None:
    """The run recorded under ``key`` in the JSON object of ``path`` (see
    :func:`_json_object`); None when there is none. A ``path`` there that records no run
    (cut, edited by hand; a link, FIFO or folder, which camcli never writes there and never
    reads) is damaged: resuming over it is refused, since a run resumed unchecked would be
    recorded as the new run's; but for an older camcli's file, which records no run and holds
    ``older_key`` (a record's ``image`` as a partial file's first line, the ``inputs`` count
    of a ``PART.inputs``), and, where ``empty_ok`` (a partial file: replaced, never read
    through a link), an empty or non-regular one.

    Raises:
        CamcliError: (exit 2) ``path`` is damaged; the fix is a run without ``--resume``."""
    data = _json_object(path, first_line=first_line)
    run = (data or {}).get(key)
    if isinstance(run, dict):
        return run
    if data is not None and key not in data and older_key is not None and older_key in data:
        return None  # an older camcli's file, which records no run
    if os.path.lexists(path) and not (empty_ok and (_size(path) == 0 or not is_regular(path))):
        raise CamcliError(
            f"--resume: {path} does not record the run that wrote it (damaged?), so this "
            "run cannot be checked against it; rerun without --resume (the records are done "
            "again)",
            Exit.USAGE,
        )
    return None


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _refuse_another(before: object, run: dict, message) -> None:
    """Raise ``CamcliError(message(was, now))`` (exit 2) when ``before`` (a recorded run; not
    a dict: nothing to compare) and ``run`` are not one run; ``was`` and ``now`` are their first
    difference in words (:func:`camcli.runs.samerun.made_with`)."""
    from camcli.runs.samerun import as_stored, made_with, run_difference

    if not isinstance(before, dict):
        return
    diff = run_difference(before, as_stored(run))
    if diff is not None:
        raise CamcliError(message(*made_with(*diff)), Exit.USAGE)


def read_part_count(part: Path) -> tuple[int, dict | None]:
    """The input count and run (None: a part of an older camcli) a finished ``--output``
    part's ``PART.inputs`` file records (:func:`camcli.runs.shards.count_path`), for
    ``camcli merge``.

    Raises:
        CamcliError: (exit 3) none, or not a regular file holding ``{"inputs": N, ...}``."""
    import json

    cp = count_path(part)
    try:
        if os.path.lexists(cp) and not is_regular(cp):  # a FIFO would block the read
            raise ValueError(cp)
        value = json.loads(cp.read_text(encoding="utf-8"))
        k, run = value["inputs"], value.get("run")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError
        if run is not None and not isinstance(run, dict):
            raise ValueError
    except FileNotFoundError:
        raise CamcliError(
            f"{part}: no input count ({cp.name}) beside it, so its completeness is unknown: "
            "the shard did not finish (or the part was copied without it); rerun that shard "
            "with --resume",
            Exit.NO_INPUT,
        ) from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        raise CamcliError(
            f'{cp}: not an input count ({{"inputs": N, "run": {{...}}}}); rerun that shard '
            "without --resume",
            Exit.NO_INPUT,
        ) from None
    return k, run


def record_merged_run(target: Path, run: dict | None) -> None:
    """After ``camcli merge`` wrote ``target`` from its parts: its ``.FILE.run`` records
    ``run``, the parts' run (``"file": true``), or is removed (parts of an older camcli), so
    that ``--resume`` of the merged FILE is checked against that run, not an earlier one's.

    Raises:
        OSError: ``.FILE.run`` cannot be written."""
    sidecar = _sidecar_of(target)
    if run is not None:
        write_atomic(sidecar, dumps({RUN_KEY: run, "file": True}).encode())
    elif is_regular(sidecar):
        sidecar.unlink()
