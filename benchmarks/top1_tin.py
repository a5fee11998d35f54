"""1000-way ImageNet top-1 / top-5 of a registry network on tin-dev10 (64 px photos).

Uses camcli's own decoding, resizing and normalisation (``camcli.data.loader``) at several input
sizes; class index i is the i-th sorted ImageNet-1k WNID (camcli's built-in list). Not a test:
it needs ../shared/data/tin-dev10.

Usage: python benchmarks/top1_tin.py [--model efficientnet_lite0] [--split val] [--sizes 160 224]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import torch

from camcli.data import loader
from camcli.data.inputs import InputItem
from camcli.evaluate.synsets import imagenet1k_synsets
from camcli.models.load import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tin-dev10"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", default="val")
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 192, 224])
    a = ap.parse_args()
    rows = [r for r in csv.DictReader(open(a.data / "annotations.csv")) if r["split"] == a.split]
    syn = imagenet1k_synsets()
    truth = torch.tensor([syn.index_of_wnid(r["wnid"]) for r in rows])
    items = [InputItem(i, str(a.data / r["path"]), r["path"]) for i, r in enumerate(rows)]
    model = load_model(a.model, offline=True).eval()
    print(f"{a.model} on {len(rows)} {a.split} images of {a.data.name}, {model.preprocess}")
    print("size  top-1  top-5  img/s")
    for size in a.sizes:
        pre = dataclasses.replace(model.preprocess, input_size=size)
        t0, logits = time.perf_counter(), []
        with torch.no_grad():
            for b in loader.iter_batches(items, pre, batch_size=32, workers=1):
                assert not b.failed
                logits.append(model(loader.normalize_batch(b.x, pre)))
        top5 = torch.cat(logits).topk(5, dim=1).indices
        t1 = (top5[:, 0] == truth).float().mean().item()
        t5 = (top5 == truth[:, None]).any(1).float().mean().item()
        print(f"{size:4d}  {t1:.3f}  {t5:.3f}  {len(rows) / (time.perf_counter() - t0):.1f}")


if __name__ == "__main__":
    main()
