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
    """The maps of one image, kept small: each class's map is upsampled onto the original
    image only when asked for (:meth:`cam`), one class at a time, so that memory stays bounded
    on large images and the upsampling runs where the map is used (the writer threads).

    Attributes:
        sample: the input (``size`` its original (H, W); ``image`` uint8 [3, H, W] if kept).
        class_indices: the k mapped classes, best first.
        scores: their softmax scores (NaN for maps of another tool).
        predictions: ``[{"class_index", "label", "score"}, ...]`` as in a predict record.
        raw: float32 [k, h, w], the unnormalised maps at feature resolution (the ten-crop
            canvas with ``--ten-crop``) on the session's device; None for v1 map files.
        small: float32 [k, h, w], ``raw`` normalised as asked; None for v1 map files.
        geometry: how the image became the network input
            (:class:`camcli.cam.upsample.Geometry`); None for v1 map files.
        norm: the normalisation of ``small``.
        interpolation: the upsampling, ``"bilinear"`` or ``"bicubic"``.
        full: float32 [k, H, W], maps already at the original size (v1 map files); else None.
        gt: with ``CamOptions.gt_class``: the ground-truth class's
            ``{"class_index", "label", "score"}`` (None when the image has no known GT class).
        gt_raw, gt_small: its map as ``raw`` / ``small``, float32 [h, w] (same geometry), or
            None; upsampled on demand (:meth:`gt_cam`, :meth:`gt_cam_rows`, :attr:`gt_map`).
        gt_full: its map at the original size, float32 [H, W] (v1 map files), or None.
    """

    sample: loader.Sample
    class_indices: list[int]
    scores: list[float]
    predictions: list[dict]
    raw: torch.Tensor | None = None
    small: torch.Tensor | None = None
    geometry: object | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    full: torch.Tensor | None = None
    gt: dict | None = None
    gt_raw: torch.Tensor | None = None
    gt_small: torch.Tensor | None = None
    gt_full: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """The number of maps."""
        return len(self.class_indices)

    def cam(self, i: int) -> torch.Tensor:
        """Map ``i`` on the original image: float32 [H, W], normalised as asked, on the device
        of the maps (:func:`camcli.cam.upsample.upsample_one` of ``small[i]``)."""
        if self.full is not None:
            return self.full[i]
        from camcli.cam.upsample import upsample_one

        up, _ = upsample_one(self.small[i : i + 1], self.geometry, self.interpolation)
        return up[0]

    def cam_rows(self, i: int):
        """Map ``i`` as :meth:`cam` gives it, in row strips (bounded memory on large images):
        ``(y0, y1, float32 numpy [y1 - y0, W])`` top to bottom
        (:func:`camcli.cam.upsample.upsample_rows`); small maps come as one strip."""
        if self.full is not None:
            yield 0, int(self.full.shape[1]), self.full[i].float().cpu().numpy()
            return
        from camcli.cam.upsample import upsample_rows

        yield from upsample_rows(self.small[i], self.geometry, self.interpolation)

    @property
    def cams(self) -> torch.Tensor:
        """Every map on the original image at once: float32 [k, H, W] (k full-size maps in
        memory: prefer :meth:`cam` where one at a time will do)."""
        if self.full is not None:
            return self.full
        from camcli.cam.upsample import upsample_one

        return upsample_one(self.small, self.geometry, self.interpolation)[0]

    @property
    def coverage(self) -> torch.Tensor | None:
        """bool [H, W], the pixels the network saw (centre-crop preprocessing); None when it
        saw the whole image (or for v1 map files)."""
        if self.geometry is None or self.geometry.mode == "resize":
            return None
        from camcli.cam.upsample import coverage_mask

        return coverage_mask(self.geometry, self.small.device)

    @property
    def has_gt_map(self) -> bool:
        """Whether the GT class's map is here (``gt`` known and its map computed or read)."""
        return self.gt is not None and (self.gt_small is not None or self.gt_full is not None)

    def gt_cam(self) -> torch.Tensor:
        """The GT class's map on the original image, float32 [H, W], as :meth:`cam` gives
        the others. Requires :attr:`has_gt_map`."""
        if self.gt_full is not None:
            return self.gt_full
        from camcli.cam.upsample import upsample_one

        up, _ = upsample_one(self.gt_small.unsqueeze(0), self.geometry, self.interpolation)
        return up[0]

    def gt_cam_rows(self):
        """The GT class's map in row strips, as :meth:`cam_rows` gives the others."""
        if self.gt_full is not None:
            yield 0, int(self.gt_full.shape[0]), self.gt_full.float().cpu().numpy()
            return
        from camcli.cam.upsample import upsample_rows

        yield from upsample_rows(self.gt_small, self.geometry, self.interpolation)

    @property
    def gt_map(self) -> torch.Tensor | None:
        """The GT class's full-size map, float32 [H, W] (:meth:`gt_cam`), or None."""
        return self.gt_cam() if self.has_gt_map else None

    def with_gt_map(self) -> CamResult:
        """This result with the GT class's map appended to the maps (``raw``/``small``, or
        ``full`` for v1 map files; and its entry to the class lists) when it is not among
        them already: what ``cam --gt --save-maps`` saves, so that ``eval --maps`` finds the
        GT class's map of every image."""
        if not self.has_gt_map or self.gt["class_index"] in self.class_indices:
            return self
        from dataclasses import replace

        def cat(maps, one):
            return None if maps is None or one is None else torch.cat([maps, one.unsqueeze(0)])

        return replace(
            self,
            class_indices=[*self.class_indices, self.gt["class_index"]],
            scores=[*self.scores, self.gt["score"]],
            predictions=[*self.predictions, {**self.gt, "gt": True}],
            raw=cat(self.raw, self.gt_raw),
            small=cat(self.small, self.gt_small),
            full=cat(self.full, self.gt_full),
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
        A :class:`CamResult` per file (v2 files: ``raw``/``small`` and the stored geometry,
        upsampled class by class as ``cam`` did; v1 files: ``full`` float32 [k, H, W]; on the
        CPU, the file's key as output key) or a failed Sample for an unreadable file.

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
        cls = mf.header.class_indices
        image = mf.header.image or str(f)
        scores = mf.scores if mf.scores is not None else np.full(len(cls), np.nan, np.float32)
        labels = mf.header.labels or [f"class_{c}" for c in cls]
        item = inputs.InputItem(i, image, key)
        g = gt_class(item) if gt_class is not None else None
        j = cls.tolist().index(g) if g is not None and g in cls.tolist() else None
        gt = gt_raw = gt_small = gt_full = None
        if j is not None:  # the GT class's map, wherever it is in the file
            sj = None if np.isnan(scores[j]) else round(float(scores[j]), 6)
            gt = {"class_index": int(g), "label": labels[j], "score": sj}
        if mf.v2 is not None:
            v2 = mf.v2
            normalized = v2.normalized()
            if j is not None:
                gt_raw, gt_small = torch.from_numpy(np.ascontiguousarray(v2.raw[j])), normalized[j]
            raw = torch.from_numpy(v2.raw[:top_k])
            small = normalized[:top_k]
            full, size = None, v2.size
        else:
            if j is not None:
                gt_full = torch.from_numpy(np.ascontiguousarray(mf.cams[j]))
            raw = small = None
            full = torch.from_numpy(mf.cams[:top_k])
            size = (int(mf.cams.shape[1]), int(mf.cams.shape[2]))
        if top_k is not None:
            cls, scores, labels = cls[:top_k], scores[:top_k], labels[:top_k]
        sample = loader.Sample(item, None, size)
        preds = [
            {
                "class_index": int(c),
                "label": lab,
                "score": None if np.isnan(s) else round(float(s), 6),
            }
            for c, lab, s in zip(cls.tolist(), labels, scores.tolist())
        ]
        yield CamResult(
            sample,
            cls.tolist(),
            scores.tolist(),
            preds,
            raw=raw,
            small=small,
            geometry=mf.v2.geometry if mf.v2 is not None else None,
            norm=mf.v2.norm if mf.v2 is not None else "minmax",
            interpolation=mf.v2.interpolation if mf.v2 is not None else "bilinear",
            full=full,
            gt=gt,
            gt_raw=gt_raw,
            gt_small=gt_small,
            gt_full=gt_full,
        )
