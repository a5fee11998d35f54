"""Joining the parts of a split run back into the files an unsharded run writes.

:func:`merge_jsonl` and :func:`merge_outdir` join complete parts byte for byte: shard ``i``
holds items ``i, i + N, ...`` in order, so taking one line of each part in turn (round robin)
restores the input order; torchrun's rank 0, which knows the whole input list, orders them by
key instead (:func:`merge_records_in_order`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from camcli.atomic import write_atomic
from camcli.data.records import iter_jsonl
from camcli.errors import CamcliError, Exit
from camcli.runs.recordfile import read_part_count, record_merged_run
from camcli.runs.samerun import check_runs_recorded, made_with, run_difference
from camcli.runs.shards import (
    MANIFEST,
    MAX_SHARDS,
    PART_RE,
    RUN_JSON,
    count_path,
    part_path,
    partial_path,
    shard_inputs,
    shard_names,
)


def read_jsonl(path: Path, require: str | None = None) -> list[str]:
    """The lines of a shard part (without newlines), every one a JSON object (with a text
    field ``require`` when given: ``image`` for records, ``key`` for manifests).

    A bad line is a CamcliError (exit 3) naming the file and line: a part being merged must be
    whole (the one policy of :func:`camcli.data.records.iter_jsonl` for files read as input).
    """
    lines = []
    for line in iter_jsonl(path):
        if line.error is not None:
            raise CamcliError(
                f"{line.where(path)}: not a complete JSON record; rerun that shard with --resume",
                Exit.NO_INPUT,
            )
        if require is not None and not isinstance(line.value.get(require), str):
            raise CamcliError(
                f"{line.where(path)}: a record without a {require!r} text field; not a camcli "
                "shard part, or a damaged one: rerun that shard with --resume",
                Exit.NO_INPUT,
            )
        lines.append(line.text)
    return lines


def interleave(parts: list[list[str]], names: list[str]) -> list[str]:
    """Round robin over the parts of shards 0..N-1 (part i holds items i, i + N, ...).

    Checks the sizes fit one input list: each part as long as the first or one shorter, never
    longer than the one before it.
    """
    sizes = [len(p) for p in parts]
    for i, n in enumerate(sizes):
        if not (sizes[0] - 1 <= n <= sizes[0]) or (i and n > sizes[i - 1]):
            raise CamcliError(
                f"{names[i]}: {n} records do not fit the other parts ({', '.join(map(str, sizes))}"
                " records for shards 0..N-1): the parts come from different inputs or a shard is "
                "incomplete; rerun it with --resume",
                Exit.NO_INPUT,
            )
    out: list[str] = []
    for j in range(sizes[0] if sizes else 0):
        out.extend(p[j] for p in parts if j < len(p))
    return out


def find_parts(target: Path) -> tuple[int, list[Path]]:
    """The parts ``stem.shard-I-of-N.suffix`` beside ``target`` -> (N, [part of shard i]).

    Errors (exit 3) name what is missing: no parts, parts of several N, a missing shard, or a
    shard still running or interrupted (its ``.partial`` file is there).
    """
    d = target.parent if str(target.parent) else Path(".")
    found: dict[int, dict[int, Path]] = {}
    if d.is_dir():
        for p in d.iterdir():
            m = PART_RE.match(p.name)
            if m and m["stem"] == target.stem and m["suffix"] == target.suffix:
                found.setdefault(int(m["n"]), {})[int(m["i"])] = p
    if not found:
        raise CamcliError(
            f"{target}: no shard parts ({target.stem}.shard-I-of-N{target.suffix}) found beside it",
            Exit.NO_INPUT,
        )
    if len(found) > 1:
        raise CamcliError(
            f"{target}: parts of runs split {' and '.join(map(str, sorted(found)))} ways are "
            "mixed here; remove those of the older run",
            Exit.NO_INPUT,
        )
    ((n, byi),) = found.items()
    _check_count(target, n, len(byi))
    missing = [i for i in range(n) if i not in byi or not byi[i].is_file()]
    running = [i for i in range(n) if partial_path(part_path(target, i, n)).exists()]
    if missing or running:
        bad = sorted(set(missing) | set(running))
        raise CamcliError(
            f"{target}: shard(s) {', '.join(f'{i}/{n}' for i in bad)} not finished "
            f"({'missing' if missing else 'interrupted or still running'}); run them "
            "(with --resume) and merge again",
            Exit.NO_INPUT,
        )
    return n, [byi[i] for i in range(n)]


def write_lines(path: Path, lines: list[str], *, stream_ok: bool = False) -> None:
    """JSON Lines ``lines`` (without newlines) into ``path``, atomically, bytes kept
    (``stream_ok``: a file the user named, see :func:`camcli.atomic.stream_target`)."""
    text = "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape")
    write_atomic(path, text, stream_ok=stream_ok)


@dataclass
class MergePlan:
    """What merging one target writes, checked whole before anything is written.

    Attributes:
        path: the file written (``FILE``, or ``DIR/manifest.jsonl``).
        lines: its JSON Lines (without newlines), in input order.
        run_json: ``DIR/run.json``'s content, or None (an ``--output`` FILE).
        run: an ``--output`` FILE's run (from its parts), recorded in ``.FILE.run``.
        parts: the shard files removed after the write (unless kept).
    """

    path: Path
    lines: list[str]
    run_json: dict | None = None
    parts: list[Path] = field(default_factory=list)
    run: dict | None = None  # an --output FILE's run, for its .FILE.run

    def write(self, *, keep_parts: bool = False) -> int:
        """Write the merged file(s), then remove the parts; returns the number of records.

        Raises:
            OSError: a write failed (nothing of the parts is removed).
        """
        write_lines(self.path, self.lines, stream_ok=self.run_json is None)
        if self.run_json is None:
            record_merged_run(self.path, self.run)
        else:
            text = json.dumps(self.run_json, indent=2, allow_nan=False) + "\n"
            write_atomic(self.path.parent / RUN_JSON, text.encode())
        if not keep_parts:
            for p in self.parts:
                p.unlink(missing_ok=True)
        return len(self.lines)


def _check_count(where: Path, n: int, found: int) -> None:
    """A shard count over :data:`MAX_SHARDS`, or far more than the parts found, is refused
    before anything is listed (a lone ``.shard-0-of-99999999999`` part)."""
    if n > MAX_SHARDS:
        raise CamcliError(
            f"{where}: parts of a run split {n} ways; at most {MAX_SHARDS} shards are merged "
            f"({found} part(s) found)",
            Exit.NO_INPUT,
        )


def _check_one_file_run(target: Path, parts: list[Path], runs: list[dict | None]) -> None:
    """Refuse ``--output`` parts made by different runs: another command, model, weights,
    class count, preprocessing or option than the first part that records its run
    (:func:`camcli.runs.samerun.run_difference`). Parts all without a run (an older camcli's)
    are not compared; a mix is refused (:func:`camcli.runs.samerun.check_runs_recorded`).

    Raises:
        CamcliError: (exit 2) the first difference, both part files and both values.
    """
    known = [(i, r) for i, r in enumerate(runs) if r is not None]
    check_runs_recorded(target, parts, runs)
    j, first = known[0] if known else (0, None)
    for i, run in known[1:]:
        diff = run_difference(first, run)
        if diff is not None:
            _refuse_other_run(target, (parts[j].name, parts[i].name), diff, f"{i}/{len(parts)}")


def plan_jsonl(target: Path) -> MergePlan:
    """Check the parts of ``target`` (see :func:`find_parts`): every line a record with an
    ``image``, each part as long as its shard's input count, all parts made by one run (as
    their ``PART.inputs`` files record it). Nothing is written.

    Raises:
        CamcliError: (exit 3) naming the part and what is wrong; (exit 2) parts of different
            runs (another command, model, weights or option, see :func:`_check_one_file_run`).
    """
    n, parts = find_parts(target)
    counts = [read_part_count(p) for p in parts]
    _check_one_file_run(target, parts, [run for _, run in counts])
    contents = []
    for p, (k, _) in zip(parts, counts):
        lines = read_jsonl(p, require="image")
        if len(lines) != k:
            raise CamcliError(
                f"{p}: {len(lines)} records for the shard's {k} inputs; the part is incomplete "
                "or was edited: rerun that shard with --resume",
                Exit.NO_INPUT,
            )
        contents.append(lines)
    lines = interleave(contents, [str(p) for p in parts])
    plan = MergePlan(target, lines, None, [*parts, *(count_path(p) for p in parts)])
    plan.run = counts[0][1]  # FILE's .FILE.run records it (or none, for an older camcli's)
    return plan


def merge_jsonl(target: Path, *, keep_parts: bool = False) -> int:
    """Join the parts of ``target`` (see :func:`find_parts`) into ``target``, input order.
    Returns the number of records."""
    return plan_jsonl(target).write(keep_parts=keep_parts)


def plan_outdir(root: Path, *, keys: list[str] | None = None) -> MergePlan:
    """Check the shards of an output folder: every manifest line a record, every run json an
    object of the expected types, each manifest as long as its shard's inputs (from
    ``inputs_total``). Nothing is written.

    Raises:
        CamcliError: (exit 3) naming the file and what is wrong; (exit 2) shards of different
            runs (another model, weights or option, see :func:`_check_one_run`).
    """
    n = _manifest_shard_count(root)
    parts, infos = _finished_shards(root, n)
    _check_one_run(root, n, infos)
    lines = _merged_manifest(root, parts, infos, keys)
    run_json = merged_run_info(infos)  # a --draw folder's too (command "bbox --draw")
    remove = [root / name for i in range(n) for name in shard_names(i, n)]
    return MergePlan(root / MANIFEST, lines, run_json, remove)


def merge_outdir(root: Path, *, keep_parts: bool = False, keys: list[str] | None = None) -> int:
    """Join ``manifest.shard-I-of-N.jsonl`` of an output folder into ``manifest.jsonl`` and the
    shards' ``run.shard-I-of-N.json`` into ``run.json`` (counts summed). A shard is finished when
    its run json is there. ``keys``: the inputs' keys in order, when known (torchrun's rank 0);
    else the manifests are interleaved. Everything is checked before anything is written.
    Returns the number of records."""
    return plan_outdir(root, keys=keys).write(keep_parts=keep_parts)


def _manifest_shard_count(root: Path) -> int:
    """N of the ``manifest.shard-I-of-N.jsonl`` files in ``root``; none, or several N, is an
    error (exit 3)."""
    found: dict[int, dict[int, Path]] = {}
    for p in root.iterdir():
        m = PART_RE.match(p.name)
        if m and m["stem"] == "manifest" and m["suffix"] == ".jsonl":
            found.setdefault(int(m["n"]), {})[int(m["i"])] = p
    if not found:
        raise CamcliError(
            f"{root}: no shard manifests (manifest.shard-I-of-N.jsonl) in this folder",
            Exit.NO_INPUT,
        )
    if len(found) > 1:
        raise CamcliError(
            f"{root}: manifests of runs split {' and '.join(map(str, sorted(found)))} ways are "
            "mixed here; remove those of the older run",
            Exit.NO_INPUT,
        )
    ((n, byi),) = found.items()
    _check_count(root, n, len(byi))
    return n


def _finished_shards(root: Path, n: int) -> tuple[list[Path], list[dict]]:
    """The manifest and parsed run json of shards 0..N-1; a shard without both, or with an
    unreadable or ``"running"`` run json (stopped or still going), is unfinished (exit 3)."""
    infos, parts, unfinished = [], [], []
    for i in range(n):
        man, run = (root / x for x in shard_names(i, n))
        if not man.is_file() or not run.is_file():
            unfinished.append(i)
            continue
        parts.append(man)
        try:
            info = json.loads(run.read_text(encoding="utf-8"))
        except ValueError:
            info = None
        if info is None or (isinstance(info, dict) and info.get("running")):
            unfinished.append(i)
            continue
        why = _run_info_problem(info)
        if why:
            raise CamcliError(
                f"{run}: {why}; not a camcli run json, or a damaged one: rerun that shard "
                "with --resume",
                Exit.NO_INPUT,
            )
        infos.append(info)
    if unfinished:
        raise CamcliError(
            f"{root}: shard(s) {', '.join(f'{i}/{n}' for i in unfinished)} not finished (no "
            f"manifest, or no finished run.shard json); run them (with --resume) and merge again",
            Exit.NO_INPUT,
        )
    return parts, infos


def _check_one_run(root: Path, n: int, infos: list[dict]) -> None:
    """Refuse shards whose run json names another model, weights, class count, preprocessing
    or option than shard 0's (:func:`camcli.runs.samerun.run_difference`, the check of ``cam
    --resume``): their records would mix two runs under one ``run.json``.

    Raises:
        CamcliError: (exit 2) the first difference, both run json files and both values.
    """
    for i, info in enumerate(infos[1:], start=1):
        diff = run_difference(infos[0], info)
        if diff is not None:
            first, other = (root / shard_names(j, n)[1] for j in (0, i))
            _refuse_other_run(root, (first.name, other.name), diff, f"{i}/{n}")


def _refuse_other_run(
    where: Path, names: tuple[str, str], diff: tuple[str, object, object], shard: str
) -> None:
    """Raise the refusal of parts of two runs: ``names`` (shard 0's file, the other's),
    ``diff`` of :func:`camcli.runs.samerun.run_difference`, ``shard`` the other's ``I/N``.

    Raises:
        CamcliError: always (exit 2), one line with both files, the option and both values.
    """
    what, was, is_now = diff
    other_words, first_words = made_with(what, is_now, was, verb="with")
    raise CamcliError(
        f"{where}: the shards are parts of different runs: {names[1]} was made {other_words}, "
        f"{names[0]} {first_words}; rerun shard {shard} without --resume with the options of "
        "the others (or remove the parts of the older run)",
        Exit.USAGE,
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _run_info_problem(info) -> str | None:
    """What is wrong with a shard's run json (the fields merge reads), or None."""
    if not isinstance(info, dict):
        return f"holds a {type(info).__name__}, not a JSON object"
    counts = info.get("counts", {})
    if not isinstance(counts, dict) or not all(_is_int(v) for v in counts.values()):
        return '"counts" is not an object of counts'
    wall = info.get("wall_time_s", 0)
    if isinstance(wall, bool) or not isinstance(wall, int | float) or not math.isfinite(wall):
        return '"wall_time_s" is not a number'
    opts = info.get("options", {})
    if opts is not None and not isinstance(opts, dict):
        return '"options" is not an object'
    if not _is_int((opts or {}).get("resumed", 0)):
        return '"options.resumed" is not a count'
    if "inputs_total" in info and not _is_int(info["inputs_total"]):
        return '"inputs_total" is not a count'
    return None


