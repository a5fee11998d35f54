"""An output folder: atomic files, a per-image manifest, resume, writes off the inference loop.

Layout (``cam`` and ``bbox --draw`` share it)::

    DIR/<key>/<rank>_<label>.<fmt>   overlays
    DIR/<key>/grid.<fmt>             the original and its overlays side by side
    DIR/<key>.npz                    raw maps (--save-maps)
    DIR/manifest.jsonl               one record per input, appended and flushed per image
    DIR/run.json                     versions, model, options, counts, wall time

``key`` is the input's path relative to its root, without extension (camcli.io.discover), so
nothing is ever written outside DIR. A manifest line is written only after every file of its
image is in place, so a record in the manifest means a complete image: ``--resume`` skips those.
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

from camcli.output import CamcliError, Exit, dumps

TMP_MARK = ".camcli-tmp"
_LABEL_BAD = re.compile(r"[^\w.+-]+", re.UNICODE)


def safe_label(label: str) -> str:
    """A class label as a file-name part: ``German shepherd`` -> ``German_shepherd``."""
    s = _LABEL_BAD.sub("_", label).strip("._")
    return s[:80] or "class"


def _tmp_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{threading.get_ident()}")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_npz_atomic(path: Path, **arrays) -> None:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def encode_image(rgb, fmt: str, quality: int = 90) -> bytes:
    """uint8 [H, W, 3] RGB numpy -> encoded bytes. JPEG through Pillow (libjpeg-turbo, straight
    from RGB), PNG through OpenCV (fast deflate level); both release the GIL while encoding."""
    if fmt == "png":
        import cv2
        import numpy as np

        ok, buf = cv2.imencode(
            ".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]
        )
        if not ok:  # pragma: no cover - OpenCV failing on a valid uint8 image
            raise OSError("cannot encode png")
        return buf.tobytes()
    import io as _io

    from PIL import Image

    bio = _io.BytesIO()
    Image.fromarray(rgb).save(bio, "JPEG", quality=quality)
    return bio.getvalue()


class OutDir:
    """Manages DIR: stray temporary files, the manifest, resume state, background writes."""

    def __init__(self, root: Path, *, resume: bool, workers: int = 2, max_pending: int = 16):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CamcliError(
                f"--out {root}: cannot create the folder ({exc.strerror})", Exit.USAGE
            ) from None
        self.manifest_path = self.root / "manifest.jsonl"
        self.done: dict[str, dict] = {}
        self._clean_stray()
        if resume and self.manifest_path.is_file():
            self.done = self._read_manifest()
        elif self.manifest_path.exists():
            self.manifest_path.unlink()
        self._manifest = open(self.manifest_path, "a", encoding="utf-8")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="camcli-write")
        self._pending: deque[Future] = deque()
        self._max_pending = max_pending
        self.new_records: dict[int, dict] = {}
        self._write_errors: list[BaseException] = []
        self.profiler = None  # a camcli.profiling.Profiler, to time the background writes

    def _clean_stray(self) -> None:
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                if TMP_MARK in f or (f.startswith(".manifest.jsonl") and f.endswith(".tmp")):
                    Path(dirpath, f).unlink(missing_ok=True)

    def _read_manifest(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        with open(self.manifest_path, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().split("\n")
        good = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill: that image is redone
            if not isinstance(rec, dict) or "error" in rec or "key" not in rec:
                continue
            files = [self.root / p for p in rec.get("outputs", {}).get("files", [])]
            if all(f.is_file() for f in files):
                done[rec["key"]] = rec
                good.append(line)
        # Rewrite the manifest with complete lines only, so appends start on a fresh line.
        tmp = self.manifest_path.with_name(".manifest.jsonl.tmp")
        tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
        os.replace(tmp, self.manifest_path)
        return done

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def submit(self, fn, *args) -> Future:
        """Run a write in the background; blocks when too many are pending (flat memory)."""
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
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
            self._manifest.write(dumps(rec) + "\n")
            self._manifest.flush()
            self.new_records[index] = rec

    def check_errors(self) -> None:
        if self._write_errors:
            exc = self._write_errors[0]
            raise CamcliError(
                f"writing to {self.root} failed ({getattr(exc, 'strerror', None) or exc}); "
                "free space or fix permissions, then rerun with --resume",
                1,
            )

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self, *, order: list[tuple[int, str]] | None = None, cancel: bool = False) -> None:
        """Finish pending writes; then rewrite the manifest in input order (atomically).

        order: (index, key) of every input of the run: records of images completed by an
        earlier run (resume) keep their place.
        """
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._pending.clear()
        self._manifest.close()
        if order is None:
            return
        by_key = dict(self.done)
        by_key.update((rec["key"], rec) for rec in self.new_records.values())
        lines = []
        for _, key in order:
            rec = by_key.get(key)
            if rec is not None:
                lines.append(dumps(rec) + "\n")
        tmp = self.manifest_path.with_name(".manifest.jsonl.tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    def write_run_json(self, info: dict) -> None:
        write_atomic(self.root / "run.json", (json.dumps(info, indent=2) + "\n").encode())


_MANIFEST_LOCK = threading.Lock()


class RecordFile:
    """JSON Lines records to FILE, resumable: lines go to ``.FILE.partial`` as images finish
    (flushed each), and FILE is written atomically in input order at the end (also on Ctrl-C).
    ``resume=True`` keeps the error-free records of FILE and of a partial file left by a killed
    run, keyed by ``image``; ``done`` holds them."""

    def __init__(self, target: Path, *, resume: bool) -> None:
        self.target = Path(target)
        self.partial = self.target.with_name(f".{self.target.name}.partial")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict] = {}
        if resume:
            for src in (self.target, self.partial):
                if src.is_file():
                    for line in src.read_text(encoding="utf-8", errors="replace").split("\n"):
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(rec, dict) and "image" in rec and "error" not in rec:
                            self.done[rec["image"]] = rec
        self._fh = open(self.partial, "w", encoding="utf-8")
        for rec in self.done.values():
            self._fh.write(dumps(rec) + "\n")
        self._fh.flush()
        self.new: dict[str, dict] = {}

    def write(self, rec: dict) -> None:
        self._fh.write(dumps(rec) + "\n")
        self._fh.flush()
        self.new[rec["image"]] = rec

    def finish(self, order: list[str]) -> list[dict]:
        """Write FILE in input order (records of this run and resumed ones); returns them."""
        self._fh.close()
        by_image = {**self.done, **self.new}
        recs = [by_image[p] for p in order if p in by_image]
        write_atomic(self.target, "".join(dumps(r) + "\n" for r in recs).encode("utf-8"))
        self.partial.unlink(missing_ok=True)
        return recs
