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
from camcli.atomic import AtomicFile, open_folder, save_npz_atomic, write_atomic
from camcli.cam.overlay_jpeg import LOW_MEMORY_PIXELS, JpegOverlays
from camcli.data.codec import encode_image
from camcli.runs.outdir import OutDir, safe_label
from camcli.sysinfo import release_free_memory


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
        save_maps: write the maps, ``<key>.npz``: a v2 map file (raw maps at feature
            resolution and their geometry, :mod:`camcli.data.mapfiles_v2`) or, with
            ``maps_format="full"``, float16 [k, H, W] normalised maps at the original size,
            compressed.
        maps_format: ``"small"`` (v2, the default) or ``"full"``.
        device_render: render and encode on the maps' device (the GPU path); set from the
            session by :func:`camcli.api.cam_job.run_cam_job`.
    """

    colormap: str = "jet"
    alpha: float = 0.5
    fmt: str = "jpg"
    overlays: bool = True
    grid: bool = False
    save_maps: bool = False
    maps_format: str = "small"
    device_render: bool = False  # render + encode on the maps' device (GPU path)


def _encode_and_write(path: Path, rgb: np.ndarray, fmt: str) -> None:
    write_atomic(path, encode_image(rgb, fmt))


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).contiguous().cpu().numpy()


def _render_and_write_cpu(
    image: torch.Tensor,
    res: cams.CamResult,
    paths: list[Path],
    grid_path: Path | None,
    captions: list[str],
    wopts: CamWriteOptions,
) -> None:
    """CPU path, in a writer thread: upsample, quantise, overlay, encode, write, one class at
    a time, so that one full-size map and one overlay are in memory at once. JPEG overlays are
    blended in the encoder's YCbCr planes (:class:`camcli.cam.overlay_jpeg.JpegOverlays`),
    PNG ones in RGB with OpenCV (GIL released in both); grid panels are made at their panel
    size as the classes go.

    image: uint8 [3, H, W], usually a view of the decoder's [H, W, 3] array (no copy here);
    res: the maps (:meth:`camcli.api.cams.CamResult.cam`, float32 [H, W] in [0, 1]).
    """

    import contextlib

    from camcli.cam import render

    rgb = image.permute(1, 2, 0).contiguous().numpy()
    h, w = rgb.shape[:2]
    ph, pw = render.grid_panel_size(h, w, res.k + 1) if grid_path is not None else (h, w)
    small: list[np.ndarray] = []
    rgb_small = _panel(rgb, ph, pw) if grid_path is not None else None
    # JPEG overlays are blended in the encoder's YCbCr planes (no RGB overlay per class)
    jpeg = JpegOverlays(rgb, wopts.colormap, wopts.alpha) if paths and wopts.fmt == "jpg" else None
    huge = h * w >= LOW_MEMORY_PIXELS
    # the image's folder is opened once for its k overlays and grid (not once per file)
    folder = (paths[0] if paths else grid_path).parent
    with open_folder(folder) if paths or grid_path else contextlib.nullcontext() as dfd:
        for i in range(res.k):
            if huge:
                release_free_memory()  # the last map's strips, before this one's full-size arrays
            levels = _levels(res, i, h, w)
            write = i < len(paths)
            ov = None
            if write and jpeg is None:
                ov = render.overlay_cv2(rgb, levels, wopts.colormap, wopts.alpha)  # RGB
            if grid_path is not None:
                small.append(_grid_panel(ov, rgb_small, levels, wopts))
            if write:
                if jpeg is not None:
                    blob = jpeg.encode(levels)
                else:
                    _rgb_to_bgr_inplace(ov)
                    blob = encode_image(ov, wopts.fmt, bgr=True)
                ov = None  # the full-size overlay goes before the write
                write_atomic(paths[i], blob, dir_fd=dfd)
            del levels, ov
        if grid_path is not None:
            img_small = torch.from_numpy(rgb_small).permute(2, 0, 1)
            ovs = torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2)
            g = render.grid(img_small, ovs, captions)
            write_atomic(grid_path, encode_image(_to_hwc(g), wopts.fmt), dir_fd=dfd)


def _grid_panel(
    ov: np.ndarray | None, rgb_small: np.ndarray, levels: np.ndarray, wopts: CamWriteOptions
) -> np.ndarray:
    """A class's grid panel, uint8 RGB at the panel size of ``rgb_small``: ``ov`` (the
    full-size RGB overlay, swapped to BGR in place later: copied) downscaled when there is
    one; else the overlay made at the panel size (the image and levels downscaled first: no
    full-size RGB overlay for the grid of a huge image)."""
    from camcli.cam import render

    ph, pw = rgb_small.shape[:2]
    if ov is not None:
        return _panel(ov, ph, pw, copy=True)
    return render.overlay_cv2(rgb_small, _panel(levels, ph, pw), wopts.colormap, wopts.alpha)


def _levels(res: cams.CamResult, i: int, h: int, w: int) -> np.ndarray:
    """Map ``i`` of ``res`` on the image, quantised to uint8 [h, w] levels, upsampled and
    quantised in row strips on large images (one full-size float strip at a time)."""
    from camcli.cam import render

    levels = None
    # a bilinear upsampling of a map without negatives has none: no clipping pass
    nonneg = (
        res.full is None and res.interpolation == "bilinear" and bool((res.small[i] >= 0).all())
    )
    for y0, y1, strip in res.cam_rows(i):  # one strip (the map) unless the image is large
        lv = render.levels_cv2(strip, inplace=res.full is None, nonneg=nonneg)
        if y0 == 0 and y1 == h:
            return lv
        if levels is None:
            levels = np.empty((h, w), dtype=np.uint8)
        levels[y0:y1] = lv
    return levels


def _rgb_to_bgr_inplace(img: np.ndarray) -> None:
    """Swap the channels of a C-contiguous uint8 [H, W, 3] array in place, in row strips
    (OpenCV copies a source that is also its destination: a strip's copy, not the image's)."""
    import cv2

    rows = max(1, (1 << 22) // max(1, img.shape[1]))
    for y0 in range(0, img.shape[0], rows):
        part = img[y0 : y0 + rows]
        cv2.cvtColor(part, cv2.COLOR_RGB2BGR, dst=part)


def _panel(rgb: np.ndarray, h: int, w: int, copy: bool = False) -> np.ndarray:
    """uint8 [H, W(, C)] -> [h, w(, C)]: unchanged (a copy with ``copy``) at that size, else
    downscaled (pixel area)."""
    import cv2

    if rgb.shape[:2] == (h, w):
        return rgb.copy() if copy else rgb
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


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
            ``<key>/grid.<fmt>`` and ``<key>.npz`` (see :func:`_submit_maps`).
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
        futures.append(_submit_maps(res, out, p, labels, wopts.maps_format))
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
            res,
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

    maps = res.cams  # [k, H, W] upsampled on the maps' device, batched
    img = res.sample.image.to(maps.device, non_blocking=True)
    ov = render.overlay(img, maps, wopts.colormap, wopts.alpha)  # [k, 3, H, W]
    grid = render.grid(img, ov, captions) if wopts.grid else None
    blobs = _encode_on_device([*ov[: len(paths)], *([grid] if wopts.grid else [])], wopts.fmt)
    if blobs is not None:
        targets = paths + ([grid_path] if wopts.grid else [])
        return out.submit(_write_encoded, blobs, targets)
    ov_np = ov.permute(0, 2, 3, 1).contiguous().cpu().numpy() if paths else []
    grid_rgb = _to_hwc(grid) if wopts.grid else None
    return out.submit(_encode_and_write_all, ov_np, paths, grid_rgb, grid_path, wopts.fmt)


def _submit_maps(res: cams.CamResult, out: OutDir, path: Path, labels: list[str], fmt: str):
    """Queue the write of the maps file ``path`` (see :func:`cam_outputs`); its future.

    ``fmt="small"``: a v2 map file (:func:`camcli.data.mapfiles_v2.v2_arrays`), a few hundred
    bytes per class. ``fmt="full"``: float16 [k, H, W] normalised maps at the original size
    (``coverage`` bool [H, W] for centre-crop preprocessing), ``np.savez_compressed``."""
    meta = {
        "class_indices": np.asarray(res.class_indices, dtype=np.int64),
        "scores": np.asarray(res.scores, dtype=np.float32),
        "labels": np.asarray(labels),
        "image": np.asarray(res.sample.item.path),
    }
    if fmt == "full":
        return out.submit(_write_full_maps, path, res, meta)
    from camcli.data.mapfiles_v2 import v2_arrays

    arrays = v2_arrays(
        res.raw.float().cpu().numpy(),
        class_indices=meta["class_indices"],
        scores=meta["scores"],
        labels=meta["labels"],
        image=res.sample.item.path,
        geometry=res.geometry.to_dict(),
        norm=res.norm,
        interpolation=res.interpolation,
    )
    return out.submit(lambda p=path, a=arrays: save_npz_atomic(p, **a))


def _write_full_maps(path: Path, res: cams.CamResult, meta: dict) -> None:
    """The ``full`` maps file, in a writer thread: every map upsampled, one at a time, into a
    float16 [k, H, W] array, written compressed and atomically."""

    h, w = res.sample.size
    full = np.empty((res.k, h, w), dtype=np.float16)
    for i in range(res.k):
        full[i] = res.cam(i).cpu().numpy()
    arrays = {"cams": full, **meta}
    cover = res.coverage
    if cover is not None:
        arrays["coverage"] = cover.cpu().numpy()
    with AtomicFile(path) as fh:
        np.savez_compressed(fh, **arrays)
