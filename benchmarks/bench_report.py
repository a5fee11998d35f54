"""`camcli report` over a generated run: wall time and peak RSS, against reading + shrinking.

Generates a `cam` output folder of N images (``manifest.jsonl``, ``run.json``, ``--top-k``
overlays per image, JPEGs of ``--size``; a few distinct pictures written as N copies, each
decoded on its own), a `bbox` records file with boxes and ground truth per record, then times:

- ``floor``: read and shrink every image and overlay to a thumbnail in memory (Pillow,
  reduce-on-decode, the same thread count), nothing written: the cost the issue names;
- ``report``: ``camcli report CAMS BOXES --out R`` as a fresh process (start-up included);
- ``report (reuse)``: the same command again, every thumbnail already made.

Peak RSS of each process comes from ``os.wait4``. Usage::

    python benchmarks/bench_report.py --images 10000 --top-k 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def make_run(root: Path, n: int, k: int, size: tuple[int, int]) -> tuple[Path, Path, int]:
    """The cam folder and records file of ``n`` images; returns (cams, boxes, files)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    pics = []
    for _ in range(8):  # a few distinct pictures, smooth enough to compress like photos
        small = rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        pics.append(buf.getvalue())
    images, cams = root / "images", root / "cams"
    man, recs = [], []
    labels = [f"class {c}" for c in range(20)]
    rnd = random.Random(0)
    files = 0
    for i in range(n):
        sub = f"d{i // 1000:03d}"
        img = images / sub / f"img{i:06d}.jpg"
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(pics[i % 8])
        cls = rnd.sample(range(20), k)
        scores = sorted((rnd.random() for _ in range(k)), reverse=True)
        preds = [{"class_index": c, "label": labels[c], "score": round(s, 6)}
                 for c, s in zip(cls, scores)]  # fmt: skip
        ovs = []
        for r in range(k):
            f = f"{sub}/img{i:06d}/{r + 1}_{cls[r]}.jpg"
            (cams / f).parent.mkdir(parents=True, exist_ok=True)
            (cams / f).write_bytes(pics[(i + r + 1) % 8])
            ovs.append(f)
        files += 1 + k
        rec = {"image": str(img), "width": w, "height": h, "predictions": preds}
        man.append({**rec, "key": f"{sub}/img{i:06d}", "outputs": {"overlays": ovs}})
        x0, y0 = rnd.randrange(w // 2), rnd.randrange(h // 2)
        box = [x0, y0, x0 + w // 3, y0 + h // 3]
        gt_cls = cls[0] if rnd.random() < 0.7 else (cls[0] + 1) % 20
        gt_box = [w // 4, h // 4, w // 4 + w // 3, h // 4 + h // 3]
        recs.append({**rec, "boxes": [{"rank": 1, **preds[0], "box": box, "kind": "largest"}],
                     "gt": {"label": labels[gt_cls], "class_index": gt_cls,
                            "boxes": [gt_box]}})  # fmt: skip
    (cams / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in man))
    (cams / "run.json").write_text(json.dumps({"command": "cam", "model": "generated",
                                                "counts": {"ok": n, "failed": 0}}))  # fmt: skip
    boxes = root / "boxes.jsonl"
    boxes.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return cams, boxes, files


def floor(paths: list[Path], size: int, workers: int) -> float:
    """Seconds to read and shrink every file in memory (the thumbnails' own cost)."""
    from PIL import Image

    def one(p):
        with Image.open(p) as im:
            im.draft("RGB", (size, size))
            rgb = im.convert("RGB")
        rgb.thumbnail((size, size), Image.Resampling.BOX)
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=80)
        return buf.tell()

    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, paths):
            pass
    return time.perf_counter() - t


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stderr) of one fresh process."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed: {err}")
    return wall, ru.ru_maxrss / 1024, err.strip().splitlines()[-1] if err.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--size", default="500x375", help="WxH of images and overlays")
    ap.add_argument("--workers", type=int, default=None, help="threads (camcli's default)")
    ap.add_argument("--dir", default=None, help="keep the generated run and report here")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    workers = args.workers or min(16, os.cpu_count() or 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        t = time.perf_counter()
        cams, boxes, nfiles = make_run(root, args.images, args.top_k, (w, h))
        print(f"generated {args.images} images x (1 + {args.top_k} overlays) = {nfiles} JPEGs "
              f"of {w}x{h} in {time.perf_counter() - t:.1f} s")  # fmt: skip
        paths = sorted(root.glob("images/*/*.jpg")) + sorted(cams.glob("*/*/*.jpg"))
        fl = floor(paths, 160, workers)
        cmd = [sys.executable, "-m", "camcli", "report", str(cams), str(boxes),
               "--out", str(root / "report"), "--workers", str(workers)]  # fmt: skip
        first = timed(cmd)
        again = timed(cmd)
        html = (root / "report" / "index.html").stat().st_size
        print(f"{'what':<16}{'wall s':>9}{'peak RSS MiB':>14}")
        print(
            f"{'floor':<16}{fl:>9.1f}{'':>14}   read + shrink {len(paths)} files, {workers} threads"
        )
        print(f"{'report':<16}{first[0]:>9.1f}{first[1]:>14.0f}   {first[2]}")
        print(f"{'report (reuse)':<16}{again[0]:>9.1f}{again[1]:>14.0f}   {again[2]}")
        print(f"report / floor: {first[0] / fl:.2f}; index.html {html / 2**20:.1f} MiB; "
              f"cpus {os.cpu_count()}")  # fmt: skip


if __name__ == "__main__":
    main()
