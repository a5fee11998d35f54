"""Whether two ``run.json`` files describe one run: what ``cam --resume`` (the folder's run.json
against the resumed command) and ``camcli merge`` (each shard's against shard 0's) check before
they join the records of two processes in one manifest.

Torch-free; nothing is read here.
"""

from __future__ import annotations

import json

SAME_RUN = ("model", "weights_sha256", "num_classes", "preprocess")
"""``run.json`` fields two parts of one run share, besides their options."""

FIELD_NAMES = {
    "model": "--model",
    "weights_sha256": "weights (sha256)",
    "num_classes": "classes",
    "preprocess": "preprocessing",
}
"""How a message names the :data:`SAME_RUN` fields."""

NOT_COMPARED = frozenset({"inputs", "resumed", "device_render", "shard"})
"""``options`` fields that may differ between the parts of one run: the command-line inputs
(a resumed run may name them otherwise), how many inputs an earlier run had done, where the
images are rendered (CPU or GPU: the same files) and the shard."""

OPTION_FLAGS = {
    "top_k": "--top-k",
    "classes": "--class",
    "norm": "--norm",
    "interpolation": "--interpolation",
    "ten_crop": "--ten-crop",
    "colormap": "--colormap",
    "alpha": "--alpha",
    "fmt": "--format",
    "overlays": "--no-overlay",
    "grid": "--grid",
    "save_maps": "--save-maps",
    "maps_format": "--maps-format",
}
"""``options`` field -> the option as the user types it (``cam``'s flags); a field not listed
is named ``--field-name``."""

_INVERTED = frozenset({"overlays"})
"""Fields whose flag says the opposite (``overlays`` true is ``--no-overlay`` false)."""


def as_stored(info: dict) -> dict:
    """``info`` as ``run.json`` holds it once written and read back (tuples as lists, paths and
    other objects as text)."""
    return json.loads(json.dumps(info, default=str, allow_nan=False))


def run_difference(before: dict, now: dict) -> tuple[str, object, object] | None:
    """The first difference between two runs' ``run.json`` contents, or None when they are parts
    of one run.

    Compared: the :data:`SAME_RUN` fields, then every ``options`` field (of either run) but
    :data:`NOT_COMPARED`; options are compared only when both runs record them (a ``dict``).

    Args:
        before: the run already there (a folder's run.json, shard 0's), as read from JSON.
        now: the other run, as read from JSON (see :func:`as_stored`).

    Returns:
        ``(what, value before, value now)``: ``what`` as the user names it (``--model``,
        ``--format``, ``weights (sha256)``, ...), the values as the user would type them (a
        ``--no-overlay`` run's ``overlays`` false is ``--no-overlay True``).
    """
    pairs = [(FIELD_NAMES[k], before.get(k), now.get(k)) for k in SAME_RUN]
    was_opts, now_opts = before.get("options"), now.get("options")
    if isinstance(was_opts, dict) and isinstance(now_opts, dict):
        keys = [k for k in {**now_opts, **was_opts} if k not in NOT_COMPARED]
        for k in keys:
            was, is_now = was_opts.get(k), now_opts.get(k)
            if k in _INVERTED:
                was, is_now = (None if v is None else not v for v in (was, is_now))
            pairs.append((OPTION_FLAGS.get(k, "--" + k.replace("_", "-")), was, is_now))
    for what, was, is_now in pairs:
        if was != is_now:
            return what, was, is_now
    return None
