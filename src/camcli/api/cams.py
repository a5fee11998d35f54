"""Class activation maps: one forward pass, the maps of every requested class, mapped onto the
original images (:func:`iter_cams`), or read back from saved map files (:func:`iter_maps`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from camcli.api.predict import NON_FINITE, prediction_list
from camcli.api.session import Session
from camcli.data import inputs, loader
from camcli.errors import CamcliError
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
    """

    top_k: int = 5
    classes: list[int] | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False


@dataclass
class CamResult:
    """The maps of one image.

    Attributes:
        sample: the input (``size`` its original (H, W); ``image`` uint8 [3, H, W] if kept).
        class_indices: the k mapped classes, best first.
        scores: their softmax scores (NaN for maps of another tool).
        cams: float32 [k, H, W] on the session's device (CPU from map files), normalised as
            asked, in original-image pixels.
        coverage: bool [H, W], the pixels the network saw (centre-crop preprocessing); None
            when it saw the whole image.
        predictions: ``[{"class_index", "label", "score"}, ...]`` as in a predict record.
    """

    sample: loader.Sample
    class_indices: list[int]
    scores: list[float]
    cams: torch.Tensor
    coverage: torch.Tensor | None
    predictions: list[dict]

    @property
    def record(self) -> dict:
        """``{"image", "width", "height", "predictions"}``: the start of a cam/bbox record."""
        h, w = self.sample.size
        return {
            "image": self.sample.item.path,
            "width": w,
            "height": h,
            "predictions": self.predictions,
        }


def resolve_classes(model: GapModel, classes: list[str] | None) -> list[int] | None:
    """``--class`` values -> class indices.

    Args:
        model: gives the class count and names.
        classes: indices (``"3"``) or category names (case-insensitive); None or empty: none.

    Returns:
        The indices in the given order, or None.

    Raises:
        CamcliError: an unknown value (exit 2), with the closest category name as a hint.
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
            raise CamcliError(
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
        before_forward: called before each batch's forward pass (the CPU job drains its
            writer threads there, see :func:`camcli.api.cam_job.run_cam`).

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
    for batch in session.loader(items, pre, keep_image=keep_image):
        out: dict[int, CamResult | loader.Sample] = {}
        for s in batch.failed:
            out[s.item.index] = s
            session.stats["failed"] += 1
        if batch.x is not None:
            if before_forward is not None:
                before_forward()
            for res in _batch_cams(session, batch, opts, pre, weight, k, fixed):
                if not _finite(res):  # never a NaN into records or maps: that image fails
                    res.sample.error = NON_FINITE
                    out[res.sample.item.index] = res.sample
                    session.stats["failed"] += 1
                    continue
                out[res.sample.item.index] = res
                session.stats["ok"] += 1
        for i in sorted(out):
            yield out[i]


def _finite(res: CamResult) -> bool:
    """Whether a result's scores and maps are all finite."""
    import math

    return all(math.isfinite(s) for s in res.scores) and bool(torch.isfinite(res.cams).all())


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
    from camcli.cam import upsample as U

    model = session.model
    x = session.to_input(batch.x, pre)
    b = x.shape[0]
    if opts.ten_crop:
        x = T.ten_crop(x, crop=model.preprocess.input_size)
    feats, logits = session.forward(x)
    with session.profiler.stage("cam"), torch.inference_mode():
        scores, idx = _select_classes(logits, b, k, fixed, ten_crop=opts.ten_crop)
        if opts.ten_crop:
            cams = _ten_crop_cams(feats, weight, idx, b, k, opts, pre, model)
        else:
            cams = P.cams_from_features(feats, weight, idx)
        cams = P.normalize_cams(cams, opts.norm)
        geoms = [_geometry(model.preprocess, s.size, ten_crop=opts.ten_crop) for s in batch.samples]
        up = U.upsample_to_images(cams, geoms, interpolation=opts.interpolation)
    preds = prediction_list(model, scores.cpu(), idx.cpu())
    idx_l, sc_l = idx.tolist(), scores.tolist()
    return [
        CamResult(s, idx_l[j], sc_l[j], up.maps[j], up.coverage[j], preds[j])
        for j, s in enumerate(batch.samples)
    ]


def _select_classes(
    logits: torch.Tensor, b: int, k: int, fixed: torch.Tensor | None, *, ten_crop: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, class indices), both [b, k]: softmax scores (averaged over the ten crops) of
    the ``fixed`` classes, or of each image's top k."""
    from camcli.cam import tencrop as T

    if ten_crop:
        probs = T.ten_crop_scores(logits.float().view(b, 10, -1))
    else:
        probs = torch.softmax(logits.float(), dim=1)
    if fixed is not None:
        idx = fixed.unsqueeze(0).expand(b, -1)
        return probs.gather(1, idx), idx
    return probs.topk(k, dim=1)


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


def iter_maps(root: str, top_k: int | None = None) -> Iterator[CamResult | loader.Sample]:
    """CamResults from maps saved by ``cam --save-maps`` (``root/**/*.npz``), sorted by path.

    A file with only ``cams`` [k, H, W] and ``class_indices`` [k] (another tool's) works too:
    its own path stands in for the image, labels default to ``class_<i>``, scores to NaN.
    ``top_k``: keep only the first (most confident) ``top_k`` maps of each file.

    Yields:
        A :class:`CamResult` per file (``cams`` float32 [k, H, W] on the CPU, ``coverage``
        None, the file's key as output key) or a failed Sample for an unreadable file.

    Raises:
        NoInputError: ``root`` is not a folder or holds no .npz file (exit 3), raised by
            :func:`camcli.data.mapfiles.list_map_files`, the one reader of map files.
    """
    from pathlib import Path

    import numpy as np

    from camcli.api.submission import maps_num_classes
    from camcli.data.mapfiles import MapFileError, list_map_files, read_map_file

    num_classes = maps_num_classes(Path(root))
    for i, f in enumerate(list_map_files(root, flag="--from-maps")):
        key = f.relative_to(root).with_suffix("").as_posix()
        try:
            mf = read_map_file(f, root, num_classes)
        except MapFileError as exc:
            yield loader.Sample(inputs.InputItem(i, str(f), key), None, None, error=str(exc))
            continue
        cams, cls = mf.cams, mf.header.class_indices
        image = mf.header.image or str(f)
        scores = mf.scores if mf.scores is not None else np.full(len(cls), np.nan, np.float32)
        labels = mf.header.labels or [f"class_{c}" for c in cls]
        if top_k is not None:
            cams, cls, scores, labels = cams[:top_k], cls[:top_k], scores[:top_k], labels[:top_k]
        item = inputs.InputItem(i, image, key)
        sample = loader.Sample(item, None, (int(cams.shape[1]), int(cams.shape[2])))
        preds = [
            {
                "class_index": int(c),
                "label": lab,
                "score": None if np.isnan(s) else round(float(s), 6),
            }
            for c, lab, s in zip(cls.tolist(), labels, scores.tolist())
        ]
        yield CamResult(sample, cls.tolist(), scores.tolist(), torch.from_numpy(cams), None, preds)
