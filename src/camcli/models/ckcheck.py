"""The checks on a weights file before and after it is loaded: the one validating reader of
camcli checkpoints (types, bounds, decompressed size) and of non-finite weights.

Every problem is a :class:`~camcli.errors.WeightsError` (exit 4) whose one-line message names
the file and the field or tensor, e.g. ``run/best.pt: checkpoint field 'categories' is ...``.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

from camcli.errors import WeightsError
from camcli.models.registry import INTERPOLATIONS, MAX_INPUT_SIZE, POOLS, RESIZE_MODES

__all__ = [
    "MAX_CATEGORIES",
    "MAX_LABEL_CHARS",
    "check_archive",
    "check_checkpoint",
    "check_finite_state",
    "load_failure",
]

#: Bounds of a checkpoint's class list.
MAX_CATEGORIES = 100_000
MAX_LABEL_CHARS = 1_000
#: A zip checkpoint may expand to at most this many times its size (plus the slack below):
#: ``torch.save`` stores tensors uncompressed, so a larger ratio is a decompression bomb.
MAX_EXPANSION = 4
EXPANSION_SLACK = 64 << 20
#: std values below this make 1 / std overflow or amplify noise beyond use.
MIN_STD = 1e-4
MAX_MEAN_STD = 1e4


def check_archive(path: Path) -> None:
    """Refuse a zip weights file whose members would expand beyond
    ``MAX_EXPANSION * size + 64 MiB`` bytes, read from the zip directory before anything
    is decompressed.

    Raises:
        WeightsError: the declared size is too large, or the zip directory is unreadable.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise WeightsError(f"{path}: not a loadable weights file ({exc})") from None
    size = path.stat().st_size
    limit = MAX_EXPANSION * size + EXPANSION_SLACK
    if total > limit:
        raise WeightsError(
            f"{path}: its zip members expand to {total} bytes, over the limit of {limit} for a "
            f"{size}-byte file (a decompression bomb?); save it with torch.save"
        )


def check_finite_state(state: dict, path: Path | str) -> None:
    """Refuse a state_dict holding NaN or infinite values (weights or buffers such as
    BatchNorm's running_var).

    Raises:
        WeightsError: ``FILE: tensor NAME holds non-finite values (NaN or inf) ...``.
    """
    import torch

    for name, t in state.items():
        floating = isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
        if floating and t.numel() and not bool(torch.isfinite(t).all()):
            raise WeightsError(
                f"{path}: tensor {name!r} holds non-finite values (NaN or inf); "
                "these weights cannot give scores: retrain or use other weights"
            )


