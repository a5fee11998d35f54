"""The maps of one image (:class:`CamResult`), small and upsampled onto the original image
only on demand; what :func:`camcli.api.cams.iter_cams` and
:func:`camcli.api.map_inputs.iter_maps` yield."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camcli.data import loader


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