def _merged_manifest(
    root: Path, parts: list[Path], infos: list[dict], keys: list[str] | None
) -> list[str]:
    """The manifest lines in input order (by ``keys`` when given, else interleaved), checked
    against shard 0's ``inputs_total``."""
    contents = [read_jsonl(p, require="key") for p in parts]
    totals = {x["inputs_total"] for x in infos if "inputs_total" in x}
    if len(totals) > 1:
        raise CamcliError(
            f"{root}: the shards were run on different inputs ({', '.join(map(str, totals))} "
            "inputs); remove the parts of the older run",
            Exit.NO_INPUT,
        )
    n = len(parts)
    for i, (p, c) in enumerate(zip(parts, contents)):
        want = shard_inputs(i, n, next(iter(totals))) if totals else None
        if want is not None and len(c) != want:
            raise CamcliError(
                f"{p}: {len(c)} records for the shard's {want} inputs; a shard is incomplete, "
                "rerun it with --resume",
                Exit.NO_INPUT,
            )
    if keys is not None:
        by_key = {json.loads(x)["key"]: x for c in contents for x in c}
        lines = [by_key[k] for k in keys if k in by_key]
    else:
        lines = interleave(contents, [str(p) for p in parts])
    total = sum(int(x.get("inputs_total", -1)) for x in infos[:1])
    if total >= 0 and total != len(lines):
        raise CamcliError(
            f"{root}: the shards hold {len(lines)} records for {total} inputs; a shard is "
            "incomplete, rerun it with --resume",
            Exit.NO_INPUT,
        )
    return lines


def merged_run_info(infos: list[dict]) -> dict:
    """run.json of a sharded run: shard 0's, counts summed, the longest wall time."""
    out = dict(infos[0])
    counts: dict[str, int] = {}
    for x in infos:
        for k, v in (x.get("counts") or {}).items():
            counts[k] = counts.get(k, 0) + int(v)
    out["counts"] = counts
    out["wall_time_s"] = max(float(x.get("wall_time_s", 0)) for x in infos)
    opts = dict(out.get("options") or {})
    opts["resumed"] = sum(int((x.get("options") or {}).get("resumed", 0)) for x in infos)
    opts.pop("shard", None)
    out["options"] = opts
    out["shards"] = len(infos)
    out.pop("shard", None)
    return out


def merge_records_in_order(order: list[str], parts: list[Path]) -> list[str]:
    """The lines of every part, keyed by their record's ``image``, in ``order`` (what rank 0 of
    a torchrun run writes: it knows the whole input list)."""
    by_image: dict[str, str] = {}
    for p in parts:
        for line in read_jsonl(p, require="image"):
            by_image[json.loads(line)["image"]] = line
    return [by_image[x] for x in order if x in by_image]
