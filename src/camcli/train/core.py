"""Training GAP networks: fine-tuning, from-scratch training and the linear probe.

Layers, from the bottom:

- data: :func:`scan_folders` (ImageFolder layout, or ``train/`` + ``val/`` inside),
  :class:`FolderImages` (decode with
  :mod:`camcli.data.loader`, augment with a per-(seed, epoch, image)
  random stream), :class:`EpochSampler` (order from (seed, epoch), sharded across ranks), so a
  run is reproducible whatever the worker count and a resumed run repeats the epochs it lost.
- the loop: :func:`fit` trains any module over injected loaders (batches ``(x, y)`` or
  ``(x, y, errors)``; ``x`` uint8 [B, 3, S, S] is normalised on the device, float is taken as
  already normalised), validates, keeps ``RUN/last.pt`` / ``RUN/best.pt`` / ``RUN/metrics.jsonl``
  on rank 0 and resumes from a checkpoint's optimizer, scheduler and RNG state.
- the front door: :func:`train_folder` (what ``camcli train`` runs): recipe defaults, model
  building with backbone weights, DistributedDataParallel under ``torchrun``, the linear probe
  (``freeze_backbone``: pooled features computed once, only the linear layer trained).

Checkpoints (``format: camcli-checkpoint``) load with ``torch.load(weights_only=True)`` and hold
everything ``camcli predict/cam/bbox --weights`` needs: see :func:`make_checkpoint`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from camcli import __version__
from camcli.atomic import AtomicFile
from camcli.data import codec, inputs
from camcli.data.loader import normalize_batch, preprocess_uint8, worker_init
from camcli.errors import ModelError, TrainingError
from camcli.models.gap import GapModel
from camcli.models.load import build_model, entry_for
from camcli.models.registry import ModelEntry, Preprocess
from camcli.runs.device import resolve_device
from camcli.sysinfo import available_cores, torchrun_env

CHECKPOINT_FORMAT = "camcli-checkpoint"
CHECKPOINT_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
POOL_NAMES = {"gap": "avg", "gmp": "max", "avg": "avg", "max": "max"}


# --------------------------------------------------------------------------------------------
# Options and recipes
# --------------------------------------------------------------------------------------------


@dataclass
class TrainOptions:
    """Everything that defines a run. ``None`` means "the recipe's default" (see
    :func:`resolve_options`); a resolved copy has every field set and is what checkpoints keep.
    """

    model: str
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    image_size: int | None = None
    pretrained: bool | None = None
    head_lr_mult: float | None = None
    freeze_backbone: bool = False
    pool: str | None = None  # "avg" | "max" (CLI: gap | gmp)
    precision: str = "fp32"
    workers: int | None = None
    seed: int = 0
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    label_smoothing: float = 0.0
    val_split: float = 0.1
    arch_options: dict = field(default_factory=dict)
    recipe: str | None = None  # filled in by resolve_options: finetune | scratch | linear-probe

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Recipe defaults. finetune: SPEC section 6 (official GoogLeNet-CAM / wsolevaluation: SGD
# nesterov momentum 0.9, lr 1e-3, x0.1 steps, wd 5e-4, batch 64, new layers at lr x10).
# scratch: AdamW + cosine with one warm-up epoch, robust for small nets on small data.
# linear-probe: the linear layer alone on cached pooled features.
RECIPES: dict[str, dict[str, Any]] = {
    "finetune": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "sgd",
        "schedule": "step",
        "head_lr_mult": 10.0,
        "weight_decay": 5e-4,
        "warmup_epochs": 0.0,
    },
    "scratch": {
        "epochs": 30,
        "batch_size": 64,
        "lr": 2e-3,
        "optimizer": "adamw",
        "schedule": "cosine",
        "head_lr_mult": 1.0,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
    },
    "linear-probe": {
        "epochs": 30,
        "batch_size": 256,
        "lr": 1e-3,
        "optimizer": "adamw",
        "schedule": "cosine",
        "head_lr_mult": 1.0,
        "weight_decay": 1e-4,
        "warmup_epochs": 0.0,
    },
}


def has_backbone_weights(entry: ModelEntry) -> bool:
    return bool(entry.url)


def resolve_options(opts: TrainOptions, entry: ModelEntry) -> TrainOptions:
    """Fill every ``None`` from the recipe that fits (``finetune`` where backbone weights exist
    and are used, ``scratch`` otherwise, ``linear-probe`` with ``freeze_backbone``) and validate.
    """
    pretrained = opts.pretrained
    if pretrained is None:
        pretrained = has_backbone_weights(entry)
    elif pretrained and not has_backbone_weights(entry):
        raise TrainingError(
            f"{entry.name} has no pretrained weights to start from; use --no-pretrained"
        )
    if opts.freeze_backbone and not pretrained:
        raise TrainingError(
            "--freeze-backbone trains only the linear layer on top of a pretrained backbone; "
            f"{entry.name} would have a random one: drop --freeze-backbone or use --pretrained"
        )
    recipe = "linear-probe" if opts.freeze_backbone else ("finetune" if pretrained else "scratch")
    d = RECIPES[recipe]
    out = replace(
        opts,
        pretrained=pretrained,
        recipe=recipe,
        pool=POOL_NAMES.get(opts.pool or entry.pool, opts.pool),
        image_size=opts.image_size or entry.preprocess.input_size,
        arch_options=dict(opts.arch_options or {}),
        **{k: (getattr(opts, k) if getattr(opts, k) is not None else v) for k, v in d.items()},
    )
    _validate(out)
    return out


def _validate(o: TrainOptions) -> None:
    checks = [
        (o.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (o.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
        (o.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
        (o.pool in ("avg", "max"), "--pool must be gap or gmp"),
        (o.epochs >= 1, "--epochs must be >= 1"),
        (o.batch_size >= 2, "--batch-size must be >= 2 (BatchNorm needs two images)"),
        (o.lr > 0 and math.isfinite(o.lr), "--lr must be a positive number"),
        (o.head_lr_mult > 0, "--head-lr-mult must be > 0"),
        (o.weight_decay >= 0, "--weight-decay must be >= 0"),
        (0 <= o.val_split < 1, "--val-split must be in [0, 1)"),
        (o.image_size >= 16, "--image-size must be >= 16"),
        (0 <= o.label_smoothing < 1, "label smoothing must be in [0, 1)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise TrainingError(msg)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


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

    ``data`` holds one folder per class, or ``train/`` (and optionally ``val/``) holding them.
    Validation comes from ``val`` (a folder of class folders) if given, else ``data/val``, else a
    per-class split of ``val_split`` of the training images (at least one per class with two or
    more images), drawn with ``seed``. Class names: the training folder names, sorted.
    """
    root = Path(data)
    if not root.is_dir():
        raise TrainingError(f"DATA {root}: not a folder; give a folder of class folders")
    train_root = root / "train" if _is_split_layout(root) else root
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
    train: list[tuple[str, int]] = []
    per_class: list[list[str]] = []
    for d in dirs:
        imgs = _images_of(d)
        if not imgs:
            raise TrainingError(
                f"class folder {d} holds no images ({', '.join(sorted(inputs.IMAGE_EXTENSIONS))}); "
                "remove it or add images"
            )
        per_class.append(imgs)
    val_dir = Path(val) if val is not None else None
    if val_dir is None and train_root != root and (root / "val").is_dir():
        val_dir = root / "val"
    val_items: list[tuple[str, int]] = []
    if val_dir is not None:
        if not val_dir.is_dir():
            raise TrainingError(f"--val {val_dir}: not a folder")
        for d in _class_dirs(val_dir):
            if d.name not in classes:
                raise TrainingError(
                    f"validation folder {d} is not a training class; classes are: "
                    f"{', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}"
                )
            val_items += [(p, classes.index(d.name)) for p in _images_of(d)]
        for ci, imgs in enumerate(per_class):
            train += [(p, ci) for p in imgs]
        source = str(val_dir)
    else:
        for ci, imgs in enumerate(per_class):
            n_val = 0
            if val_split > 0 and len(imgs) >= 2:
                n_val = min(len(imgs) - 1, max(1, round(val_split * len(imgs))))
            order = np.random.default_rng([seed, ci]).permutation(len(imgs))
            chosen = set(order[:n_val].tolist())
            for j, p in enumerate(imgs):
                (val_items if j in chosen else train).append((p, ci))
        source = f"{val_split:g} of {train_root} per class (seed {seed})" if val_items else "none"
    return FolderData(classes, train, val_items, source)


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
        max_pixels: int = codec.DEFAULT_MAX_PIXELS,
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
    through :func:`set_loader_epoch`); persistent workers, created once."""
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


# --------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    """This process's place in a torch.distributed job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def all_min(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return t

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def init_distributed(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the torchrun job (env://): nccl with one GPU per local rank, gloo on CPU.
    Outside torchrun: world 1 and the requested device."""
    env = torchrun_env()
    if env is None:
        return DistContext(), resolve_device(device)
    local = env.local_rank
    want_cuda = device != "cpu" and torch.cuda.is_available()
    if want_cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device("cpu")
        backend = "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    ctx = DistContext(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), local, backend
    )
    return ctx, dev


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU, detached copy of a model's state_dict (DDP unwrapped)."""
    return {k: v.detach().to("cpu").clone() for k, v in unwrap(model).state_dict().items()}


def rng_state() -> dict:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    if "python" in st:
        v, state, gauss = st["python"]
        random.setstate((v, tuple(state), gauss))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, IndexError):
            torch.cuda.set_rng_state_all(st["cuda"])


def make_checkpoint(
    model: GapModel,
    *,
    options: TrainOptions,
    epoch: int,
    metrics: dict | None,
    history: list[dict],
    best: dict | None,
    training_state: dict | None = None,
) -> dict:
    """The camcli checkpoint dict (``torch.load(weights_only=True)``-safe).

    Keys: ``format`` ("camcli-checkpoint"), ``format_version`` (1), ``model`` (registry name),
    ``state_dict`` (GapModel: ``trunk.*``, ``fc.*``), ``categories``, ``preprocess``
    (:meth:`Preprocess.to_dict`), ``pool`` ("avg" | "max"), ``arch_options``, ``epoch``
    (completed epochs), ``train_options`` (resolved :class:`TrainOptions`), ``metrics`` (this
    epoch's record), ``history`` (every epoch's record), ``best`` ({"epoch", "val_top1"}),
    ``camcli_version``, ``created``; ``last.pt`` adds ``training_state`` (optimizer, scheduler,
    grad scaler, RNG) for ``--resume``.
    """
    m = unwrap(model)
    ck = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model": m.name,
        "state_dict": model_state(m),
        "categories": list(m.categories),
        "preprocess": m.preprocess.to_dict(),
        "pool": m.pool,
        "arch_options": dict(options.arch_options),
        "epoch": int(epoch),
        "train_options": options.to_dict(),
        "metrics": dict(metrics) if metrics else {},
        "history": [dict(h) for h in history],
        "best": dict(best) if best else None,
        "camcli_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if training_state is not None:
        ck["training_state"] = training_state
    return ck


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """torch.save to a temporary file beside ``path``, fsync, rename: never half-written."""
    path = Path(path)
    with AtomicFile(path, fsync=True) as fh:
        torch.save(ckpt, fh)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A camcli checkpoint, loaded without executing code; TrainingError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such checkpoint")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise TrainingError(f"{path}: not a loadable checkpoint ({exc})") from exc
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a camcli checkpoint")
    return ck


def model_from_checkpoint(ck: dict) -> GapModel:
    """Rebuild the GapModel a checkpoint describes (eval mode, CPU)."""
    return build_model(
        entry_for(ck["model"]),
        ck["state_dict"],
        num_classes=len(ck["categories"]),
        categories=ck["categories"],
        preprocess=Preprocess.from_dict(ck["preprocess"]),
        pool=ck["pool"],
        arch_options=ck.get("arch_options") or None,
    )


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


def param_groups(
    model: nn.Module, new_prefixes: Sequence[str], lr: float, head_lr_mult: float, wd: float
) -> list[dict]:
    """Parameter groups: (old | new layers) x (decayed weights | biases and norm parameters).

    ``new_prefixes``: parameter-name prefixes of the layers that start untrained (lr x
    ``head_lr_mult``). Weight decay applies to tensors with ndim > 1 only.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = any(name.startswith(pre) for pre in new_prefixes)
        groups.setdefault((new, p.ndim > 1), []).append(p)
    out = []
    for (new, decay), ps in sorted(groups.items()):
        out.append(
            {
                "params": ps,
                "lr": lr * (head_lr_mult if new else 1.0),
                "weight_decay": wd if decay else 0.0,
                "name": f"{'new' if new else 'pretrained'}-{'decay' if decay else 'no_decay'}",
            }
        )
    return out


def make_optimizer(groups: list[dict], o: TrainOptions) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    return torch.optim.AdamW(groups, lr=o.lr)


def lr_factor(step: int, *, o: TrainOptions, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rates at optimisation step ``step`` (0-based).

    Linear warm-up over ``warmup_epochs``; then ``cosine`` decays to 0 over the remaining
    steps, ``step`` multiplies by 0.1 every ``ceil(epochs / 3)`` epochs (torchvision's
    30-of-90; the official GoogLeNet-CAM stepped every quarter).
    """
    total = max(1, o.epochs * steps_per_epoch)
    warm = round((o.warmup_epochs or 0) * steps_per_epoch)
    if step < warm:
        return (step + 1) / (warm + 1)
    if o.schedule == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    every = max(1, math.ceil(o.epochs / 3)) * steps_per_epoch
    return 0.1 ** (step // every)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class Reporter(Protocol):
    """Where the loop sends progress (the CLI prints; the library never does)."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch_end(self, record: dict) -> None: ...
    def info(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...


class SilentReporter:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, record: dict) -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass


@dataclass
class FitResult:
    """What :func:`fit` / :func:`train_folder` hand back."""

    model: GapModel  # final weights, eval mode
    epochs_done: int
    best: dict | None  # {"epoch", "val_top1"} (or train_top1 without validation)
    history: list[dict]
    out_dir: Path | None
    options: TrainOptions | None = None
    skipped: list[str] = field(default_factory=list)  # inputs that could not be decoded


def _unpack(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None, list]:
    if isinstance(batch, list | tuple):
        if len(batch) == 3:
            return batch[0], batch[1], list(batch[2])
        if len(batch) == 2:
            return batch[0], batch[1], []
    raise TypeError("loader batches must be (x, y) or (x, y, errors)")


def _prepare(x: torch.Tensor, preprocess: Preprocess, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = normalize_batch(x, preprocess)
    if x.ndim == 4 and device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: Iterable,
    *,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    dist: DistContext | None = None,
) -> dict | None:
    """Loss, top-1 and top-5 (top-min(5, C)) over a loader, summed across ranks.
    Returns None when the loader holds no image."""
    dist = dist or DistContext()
    was = net.training
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for batch in loader:
        x, y, _ = _unpack(batch)
        if x is None:
            continue
        x, y = _prepare(x, preprocess, device), y.to(device)
        with _autocast(device, precision):
            logits = net(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        sums += torch.stack(
            [
                nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(dim=1).sum().double(),
                torch.tensor(float(len(y)), dtype=torch.float64, device=device),
            ]
        )
    net.train(was)
    dist.all_sum(sums)
    loss, t1, t5, n = sums.tolist()
    if n == 0:
        return None
    return {"loss": loss / n, "top1": t1 / n, "top5": t5 / n, "images": int(n)}


class _SeenErrors:
    def __init__(self, reporter: Reporter) -> None:
        self.seen: set[str] = set()
        self.reporter = reporter

    def __call__(self, errors: list) -> None:
        for path, reason in errors:
            if path not in self.seen:
                self.seen.add(path)
                self.reporter.warn(f"{path}: {reason} (skipped)")


def fit(
    model: GapModel,
    train_loader: Iterable,
    val_loader: Iterable | None,
    *,
    options: TrainOptions,
    device: torch.device,
    net: nn.Module | None = None,
    new_prefixes: Sequence[str] = ("fc.",),
    out_dir: str | Path | None = None,
    resume_from: dict | None = None,
    reporter: Reporter | None = None,
    dist: DistContext | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    eval_preprocess: Preprocess | None = None,
) -> FitResult:
    """Train ``net`` (default: ``model``; e.g. ``model.fc`` for the linear probe, or a DDP
    wrapper) on ``train_loader`` for ``options.epochs`` epochs (resolved options).

    Every epoch: train, validate (``val_loader``; none -> selection by training top-1), then on
    rank 0 write ``out_dir/best.pt`` when validation top-1 improved, ``out_dir/last.pt`` (with
    training state) and one line of ``out_dir/metrics.jsonl``. ``resume_from``: a ``last.pt``
    dict, to continue after its epoch. A non-finite loss stops the run with TrainingError and
    leaves the checkpoints of the last completed epoch untouched. ``step_callback(epoch, step)``
    runs after every optimisation step (tests use it to interrupt a run).
    """
    reporter = reporter or SilentReporter()
    dist = dist or DistContext()
    net = net if net is not None else model
    out = Path(out_dir) if out_dir is not None else None
    pre = model.preprocess
    eval_pre = eval_preprocess or pre
    groups = param_groups(
        unwrap(net),
        [] if options.head_lr_mult == 1.0 else new_prefixes,
        options.lr,
        options.head_lr_mult,
        options.weight_decay,
    )
    if not groups:
        raise TrainingError("nothing to train: every parameter is frozen")
    opt = make_optimizer(groups, options)
    try:
        steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TrainingError("the training loader must have a length") from None
    if steps_per_epoch == 0:
        raise TrainingError("no training batch: too few images for --batch-size")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, o=options, steps_per_epoch=steps_per_epoch)
    )
    use_scaler = options.precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    history: list[dict] = []
    best: dict | None = None
    start = 0
    if resume_from is not None:
        unwrap(model).load_state_dict(resume_from["state_dict"])
        ts = resume_from.get("training_state") or {}
        if "optimizer" in ts:
            opt.load_state_dict(ts["optimizer"])
        if "scheduler" in ts:
            sched.load_state_dict(ts["scheduler"])
        if "scaler" in ts and use_scaler:
            scaler.load_state_dict(ts["scaler"])
        if "rng" in ts:
            set_rng_state(ts["rng"])
        start = int(resume_from["epoch"])
        history = [dict(h) for h in resume_from.get("history", [])][:start]
        best = resume_from.get("best")
    if out is not None and dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _rewrite_metrics(out / "metrics.jsonl", history)
    seen = _SeenErrors(reporter)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)
    base_lr = options.lr
    for epoch in range(start, options.epochs):
        set_loader_epoch(train_loader, epoch)
        net.train()
        reporter.epoch_start(epoch + 1, options.epochs, steps_per_epoch)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, n
        t0 = time.perf_counter()
        for step, batch in enumerate(train_loader):
            x, y, errors = _unpack(batch)
            seen(errors)
            if x is None:
                raise TrainingError("a training batch holds no decodable image")
            x, y = _prepare(x, pre, device), y.to(device, non_blocking=True)
            with _autocast(device, options.precision):
                logits = net(x)
                loss = loss_fn(logits.float(), y)
            finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
            if not bool(dist.all_min(finite).item()):
                raise TrainingError(_nonfinite_message(loss, epoch, step, options, out))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            with torch.no_grad():
                sums += torch.stack(
                    [
                        loss.detach().double() * len(y),
                        (logits.detach().argmax(1) == y).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=device),
                    ]
                )
            reporter.step(float(loss.detach()))
            if step_callback is not None:
                step_callback(epoch, step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        dist.all_sum(sums)
        tr_loss, tr_top1, n_train = sums.tolist()
        val = (
            evaluate(
                unwrap(net) if dist.enabled else net,
                val_loader,
                preprocess=eval_pre,
                device=device,
                precision=options.precision,
                dist=dist,
            )
            if val_loader is not None
            else None
        )
        record = {
            "epoch": epoch + 1,
            "epochs": options.epochs,
            "train_loss": tr_loss / max(1, n_train),
            "train_top1": tr_top1 / max(1, n_train),
            "val_loss": val["loss"] if val else None,
            "val_top1": val["top1"] if val else None,
            "val_top5": val["top5"] if val else None,
            "lr": base_lr
            * lr_factor(
                max(0, (epoch + 1) * steps_per_epoch - 1),
                o=options,
                steps_per_epoch=steps_per_epoch,
            ),
            "images_per_s": n_train / seconds if seconds > 0 else None,
            "epoch_seconds": seconds,
            "train_images": int(n_train),
            "val_images": val["images"] if val else 0,
        }
        score = record["val_top1"] if val else record["train_top1"]
        improved = best is None or score > best["val_top1"]
        if improved:
            best = {
                "epoch": epoch + 1,
                "val_top1": score,
                "by": "val_top1" if val else "train_top1",
            }
        record["best"] = improved
        history.append(record)
        if out is not None and dist.is_main:
            common = {"options": options, "epoch": epoch + 1, "metrics": record, "history": history}
            if improved:
                save_checkpoint(make_checkpoint(model, best=best, **common), out / "best.pt")
            state = {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else {},
                "rng": rng_state(),
            }
            save_checkpoint(
                make_checkpoint(model, best=best, training_state=state, **common), out / "last.pt"
            )
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        reporter.epoch_end(record)
    dist.barrier()
    final = unwrap(model)
    final.eval()
    return FitResult(final, options.epochs, best, history, out, options, sorted(seen.seen))


def _nonfinite_message(
    loss: torch.Tensor, epoch: int, step: int, o: TrainOptions, out: Path | None
) -> str:
    msg = (
        f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step + 1}: "
        f"training stopped; lower --lr (now {o.lr:g})"
    )
    if o.precision != "fp32":
        msg += " or use --precision fp32"
    if out is not None:
        msg += (
            f"; {out / 'last.pt'} keeps epoch {epoch}, the last good one"
            if epoch
            else "; no checkpoint was written"
        )
    return msg


def _rewrite_metrics(path: Path, history: list[dict]) -> None:
    from camcli.atomic import write_atomic

    write_atomic(path, "".join(json.dumps(h) + "\n" for h in history).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Model set-up
# --------------------------------------------------------------------------------------------


def _load_state(url: str, sha: str | None, offline: bool) -> tuple[dict, dict | None]:
    from camcli.models import hub

    path = hub.download(url, sha, offline=offline)
    loaded = hub.load_file(path, source=url)
    return loaded.state_dict, loaded.checkpoint


def initial_model(
    entry: ModelEntry, o: TrainOptions, categories: Sequence[str], *, offline: bool = False
) -> tuple[GapModel, list[str]]:
    """The network to train and the parameter-name prefixes of its untrained layers.

    finetune / linear-probe: backbone weights from the registry URL (torchvision: whole network,
    classifier replaced; paper: backbone, new conv head; small: a camcli checkpoint's trunk).
    scratch: random init (seeded by the caller).
    """
    n = len(categories)
    pre = replace(entry.preprocess, input_size=o.image_size, resize="resize", resize_size=None)
    kw = {"categories": list(categories), "preprocess": pre, "pool": o.pool}
    if not o.pretrained:
        model = build_model(entry, None, num_classes=n, arch_options=o.arch_options or None, **kw)
        return model, ["trunk.", "fc."]
    state, ck = _load_state(entry.url, entry.sha256, offline)
    if entry.builder == "torchvision":
        base = build_model(entry, state)
        k = base.fc.in_features
        model = GapModel(base.trunk, nn.Linear(k, n), o.pool, name=entry.name, **_kw(kw))
        return model, ["fc."]
    if entry.builder == "paper":
        if entry.architecture == "googlenet":
            o.arch_options = {**o.arch_options, "transform_input": True}
        model = build_model(
            entry, None, num_classes=n, backbone_state=state, arch_options=o.arch_options, **kw
        )
        n_new = 4 if entry.name.startswith("alexnet-star") else 2
        first_new = len(model.trunk) - n_new
        return model, [f"trunk.{i}." for i in range(first_new, len(model.trunk))] + ["fc."]
    # small (or any builder with a camcli checkpoint as its default weights): reuse the trunk
    if ck is not None and ck.get("arch_options"):
        if o.arch_options and o.arch_options != ck["arch_options"]:
            raise TrainingError(
                f"--arch-option {o.arch_options} does not fit the pretrained {entry.name} "
                f"({ck['arch_options']}); drop it or use --no-pretrained"
            )
        o.arch_options = dict(ck["arch_options"])
    model = build_model(entry, None, num_classes=n, arch_options=o.arch_options or None, **kw)
    trunk = {k[len("trunk.") :]: v for k, v in state.items() if k.startswith("trunk.")}
    try:
        model.trunk.load_state_dict(trunk)
    except RuntimeError as exc:
        raise TrainingError(f"{entry.url}: its trunk does not fit {entry.name} ({exc})") from exc
    return model, ["fc."]


def _kw(kw: dict) -> dict:
    return {"preprocess": kw["preprocess"], "categories": kw["categories"]}


def default_workers(device: torch.device, world: int = 1) -> int:
    """Loader workers: on CUDA up to 8 per process; on CPU half the cores (they share them with
    the training threads)."""
    cores = max(1, available_cores() // max(1, world))
    if device.type == "cuda":
        return max(1, min(8, cores))
    return min(4, cores // 2)


# --------------------------------------------------------------------------------------------
# Linear probe (paper section 4): features once, then only the linear layer
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def pooled_features(
    model: GapModel,
    loader: Iterable,
    *,
    device: torch.device,
    precision: str,
    mirror: bool,
    dist: DistContext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled trunk features of every image of ``loader`` (and of its mirror image with
    ``mirror``), gathered from all ranks: (float32 [N, K] CPU, int64 [N] CPU)."""
    model.eval()
    feats, labels = [], []
    for batch in loader:
        x, y, _ = _unpack(batch)
        if x is None:
            continue
        xs = [x, x.flip(-1)] if mirror else [x]
        for xi in xs:
            xi = _prepare(xi, model.preprocess, device)
            with _autocast(device, precision):
                f = model.pooled(model.features(xi))
            feats.append(f.float().cpu())
            labels.append(y.cpu())
    f = torch.cat(feats) if feats else torch.zeros(0, model.fc.in_features)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if dist.enabled:
        parts: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(parts, (f, y))
        f = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
    return f, y


class _TensorBatches:
    """Shuffled (seed, epoch) mini-batches over cached tensors: (x [b, K], y [b])."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool, seed: int
    ) -> None:
        self.x, self.y, self.b, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.b if self.shuffle and n > self.b else math.ceil(n / self.b)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.b : (i + 1) * self.b]
            yield self.x[idx], self.y[idx]


class _Classifier(nn.Module):
    """The linear layer alone, named ``fc`` so parameter names match the GapModel's."""

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# Front door
# --------------------------------------------------------------------------------------------


def run_dir_state(out: Path) -> Path | None:
    last = out / "last.pt"
    return last if last.is_file() else None


def train_folder(
    data: str | Path,
    out: str | Path,
    options: TrainOptions,
    *,
    val: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    offline: bool = False,
    reporter: Reporter | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    max_pixels: int = codec.DEFAULT_MAX_PIXELS,
) -> FitResult:
    """``camcli train``: train ``options.model`` on the ImageFolder tree ``data`` into ``out``.

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this; they form a DDP job, shard
    the data, and only rank 0 writes files. ``resume``: continue ``out/last.pt`` with its saved
    options (``options.epochs`` and ``options.workers`` may change; everything else is taken
    from the checkpoint).
    """
    reporter = reporter or SilentReporter()
    out = Path(out)
    dist, dev = init_distributed(device)
    try:
        return _train_folder(
            data,
            out,
            options,
            dist,
            dev,
            val,
            resume,
            offline,
            reporter,
            step_callback,
            max_pixels,
        )
    finally:
        shutdown_distributed(dist)


def _train_folder(
    data, out, options, dist, dev, val, resume, offline, reporter, step_callback, max_pixels
) -> FitResult:
    resume_ck = None
    if resume:
        last = run_dir_state(out)
        if last is None:
            raise TrainingError(f"--resume: {out / 'last.pt'} not found; nothing to resume")
        resume_ck = load_checkpoint(last)
        saved = TrainOptions.from_dict(resume_ck["train_options"])
        saved.epochs = options.epochs or saved.epochs
        saved.workers = options.workers if options.workers is not None else saved.workers
        o = saved
        entry = entry_for(o.model)
        if resume_ck["epoch"] >= o.epochs:
            reporter.info(
                f"{out}: already trained for {resume_ck['epoch']} of {o.epochs} epochs; "
                "nothing to do (raise --epochs to train on)"
            )
            model = model_from_checkpoint(resume_ck)
            return FitResult(
                model,
                int(resume_ck["epoch"]),
                resume_ck.get("best"),
                list(resume_ck.get("history", [])),
                out,
                o,
            )
    else:
        if run_dir_state(out) is not None:
            raise TrainingError(
                f"{out} already holds a run (last.pt); pass --resume to continue it, "
                "or choose another --out"
            )
        entry = entry_for(options.model)
        o = resolve_options(options, entry)
    if o.precision == "fp16" and dev.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    folders = scan_folders(data, val=val, val_split=o.val_split, seed=o.seed)
    if resume_ck is not None and list(resume_ck["categories"]) != folders.classes:
        raise TrainingError(
            f"--resume: the classes in {data} differ from the checkpoint's "
            f"({len(folders.classes)} vs {len(resume_ck['categories'])}); resume with the same DATA"
        )
    torch.manual_seed(o.seed)
    random.seed(o.seed)
    if resume_ck is not None:
        model = model_from_checkpoint(resume_ck)
        _, new_prefixes = _new_prefixes_for(entry, o, model)
    else:
        model, new_prefixes = initial_model(entry, o, folders.classes, offline=offline)
    if o.freeze_backbone and entry.builder == "paper":
        reporter.warn(
            f"{entry.name}: --freeze-backbone keeps the new conv layer of the GAP head at its "
            "random initialisation; only the linear layer is trained"
        )
    workers = o.workers if o.workers is not None else default_workers(dev, _local_world(dist))
    model = model.to(dev)
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    pin = dev.type == "cuda"
    train_ds = FolderImages(
        folders.train,
        model.preprocess,
        train=not o.freeze_backbone,
        seed=o.seed,
        max_pixels=max_pixels,
    )
    val_ds = FolderImages(folders.val, model.preprocess, train=False, max_pixels=max_pixels)
    if len(train_ds) < 2:
        raise TrainingError(f"{data}: need at least two training images")
    if dist.is_main:
        reporter.info(
            f"train {entry.name} ({o.recipe}, pool {'GAP' if o.pool == 'avg' else 'GMP'}) on "
            f"{len(train_ds)} images of {len(folders.classes)} classes, validation: "
            f"{len(val_ds)} images ({folders.val_source}); {o.epochs} epochs, batch "
            f"{o.batch_size}{f' x {dist.world} processes' if dist.enabled else ''}, "
            f"{o.optimizer} lr {o.lr:g} ({o.schedule}), {o.image_size} px, {o.precision}, "
            f"{dev.type}{f' ({dist.backend})' if dist.enabled else ''} -> {out}"
        )
    common = {"rank": dist.rank, "world": dist.world, "pin_memory": pin}
    if o.freeze_backbone:
        return _linear_probe(
            model,
            train_ds,
            val_ds,
            o,
            dev,
            dist,
            out,
            resume_ck,
            reporter,
            step_callback,
            workers,
            common,
        )
    train_loader = make_loader(
        train_ds, batch_size=o.batch_size, shuffle=True, seed=o.seed, workers=workers, **common
    )
    val_loader = (
        make_loader(
            val_ds, batch_size=o.batch_size, shuffle=False, seed=o.seed, workers=workers, **common
        )
        if len(val_ds)
        else None
    )
    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    return fit(
        model,
        train_loader,
        val_loader,
        options=o,
        device=dev,
        net=net,
        new_prefixes=new_prefixes,
        out_dir=out,
        resume_from=resume_ck,
        reporter=reporter,
        dist=dist,
        step_callback=step_callback,
    )


def _local_world(dist: DistContext) -> int:
    env = torchrun_env()
    return env.local_world if env is not None else dist.world


def _new_prefixes_for(entry: ModelEntry, o: TrainOptions, model: GapModel):
    if not o.pretrained:
        return model, ["trunk.", "fc."]
    if entry.builder == "paper":
        n_new = 4 if entry.name.startswith("alexnet-star") else 2
        first = len(model.trunk) - n_new
        return model, [f"trunk.{i}." for i in range(first, len(model.trunk))] + ["fc."]
    return model, ["fc."]


def _linear_probe(
    model,
    train_ds,
    val_ds,
    o,
    dev,
    dist,
    out,
    resume_ck,
    reporter,
    step_callback,
    workers,
    common,
) -> FitResult:
    def loader(ds):
        return make_loader(
            ds,
            batch_size=max(2, min(o.batch_size, 64)),
            shuffle=False,
            seed=o.seed,
            workers=workers,
            **common,
        )

    reporter.info("linear probe: computing the pooled features once")
    ftr, ytr = pooled_features(
        model, loader(train_ds), device=dev, precision=o.precision, mirror=False, dist=dist
    )
    fva, yva = (
        pooled_features(
            model, loader(val_ds), device=dev, precision=o.precision, mirror=False, dist=dist
        )
        if len(val_ds)
        else (None, None)
    )
    head = _Classifier(model.fc).to(dev)
    train_b = _TensorBatches(ftr, ytr, o.batch_size, shuffle=True, seed=o.seed)
    val_b = _TensorBatches(fva, yva, 1024, shuffle=False, seed=o.seed) if fva is not None else None
    # Features are gathered on every rank, so every rank trains the same linear layer alone.
    solo = DistContext()
    res = fit(
        model,
        train_b,
        val_b,
        options=o,
        device=dev,
        net=head,
        new_prefixes=["fc."],
        out_dir=out if dist.is_main else None,
        resume_from=resume_ck,
        reporter=reporter,
        dist=solo,
        step_callback=step_callback,
        eval_preprocess=model.preprocess,
    )
    return res


def parse_arch_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["width=24", "downsamplings=2"]`` -> ``{"width": 24, "downsamplings": 2}`` (ints,
    floats, true/false, else strings)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise TrainingError(f"--arch-option {p!r}: use KEY=VALUE, e.g. width=24")
        k, v = p.split("=", 1)
        k = k.strip()
        val: Any = v.strip()
        for conv in (int, float):
            try:
                val = conv(v)
                break
            except ValueError:
                continue
        if isinstance(val, str) and val.lower() in ("true", "false"):
            val = val.lower() == "true"
        out[k] = val
    return out


__all__ = [
    "DistContext",
    "EpochSampler",
    "FitResult",
    "FolderData",
    "FolderImages",
    "ModelError",
    "TrainOptions",
    "TrainingError",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "resolve_options",
    "save_checkpoint",
    "scan_folders",
    "train_folder",
]
