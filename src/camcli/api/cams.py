"""Class activation maps: one forward pass, the maps of every requested class, mapped onto the
original images (:func:`iter_cams`); maps read back from saved map files are in
:mod:`camcli.api.map_inputs`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from camcli.api.cam_result import CamResult
from camcli.api.predict import NON_FINITE, prediction_list
from camcli.api.session import Session
from camcli.data import inputs, loader
from camcli.errors import UsageError
from camcli.models.gap import GapModel


@dataclass
class CamOptions:
    """What maps to compute.

    Attributes:
        top_k: the k most probable classes of each image (unless ``classes``).
        classes: fixed class indices mapped for every image, in this order.
        norm: ``"minmax"`` (to [0, 1]), ``"max"`` (divide by the maximum) or ``"none"``.
        interpolation: ``"bilinear"`` or ``"bicubic"`` upsampling to the original image.
        ten_crop: the official ILSVRC ten-crop merge (scores averaged over the crops).
        gt_class: ``item -> class index or None``: also map each image's ground-truth class
            (``CamResult.gt_map``), whether or not it is among the mapped ones; None: no.
    """

    top_k: int = 5
    classes: list[int] | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False
    gt_class: Callable[[inputs.InputItem], int | None] | None = None


def resolve_classes(model: GapModel, classes: list[str] | None) -> list[int] | None:
    """``--class`` values -> class indices.

    Args:
        model: gives the class count and names.
        classes: indices (``"3"``) or category names (case-insensitive); None or empty: none.

    Returns:
        The indices in the given order, or None.

    Raises:
        UsageError: an unknown value (exit 2), with the closest category name as a hint.
    """
    if not classes:
        return None
    out = []
    lower = {c.lower(): i for i, c in enumerate(model.categories)}
    for c in classes:
        if c.isdigit() and int(c) < model.num_classes:
            out.append(int(c))
        elif c.lower() in lower:
            out.append(lower[c.lower()])
        else:
            import difflib

            close = difflib.get_close_matches(c, model.categories, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"--class {c!r}: not a class index 0..{model.num_classes - 1} or a category name "
                f"of {model.name}{hint}"
            )
    return out


def ten_crop_canvas(input_size: int) -> int:
    """Side of the square the image is resized to before its ten crops: 256 for 224 crops (the
    official pipeline), the same 256/224 ratio for other input sizes (so the crops tile it)."""
    return round(input_size * 256 / 224)


def _geometry(pre, size: tuple[int, int], *, ten_crop: bool):
    from camcli.cam.upsample import Geometry

    h, w = size
    if ten_crop:
        return Geometry(h, w, size=ten_crop_canvas(pre.input_size))
    return Geometry(h, w, size=pre.input_size, mode=pre.resize, short_side=pre.resize_size)


def iter_cams(
    session: Session,
    items: list[inputs.InputItem],
    opts: CamOptions,
    *,
    keep_image: bool = False,
    before_forward=None,
) -> Iterator[CamResult | loader.Sample]:
    """The CAMs of ``items``: one forward pass per batch, every requested class's map.

    Args:
        session: the model; ``session.stats`` counts the inputs.
        items: the inputs.
        opts: which maps.
        keep_image: keep each original (``CamResult.sample.image``, uint8 [3, H, W]).
        before_forward: called before each batch's forward pass is started (the CPU job
            without forward streams drains its writer threads there, see
            :func:`camcli.api.cam_job.run_cam`).

    Yields:
        In input order, a :class:`CamResult` per decoded image (maps on the session's
        device), or the failed :class:`camcli.data.loader.Sample` (its ``error`` set).
    """
    model = session.model
    weight, _ = model.classifier
    pre = _input_preprocess(model.preprocess, ten_crop=opts.ten_crop)
    k = len(opts.classes) if opts.classes else max(1, min(opts.top_k, model.num_classes))
    fixed = (
        torch.tensor(opts.classes, dtype=torch.long, device=session.device)
        if opts.classes
        else None
    )

    def maps(batch):  # on a forward stream (several batches at once on the CPU)
        return _batch_cams(session, batch, opts, pre, weight, k, fixed)

    batches = session.loader(items, pre, keep_image=keep_image)
    if before_forward is not None:
        batches = _calling_before(batches, before_forward)
    for batch, results in session.map_batches(batches, maps):
        out: dict[int, CamResult | loader.Sample] = {}
        for s in batch.failed:
            out[s.item.index] = s
            session.stats["failed"] += 1
        for res in results or ():
            if not _finite(res):  # never a NaN into records or maps: that image fails
                res.sample.error = NON_FINITE
                out[res.sample.item.index] = res.sample
                session.stats["failed"] += 1
                continue
            out[res.sample.item.index] = res
            session.stats["ok"] += 1
        for i in sorted(out):
            yield out[i]


def _calling_before(batches, fn):
    """``batches``, calling ``fn()`` before handing on each one with a decoded image."""
    for batch in batches:
        if batch.x is not None:
            fn()
        yield batch


def _finite(res: CamResult) -> bool:
    """Whether a result's scores and maps are all finite."""
    import math

    # the feature-resolution maps: upsampling finite values gives finite values
    maps = [res.small] if res.gt_small is None else [res.small, res.gt_small]
    return all(math.isfinite(s) for s in res.scores) and all(
        bool(torch.isfinite(m).all()) for m in maps
    )


