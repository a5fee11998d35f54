"""The files of one image in a ``cam`` output folder: overlays, a grid, the raw maps.

Rendering (colormap, blend) runs batched on the device of the maps; encoding and writing run in
background threads of the OutDir, so inference never waits on the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from camcli.api import cams
from camcli.atomic import save_npz_atomic, write_atomic
from camcli.data.codec import encode_image
from camcli.runs.outdir import OutDir, safe_label


@dataclass(frozen=True)
class CamWriteOptions:
    """What files each image of a ``cam`` run gets.

    Attributes:
        colormap: a :data:`camcli.cam.render.COLORMAPS` name.
        alpha: heatmap weight in the overlay, in [0, 1].
        fmt: overlay and grid format, ``"jpg"`` or ``"png"``.
        overlays: write one overlay per class, ``<key>/<rank>_<label>.<fmt>``.
        grid: write one captioned image per input, ``<key>/grid.<fmt>``: the original and its
            overlays.
        save_maps: write the raw maps, float32 [k, H, W] at original resolution, ``<key>.npz``.
        device_render: render and encode on the maps' device (the GPU path); set from the
            session by :func:`camcli.api.cam_job.run_cam_job`.
    """

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


def cam_outputs(res: cams.CamResult, out: OutDir, wopts: CamWriteOptions) -> tuple[dict, list]:
    """Render and queue the files of one image.

    On the CPU the maps are quantised here (one batched op) and the overlays are rendered with
    OpenCV in a writer thread; on a GPU they are rendered batched on the device.

    Args:
        res: the image's maps (``sample.image`` needed for overlays and grids).
        out: the output folder; files go to ``<key>/<rank>_<label>.<fmt>``,
            ``<key>/grid.<fmt>`` and ``<key>.npz`` (``cams`` float32 [k, H, W],
            ``class_indices`` int64 [k], ``scores`` float32 [k], ``labels``, ``image`` and,
            for centre-crop preprocessing, ``coverage`` bool [H, W]).
        wopts: which files.

    Returns:
        (``outputs``: the manifest's ``{"overlays", "grid", "maps", "files"}`` paths relative
        to ``out``; the futures of the queued writes).
    """
    key = res.sample.item.key
    labels = [p["label"] for p in res.predictions]
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
        futures.append(_submit_images(res, out, wopts, paths, grid_path))
        if wopts.overlays:
            outputs["overlays"] = [out.rel(p) for p in paths]
            files += outputs["overlays"]
        if wopts.grid:
            outputs["grid"] = out.rel(grid_path)
            files.append(outputs["grid"])
    if wopts.save_maps:
        p = out.root / f"{key}.npz"
        futures.append(_submit_maps(res, out, p, labels))
        outputs["maps"] = out.rel(p)
        files.append(outputs["maps"])
    outputs["files"] = files
    return outputs, futures


def _submit_images(
    res: cams.CamResult,
    out: OutDir,
    wopts: CamWriteOptions,
    paths: list[Path],
    grid_path: Path | None,
):
    """Queue the overlays (to ``paths``) and the grid (to ``grid_path`` unless None): rendered
    in a writer thread on the CPU, or here on the maps' device with ``device_render``.

    Returns:
        The future of the queued write."""
    captions = [f"{p['label']} {p['score']:.3f}" for p in res.predictions]
    if not wopts.device_render:
        return out.submit(
            _render_and_write_cpu,
            res.sample.image,
            res.cams.float().cpu().numpy(),
            paths,
            grid_path,
            captions,
            wopts,
        )
    return _submit_device_render(res, out, wopts, paths, grid_path, captions)


def _submit_device_render(
    res: cams.CamResult,
    out: OutDir,
    wopts: CamWriteOptions,
    paths: list[Path],
    grid_path: Path | None,
    captions: list[str],
):
    """Render the overlays and grid batched on the maps' device and JPEG-encode them there
    when it can; queue their writes (and, otherwise, their encoding). Returns the future."""
    from camcli.cam import render

    img = res.sample.image.to(res.cams.device, non_blocking=True)
    ov = render.overlay(img, res.cams, wopts.colormap, wopts.alpha)  # [k, 3, H, W]
    grid = render.grid(img, ov, captions) if wopts.grid else None
    blobs = _encode_on_device([*ov[: len(paths)], *([grid] if wopts.grid else [])], wopts.fmt)
    if blobs is not None:
        targets = paths + ([grid_path] if wopts.grid else [])
        return out.submit(_write_encoded, blobs, targets)
    ov_np = ov.permute(0, 2, 3, 1).contiguous().cpu().numpy() if paths else []
    grid_rgb = _to_hwc(grid) if wopts.grid else None
    return out.submit(_encode_and_write_all, ov_np, paths, grid_rgb, grid_path, wopts.fmt)


def _submit_maps(res: cams.CamResult, out: OutDir, path: Path, labels: list[str]):
    """Queue the write of the raw maps file ``path`` (see :func:`cam_outputs`); its future."""
    arrays = {
        "cams": res.cams.float().cpu().numpy(),
        "class_indices": np.asarray(res.class_indices, dtype=np.int64),
        "scores": np.asarray(res.scores, dtype=np.float32),
        "labels": np.asarray(labels),
        "image": np.asarray(res.sample.item.path),
    }
    if res.coverage is not None:
        arrays["coverage"] = res.coverage.cpu().numpy()
    return out.submit(lambda p=path, a=arrays: save_npz_atomic(p, **a))
