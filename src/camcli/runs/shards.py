"""Splitting a run: ``--shard I/N`` (N independent jobs) and torchrun (N ranks of one job).

Both take the same deterministic slice of the discovered inputs: shard ``I`` of ``N`` holds
items ``I, I + N, I + 2N, ...`` of the full, sorted input list, each keeping its global index
and output key, so the shards cover the inputs exactly once and their files never collide.

Each shard writes its own *part*: ``FILE`` becomes ``FILE-stem.shard-I-of-N.FILE-suffix``
(``boxes.jsonl`` -> ``boxes.shard-0-of-3.jsonl``), an output folder's manifest becomes
``manifest.shard-I-of-N.jsonl`` (and ``run.json`` ``run.shard-I-of-N.json``). :func:`merge_jsonl`
and :func:`merge_outdir` join complete parts back into the files an unsharded run writes, byte
for byte: shard ``i`` holds items ``i, i + N, ...`` in order, so taking one line of each part in
turn (round robin) restores the input order.

Under torchrun (``WORLD_SIZE`` > 1 with a rendezvous address in the environment) the shard is
``RANK/WORLD_SIZE``; the ranks exchange only counts and barriers, over gloo, and rank 0 merges
the parts when every rank has finished.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from camcli.errors import CamcliError, Exit
from camcli.sysinfo import torchrun_env

PART_RE = re.compile(r"^(?P<stem>.*)\.shard-(?P<i>\d+)-of-(?P<n>\d+)(?P<suffix>(\.[^.]*)?)$")
MANIFEST = "manifest.jsonl"
RUN_JSON = "run.json"
DRAW_MARK = "bbox --draw"  # the command of a bbox --draw shard's run json (a marker only)


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0 <= index < count). ``distributed``: a torchrun rank."""

    index: int
    count: int
    distributed: bool = False

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def select(self, items: list) -> list:
        """``items[index::count]`` (items keep their own index and key)."""
        return items[self.index :: self.count]

    def part(self, path: str | os.PathLike) -> Path:
        """``dir/name.ext`` -> ``dir/name.shard-I-of-N.ext`` (the part this shard writes)."""
        return part_path(Path(path), self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def part_path(path: Path, index: int, count: int) -> Path:
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard; a usage error (exit 2) naming the value otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise CamcliError(f"--shard {text!r}: use I/N, e.g. 0/4 for the first of four shards")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise CamcliError(f"--shard {text}: need 0 <= I < N (shards are numbered 0 to N-1)")
    return Shard(i, n)


# --------------------------------------------------------------------------------------------
# torchrun


def torchrun_world() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process."""
    env = torchrun_env()
    return None if env is None else (env.rank, env.world, env.local_rank)


class Dist:
    """The torch.distributed group of a torchrun launch (gloo: only counts and barriers travel,
    so the same backend serves CPU and GPU runs)."""

    def __init__(self, rank: int, world: int, local_rank: int) -> None:
        import datetime

        import torch.distributed as dist

        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._dist = dist
        if not dist.is_initialized():
            # Ranks wait at the end for the slowest one: allow long, uneven shards.
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world, distributed=True)

    def barrier(self) -> None:
        self._dist.barrier()

    def all_sum(self, values: list[int]) -> list[int]:
        import torch

        t = torch.tensor(values, dtype=torch.int64)
        self._dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def all_max(self, value: int) -> int:
        import torch

        t = torch.tensor([value], dtype=torch.int64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return int(t.item())

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()


def device_for_rank(device: str, local_rank: int) -> str:
    """``auto``/``cuda`` under torchrun -> ``cuda:LOCAL_RANK`` (modulo the GPUs) when CUDA is
    there; anything else as given."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


# --------------------------------------------------------------------------------------------
# Reading and joining parts


def read_jsonl(path: Path) -> list[str]:
    """The complete lines of a JSON Lines file (without newlines); a line that is not JSON is a
    CamcliError: a part being merged must be whole."""
    lines = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh.read().split("\n"), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError:
                raise CamcliError(
                    f"{path} line {n}: not a complete JSON record; rerun that shard with --resume",
                    Exit.NO_INPUT,
                ) from None
            lines.append(line)
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


def partial_path(target: Path) -> Path:
    """``.NAME.partial`` beside ``target``: the records of a run still going (or killed)."""
    return target.with_name(f".{target.name}.partial")


def find_parts(target: Path, *, partial_of=partial_path):
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
    missing = [i for i in range(n) if i not in byi or not byi[i].is_file()]
    running = [i for i in range(n) if partial_of(part_path(target, i, n)).exists()]
    if missing or running:
        bad = sorted(set(missing) | set(running))
        raise CamcliError(
            f"{target}: shard(s) {', '.join(f'{i}/{n}' for i in bad)} not finished "
            f"({'missing' if missing else 'interrupted or still running'}); run them "
            "(with --resume) and merge again",
            Exit.NO_INPUT,
        )
    return n, [byi[i] for i in range(n)]


def _write_lines(path: Path, lines: list[str]) -> None:
    from camcli.atomic import write_atomic

    write_atomic(path, "".join(x + "\n" for x in lines).encode("utf-8", "surrogateescape"))


def merge_jsonl(target: Path, *, keep_parts: bool = False) -> int:
    """Join the parts of ``target`` (see :func:`find_parts`) into ``target``, input order.
    Returns the number of records."""
    n, parts = find_parts(target)
    lines = interleave([read_jsonl(p) for p in parts], [str(p) for p in parts])
    _write_lines(target, lines)
    if not keep_parts:
        for p in parts:
            p.unlink(missing_ok=True)
    return len(lines)


def shard_names(index: int, count: int) -> tuple[str, str]:
    """(manifest, run json) file names of shard ``index`` of ``count`` in an output folder."""
    tag = f"shard-{index}-of-{count}"
    return f"manifest.{tag}.jsonl", f"run.{tag}.json"


def merge_outdir(root: Path, *, keep_parts: bool = False, keys: list[str] | None = None) -> int:
    """Join ``manifest.shard-I-of-N.jsonl`` of an output folder into ``manifest.jsonl`` and the
    shards' ``run.shard-I-of-N.json`` into ``run.json`` (counts summed). A shard is finished when
    its run json is there. ``keys``: the inputs' keys in order, when known (torchrun's rank 0);
    else the manifests are interleaved. Returns the number of records."""
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
    ((n, _),) = found.items()
    infos, parts = [], []
    unfinished = []
    for i in range(n):
        man, run = (root / x for x in shard_names(i, n))
        if not man.is_file() or not run.is_file():
            unfinished.append(i)
            continue
        parts.append(man)
        try:
            infos.append(json.loads(run.read_text(encoding="utf-8")))
        except ValueError:
            unfinished.append(i)
    if unfinished:
        raise CamcliError(
            f"{root}: shard(s) {', '.join(f'{i}/{n}' for i in unfinished)} not finished (no "
            f"manifest or run.shard json); run them (with --resume) and merge again",
            Exit.NO_INPUT,
        )
    if keys is not None:
        by_key = {json.loads(x)["key"]: x for p in parts for x in read_jsonl(p)}
        lines = [by_key[k] for k in keys if k in by_key]
    else:
        lines = interleave([read_jsonl(p) for p in parts], [str(p) for p in parts])
    total = sum(int(x.get("inputs_total", -1)) for x in infos[:1])
    if total >= 0 and total != len(lines):
        raise CamcliError(
            f"{root}: the shards hold {len(lines)} records for {total} inputs; a shard is "
            "incomplete, rerun it with --resume",
            Exit.NO_INPUT,
        )
    _write_lines(root / MANIFEST, lines)
    if infos[0].get("command") != DRAW_MARK:  # bbox --draw folders have no run.json
        from camcli.atomic import write_atomic

        info = merged_run_info(infos)
        write_atomic(root / RUN_JSON, (json.dumps(info, indent=2) + "\n").encode())
    if not keep_parts:
        for i in range(n):
            for name in shard_names(i, n):
                (root / name).unlink(missing_ok=True)
    return len(lines)


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
        for line in read_jsonl(p):
            by_image[json.loads(line)["image"]] = line
    return [by_image[x] for x in order if x in by_image]


__all__ = [
    "Dist",
    "Shard",
    "device_for_rank",
    "find_parts",
    "interleave",
    "merge_jsonl",
    "merge_outdir",
    "parse_shard",
    "torchrun_world",
]