def _input_preprocess(pre, *, ten_crop: bool):
    """The preprocessing of the network's input: the model's, or with ``ten_crop`` a resize
    of the whole image to the square canvas the ten crops are cut from."""
    from camcli.models.registry import Preprocess

    if not ten_crop:
        return pre
    return Preprocess(
        input_size=ten_crop_canvas(pre.input_size),
        mean=pre.mean,
        std=pre.std,
        interpolation=pre.interpolation,
    )


def _batch_cams(
    session: Session,
    batch,
    opts: CamOptions,
    pre,
    weight: torch.Tensor,
    k: int,
    fixed: torch.Tensor | None,
) -> list[CamResult]:
    """One batch's forward pass and the maps of its images' k classes, on the original images.

    Args:
        batch: a loader batch with decoded images (``batch.x``).
        pre: the network input's preprocessing (:func:`_input_preprocess`).
        weight: the classifier's W [C, K].
        k: maps per image.
        fixed: the ``classes`` as a tensor on the device; None: each image's top k.
    """
    from camcli.cam import pipeline as P
    from camcli.cam import tencrop as T

    model = session.model
    x = session.to_input(batch.x, pre)
    b = x.shape[0]
    if opts.ten_crop:
        x = T.ten_crop(x, crop=model.preprocess.input_size)
    feats, logits = session.forward(x)
    gts = [opts.gt_class(s.item) for s in batch.samples] if opts.gt_class else None
    with session.profiler.stage("cam"), torch.inference_mode():
        scores, idx, probs = _select_classes(logits, b, k, fixed, ten_crop=opts.ten_crop)
        # the GT class's map rides along as a (k+1)-th map of the same pass
        midx = idx
        if gts is not None:
            gcol = torch.tensor([[g if g is not None else 0] for g in gts], device=idx.device)
            midx = torch.cat([idx, gcol.to(idx.dtype)], dim=1)
        if opts.ten_crop:
            cams = _ten_crop_cams(feats, weight, midx, b, midx.shape[1], opts, pre, model)
        else:
            cams = P.cams_from_features(feats, weight, midx)
        raw = cams.to(torch.float32)
        small = P.normalize_cams(raw, opts.norm)
        geoms = [_geometry(model.preprocess, s.size, ten_crop=opts.ten_crop) for s in batch.samples]
    preds = prediction_list(model, scores.cpu(), idx.cpu())
    idx_l, sc_l = idx.tolist(), scores.tolist()
    out = [
        CamResult(
            s,
            idx_l[j],
            sc_l[j],
            preds[j],
            raw=raw[j][:k],
            small=small[j][:k],
            geometry=geoms[j],
            norm=opts.norm,
            interpolation=opts.interpolation,
        )
        for j, s in enumerate(batch.samples)
    ]
    if gts is not None:
        gprobs = probs.gather(1, midx[:, k:]).cpu()
        gpred = prediction_list(model, gprobs, midx[:, k:].cpu())
        for j, (res, g) in enumerate(zip(out, gts)):
            if g is not None:
                res.gt, res.gt_raw, res.gt_small = gpred[j][0], raw[j][k], small[j][k]
    return out


def _select_classes(
    logits: torch.Tensor, b: int, k: int, fixed: torch.Tensor | None, *, ten_crop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, class indices, probabilities [b, C]), the first two [b, k]: softmax scores
    (averaged over the ten crops) of the ``fixed`` classes, or of each image's top k."""
    from camcli.cam import tencrop as T

    if ten_crop:
        probs = T.ten_crop_scores(logits.float().view(b, 10, -1))
    else:
        probs = torch.softmax(logits.float(), dim=1)
    if fixed is not None:
        idx = fixed.unsqueeze(0).expand(b, -1)
        return probs.gather(1, idx), idx, probs
    scores, idx = probs.topk(k, dim=1)
    return scores, idx, probs


def _ten_crop_cams(feats, weight, idx, b: int, k: int, opts: CamOptions, pre, model):
    """The maps of the ten crops of each image merged onto its canvas: float [b, k, S, S]."""
    from camcli.cam import pipeline as P
    from camcli.cam import tencrop as T

    crop_idx = idx.repeat_interleave(10, dim=0)
    cams = P.cams_from_features(feats, weight, crop_idx)
    cams = cams.view(b, 10, k, *cams.shape[-2:])
    return T.merge_ten_crop(
        cams,
        size=pre.input_size,
        crop=model.preprocess.input_size,
        interpolation=opts.interpolation,
    )
