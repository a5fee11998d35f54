"""Labelled images for training: folder scanning, the dataset, the sampler and the loader.

:func:`scan_folders` reads an ImageFolder tree (one folder per class, or ``train/`` + ``val/``
holding them). :class:`FolderImages` decodes with :mod:`camcli.data.loader` and augments with a
per-(seed, epoch, image) random stream; :class:`EpochSampler` draws the order from (seed, epoch)
and shards it across ranks. So a run is reproducible whatever the worker count, and a resumed
run repeats the epochs it lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camcli.data import codec, inputs
from camcli.data.loader import preprocess_uint8, worker_init
from camcli.errors import TrainingError
from camcli.models.registry import Preprocess
from camcli.sysinfo import available_cores


@dataclass
class FolderData:
    """Labelled images: ``(path, class_index)`` pairs and the class names (sorted folder names)."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    val_source: str


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_of(d: Path) -> list[str]:
    return [str(p) for p in inputs.walk_images(d)]


def _is_split_layout(root: Path) -> bool:
    train = root / "train"
    return train.is_dir() and any(p.is_dir() for p in train.iterdir())


def scan_folders(
    data: str | Path, *, val: str | Path | None = None, val_split: float = 0.1, seed: int = 0
) -> FolderData:
    """Read an ImageFolder tree.

    Args:
        data: one folder per class, or ``train/`` (and optionally ``val/``) holding them.
        val: a folder of class folders to validate on [default: ``data/val`` if present].
        val_split: without a validation folder, the share of each class's images held out
            (at least one per class with two or more images).
        seed: draws that split.

    Returns:
        The classes (the training folder names, sorted), training and validation images, and
        where validation came from.

    Raises:
        TrainingError: ``data`` is not a folder, holds fewer than two class folders or an empty
            one; a validation folder that is missing or names a class not trained on.
    """
    root = Path(data)
    if not root.is_dir():
        raise TrainingError(f"DATA {root}: not a folder; give a folder of class folders")
    train_root = root / "train" if _is_split_layout(root) else root
    classes, per_class = _training_classes(train_root)
    val_dir = Path(val) if val is not None else None
    if val_dir is None and train_root != root and (root / "val").is_dir():
        val_dir = root / "val"
    if val_dir is not None:
        train = [(p, ci) for ci, imgs in enumerate(per_class) for p in imgs]
        return FolderData(classes, train, _validation_folder(val_dir, classes), str(val_dir))
    train, val_items = _split_per_class(per_class, val_split, seed)
    source = f"{val_split:g} of {train_root} per class (seed {seed})" if val_items else "none"
    return FolderData(classes, train, val_items, source)


def _training_classes(train_root: Path) -> tuple[list[str], list[list[str]]]:
    """The class names and each class's images; at least two classes, none of them empty."""
    dirs = _class_dirs(train_root)
    if not dirs:
        raise TrainingError(
            f"{train_root}: no class folders; DATA must hold one folder per class "
            "(or train/ and val/ holding them)"
        )
    classes = [d.name for d in dirs]
    if len(classes) < 2:
        raise TrainingError(
            f"{train_root}: found one class folder ({classes[0]}); need two or more"
        )
    per_class: list[list[str]] = []
    for d in dirs:
        imgs = _images_of(d)
        if not imgs:
            raise TrainingError(
                f"class folder {d} holds no images ({', '.join(sorted(inputs.IMAGE_EXTENSIONS))}); "
                "remove it or add images"
            )
        per_class.append(imgs)
    return classes, per_class


def _validation_folder(val_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """The labelled images of a validation folder whose class folders are training classes."""
    if not val_dir.is_dir():
        raise TrainingError(f"--val {val_dir}: not a folder")
    items: list[tuple[str, int]] = []
    for d in _class_dirs(val_dir):
        if d.name not in classes:
            raise TrainingError(
                f"validation folder {d} is not a training class; classes are: "
                f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}"
            )
        items += [(p, classes.index(d.name)) for p in _images_of(d)]
    return items


