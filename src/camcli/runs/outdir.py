"""An output folder: atomic files, a per-image manifest, resume, writes off the inference loop.

Layout (``cam`` and ``bbox --draw`` share it)::

    DIR/<key>/<rank>_<label>.<fmt>   overlays
    DIR/<key>/grid.<fmt>             the original and its overlays side by side
    DIR/<key>.npz                    raw maps (--save-maps)
    DIR/manifest.jsonl               one record per input, appended and flushed per image
    DIR/run.json                     versions, model, options, counts, wall time

A run of shard I of N (``--shard I/N`` or a torchrun rank) writes ``manifest.shard-I-of-N.jsonl``
and ``run.shard-I-of-N.json`` instead, and on start cleans only its own inputs' temporary files,
so several shards can write into one DIR at once; ``camcli merge DIR`` joins them.

``key`` is the input's path relative to its root, without extension
(camcli.data.inputs.discover), so nothing is ever written outside DIR. A manifest line is
written only after every file of its image is in place, so a record in the manifest means a
complete image: ``--resume`` skips those.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from camcli import atomic
from camcli.atomic import TMP_NAME_MAX, TMP_RE, write_atomic
from camcli.data.records import dumps, iter_jsonl
from camcli.errors import CamcliError, Exit, write_error
from camcli.evaluate.predictions import record_problem
from camcli.runs.locks import BusyError, RunLock
from camcli.runs.shards import shard_names

_LABEL_BAD = re.compile(r"[^\w.+-]+", re.UNICODE)


LABEL_MAX_BYTES = 80
"""The longest file-name part :func:`safe_label` makes, in UTF-8 bytes (file systems limit a
name to 255 bytes, not characters)."""


def safe_label(label: str) -> str:
    """A class label as a file-name part: ``German shepherd`` -> ``German_shepherd``; at most
    :data:`LABEL_MAX_BYTES` UTF-8 bytes, cut between characters; ``class`` when nothing is
    left."""
    s = _LABEL_BAD.sub("_", label).strip("._")
    s = s.encode("utf-8", "ignore")[:LABEL_MAX_BYTES].decode("utf-8", "ignore").rstrip("._")
    return s or "class"


class OutDir:
    """Manages DIR: stray temporary files, the manifest, resume state, background writes.

    ``shard``: this run is one shard (camcli.runs.shards.Shard): its own manifest and run json, and
    ``own_keys`` (the keys of its inputs) limit the clean-up of stray temporary files to its own.
    A write that fails (disk full, permissions) is kept and raised by :meth:`check_errors` as a
    one-line error (exit 5); the manifest then still lists only complete images.
    """

    def __init__(
        self,
        root: Path,
        *,
        resume: bool,
        workers: int = 2,
        max_pending: int = 16,
        shard=None,
        own_keys: set[str] | None = None,
    ):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise CamcliError(
                f"--out {root}: exists and is not a folder; choose another --out", Exit.USAGE
            ) from None
        except OSError as exc:
            raise write_error(exc, root) from None
        self.shard = shard
        man, run = (
            shard_names(shard.index, shard.count) if shard else ("manifest.jsonl", "run.json")
        )
        self.manifest_path = self.root / man
        self.run_json_path = self.root / run
        self.done: dict[str, dict] = {}
        self._write_errors: list[BaseException] = []
        self._locks = self._lock(shard)
        atomic.confine(self.root)
        self._confined = True
        try:
            self._clean_stray(own_keys)
            if shard is not None:
                # A shard is finished when its run json is there without "running" (camcli
                # merge checks); the job writes the running one next.
                self.run_json_path.unlink(missing_ok=True)
                if resume and (self.root / "manifest.jsonl").is_file():
                    # records of a merged earlier run (read only: other shards read it too)
                    self.done = self._read_manifest(self.root / "manifest.jsonl", rewrite=False)
            if resume and self.manifest_path.is_file():
                self.done.update(self._read_manifest(self.manifest_path))
            elif self.manifest_path.exists():
                self.manifest_path.unlink()
            self._manifest = atomic.open_nofollow(self.manifest_path, "a")
        except OSError as exc:
            self._unlock()
            raise write_error(exc, self.root) from None
        except BaseException:
            self._unlock()
            raise
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camcli-write")
        self._pending: deque[Future] = deque()
        self._max_pending = max_pending
        self.new_records: dict[int, dict] = {}
        self.profiler = None  # a camcli.runs.profiling.Profiler, to time the background writes

    def _lock(self, shard) -> list[RunLock]:
        """Lock DIR for this run: exclusively (``DIR/.camcli.lock``), or for a shard shared
        with the other shards plus exclusively its own (``DIR/.camcli.shard-I-of-N.lock``).

        Raises:
            CamcliError: another run writes DIR (exit 2, one line).
        """
        names = [".camcli.lock"]
        if shard is not None:
            names.append(f".camcli.shard-{shard.index}-of-{shard.count}.lock")
        locks: list[RunLock] = []
        try:
            for i, name in enumerate(names):
                locks.append(RunLock(self.root / name, shared=shard is not None and i == 0))
        except BusyError as exc:
            for lk in locks:
                lk.release()
            raise CamcliError(
                f"{self.root}: {exc.strerror}; wait for it to finish or choose another "
                "output folder",
                Exit.USAGE,
            ) from None
        except OSError as exc:
            for lk in locks:
                lk.release()
            raise write_error(exc, self.root) from None
        return locks

    def _unlock(self) -> None:
        if getattr(self, "_confined", False):
            self._confined = False
            atomic.release(self.root)
        for lk in reversed(getattr(self, "_locks", [])):
            lk.release()
        self._locks = []

    def _clean_stray(self, own_keys: set[str] | None) -> None:
        """Remove temporary files a killed run left (only those of ``own_keys`` when given)."""
        own_sorted = sorted(own_keys) if own_keys is not None else None

        def mine(dirpath: str, name: str) -> bool:
            if own_keys is None:
                return True
            rel = Path(dirpath).relative_to(self.root).as_posix()
            rel = "" if rel == "." else rel
            if name.endswith(".npz"):  # DIR/<key>.npz
                return (f"{rel}/" if rel else "") + name[: -len(".npz")] in own_keys
            if len(os.fsencode(name)) >= TMP_NAME_MAX - 3:  # a cut name: any key it may begin
                import bisect

                pre = (f"{rel}/" if rel else "") + name
                j = bisect.bisect_left(own_sorted, pre)
                return j < len(own_sorted) and own_sorted[j].startswith(pre)
            return rel in own_keys  # DIR/<key>/<file>

        # This run's own manifest and run json (other shards' are theirs), and the manifest
        # temporary file of camcli versions before camcli.atomic (``.manifest.jsonl.tmp``).
        own_top = {self.manifest_path.name, self.run_json_path.name}
        legacy = f".{self.manifest_path.name}.tmp"
        for dirpath, _, files in os.walk(self.root):
            top = dirpath == str(self.root)
            for f in files:
                m = TMP_RE.match(f)
                if (m and (mine(dirpath, m["name"]) or (top and m["name"] in own_top))) or (
                    top and f == legacy
                ):
                    Path(dirpath, f).unlink(missing_ok=True)

    def _read_manifest(self, path: Path, *, rewrite: bool = True) -> dict[str, dict]:
        """The complete images of a manifest being resumed, by key. A bad line (cut by a kill),
        an error record or a record whose files are not all there is skipped: that image is
        done again. ``rewrite``: keep only the good lines in the file, so appends start on a
        fresh line."""
        done: dict[str, dict] = {}
        good = []
        for line in iter_jsonl(path):
            rec = line.value
            if (
                rec is None
                or "error" in rec
                or not self._complete(rec)
                or record_problem(rec) is not None  # predictions of the wrong types: redo
            ):
                continue
            done[rec["key"]] = rec
            good.append(line.text)
        if rewrite:
            self._replace_manifest(good)
        return done

    def _complete(self, rec: dict) -> bool:
        """Whether a resumed manifest record names a complete image: ``key`` a relative key,
        ``outputs.files`` a non-empty list of paths of that key (``KEY/...`` or ``KEY.npz``),
        each a regular file reached without a link. Anything else (wrong types, absolute or
        ``..`` paths, missing files) is done again."""
        key, outputs = rec.get("key"), rec.get("outputs")
        if not isinstance(key, str) or not _relative_ok(key) or not isinstance(outputs, dict):
            return False
        files = outputs.get("files", [])
        if not isinstance(files, list):
            return False
        for f in files:
            if not isinstance(f, str) or not _relative_ok(f):
                return False
            if not (f.startswith(key + "/") or f == key + ".npz"):
                return False
            if not _regular_below(self.root, f):
                return False
        return True

    def _replace_manifest(self, lines: list[str]) -> None:
        data = "".join(g + "\n" for g in lines).encode("utf-8", "surrogateescape")
        write_atomic(self.manifest_path, data)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def submit(self, fn, *args) -> Future:
        """Run a write in the background; blocks when too many are pending (flat memory)."""
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().exception()  # errors are kept by record(); see check_errors
        prof = self.profiler
        if prof is not None and prof.enabled:

            def timed(*a):
                t = time.perf_counter()
                try:
                    return fn(*a)
                finally:
                    prof.add("encode+write", time.perf_counter() - t)

            fut = self._pool.submit(timed, *args)
        else:
            fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        return fut

    def record(self, index: int, rec: dict, futures: list[Future] = ()) -> None:
        """Append ``rec`` to the manifest once all of ``futures`` (its files) completed."""
        if not futures:
            self._append(index, rec)
            return
        remaining = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            if any(f.cancelled() for f in futures):
                return  # Ctrl-C cancelled a write: no record, the image is redone on --resume
            failed = [f.exception() for f in futures if f.exception() is not None]
            if failed:
                self._write_errors.append(failed[0])
            else:
                self._append(index, rec)

        for f in futures:
            f.add_done_callback(one_done)

    def _append(self, index: int, rec: dict) -> None:
        with _MANIFEST_LOCK:
            if self._write_errors:
                return  # after a failed write, nothing more is recorded: resume redoes it
            try:
                self._manifest.write(dumps(rec) + "\n")
                self._manifest.flush()
            except OSError as exc:
                self._write_errors.append(exc)
                return
            self.new_records[index] = rec

    @property
    def failed(self) -> bool:
        return bool(self._write_errors)

    def check_errors(self) -> None:
        """Raise the first failed write as a one-line error (exit 5)."""
        if self._write_errors:
            exc = self._write_errors[0]
            if isinstance(exc, OSError):
                raise write_error(exc, self.root)
            raise CamcliError(f"cannot write to {self.root}: {exc}", Exit.WRITE)

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().exception()

    def close(
        self,
        *,
        order: list[tuple[int, str]] | None = None,
        cancel: bool = False,
        keep_lock: bool = False,
    ) -> None:
        """Finish pending writes; then rewrite the manifest in input order (atomically).

        order: (index, key) of every input of the run: records of images completed by an
        earlier run (resume) keep their place. Never raises for a failed write (see
        :meth:`check_errors`): the manifest appended so far is then kept as it is.
        keep_lock: keep the folder locked (to write the run json next); :meth:`release` ends it.
        """
        try:
            self._close(order, cancel)
        finally:
            if not keep_lock:
                self.release()

    def _close(self, order: list[tuple[int, str]] | None, cancel: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._pending.clear()
        try:
            self._manifest.close()
        except OSError as exc:
            self._write_errors.append(exc)
        if order is None:
            return
        by_key = dict(self.done)
        by_key.update((rec["key"], rec) for rec in self.new_records.values())
        lines = []
        for _, key in order:
            rec = by_key.get(key)
            if rec is not None:
                lines.append(dumps(rec))
        try:
            self._replace_manifest(lines)
        except OSError as exc:
            self._write_errors.append(exc)

    def release(self) -> None:
        """Release the folder's lock (after the run json is written); idempotent."""
        self._unlock()

    def write_run_json(self, info: dict) -> None:
        try:
            write_atomic(
                self.run_json_path, (json.dumps(info, indent=2, allow_nan=False) + "\n").encode()
            )
        except OSError as exc:
            raise write_error(exc, self.root) from None


_MANIFEST_LOCK = threading.Lock()


def _relative_ok(rel: str) -> bool:
    """A POSIX relative path without empty, ``.`` or ``..`` parts (a key or output path)."""
    parts = rel.split("/")
    return (
        bool(rel)
        and "\\" not in rel
        and "\0" not in rel
        and all(p not in ("", ".", "..") for p in parts)
    )


def _regular_below(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` is a regular file reached through folders, none of them a link."""
    import stat

    where = root
    try:
        for part in rel.split("/")[:-1]:
            where = where / part
            if not stat.S_ISDIR(os.lstat(where).st_mode):
                return False
        return stat.S_ISREG(os.lstat(where / rel.split("/")[-1]).st_mode)
    except (OSError, ValueError):
        return False
