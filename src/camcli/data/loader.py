"""Batched loading: decode + preprocess in DataLoader workers, batches in input order.

Each :class:`~camcli.data.inputs.InputItem` becomes a :class:`Sample` (a uint8 tensor resized
to the network's input, or the item's one-line error); :func:`iter_batches` yields
:class:`Batch` objects of the good samples stacked and the failed ones. Normalisation happens
later, batched, on the device (:func:`normalize_batch`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from camcli.data.codec import (
    decode_image,
    decode_jpegs_on_device,
    in_worker,
    read_plain_jpeg,
)
from camcli.data.inputs import DEFAULT_MAX_PIXELS, InputItem
from camcli.sysinfo import available_cores


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
            fast = read_plain_jpeg(item.path, self.max_pixels)
            if fast is not None:
                return Sample(item, None, fast[1], raw=fast[0], decode_s=time.perf_counter() - t0)
        shared = _SharedAlloc() if self.keep_image and in_worker() else None
        try:
            arr = decode_image(item.path, self.max_pixels, alloc=shared)
        except ValueError as exc:
            return Sample(item, None, None, error=str(exc), decode_s=time.perf_counter() - t0)
        # [3, H, W] as a view of the decoder's [H, W, 3] memory: no copy; the CPU overlay path
        # wants HWC anyway and torchvision's uint8 resize is fastest on channels-last.
        img = (shared.tensor_of(arr) if shared else torch.from_numpy(arr)).permute(2, 0, 1)
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
    """The DataLoader's collate_fn: good samples stacked into ``x`` (their tensors released),
    samples left for the device decoder in ``raw``, failed ones in ``failed``."""
    import torch

    good = [s for s in samples if s.error is None and s.raw is None]
    raw = [s for s in samples if s.error is None and s.raw is not None]
    bad = [s for s in samples if s.error is not None]
    x = torch.stack([s.tensor for s in good]) if good else None
    if x is not None:
        for s in good:
            s.tensor = None
    if in_worker():
        _to_shared_memory(x, good)
    return Batch(good, x, bad, raw)


class _SharedAlloc:
    """An allocator for :func:`camcli.data.codec.decode_image` in a DataLoader worker: the
    kept image is decoded straight into shared memory, so that it reaches the main process
    without the copy :func:`_to_shared_memory` would make (a second image-sized block in the
    worker: 0.5 GB at 13000 x 13000)."""

    def __init__(self) -> None:
        self.tensor = None

    def __call__(self, shape: tuple[int, ...]):
        import math

        import torch

        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        self.tensor = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
        return self.tensor.numpy()

    def tensor_of(self, arr):
        """The shared tensor when ``arr`` is its memory, else a tensor over ``arr``."""
        import torch

        t = self.tensor
        if t is not None and arr.shape == tuple(t.shape) and arr.ctypes.data == t.data_ptr():
            return t
        return torch.from_numpy(arr)


def _to_shared_memory(x, samples: list[Sample]) -> None:
    """In a DataLoader worker: the batch's tensors moved to shared memory here, in the worker's
    own thread. torch would otherwise do it while pickling the batch in the worker's queue
    feeder thread, where a failure (a full ``/dev/shm``, a file-size limit) only prints a
    traceback and the main process waits for the batch forever; raised here, it reaches the
    main process (:func:`iter_batches` names the fix)."""
    for t in [x, *(s.image for s in samples)]:
        if t is not None and not t.is_shared():
            t.share_memory_()


def device_decode(batch: Batch, preprocess, device, *, keep_image: bool) -> Batch:
    """Decode ``batch.raw`` JPEGs on ``device`` (nvJPEG on CUDA, one batched call), preprocess
    them there, and merge them with the CPU-decoded samples in input order; ``x`` ends on the
    device. A file the device decoder refuses is decoded on the CPU instead (same errors)."""
    import torch

    if not batch.raw:
        if batch.x is not None:
            batch.x = batch.x.to(device, non_blocking=True)
        return batch
    imgs = decode_jpegs_on_device([s.raw for s in batch.raw], device)
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


def worker_init(_: int) -> None:
    """DataLoader worker start-up: one torch thread, OpenCV on the calling thread; SIGTERM
    (sent to the whole process group by Slurm, Kubernetes) ends the worker quietly, so the
    main process handles it alone, as Ctrl-C (no "worker killed by signal" traceback)."""
    import os
    import signal

    import torch

    torch.set_num_threads(1)
    sequential_opencv()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def sequential_opencv() -> None:
    """Run OpenCV calls on the calling thread (no OpenCV thread pool), process-wide.

    OpenCV's pool busy-waits (``sched_yield``) after every parallel call; on a small CPU those
    spinning threads steal cycles from torch's forward pass (70,000 yields in one 256-image
    ``cam`` run on 2 cores). camcli already runs its OpenCV work in several writer threads.
    """
    import cv2

    cv2.setNumThreads(0)


def default_workers() -> int:
    """DataLoader workers when none are asked for: the cores this process may use, 1 to 4."""
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
        worker_init_fn=worker_init if workers else None,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )
    try:
        yield from loader
    except RuntimeError as exc:
        if not any(m in str(exc) for m in _SHM_FAILURES):
            raise
        from camcli.errors import WriteError

        raise WriteError(
            "the decoder workers cannot pass images through shared memory (/dev/shm full, or a "
            "file-size limit such as ulimit -f): free /dev/shm (Docker: --shm-size 1g), raise "
            "the limit, or run with --workers 0"
        ) from None


_SHM_FAILURES = ("unable to resize file", "unable to allocate shared memory")
"""What torch's error says when a worker cannot allocate shared memory for a batch (a
file-size limit; a full ``/dev/shm``)."""