def _field(path: Path | str, name: str, what: str) -> WeightsError:
    return WeightsError(f"{path}: checkpoint field {name!r} {what}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _brief(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def check_preprocess(pre: object, path: Path | str) -> None:
    """The ``preprocess`` field: a dict of the :class:`~camcli.models.registry.Preprocess`
    fields with their types and bounds (input_size 8..MAX_INPUT_SIZE, finite mean, finite
    std >= 1e-4).

    Raises:
        WeightsError: naming the file and the field.
    """
    if not isinstance(pre, dict):
        raise _field(path, "preprocess", f"is {_brief(pre)}, expected a dict of fields")
    size = pre.get("input_size", 224)
    if not _is_int(size) or not 8 <= size <= MAX_INPUT_SIZE:
        raise _field(
            path, "preprocess.input_size", f"is {_brief(size)}, expected an int 8..{MAX_INPUT_SIZE}"
        )
    resize = pre.get("resize", "resize")
    if resize not in RESIZE_MODES:
        raise _field(path, "preprocess.resize", f"is {_brief(resize)}, expected {RESIZE_MODES}")
    rs = pre.get("resize_size")
    if rs is not None and (not _is_int(rs) or not size <= rs <= 4 * MAX_INPUT_SIZE):
        raise _field(
            path,
            "preprocess.resize_size",
            f"is {_brief(rs)}, expected None or an int {size}..{4 * MAX_INPUT_SIZE}",
        )
    if resize == "center_crop" and rs is None:
        raise _field(path, "preprocess.resize_size", "is missing; center_crop needs it")
    interp = pre.get("interpolation", "bilinear")
    if interp not in INTERPOLATIONS:
        raise _field(
            path, "preprocess.interpolation", f"is {_brief(interp)}, expected {INTERPOLATIONS}"
        )
    for key, low in (("mean", -MAX_MEAN_STD), ("std", MIN_STD)):
        v = pre.get(key, [0.5, 0.5, 0.5])
        ok = (
            isinstance(v, list | tuple)
            and len(v) == 3
            and all(_is_num(x) and math.isfinite(x) and low <= x <= MAX_MEAN_STD for x in v)
        )
        if not ok:
            raise _field(
                path,
                f"preprocess.{key}",
                f"is {_brief(v)}, expected three finite numbers in [{low:g}, {MAX_MEAN_STD:g}]",
            )


def check_checkpoint(ck: dict, path: Path | str, *, resume: bool = False) -> None:
    """Validate a camcli checkpoint's fields (types and bounds) before any is used.

    Args:
        ck: the loaded dict (``format == "camcli-checkpoint"``).
        path: the file, for messages.
        resume: also check what ``train --resume`` needs (``epoch``, ``train_options``,
            ``training_state``, ``history``).

    Raises:
        WeightsError: ``FILE: checkpoint field X is ..., expected ...`` (exit 4).
    """
    model = ck.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise _field(path, "model", f"is {_brief(model)}, expected a registry network name")
    state = ck.get("state_dict")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise _field(path, "state_dict", f"is {_brief(type(state).__name__)}, expected a dict")
    cats = ck.get("categories")
    if not isinstance(cats, list) or not 1 <= len(cats) <= MAX_CATEGORIES:
        raise _field(
            path, "categories", f"is {_brief(cats)}, expected a list of 1..{MAX_CATEGORIES} names"
        )
    for i, c in enumerate(cats):
        if not isinstance(c, str) or len(c) > MAX_LABEL_CHARS:
            raise _field(
                path,
                f"categories[{i}]",
                f"is {_brief(c)}, expected a string of at most {MAX_LABEL_CHARS} characters",
            )
    if ck.get("preprocess") is not None:
        check_preprocess(ck["preprocess"], path)
    pool = ck.get("pool")
    if pool is not None and pool not in POOLS:
        raise _field(path, "pool", f"is {_brief(pool)}, expected one of {POOLS}")
    arch = ck.get("arch_options")
    if arch is not None and (
        not isinstance(arch, dict) or not all(isinstance(k, str) for k in arch)
    ):
        raise _field(path, "arch_options", f"is {_brief(arch)}, expected a dict")
    if resume:
        _check_resume_fields(ck, path)


def _check_resume_fields(ck: dict, path: Path | str) -> None:
    epoch = ck.get("epoch")
    if not _is_int(epoch) or not 0 <= epoch <= 1_000_000:
        raise _field(path, "epoch", f"is {_brief(epoch)}, expected a non-negative int")
    if not isinstance(ck.get("train_options"), dict):
        raise _field(
            path, "train_options", f"is {_brief(ck.get('train_options'))}, expected a dict"
        )
    ts = ck.get("training_state")
    if ts is not None and not isinstance(ts, dict):
        raise _field(path, "training_state", f"is {_brief(ts)}, expected a dict")
    hist = ck.get("history", [])
    if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
        raise _field(path, "history", f"is {_brief(hist)}, expected a list of dicts")
    best = ck.get("best")
    if best is not None and not isinstance(best, dict):
        raise _field(path, "best", f"is {_brief(best)}, expected a dict or None")


def load_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, for a one-line message: the first
    line of torch's error, cut to 200 characters; its "Weights only load failed" text, which
    goes on to advise ``weights_only=False`` (running the file's code), is never passed on."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    if msg.startswith("Weights only load failed"):
        msg = "damaged, not a torch file, or it holds pickled objects"
    elif isinstance(exc, KeyError | IndexError) or msg.isdigit():
        # torch's reader of the legacy format indexing bytes of another file (a text file: "101")
        msg = "not a torch file: damaged, or another format"
    return msg[:200]
