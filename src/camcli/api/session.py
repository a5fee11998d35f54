"""Library layer: the commands as functions that stream per-image records. Never prints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from camcli.data import inputs, loader
from camcli.data.codec import DEFAULT_MAX_PIXELS
from camcli.errors import CamcliError, Exit
from camcli.models.gap import GapModel
from camcli.models.load import load_model
from camcli.runs.device import resolve_device
from camcli.runs.profiling import Profiler


def default_batch_size(device: torch.device) -> int:
    # On a small CPU, activations fall out of cache at large batches (DESIGN.md pitfalls).
    return 64 if device.type == "cuda" else 8


@dataclass
class Session:
    """A loaded model on its device, with the options shared by every command."""

    model: GapModel
    device: torch.device
    batch_size: int
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    precision: str = "fp32"
    profiler: Profiler | None = None
    device_codec: bool = False  # JPEG decode (and overlay render/encode) on the device
    stats: dict = field(default_factory=lambda: {"ok": 0, "failed": 0})

    def __post_init__(self) -> None:
        if self.profiler is None:
            self.profiler = Profiler(False)

    @classmethod
    def open(
        cls,
        model: str | None,
        weights: str | None = None,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        offline: bool = False,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = "fp32",
        profile: bool = False,
        codec: str = "auto",
        compile: bool = False,
    ) -> Session:
        dev = resolve_device(device)
        loader.sequential_opencv()
        if precision not in ("fp32", "bf16", "fp16"):
            raise CamcliError(f"--precision {precision!r}: use fp32, bf16 or fp16")
        if precision == "fp16" and dev.type == "cpu":
            raise CamcliError("--precision fp16 needs a GPU; on the CPU use bf16")
        m = load_model(model, weights, offline=offline).to(dev).eval()
        if dev.type == "cpu":
            m = m.to(memory_format=torch.channels_last)
        if compile:
            # Compiles the trunk on first use (slow once); shapes vary only with the batch tail.
            m.trunk = torch.compile(m.trunk, dynamic=False)
        bs = batch_size or default_batch_size(dev)
        if codec not in ("auto", "cpu", "device"):
            raise CamcliError(f"--codec {codec!r}: use auto, cpu or device")
        device_codec = codec == "device" or (codec == "auto" and dev.type == "cuda")
        return cls(m, dev, bs, workers, max_pixels, precision, Profiler(profile, dev), device_codec)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def loader(
        self, items: list[inputs.InputItem], preprocess, *, keep_image: bool = False
    ) -> Iterator[loader.Batch]:
        """Decoded batches in input order; the time spent waiting for them is profiled."""
        it = loader.iter_batches(
            items,
            preprocess,
            batch_size=self.batch_size,
            workers=self.workers,
            keep_image=keep_image,
            max_pixels=self.max_pixels,
            pin_memory=self.device.type == "cuda",
            raw_jpeg=self.device_codec,
        )
        prof = self.profiler
        while True:
            with prof.stage("wait for decode"):
                batch = next(it, None)
            if batch is None:
                return
            prof.decode_worker_s += sum(
                s.decode_s for s in batch.samples + batch.failed + batch.raw
            )
            if self.device_codec:
                with prof.stage("decode (device)"):
                    batch = loader.device_decode(
                        batch, preprocess, self.device, keep_image=keep_image
                    )
            yield batch

    def to_input(self, x_uint8: torch.Tensor, preprocess) -> torch.Tensor:
        """uint8 [B, 3, S, S] (pinned on CUDA) -> normalised float on the device."""
        with self.profiler.stage("transfer"):
            x = x_uint8.to(self.device, non_blocking=True)
            x = loader.normalize_batch(x, preprocess)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B, K, h, w], logits [B, C]) under inference_mode and --precision."""
        dtype = self.autocast_dtype
        with (
            self.profiler.stage("forward"),
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
        ):
            return self.model.forward_features(x)

    def batches(
        self, items: list[inputs.InputItem], *, keep_image: bool = False
    ) -> Iterator[tuple[loader.Batch, torch.Tensor | None, torch.Tensor | None]]:
        """Yield (batch, features [B, K, h, w], logits [B, C]) on the device, input order."""
        pre = self.model.preprocess
        for batch in self.loader(items, pre, keep_image=keep_image):
            if batch.x is None:
                yield batch, None, None
                continue
            feats, logits = self.forward(self.to_input(batch.x, pre))
            yield batch, feats, logits


