"""Library layer: the commands as functions that stream per-image records. Never prints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from camcli import io
from camcli.models import GapModel, load_model
from camcli.output import CamcliError, Exit


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise CamcliError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CamcliError(f"--device {spec}: CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CamcliError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise CamcliError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    return dev


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
    max_pixels: int = io.DEFAULT_MAX_PIXELS
    stats: dict = field(default_factory=lambda: {"ok": 0, "failed": 0})

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
        max_pixels: int = io.DEFAULT_MAX_PIXELS,
    ) -> Session:
        dev = resolve_device(device)
        m = load_model(model, weights, offline=offline).to(dev).eval()
        if dev.type == "cpu":
            m = m.to(memory_format=torch.channels_last)
        return cls(m, dev, batch_size or default_batch_size(dev), workers, max_pixels)

    def batches(
        self, items: list[io.InputItem], *, keep_image: bool = False
    ) -> Iterator[tuple[io.Batch, torch.Tensor | None, torch.Tensor | None]]:
        """Yield (batch, features [B, K, h, w], logits [B, C]) on the device, input order."""
        pre = self.model.preprocess
        for batch in io.iter_batches(
            items,
            pre,
            batch_size=self.batch_size,
            workers=self.workers,
            keep_image=keep_image,
            max_pixels=self.max_pixels,
            pin_memory=self.device.type == "cuda",
        ):
            if batch.x is None:
                yield batch, None, None
                continue
            x = batch.x.to(self.device, non_blocking=True)
            x = io.normalize_batch(x, pre)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                feats, logits = self.model.forward_features(x)
            yield batch, feats, logits


def error_record(sample: io.Sample) -> dict:
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


def predict(session: Session, items: list[io.InputItem], top_k: int = 5) -> Iterator[dict]:
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


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
