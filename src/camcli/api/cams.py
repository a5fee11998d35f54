"""Class activation maps: one forward pass, the maps of every requested class, mapped onto the
original images (:func:`iter_cams`), or read back from saved map files (:func:`iter_maps`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
        gt_class: ``item -> class index or None``: also map each image's ground-truth class
            (``CamResult.gt_map``), whether or not it is among the mapped ones; None: no.
    """

    top_k: int = 5
    classes: list[int] | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False
    gt_class: Callable[[inputs.InputItem], int | None] | None = None


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
        gt: with ``CamOptions.gt_class``: the ground-truth class's
            ``{"class_index", "label", "score"}`` (None when the image has no known GT class).
        gt_map: its map, float32 [H, W] like ``cams``, or None.
    """

    sample: loader.Sample
    class_indices: list[int]
    scores: list[float]
    cams: torch.Tensor
    coverage: torch.Tensor | None
    predictions: list[dict]
    gt: dict | None = None
    gt_map: torch.Tensor | None = None

    def with_gt_map(self) -> CamResult:
        """This result with the GT class's map appended to ``cams`` (and its entry to the
        class lists) when it is not among them already: what ``cam --gt --save-maps`` saves,
        so that ``eval --maps`` finds the GT class's map of every image."""
        if self.gt is None or self.gt_map is None or self.gt["class_index"] in self.class_indices:
            return self
        from dataclasses import replace

        return replace(
            self,
            class_indices=[*self.class_indices, self.gt["class_index"]],
            scores=[*self.scores, self.gt["score"]],
            cams=torch.cat([self.cams, self.gt_map.unsqueeze(0)]),
            predictions=[*self.predictions, {**self.gt, "gt": True}],
        )

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
        cams = P.normalize_cams(cams, opts.norm)
        geoms = [_geometry(model.preprocess, s.size, ten_crop=opts.ten_crop) for s in batch.samples]
        up = U.upsample_to_images(cams, geoms, interpolation=opts.interpolation)
    preds = prediction_list(model, scores.cpu(), idx.cpu())
    idx_l, sc_l = idx.tolist(), scores.tolist()
    out = [
        CamResult(s, idx_l[j], sc_l[j], up.maps[j][:k], up.coverage[j], preds[j])
        for j, s in enumerate(batch.samples)
    ]
    if gts is not None:
        gprobs = probs.gather(1, midx[:, k:]).cpu()
        gpred = prediction_list(model, gprobs, midx[:, k:].cpu())
        for j, (res, g) in enumerate(zip(out, gts)):
            if g is not None:
                res.gt, res.gt_map = gpred[j][0], up.maps[j][k]
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


def iter_maps(
    root: str,
    top_k: int | None = None,
    gt_class: Callable[[inputs.InputItem], int | None] | None = None,
) -> Iterator[CamResult | loader.Sample]:
    """CamResults from maps saved by ``cam --save-maps`` (``root/**/*.npz``), sorted by path.

    A file with only ``cams`` [k, H, W] and ``class_indices`` [k] (another tool's) works too:
    its own path stands in for the image, labels default to ``class_<i>``, scores to NaN.
    ``top_k``: keep only the first (most confident) ``top_k`` maps of each file.
    ``gt_class``: as :attr:`CamOptions.gt_class`; the GT class's map is taken from the file
    when it holds one (``cam --gt --save-maps``), wherever it is.

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
        item = inputs.InputItem(i, image, key)
        g = gt_class(item) if gt_class is not None else None
        gt = gt_map = None
        if g is not None and g in cls.tolist():
            j = cls.tolist().index(g)
            s = None if np.isnan(scores[j]) else round(float(scores[j]), 6)
            gt = {"class_index": int(g), "label": labels[j], "score": s}
            gt_map = torch.from_numpy(np.ascontiguousarray(cams[j]))
        if top_k is not None:
            cams, cls, scores, labels = cams[:top_k], cls[:top_k], scores[:top_k], labels[:top_k]
        sample = loader.Sample(item, None, (int(cams.shape[1]), int(cams.shape[2])))
        preds = [
            {
                "class_index": int(c),
                "label": lab,
                "score": None if np.isnan(s) else round(float(s), 6),
            }
            for c, lab, s in zip(cls.tolist(), labels, scores.tolist())
        ]
        yield CamResult(
            sample, cls.tolist(), scores.tolist(), torch.from_numpy(cams), None, preds, gt, gt_map
        )