def error_record(sample: loader.Sample) -> dict:
    return {"image": sample.item.path, "error": sample.error}


def prediction_list(model: GapModel, scores: torch.Tensor, indices: torch.Tensor) -> list[list]:
    """[B, k] softmax scores and indices -> per image [{class_index, label, score}, ...]."""
    cats = model.categories
    out = []
    for srow, irow in zip(scores.tolist(), indices.tolist()):
        out.append(
            [{"class_index": i, "label": cats[i], "score": round(s, 6)} for s, i in zip(srow, irow)]
        )
    return out


def _order(records: dict[int, dict]) -> Iterator[dict]:
    for i in sorted(records):
        yield records[i]


def predict(session: Session, items: list[inputs.InputItem], top_k: int = 5) -> Iterator[dict]:
    """One record per input, in input order:
    ``{"image", "width", "height", "predictions": [{"class_index", "label", "score"}...]}``
    or ``{"image", "error"}``."""
    k = max(1, min(top_k, session.model.num_classes))
    for batch, _, logits in session.batches(items):
        recs: dict[int, dict] = {}
        for s in batch.failed:
            recs[s.item.index] = error_record(s)
            session.stats["failed"] += 1
        if logits is not None:
            probs = torch.softmax(logits.float(), dim=1)
            scores, idx = probs.topk(k, dim=1)
            preds = prediction_list(session.model, scores.cpu(), idx.cpu())
            for s, p in zip(batch.samples, preds):
                h, w = s.size
                recs[s.item.index] = {
                    "image": s.item.path,
                    "width": w,
                    "height": h,
                    "predictions": p,
                }
                session.stats["ok"] += 1
        yield from _order(recs)


def exit_code(stats: dict) -> int:
    if stats["ok"] == 0 and stats["failed"] > 0:
        return Exit.NO_INPUT
    return Exit.SOME_FAILED if stats["failed"] else Exit.OK


# --------------------------------------------------------------------------------------------
# CAM: one forward pass, the maps of every requested class, mapped onto the original images.


@dataclass
class CamOptions:
    """What maps to compute. ``classes``: fixed class indices for every image (else top-k)."""

    top_k: int = 5
    classes: list[int] | None = None
    norm: str = "minmax"
    interpolation: str = "bilinear"
    ten_crop: bool = False


@dataclass
class CamResult:
    """The maps of one image: ``cams`` float32 [k, H, W] on the device, normalised as asked,
    in original-image pixels; ``coverage`` bool [H, W] for centre-crop preprocessing."""

    sample: loader.Sample
    class_indices: list[int]
    scores: list[float]
    cams: torch.Tensor
    coverage: torch.Tensor | None
    predictions: list[dict]

    @property
    def record(self) -> dict:
        h, w = self.sample.size
        return {
            "image": self.sample.item.path,
            "width": w,
            "height": h,
            "predictions": self.predictions,
        }


