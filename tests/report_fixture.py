"""A small hand-built run for the `camcli report` tests: a cam folder, bbox records, GT, eval.

Seven images (``EXPECT`` gives what the page must say about each): a right one, a missed box, a
wrong class, a failed decode, one whose path holds ``</script><script>``, one whose label is
HTML, and one without a box. Imported by test_report.py and test_report_browser.py.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image

W, H = 240, 180  # original and overlay size (thumbnails are smaller)
EVIL_NAME = "a</script><script>window.pwned=1</script>.jpg"
EVIL_LABEL = '<img src=x onerror="window.pwned=2">'
GT_BOX = [40, 30, 139, 109]  # 100 x 80, inclusive

#: stem -> (top-1 label, rank-1 box or None, GT label, expected IoU, wrong class, box missed)
EXPECT = {
    "good": ("cat", [40, 30, 139, 109], "cat", 1.0, False, False),
    "missed": ("cat", [150, 100, 229, 169], "cat", 0.0, False, True),
    "wrong": ("dog", [40, 30, 129, 109], "cat", 0.9, True, False),
    "evil": ("dog", [50, 30, 139, 109], "dog", 0.9, False, False),
    "html": (EVIL_LABEL, [40, 30, 89, 109], EVIL_LABEL, 0.5, False, False),
    "nobox": ("cat", None, "cat", 0.0, False, True),
}
FAILED = "broken"


def _img(path: Path, color) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), color).save(path, quality=90)


def build_run(root: Path) -> dict:
    """Write the run under ``root``; returns ``{"cams", "boxes", "gt", "eval", "images"}``."""
    images = root / "images"
    cams = root / "cams"
    man, boxes_lines = [], []
    gt_buf = io.StringIO()
    gt_csv = csv.writer(gt_buf)
    gt_csv.writerow(["path", "label", "xmin", "ymin", "xmax", "ymax"])
    for j, (stem, (label, box, gt_label, _iou, _wc, _bm)) in enumerate(EXPECT.items()):
        name = EVIL_NAME if stem == "evil" else f"{stem}.jpg"
        img = images / name
        _img(img, (40 * j, 100, 200 - 20 * j))
        key = stem
        other = "dog" if label != "dog" else "cat"
        preds = [
            {"class_index": 0 if label == "cat" else 1 if label == "dog" else 2, "label": label,
             "score": 0.9 - 0.1 * j},
            {"class_index": 1 if other == "dog" else 0, "label": other, "score": 0.05},
        ]  # fmt: skip
        ovs = [f"{key}/1_{j}.jpg", f"{key}/2_{j}.jpg"]
        for k, f in enumerate(ovs):
            _img(cams / f, (255 - 30 * j, 60 * k, 30 * j))
        rec = {"image": str(img), "width": W, "height": H, "predictions": preds}
        man.append({**rec, "key": key, "outputs": {"overlays": ovs, "files": ovs}})
        bxs = [
            {"rank": 1, **{k: preds[0][k] for k in ("class_index", "label", "score")},
             "box": box, "kind": "largest"},
            {"rank": 2, **{k: preds[1][k] for k in ("class_index", "label", "score")},
             "box": [0, 0, W - 1, H - 1], "kind": "largest"},
        ]  # fmt: skip
        if box is None:
            bxs[0]["reason"] = "no pixel above 0.2 x max"
        boxes_lines.append({**rec, "boxes": bxs})
        gt_csv.writerow([name, gt_label, *GT_BOX])
    broken = str(images / f"{FAILED}.jpg")
    man.append({"image": broken, "error": "cannot decode image (truncated)"})
    boxes_lines.append({"image": broken, "error": "cannot decode image (truncated)"})
    (images / f"{FAILED}.jpg").write_bytes(b"not a jpeg")
    cams.mkdir(parents=True, exist_ok=True)
    (cams / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in man))
    run = {"command": "cam", "model": "demo", "weights": "package:assets/demo.pt",
           "weights_sha256": "ab" * 32, "options": {"top_k": 2, "colormap": "jet"},
           "counts": {"ok": 6, "failed": 1}, "wall_time_s": 1.25}  # fmt: skip
    (cams / "run.json").write_text(json.dumps(run))
    boxes = root / "boxes.jsonl"
    boxes.write_text("".join(json.dumps(r) + "\n" for r in boxes_lines))
    gt = root / "gt.csv"
    gt.write_text(gt_buf.getvalue())
    taus = [i / 10 for i in range(11)]
    ev = {"source": "maps", "n_images": 7, "maxboxacc_v1": 0.5, "maxboxacc_v2": 0.4,
          "best_tau": 0.2, "maxboxacc_v2_by_iou": {"0.3": 0.6, "0.5": 0.4, "0.7": 0.2},
          "taus": taus, "boxacc": {"v1": [1 - t for t in taus],
                                   "v2": {"0.3": taus, "0.5": taus, "0.7": taus}}}  # fmt: skip
    evp = root / "metrics.json"
    evp.write_text(json.dumps(ev))
    return {"cams": cams, "boxes": boxes, "gt": gt, "eval": evp, "images": images}
