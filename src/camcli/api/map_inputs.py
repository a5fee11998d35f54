"""Maps read back from the files of ``cam --save-maps`` (``bbox --from-maps``) as
:class:`camcli.api.cam_result.CamResult` (:func:`iter_maps`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from camcli.api.cam_result import CamResult
from camcli.data import inputs, loader


def iter_maps(
    root: str,
    top_k: int | None = None,
    gt_class: Callable[[inputs.InputItem], int | None] | None = None,
) -> Iterator[CamResult | loader.Sample]:
    """CamResults from maps saved by ``cam --save-maps`` (``root/**/*.npz``), sorted by path.

    A file with only ``cams`` [k, H, W] and ``class_indices`` [k] (another tool's) works too:
    its own path stands in for the image, labels default to ``class_<i>``, scores to NaN.
    ``top_k``: keep only the first (most confident) ``top_k`` maps of each file.
    ``gt_class``: as :attr:`camcli.api.cams.CamOptions.gt_class`; the GT class's map is taken
    from the file when it holds one (``cam --gt --save-maps``), wherever it is.

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