def _split_per_class(
    per_class: list[list[str]], val_split: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, val): ``val_split`` of each class held out, drawn from ``[seed, class_index]``."""
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for ci, imgs in enumerate(per_class):
        n_val = 0
        if val_split > 0 and len(imgs) >= 2:
            n_val = min(len(imgs) - 1, max(1, round(val_split * len(imgs))))
        order = np.random.default_rng([seed, ci]).permutation(len(imgs))
        chosen = set(order[:n_val].tolist())
        for j, p in enumerate(imgs):
            (val if j in chosen else train).append((p, ci))
    return train, val


def train_resize_size(size: int) -> int:
    """Side of the resize before the random crop: ``round(S * 256 / 224)`` (256 for 224)."""
    return round(size * 256 / 224)


class FolderImages:
    """Map-style dataset of ``(path, label)`` pairs, indexed by ``(index, epoch)``.

    Training: anisotropic resize to ``R x R`` (R = :func:`train_resize_size`), random ``S x S``
    crop, horizontal flip at p = 0.5, all drawn from ``np.random.default_rng([seed, epoch,
    index])``. Evaluation: anisotropic resize to ``S x S`` (camcli's inference preprocessing).
    Returns ``(uint8 [3, S, S] tensor | None, label, errors)``; a training image that cannot be
    decoded is replaced by the next decodable one (so batches keep their size under DDP) and its
    error travels along as ``(path, reason)``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        preprocess: Preprocess,
        *,
        train: bool,
        seed: int = 0,
        max_pixels: int = inputs.DEFAULT_MAX_PIXELS,
    ) -> None:
        self.samples = list(samples)
        self.preprocess = preprocess
        self.train = train
        self.seed = seed
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int, epoch: int) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        arr = codec.decode_image(self.samples[i][0], self.max_pixels)
        img = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        if not self.train:
            return preprocess_uint8(img, replace(self.preprocess, resize="resize"))
        s = self.preprocess.input_size
        r = train_resize_size(s)
        img = preprocess_uint8(img, replace(self.preprocess, input_size=r, resize="resize"))
        rng = np.random.default_rng([self.seed, epoch, i])
        top, left = (int(v) for v in rng.integers(0, r - s + 1, size=2))
        img = img[:, top : top + s, left : left + s]
        if rng.random() < 0.5:
            img = F.horizontal_flip(img)
        return img.contiguous()

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor | None, int, list]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        errors: list[tuple[str, str]] = []
        for attempt in range(min(len(self.samples), 50)):
            j = (i + attempt) % len(self.samples)
            try:
                return self._load(j, epoch), self.samples[j][1], errors
            except ValueError as exc:
                errors.append((self.samples[j][0], str(exc)))
                if not self.train:
                    return None, self.samples[j][1], errors
        raise TrainingError(f"50 images in a row cannot be decoded, e.g. {errors[-1][0]}")


def collate_images(items: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
    """-> (x uint8 [B, 3, S, S] | None, y int64 [B] | None, errors [(path, reason)])."""
    good = [(x, y) for x, y, _ in items if x is not None]
    errors = [e for _, _, errs in items for e in errs]
    if not good:
        return None, None, errors
    return (
        torch.stack([x for x, _ in good]),
        torch.tensor([y for _, y in good], dtype=torch.int64),
        errors,
    )


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)``: a permutation drawn from (seed, epoch) (or the identity),
    sharded ``rank::world``. Training shards are padded by wrapping around so every rank gets
    the same count; evaluation shards are not padded (every image counted once)."""

    def __init__(
        self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields."""
        self.epoch = epoch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            if self.n and self.n % self.world:
                order += order[: self.world - self.n % self.world]
        else:
            order = list(range(self.n))
        return order[self.rank :: self.world]

    def __len__(self) -> int:
        return len(self._indices())

    def __iter__(self):
        e = self.epoch
        return iter([(i, e) for i in self._indices()])


def make_loader(
    dataset: FolderImages,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over :class:`FolderImages` with an :class:`EpochSampler` (set the epoch
    through :func:`set_loader_epoch`); persistent workers, created once.

    Shuffled loaders drop the last partial batch (when there is more than one batch); batches
    are ``(x uint8 [B, 3, S, S] | None, y int64 [B] | None, errors)`` (:func:`collate_images`).
    """
    sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world=world)
    drop_last = shuffle and len(sampler) > batch_size
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_images,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
    )


def images_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """How many of ``n`` training images one epoch trains on: each of the ``world`` shards
    (``ceil(n / world)`` images, :class:`EpochSampler`) in whole batches of ``batch_size``
    when it holds more than one batch, as :func:`make_loader` drops the last partial batch
    (the linear probe's batches too). At most ``n``."""
    per_rank = -(-n // max(1, world))
    used = per_rank - per_rank % batch_size if per_rank > batch_size else per_rank
    return min(n, used * max(1, world))


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a loader (or its sampler) which epoch comes next, where it listens."""
    for obj in (
        loader,
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def default_workers(device: torch.device, world: int = 1) -> int:
    """Loader workers per training process.

    Args:
        device: the training device.
        world: training processes on this machine (they share its cores).

    Returns:
        On CUDA up to 8; on CPU half the cores, at most 4 (they share them with the training
        threads).
    """
    cores = max(1, available_cores() // max(1, world))
    if device.type == "cuda":
        return max(1, min(8, cores))
    return min(4, cores // 2)
