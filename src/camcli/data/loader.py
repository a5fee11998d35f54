"""Inputs: discovery, decoding, preprocessing and batched loading.

Inputs are files, directories (recursive, image extensions, sorted) or ``-`` for newline
separated paths on stdin. Every input becomes one :class:`InputItem`; decoding honours EXIF
orientation and turns greyscale, palette, RGBA, CMYK and 16-bit images into 8-bit RGB.
Undecodable files become per-item errors, never exceptions.
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO as _BytesIO
from pathlib import Path, PurePosixPath

import numpy as np

from camcli.sysinfo import available_cores

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's decompression-bomb error limit


@dataclass(frozen=True)
class InputItem:
    """One input: ``path`` as given/found, ``key`` its output name (relative path, no extension,
    unique within the run, POSIX separators, never absolute and never containing ``..``)."""

    index: int
    path: str
    key: str


def _safe_part(part: str) -> str:
    # Undecodable bytes (surrogate escapes) and separators become '_'; '..' can never survive.
    out = "".join(c if (c.isprintable() and not 0xDC80 <= ord(c) <= 0xDCFF) else "_" for c in part)
    out = out.replace("/", "_").replace("\\", "_")
    return "_" if out in ("", ".", "..") else out


# Names an output folder keeps for itself (camcli.runs.outdir): no input's key may take them.
_RESERVED = re.compile(r"^\.?(manifest|run)(\.shard-\d+-of-\d+)?\.jsonl?(\.tmp)?$", re.IGNORECASE)


def _key_for(rel: PurePosixPath) -> str:
    parts = [_safe_part(p) for p in rel.parts]
    last = parts[-1]
    stem = last[: -len(rel.suffix)] if rel.suffix and last.endswith(rel.suffix) else last
    parts[-1] = _safe_part(stem)
    if _RESERVED.match(parts[0]):  # an image named manifest.jsonl.jpg or run.json.png
        parts[0] += "_"
    return "/".join(parts)


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            continue
        if ident in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(ident)
        dirnames.sort()
        for f in filenames:
            if Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / f)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def discover(inputs: Iterable[str], stdin: Iterable[str] | None = None) -> list[InputItem]:
    """Expand inputs into items in a deterministic order.

    Directories are walked recursively (image extensions only, sorted by relative path; their key
    is the path relative to the directory). A file argument's key is its name without extension.
    Keys that would collide (``a.jpg`` and ``a.png``, or two roots with the same relative path)
    keep their extension, then gain a numeric suffix, so no two inputs share an output name.
    A path that does not exist still becomes an item: its record will carry the error.
    """
    pairs: list[tuple[str, PurePosixPath]] = []
    for raw in inputs:
        if raw == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                line = line.rstrip("\n").rstrip("\r")
                if line.strip():
                    pairs.append((line, PurePosixPath(Path(line).name or "_")))
            continue
        p = Path(raw)
        if p.is_dir():
            for f in _walk(p):
                pairs.append((str(f), PurePosixPath(f.relative_to(p).as_posix())))
        else:
            pairs.append((raw, PurePosixPath(p.name or "_")))
    keys = [_key_for(rel) for _, rel in pairs]
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    used: set[str] = set()
    items: list[InputItem] = []
    for i, ((path, rel), key) in enumerate(zip(pairs, keys)):
        if counts[key] > 1 and rel.suffix:
            key = f"{key}_{_safe_part(rel.suffix[1:])}"
        base, n = key, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        items.append(InputItem(i, path, key))
    return items


def decode_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into an RGB uint8 array [H, W, 3], EXIF orientation applied.

    Raises ValueError with a one-line reason on any failure (missing, unreadable, not an image,
    truncated, decompression bomb, zero-sized).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding
    _check_regular_file(path)
    try:
        with open(path, "rb") as fh, Image.open(fh) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(
                    f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                    "(decompression bomb?); raise --max-pixels if it is genuine"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not an image") from None
    except PermissionError:
        raise ValueError("permission denied: the file cannot be read") from None
    except UnidentifiedImageError:
        raise ValueError("not an image file (cannot identify its format)") from None
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot decode image ({msg})") from None


def _check_regular_file(path: str) -> None:
    """A one-line ValueError for what is no image file at all, before opening it: broken or
    looping symbolic links, FIFOs (opening one would block), devices, empty files."""
    import errno
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ValueError(
                f"file not found (broken symbolic link to {os.readlink(path)!r})"
            ) from None
        raise ValueError("file not found") from None
    except PermissionError:
        raise ValueError("permission denied: the file cannot be read") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("cannot decode image (symbolic link loop)") from None
        raise ValueError(f"cannot open ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file (a FIFO, socket or device), not an image")
    if st.st_size == 0:
        raise ValueError("not an image file (empty: 0 bytes)")


def _to_rgb(im) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            arr8 = (
                np.round(arr.astype(np.float64) * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
            )
        out = np.repeat(arr8[:, :, None], 3, axis=2)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        out = np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode in ("RGB",):
        out = np.asarray(im)
    elif mode in ("P", "PA") and "transparency" in im.info or mode in ("RGBA", "LA", "PA"):
        out = np.asarray(im.convert("RGBA"))[:, :, :3]
    else:
        out = np.asarray(im.convert("RGB"))
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError("image has zero width or height")
    return np.array(out, dtype=np.uint8, order="C", copy=True)


@dataclass
class Sample:
    """A decoded, preprocessed input (or its error)."""

    item: InputItem
    tensor: object | None  # torch uint8 [3, S, S]
    size: tuple[int, int] | None  # original (H, W)
    image: object | None = None  # torch uint8 [3, H, W] original, when kept
    error: str | None = None
    decode_s: float = 0.0  # decode + preprocess seconds in the worker (--profile)
    raw: object | None = None  # JPEG bytes (uint8 tensor) left for the device decoder


def preprocess_uint8(img, preprocess) -> object:
    """[3, H, W] uint8 tensor -> [3, S, S] uint8 tensor per the spec's geometry.

    Resize with antialias (torchvision semantics); normalisation happens later, batched.
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    interp = {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[preprocess.interpolation]
    s = preprocess.input_size
    if preprocess.resize == "resize":
        out = F.resize(img, [s, s], interpolation=interp, antialias=True)
    else:
        out = F.resize(img, preprocess.resize_size, interpolation=interp, antialias=True)
        out = F.center_crop(out, [s, s])
    return out.contiguous() if isinstance(out, torch.Tensor) else out


def normalize_batch(x, preprocess, dtype=None):
    """uint8 [B, 3, S, S] (any device) -> float normalised, ImageNet mean/std of the spec."""
    import torch

    dtype = dtype or torch.float32
    mean = torch.tensor(preprocess.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(preprocess.std, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (x.to(dtype) - mean) / std


class ImageDataset:
    """Map-style dataset over items: decode + preprocess in DataLoader workers."""

    def __init__(
        self,
        items: list[InputItem],
        preprocess,
        *,
        keep_image: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        raw_jpeg: bool = False,
    ) -> None:
        self.items = items
        self.preprocess = preprocess
        self.keep_image = keep_image
        self.max_pixels = max_pixels
        self.raw_jpeg = raw_jpeg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        import torch

        item = self.items[i]
        t0 = time.perf_counter()
        if self.raw_jpeg:
            fast = _jpeg_fast_path(item.path, self.max_pixels)
            if fast is not None:
                return Sample(item, None, fast[1], raw=fast[0], decode_s=time.perf_counter() - t0)
        try:
            arr = decode_image(item.path, self.max_pixels)
        except ValueError as exc:
            return Sample(item, None, None, error=str(exc), decode_s=time.perf_counter() - t0)
        # [3, H, W] as a view of the decoder's [H, W, 3] memory: no copy; the CPU overlay path
        # wants HWC anyway and torchvision's uint8 resize is fastest on channels-last.
        img = torch.from_numpy(arr).permute(2, 0, 1)
        try:
            t = preprocess_uint8(img, self.preprocess)
        except Exception as exc:  # noqa: BLE001
            return Sample(item, None, None, error=f"cannot preprocess image ({exc})")
        keep = img if self.keep_image else None
        size = (arr.shape[0], arr.shape[1])
        return Sample(item, t, size, image=keep, decode_s=time.perf_counter() - t0)


@dataclass
class Batch:
    """Good samples stacked (``x`` uint8 [B, 3, S, S]) and the failed ones, in input order.

    With device decoding, ``raw`` holds the samples whose JPEG bytes (``Sample.raw``) are still
    to be decoded on the device (:func:`device_decode` merges them into ``samples`` / ``x``).
    """

    samples: list[Sample]  # good ones, aligned with x
    x: object | None
    failed: list[Sample]
    raw: list[Sample] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader (pin_memory=True): page-locked input for async copies."""
        if self.x is not None:
            self.x = self.x.pin_memory()
        return self


def collate(samples: list[Sample]) -> Batch:
    import torch

    good = [s for s in samples if s.error is None and s.raw is None]
    raw = [s for s in samples if s.error is None and s.raw is not None]
    bad = [s for s in samples if s.error is not None]
    x = torch.stack([s.tensor for s in good]) if good else None
    if x is not None:
        for s in good:
            s.tensor = None
    return Batch(good, x, bad, raw)


def _jpeg_fast_path(path: str, max_pixels: int):
    """(bytes tensor, (H, W)) when the file is a plain baseline RGB/grey JPEG with no EXIF
    rotation that a device decoder can take as is; None otherwise (decode on the CPU)."""
    import torch
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:3] != b"\xff\xd8\xff":
            return None
        with Image.open(_BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if im.getexif().get(0x0112, 1) not in (1, None):
                return None
            w, h = im.size
        if w * h > max_pixels or w < 1 or h < 1:
            return None
    except Exception:  # noqa: BLE001 - anything odd goes through the CPU path and its errors
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), (h, w)


def device_decode(batch: Batch, preprocess, device, *, keep_image: bool) -> Batch:
    """Decode ``batch.raw`` JPEGs on ``device`` (nvJPEG on CUDA, one batched call), preprocess
    them there, and merge them with the CPU-decoded samples in input order; ``x`` ends on the
    device. A file the device decoder refuses is decoded on the CPU instead (same errors)."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not batch.raw:
        if batch.x is not None:
            batch.x = batch.x.to(device, non_blocking=True)
        return batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            imgs = decode_jpeg([s.raw for s in batch.raw], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            imgs = [None] * len(batch.raw)
    decoded: list[Sample] = []
    for s, img in zip(batch.raw, imgs):
        if img is None or tuple(img.shape[1:]) != s.size:
            try:
                arr = decode_image(s.item.path)
            except ValueError as exc:
                s.error, s.raw = str(exc), None
                batch.failed.append(s)
                continue
            img = torch.from_numpy(arr).permute(2, 0, 1).to(device)
        s.raw = None
        s.tensor = preprocess_uint8(img, preprocess)
        s.image = img if keep_image else None
        decoded.append(s)
    cpu_x = batch.x.to(device, non_blocking=True) if batch.x is not None else None
    pairs = [(s, cpu_x[j]) for j, s in enumerate(batch.samples)] if cpu_x is not None else []
    pairs += [(s, s.tensor) for s in decoded]
    pairs.sort(key=lambda p: p[0].item.index)
    for s in decoded:
        s.tensor = None
    batch.samples = [p[0] for p in pairs]
    batch.x = torch.stack([p[1] for p in pairs]) if pairs else None
    batch.failed.sort(key=lambda s: s.item.index)
    batch.raw = []
    return batch


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    sequential_opencv()


def sequential_opencv() -> None:
    """Run OpenCV calls on the calling thread (no OpenCV thread pool), process-wide.

    OpenCV's pool busy-waits (``sched_yield``) after every parallel call; on a small CPU those
    spinning threads steal cycles from torch's forward pass (70,000 yields in one 256-image
    ``cam`` run on 2 cores). camcli already runs its OpenCV work in several writer threads.
    """
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover
        pass


def default_workers() -> int:
    return max(1, min(4, available_cores()))


def iter_batches(
    items: list[InputItem],
    preprocess,
    *,
    batch_size: int,
    workers: int | None = None,
    keep_image: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pin_memory: bool = False,
    raw_jpeg: bool = False,
) -> Iterator[Batch]:
    """Decode in DataLoader workers, yield :class:`Batch` objects in input order.

    raw_jpeg: plain JPEGs are only read (not decoded) in the workers, for :func:`device_decode`.
    """
    import torch

    ds = ImageDataset(
        items, preprocess, keep_image=keep_image, max_pixels=max_pixels, raw_jpeg=raw_jpeg
    )
    workers = default_workers() if workers is None else workers
    workers = min(workers, max(1, len(items) // max(1, batch_size)))
    if len(items) == 0:
        return
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )
    yield from loader
