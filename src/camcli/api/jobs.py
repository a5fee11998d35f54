"""Folder jobs: ``cam`` (overlays, grids, raw maps) over a stream of CamResults.

Rendering (colormap, blend) runs batched on the device of the maps; encoding and writing run in
background threads of the OutDir, so inference never waits on the disk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from camcli.api import session as api
from camcli.atomic import save_npz_atomic, write_atomic
from camcli.data import inputs, loader
from camcli.data.codec import encode_image
from camcli.runs.outdir import OutDir, safe_label


@dataclass
class CamWriteOptions:
    colormap: str = "jet"
    alpha: float = 0.5
    fmt: str = "jpg"
    overlays: bool = True
    grid: bool = False
    save_maps: bool = False
    device_render: bool = False  # render + encode on the maps' device (GPU path)


def _encode_and_write(path: Path, rgb: np.ndarray, fmt: str) -> None:
    write_atomic(path, encode_image(rgb, fmt))


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).contiguous().cpu().numpy()


def _render_and_write_cpu(
    image: torch.Tensor,
    maps: np.ndarray,
    paths: list[Path],
    grid_path: Path | None,
    captions: list[str],
    wopts: CamWriteOptions,
) -> None:
    """CPU path, in a writer thread: quantise, OpenCV overlays (GIL released), encode, write.

    Rendered in BGR, OpenCV's encoder order (one channel swap per image, not one per overlay).
    image: uint8 [3, H, W], usually a view of the decoder's [H, W, 3] array (no copy here);
    maps: float32 [k, H, W] in [0, 1].
    """
    import cv2

    from camcli.cam import render

    bgr = cv2.cvtColor(image.permute(1, 2, 0).contiguous().numpy(), cv2.COLOR_RGB2BGR)
    ovs = [
        render.overlay_cv2(bgr, render.levels_cv2(m), wopts.colormap, wopts.alpha, bgr=True)
        for m in maps
    ]
    for p, ov in zip(paths, ovs):
        write_atomic(p, encode_image(ov, wopts.fmt, bgr=True))
    if grid_path is not None:
        rgb = torch.from_numpy(np.ascontiguousarray(np.stack(ovs)[..., ::-1]))
        g = render.grid(image, rgb.permute(0, 3, 1, 2), captions)
        write_atomic(grid_path, encode_image(_to_hwc(g), wopts.fmt))


def _write_encoded(blobs: list[bytes], paths: list[Path]) -> None:
    for p, data in zip(paths, blobs):
        write_atomic(p, data)


def _encode_on_device(images: torch.Tensor | list[torch.Tensor], fmt: str) -> list | None:
    """JPEG-encode uint8 [3, H, W] images where they are (nvJPEG on CUDA, one batched call);
    None when the format or device cannot (PNG: the writer threads encode it)."""
    if fmt != "jpg":
        return None
    import warnings

    from torchvision.io import encode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [t.cpu().numpy().tobytes() for t in encode_jpeg(list(images), quality=90)]


def _encode_and_write_all(
    ov_np: np.ndarray, paths: list[Path], grid_rgb, grid_path, fmt: str
) -> None:
    for p, rgb in zip(paths, ov_np):
        write_atomic(p, encode_image(rgb, fmt))
    if grid_path is not None:
        write_atomic(grid_path, encode_image(grid_rgb, fmt))


def cam_outputs(res: api.CamResult, out: OutDir, wopts: CamWriteOptions) -> tuple[dict, list]:
    """Render and queue the files of one image; returns (outputs dict, futures).

    On the CPU the maps are quantised here (one batched op) and the overlays are rendered with
    OpenCV in a writer thread; on a GPU they are rendered batched on the device.
    """
    from camcli.cam import render

    key = res.sample.item.key
    labels = [p["label"] for p in res.predictions]
    captions = [f"{p['label']} {p['score']:.3f}" for p in res.predictions]
    files: list[str] = []
    futures = []
    outputs: dict = {}
    if wopts.overlays or wopts.grid:
        paths = (
            [
                out.root / key / f"{r}_{safe_label(label)}.{wopts.fmt}"
                for r, label in enumerate(labels, start=1)
            ]
            if wopts.overlays
            else []
        )
        grid_path = out.root / key / f"grid.{wopts.fmt}" if wopts.grid else None
        if not wopts.device_render:
            futures.append(
                out.submit(
                    _render_and_write_cpu,
                    res.sample.image,
                    res.cams.float().cpu().numpy(),
                    paths,
                    grid_path,
                    captions,
                    wopts,
                )
            )
        else:
            img = res.sample.image.to(res.cams.device, non_blocking=True)
            ov = render.overlay(img, res.cams, wopts.colormap, wopts.alpha)  # [k, 3, H, W]
            grid = render.grid(img, ov, captions) if wopts.grid else None
            blobs = _encode_on_device(
                [*ov[: len(paths)], *([grid] if wopts.grid else [])], wopts.fmt
            )
            if blobs is not None:
                targets = paths + ([grid_path] if wopts.grid else [])
                futures.append(out.submit(_write_encoded, blobs, targets))
            else:
                ov_np = ov.permute(0, 2, 3, 1).contiguous().cpu().numpy() if paths else []
                grid_rgb = _to_hwc(grid) if wopts.grid else None
                futures.append(
                    out.submit(_encode_and_write_all, ov_np, paths, grid_rgb, grid_path, wopts.fmt)
                )
        if wopts.overlays:
            outputs["overlays"] = [out.rel(p) for p in paths]
            files += outputs["overlays"]
        if wopts.grid:
            outputs["grid"] = out.rel(grid_path)
            files.append(outputs["grid"])
    if wopts.save_maps:
        p = out.root / f"{key}.npz"
        arrays = {
            "cams": res.cams.float().cpu().numpy(),
            "class_indices": np.asarray(res.class_indices, dtype=np.int64),
            "scores": np.asarray(res.scores, dtype=np.float32),
            "labels": np.asarray(labels),
            "image": np.asarray(res.sample.item.path),
        }
        if res.coverage is not None:
            arrays["coverage"] = res.coverage.cpu().numpy()
        futures.append(out.submit(lambda p=p, a=arrays: save_npz_atomic(p, **a)))
        outputs["maps"] = out.rel(p)
        files.append(outputs["maps"])
    outputs["files"] = files
    return outputs, futures


def run_info(session: api.Session, command: str, options: dict, started: float) -> dict:
    import platform

    import torchvision

    from camcli import __version__

    m = session.model
    return {
        "command": command,
        "camcli": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "model": m.name,
        "weights": m.weights_source,
        "weights_sha256": m.weights_sha256,
        "num_classes": m.num_classes,
        "preprocess": m.preprocess.to_dict(),
        "device": str(session.device),
        "batch_size": session.batch_size,
        "options": options,
        "counts": dict(session.stats),
        "wall_time_s": round(time.time() - started, 3),
    }


def run_cam(
    session: api.Session,
    items: list[inputs.InputItem],
    opts: api.CamOptions,
    wopts: CamWriteOptions,
    out: OutDir,
    *,
    on_record=None,
) -> dict:
    """The `cam` job over ``items`` (already filtered for --resume). Returns session.stats."""
    keep = wopts.overlays or wopts.grid
    out.profiler = session.profiler
    # On the CPU, writer threads running beside the multi-threaded forward pass steal a core
    # from one of its threads and stall the whole parallel region (stragglers): there the
    # previous batch's files are finished, in parallel, before the next forward starts. On a
    # GPU they overlap with it.
    sync = session.device.type == "cpu" and not wopts.device_render

    def before_forward() -> None:
        with session.profiler.stage("encode+write (waited)"):
            out.drain()

    for res in api.iter_cams(
        session, items, opts, keep_image=keep, before_forward=before_forward if sync else None
    ):
        if isinstance(res, loader.Sample):
            rec = {"image": res.item.path, "key": res.item.key, "error": res.error}
            out.record(res.item.index, rec)
        else:
            with session.profiler.stage("post-process"):
                outputs, futures = cam_outputs(res, out, wopts)
            rec = {**res.record, "key": res.sample.item.key, "outputs": outputs}
            out.record(res.sample.item.index, rec, futures)
        out.check_errors()
        if on_record:
            on_record(rec)
    out.drain()
    out.check_errors()
    return session.stats


def options_dict(*objs) -> dict:
    d: dict = {}
    for o in objs:
        d.update(asdict(o))
    return d


# --------------------------------------------------------------------------------------------
# bbox


@dataclass
class BoxOptions:
    rule: str = "paper"
    threshold: float = 0.2
    tight_loose: bool = False


def box_entries(res: api.CamResult, bopts: BoxOptions) -> list[dict]:
    """The ``boxes`` list of a bbox record (see README: JSON record schema)."""
    from camcli.cam import boxes as B
    from camcli.cam import dtbox

    preds = res.predictions
    entries: list[dict] = []

    def entry(rank: int, box, kind: str, reason: str | None = None) -> dict:
        p = preds[rank]
        e = {
            "rank": rank + 1,
            "class_index": p["class_index"],
            "label": p["label"],
            "score": p["score"],
            "box": list(box) if box is not None else None,
            "kind": kind,
        }
        if reason:
            e["reason"] = reason
        return e

    if bopts.tight_loose:
        # boxes_for_maps gives [loose, tight] per class (tight = loose when there is one box).
        dt = [[b for b, _ in lst] for lst in B.boxes_for_maps(res.cams[:3], "dt-box")]
        for g in dtbox.tight_loose_boxes(dt):
            entries.append(entry(g.class_rank, g.box, g.kind, g.reason))
        return entries
    per_class = B.boxes_for_maps(res.cams, bopts.rule, bopts.threshold)
    for r, lst in enumerate(per_class):
        if not lst:
            kind = {"paper": "largest", "all": "component", "dt-box": "loose"}[bopts.rule]
            why = (
                f"no pixel above {bopts.threshold:g} x max"
                if bopts.rule != "dt-box"
                else "no dt-box box at thresholds 20/100/110"
            )
            entries.append(entry(r, None, kind, why))
        for box, kind in lst:
            entries.append(entry(r, box, kind))
    return entries


def submission_guesses(entries: list[dict], tight_loose: bool) -> list[tuple[int, tuple]]:
    """Up to five (class_index, box) guesses: the heuristic's five, else each class's first box."""
    out: list[tuple[int, tuple]] = []
    seen: set[int] = set()
    for e in entries:
        if e["box"] is None:
            continue
        if not tight_loose:
            if e["rank"] in seen:
                continue
            seen.add(e["rank"])
        out.append((e["class_index"], tuple(e["box"])))
    return out[:5]


def draw_boxes(image: torch.Tensor, entries: list[dict]) -> np.ndarray:
    """uint8 [3, H, W] -> RGB [H, W, 3] with each box, its label and score drawn.

    Drawn from the last guess to the first, so the best class's box and label end on top."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(img)
    colours = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255)]
    lw = max(1, round(max(img.size) / 250))
    try:
        font = ImageFont.load_default(size=max(10, round(max(img.size) / 40)))
    except TypeError:  # pragma: no cover - old Pillow
        font = ImageFont.load_default()
    for e in reversed(entries):
        if e["box"] is None:
            continue
        c = colours[(e["rank"] - 1) % len(colours)]
        x0, y0, x1, y1 = e["box"]
        draw.rectangle([x0, y0, x1, y1], outline=c, width=lw)
        score = "" if e["score"] is None else f" {e['score']:.2f}"
        text = f"{e['rank']}. {e['label']}{score}" + (
            f" ({e['kind']})" if e["kind"] in ("loose", "tight") else ""
        )
        tb = draw.textbbox((x0, y0), text, font=font)
        ty = y0 - (tb[3] - tb[1]) - 2 if y0 - (tb[3] - tb[1]) - 2 >= 0 else y0 + lw
        tb = draw.textbbox((x0 + lw, ty), text, font=font)
        draw.rectangle(tb, fill=c)
        draw.text((x0 + lw, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)