def resolve_classes(model: GapModel, classes: list[str] | None) -> list[int] | None:
    """Class names or indices -> indices; a one-line error naming the unknown one."""
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
    """Yield, in input order, a :class:`CamResult` per decoded image or the failed Sample.

    before_forward: called before each batch's forward pass (the CPU job drains its writer
    threads there, see jobs.run_cam)."""
    from camcli.cam import pipeline as P
    from camcli.cam import tencrop as T
    from camcli.cam import upsample as U
    from camcli.models.registry import Preprocess

    model = session.model
    weight, _ = model.classifier
    pre = model.preprocess
    if opts.ten_crop:
        pre = Preprocess(
            input_size=ten_crop_canvas(pre.input_size),
            mean=pre.mean,
            std=pre.std,
            interpolation=pre.interpolation,
        )
    k = len(opts.classes) if opts.classes else max(1, min(opts.top_k, model.num_classes))
    fixed = (
        torch.tensor(opts.classes, dtype=torch.long, device=session.device)
        if opts.classes
        else None
    )
    prof = session.profiler
    for batch in session.loader(items, pre, keep_image=keep_image):
        out: dict[int, CamResult | loader.Sample] = {}
        for s in batch.failed:
            out[s.item.index] = s
            session.stats["failed"] += 1
        if batch.x is not None:
            if before_forward is not None:
                before_forward()
            x = session.to_input(batch.x, pre)
            b = x.shape[0]
            if opts.ten_crop:
                x = T.ten_crop(x, crop=model.preprocess.input_size)
            feats, logits = session.forward(x)
            with prof.stage("cam"), torch.inference_mode():
                if opts.ten_crop:
                    probs = T.ten_crop_scores(logits.float().view(b, 10, -1))
                else:
                    probs = torch.softmax(logits.float(), dim=1)
                if fixed is not None:
                    idx = fixed.unsqueeze(0).expand(b, -1)
                    scores = probs.gather(1, idx)
                else:
                    scores, idx = probs.topk(k, dim=1)
                if opts.ten_crop:
                    crop_idx = idx.repeat_interleave(10, dim=0)
                    cams = P.cams_from_features(feats, weight, crop_idx)
                    cams = cams.view(b, 10, k, *cams.shape[-2:])
                    cams = T.merge_ten_crop(
                        cams,
                        size=pre.input_size,
                        crop=model.preprocess.input_size,
                        interpolation=opts.interpolation,
                    )
                else:
                    cams = P.cams_from_features(feats, weight, idx)
                cams = P.normalize_cams(cams, opts.norm)
                geoms = [
                    _geometry(model.preprocess, s.size, ten_crop=opts.ten_crop)
                    for s in batch.samples
                ]
                up = U.upsample_to_images(cams, geoms, interpolation=opts.interpolation)
            preds = prediction_list(model, scores.cpu(), idx.cpu())
            idx_l, sc_l = idx.tolist(), scores.tolist()
            for j, s in enumerate(batch.samples):
                out[s.item.index] = CamResult(
                    s, idx_l[j], sc_l[j], up.maps[j], up.coverage[j], preds[j]
                )
                session.stats["ok"] += 1
        for i in sorted(out):
            yield out[i]


def iter_maps(root: str, top_k: int | None = None) -> Iterator[CamResult | loader.Sample]:
    """CamResults from maps saved by ``cam --save-maps`` (``root/**/*.npz``), sorted by path.

    A file with only ``cams`` [k, H, W] and ``class_indices`` [k] (another tool's) works too:
    its own path stands in for the image, labels default to ``class_<i>``, scores to NaN.
    ``top_k``: keep only the first (most confident) ``top_k`` maps of each file.
    """
    from pathlib import Path

    import numpy as np

    base = Path(root)
    if not base.is_dir():
        raise CamcliError(f"--from-maps {root}: not a folder of .npz map files", Exit.NO_INPUT)
    files = sorted(base.rglob("*.npz"), key=lambda p: p.relative_to(base).as_posix())
    if not files:
        raise CamcliError(
            f"--from-maps {root}: no .npz files found; write them with "
            "`camcli cam ... --save-maps`",
            Exit.NO_INPUT,
        )
    for i, f in enumerate(files):
        key = f.relative_to(base).with_suffix("").as_posix()
        try:
            with np.load(f, allow_pickle=False) as z:
                cams = np.asarray(z["cams"], dtype=np.float32)
                cls = np.asarray(z["class_indices"], dtype=np.int64).reshape(-1)
                image = str(z["image"]) if "image" in z else str(f)
                scores = (
                    np.asarray(z["scores"], dtype=np.float32).reshape(-1)
                    if "scores" in z
                    else np.full(len(cls), np.nan, np.float32)
                )
                labels = (
                    [str(x) for x in z["labels"].reshape(-1)]
                    if "labels" in z
                    else [f"class_{c}" for c in cls]
                )
            if cams.ndim == 2:
                cams = cams[None]
            if cams.ndim != 3 or cams.shape[0] != len(cls) or min(cams.shape[1:]) < 1:
                raise ValueError(
                    f"cams has shape {list(cams.shape)}, expected [k, H, W] with "
                    f"k = {len(cls)} class_indices"
                )
        except (OSError, KeyError, ValueError) as exc:
            item = inputs.InputItem(i, str(f), key)
            yield loader.Sample(item, None, None, error=f"cannot read map file ({exc})")
            continue
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
