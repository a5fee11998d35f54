"""Memory flat in the number of images: peak RSS of `camcli cam --top-k 1` (overlays) on N and on
10 x N generated images, each run a fresh process (``wait4`` rusage).

    python benchmarks/bench_memory.py --images 256 --factor 10 --model resnet50
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cam import make_images, make_weights, run_measured  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="camcli-mem-"))
    small, big = work / "small", work / "big"
    if not small.is_dir():
        make_images(small, args.images)
    if not big.is_dir():
        big.mkdir(parents=True)
        files = sorted(small.glob("*.jpg"))
        for r in range(args.factor):  # the same pixels, distinct files
            for f in files:
                os.link(f, big / f"r{r:02d}_{f.name}")
    wpath = work / f"{args.model}.pt"
    if not wpath.is_file():
        make_weights(args.model, wpath)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    res = {}
    for name, folder in (("small", small), ("big", big)):
        out = work / f"out_{name}"
        shutil.rmtree(out, ignore_errors=True)
        n = len(list(folder.glob("*.jpg")))
        wall, rss, rc, _ = run_measured(
            [
                sys.executable,
                "-m",
                "camcli",
                "cam",
                str(folder),
                "--out",
                str(out),
                "--weights",
                str(wpath),
                "--top-k",
                "1",
                "-q",
            ],
            env,
        )
        res[name] = (n, wall, rss)
        print(
            f"{n:6d} images: {n / wall:6.2f} img/s, peak RSS {rss:7.0f} MiB (exit {rc})", flush=True
        )
        shutil.rmtree(out, ignore_errors=True)
    ratio = res["big"][2] / res["small"][2]
    print(
        f"peak RSS {res['big'][0]} / {res['small'][0]} images: {ratio:.3f} "
        f"({100 * (ratio - 1):+.1f} %)"
    )


if __name__ == "__main__":
    main()
