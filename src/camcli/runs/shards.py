"""Splitting a run: ``--shard I/N`` (N independent jobs) and torchrun (N ranks of one job).

Both take the same deterministic slice of the discovered inputs: shard ``I`` of ``N`` holds
items ``I, I + N, I + 2N, ...`` of the full, sorted input list, each keeping its global index
and output key, so the shards cover the inputs exactly once and their files never collide.

Each shard writes its own *part*: ``FILE`` becomes ``FILE-stem.shard-I-of-N.FILE-suffix``
(``boxes.jsonl`` -> ``boxes.shard-0-of-3.jsonl``), an output folder's manifest becomes
``manifest.shard-I-of-N.jsonl`` (and ``run.json`` ``run.shard-I-of-N.json``);
:mod:`camcli.runs.merge` joins complete parts back into the files an unsharded run writes.

Under torchrun (:mod:`camcli.runs.distributed`) the shard is ``RANK/WORLD_SIZE``. This module
only names things: torch-free, no file is read here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from camcli.errors import UsageError

PART_RE = re.compile(r"^(?P<stem>.*)\.shard-(?P<i>\d+)-of-(?P<n>\d+)(?P<suffix>(\.[^.]*)?)$")
MANIFEST = "manifest.jsonl"
#: The most shards a run may be split into (``--shard I/N``, ``camcli merge``).
MAX_SHARDS = 100_000
RUN_JSON = "run.json"
DRAW_MARK = "bbox --draw"  # the command of a bbox --draw shard's run json (a marker only)


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def select(self, items: list) -> list:
        """``items[index::count]`` (items keep their own index and key)."""
        return items[self.index :: self.count]

    def part(self, path: str | os.PathLike) -> Path:
        """``dir/name.ext`` -> ``dir/name.shard-I-of-N.ext`` (the part this shard writes)."""
        return part_path(Path(path), self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def part_path(path: Path, index: int, count: int) -> Path:
    """``dir/name.ext`` -> ``dir/name.shard-I-of-N.ext``: the part shard ``index`` of ``count``
    writes of ``path``."""
    return path.with_name(f"{path.stem}.shard-{index}-of-{count}{path.suffix}")


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard; a usage error (exit 2) naming the value otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UsageError(f"--shard {text!r}: use I/N, e.g. 0/4 for the first of four shards")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= I < N (shards are numbered 0 to N-1)")
    if n > MAX_SHARDS:
        raise UsageError(f"--shard {text}: at most {MAX_SHARDS} shards")
    return Shard(i, n)


def count_path(part: Path) -> Path:
    """``PART.inputs`` beside a finished ``--output`` part: ``{"inputs": k, "run": {...}}``,
    the number of inputs of that shard, so that ``camcli merge`` knows each part is whole, and
    what run made it (command, model, weights sha256, classes, preprocessing, options; not in
    the parts of an older camcli), so that it joins the parts of one run only."""
    return part.with_name(part.name + ".inputs")


def shard_inputs(index: int, count: int, total: int) -> int:
    """How many of ``total`` inputs shard ``index`` of ``count`` holds (items I, I + N, ...)."""
    return len(range(index, total, count))


COMPANION_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>run|partial|lock)$", re.DOTALL)
"""``.NAME.run``, ``.NAME.partial``, ``.NAME.lock``: the files camcli keeps beside an output
file NAME (its run, its records so far, its lock); an output is never given such a name."""


COUNT_RE = re.compile(r"^(?P<name>.+\.shard-\d+-of-\d+(?:\..*)?)\.inputs$", re.DOTALL)
"""``PART.inputs`` beside a shard's part (:func:`count_path`)."""


def companion_name(name: str) -> str | None:
    """The output whose companion file ``name`` would be (``.x.jsonl.run`` -> ``x.jsonl``;
    ``x.shard-0-of-2.jsonl.inputs`` -> ``x.shard-0-of-2.jsonl``; also a temporary file's
    target, :data:`camcli.atomic.TMP_RE`); None for any other name."""
    from camcli.atomic import TMP_RE

    m = COMPANION_RE.match(name) or COUNT_RE.match(name) or TMP_RE.match(name)
    return m.group("name") if m else None


def partial_path(target: Path) -> Path:
    """``.NAME.partial`` beside ``target``: the records of a run still going (or killed)."""
    return target.with_name(f".{target.name}.partial")


def shard_names(index: int, count: int) -> tuple[str, str]:
    """(manifest, run json) file names of shard ``index`` of ``count`` in an output folder."""
    tag = f"shard-{index}-of-{count}"
    return f"manifest.{tag}.jsonl", f"run.{tag}.json"
