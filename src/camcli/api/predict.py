"""``predict``: the top-k classes of each image, as per-image records."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from camcli.api.session import Session
from camcli.data import inputs, loader
from camcli.errors import Exit
from camcli.models.gap import GapModel

#: The error of an image whose scores or maps came out NaN or infinite.
NON_FINITE = (
    "the network gave non-finite scores or maps (NaN/inf): its weights or this input "
    "overflowed; try --precision fp32 or other weights"
)


def error_record(sample: loader.Sample) -> dict:
    """The record of an input that could not be read: ``{"image": path, "error": message}``."""
    return {"image": sample.item.path, "error": sample.error}


def prediction_list(model: GapModel, scores: torch.Tensor, indices: torch.Tensor) -> list[list]:
    """Top-k scores and class indices -> per image ``[{class_index, label, score}, ...]``.

    Args:
        model: gives the labels (``model.categories``).
        scores: float [B, k] softmax probabilities, best first (CPU).
        indices: int64 [B, k] their class indices (CPU).

    Returns:
        B lists of k dicts; scores rounded to 6 decimals.
    """
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
    """Classify ``items``: one record per input, in input order.

    Args:
        session: the model; ``session.stats`` counts the inputs.
        items: the inputs.
        top_k: classes per image, clamped to 1..num_classes.

    Yields:
        ``{"image", "width", "height", "predictions": [{"class_index", "label", "score"}...]}``
        (softmax scores, best first; width/height of the original image) or
        ``{"image", "error"}``.
    """
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
            finite = torch.isfinite(scores).all(dim=1).tolist()
            for s, p, ok in zip(batch.samples, preds, finite):
                if not ok:  # never a NaN into a record: that image fails
                    recs[s.item.index] = {"image": s.item.path, "error": NON_FINITE}
                    session.stats["failed"] += 1
                    continue
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
    """The exit code of a run's ``{"ok", "failed"}`` counts: 0 (all done), 1 (some inputs
    failed), 3 (every input failed: nothing usable)."""
    if stats["ok"] == 0 and stats["failed"] > 0:
        return Exit.NO_INPUT
    return Exit.SOME_FAILED if stats["failed"] else Exit.OK
