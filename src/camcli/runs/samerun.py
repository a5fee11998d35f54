"""Whether two ``run.json`` files describe one run: what ``cam --resume`` (the folder's run.json
against the resumed command) and ``camcli merge`` (each shard's against shard 0's) check before
they join the records of two processes in one manifest.

Torch-free; nothing is read here but the ``--gt`` file's digest (:func:`gt_options`) and an
output folder's run jsons (:func:`refuse_other_command`, :func:`check_same_run`).
:func:`check_runs_recorded`: merge's check that the ``--output`` parts all record their run,
or none does.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from camcli.errors import CamcliError, Exit

SAME_RUN = ("model", "weights_sha256", "num_classes", "preprocess")
"""``run.json`` fields two parts of one run share, besides their options."""

FIELD_NAMES = {
    "model": "--model",
    "weights_sha256": "weights (sha256)",
    "num_classes": "classes",
    "preprocess": "preprocessing",
}
"""How a message names the :data:`SAME_RUN` fields."""

NOT_COMPARED = frozenset({"inputs", "resumed", "device_render", "shard", "gt_sha256"})
"""``options`` fields that may differ between the parts of one run: the command-line inputs
(a resumed run may name them otherwise), how many inputs an earlier run had done, where the
images are rendered (CPU or GPU: the same files) and the shard; ``gt_sha256`` decides how
``gt`` is compared (:func:`run_difference`)."""


def gt_options(gt: str | Path | None) -> dict:
    """What a run records of its ``--gt``: ``{"gt": absolute path, "gt_sha256": digest}``
    (text; None without ``--gt``). The digest is the file's sha256, or for a folder of XML
    files the sha256 of its ``*.xml`` files' relative paths and sha256s (what the reader
    reads, :func:`camcli.evaluate.gt_xml.read_xml_folder`). :func:`run_difference` compares
    the ground truth by its digest when both runs record one, so that the shards of one run
    may read it at other paths.

    Raises:
        OSError: the file cannot be read (the command read it already)."""
    if gt is None:
        return {"gt": None, "gt_sha256": None}
    path = Path(gt).resolve()
    return {"gt": str(path), "gt_sha256": _gt_digest(str(path))}


def _gt_digest(path: str) -> str | None:
    """The digest of :func:`gt_options` (a job takes it once, at its start)."""
    from camcli.models.hub import sha256_file

    root = Path(path)
    if not root.is_dir():
        return sha256_file(root) if root.is_file() else None
    import hashlib

    h = hashlib.sha256()
    for f in sorted(root.rglob("*.xml"), key=lambda p: p.relative_to(root).as_posix()):
        try:
            digest = sha256_file(f)
        except OSError:
            digest = "unreadable"
        h.update(os.fsencode(f.relative_to(root).as_posix()) + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


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
    "rule": "--box-rule",
    "tight_loose": "--tight-loose-heuristic",
}
"""``options`` field -> the option as the user types it (``cam``'s, ``bbox``'s and ``predict``'s
flags); a field not listed is named ``--field-name`` (``gt`` is ``--gt``)."""

_INVERTED = frozenset({"overlays"})
"""Fields whose flag says the opposite (``overlays`` true is ``--no-overlay`` false)."""


def as_stored(info: dict) -> dict:
    """``info`` as ``run.json`` holds it once written and read back (tuples as lists, paths and
    other objects as text)."""
    return json.loads(json.dumps(info, default=str, allow_nan=False))


def run_difference(before: dict, now: dict) -> tuple[str, object, object] | None:
    """The first difference between two runs' ``run.json`` contents, or None when they are parts
    of one run.

    Compared: the command (``camcli bbox``, ``camcli predict``) when both record one, the
    :data:`SAME_RUN` fields, then every ``options`` field both runs record but
    :data:`NOT_COMPARED`; options are compared only when both runs record them (a ``dict``).
    An option one run does not record at all (an older camcli's run, made before the option
    was recorded, e.g. ``gt``) is not compared. The ``--gt`` files (``gt``) are compared by
    their sha256 when both runs record one (``gt_sha256``, :func:`gt_options`): the same
    contents at another path are one run, other contents are not (both values then name
    their digest's first 12 digits); else by their absolute paths.

    Args:
        before: the run already there (a folder's run.json, shard 0's), as read from JSON.
        now: the other run, as read from JSON (see :func:`as_stored`).

    Returns:
        ``(what, value before, value now)``: ``what`` as the user names it (``--model``,
        ``--format``, ``weights (sha256)``, ...), the values as stored, but for the flags the
        user types (a ``--no-overlay`` run's ``overlays`` false is ``--no-overlay`` true);
        :func:`made_with` words them.
    """
    pairs = [(FIELD_NAMES[k], before.get(k), now.get(k)) for k in SAME_RUN]
    if before.get("command") and now.get("command"):  # another command (bbox, predict)
        pairs.insert(0, ("camcli", before["command"], now["command"]))
    was_opts, now_opts = before.get("options"), now.get("options")
    if isinstance(was_opts, dict) and isinstance(now_opts, dict):
        keys = [k for k in was_opts if k in now_opts and k not in NOT_COMPARED]
        if "classes" in keys and "top_k" in keys:  # --class decides the maps, not --top-k
            keys.remove("classes")
            keys.insert(keys.index("top_k"), "classes")
        digests = [o.get("gt_sha256") for o in (was_opts, now_opts)]
        by_digest = all(isinstance(d, str) for d in digests)  # --gt files by their contents
        for k in keys:
            was, is_now = was_opts.get(k), now_opts.get(k)
            if k == "gt" and by_digest:
                if digests[0] == digests[1]:
                    continue  # the same file, wherever it is
                # other contents: the digests say so (the paths may differ for one file)
                was, is_now = (f"{p} (sha256 {d[:12]})" for p, d in zip((was, is_now), digests))
            if k in _INVERTED:
                was, is_now = (None if v is None else not v for v in (was, is_now))
            pairs.append((OPTION_FLAGS.get(k, "--" + k.replace("_", "-")), was, is_now))
    for what, was, is_now in pairs:
        if was != is_now:
            return what, was, is_now
    return None


def shown(value: object) -> str:
    """A stored value as the user would type it: None is ``none``, a list its items joined by
    commas, an object compact JSON, text and numbers as they are (no quotes)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(shown(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return str(value)


def made_with(what: str, was: object, now: object, *, verb: str = "has") -> tuple[str, str]:
    """A difference of :func:`run_difference` in words, as the options are typed.

    Args:
        what: the option or field (``--grid``, ``--colormap``, ``weights (sha256)``).
        was: the value of the run already there; now: the other run's.
        verb: what precedes the other run's value (``has``: "this run has --top-k 2").

    Returns:
        (the first run's words, the other's): ``("with --grid", "without it")`` or
        ``("without --grid", "with it")`` for an on/off flag, ``("with --colormap jet",
        "has --colormap turbo")`` otherwise; an option one run lacks (None) is ``without
        --gt``, other missing values ``none``.
    """
    if isinstance(was, bool) and isinstance(now, bool):
        return (f"with {what}" if was else f"without {what}", "with it" if now else "without it")
    if what.startswith("--") and (was is None or now is None):  # an option given to one only
        first = f"without {what}" if was is None else f"with {what} {shown(was)}"
        return first, f"without {what}" if now is None else f"{verb} {what} {shown(now)}"
    return f"with {what} {shown(was)}", f"{verb} {what} {shown(now)}"


def check_runs_recorded(target: Path, parts: list[Path], runs: list[dict | None]) -> None:
    """Refuse merging ``parts`` of ``target`` when some record their run (``runs``, from their
    ``PART.inputs``) and others do not: the parts of one run come from one camcli version, so
    a part without one was made by another (older) run. All without: merged as before.

    Raises:
        CamcliError: (exit 2) the first part without a run, one with it, and the fix.
    """
    from camcli.runs.shards import count_path

    if None not in runs or all(r is None for r in runs):
        return
    i, j = runs.index(None), next(k for k, r in enumerate(runs) if r is not None)
    raise CamcliError(
        f"{target}: {parts[i].name} records no run in {count_path(parts[i]).name} (an older "
        f"camcli's part) while {parts[j].name} does; rerun shard {i}/{len(parts)} without "
        "--resume (or remove the parts of the older run)",
        Exit.USAGE,
    )


def refuse_other_command(root: Path, command: str, flag: str) -> None:
    """Refuse to write ``command``'s files (``cam``; ``bbox --draw``) into folder ``root``
    when its ``run.json`` or a shard's ``run.shard-I-of-N.json`` records another command:
    ``bbox --draw`` into a ``cam`` folder replaced its manifest, and ``cam --resume`` then
    took the drawings for complete images (trial 13). A run json that cannot be read, or
    records no command, is not a reason (it is checked where the run resumes).

    Raises:
        CamcliError: (exit 2) the folder, the command it holds and the fix.
    """
    from camcli.atomic import is_regular

    for f in [root / "run.json", *sorted(root.glob("run.shard-*-of-*.json"))]:
        if not is_regular(f):
            continue
        try:
            held = json.loads(f.read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(held, str) and held != command:
            raise CamcliError(
                f"{flag} {root}: holds the files of a `camcli {held}` run ({f.name}); give "
                f"`camcli {command}` a folder of its own",
                Exit.USAGE,
            )


def check_same_run(out: Path, now: dict, name: str = "run.json", flag: str = "--out") -> None:
    """Refuse ``--resume`` into a folder (``cam --out``, ``bbox --draw``: ``flag``) whose
    ``run.json`` (``name``: also a finished shard's
    ``run.shard-I-of-N.json``; an earlier run that completed, was interrupted, failed or was
    killed: ``"running": true``) names another model, weights or option, ``--gt`` included
    (:func:`camcli.runs.samerun.run_difference`): its records would mix two runs. A folder
    without a ``run.json`` (an older camcli's killed run) is resumed as it is; one whose
    ``run.json`` cannot be read, is not a regular file (a link, folder or FIFO: never read)
    or records no options is damaged, and refused (resumed unchecked, the run would be recorded
    as this one's); one whose ``run.json`` does not record an option (``--gt``: an older
    camcli's) is resumed with any value of it.

    Raises:
        UsageError: the first difference (the option as typed), the folder's value and this
            run's; or a damaged ``run.json``.
    """
    from camcli.atomic import is_regular
    from camcli.errors import UsageError

    now = as_stored(now)  # this run as run.json would hold it (lists, strings)
    if not os.path.lexists(out / name):
        return
    before = None  # camcli writes a regular file there: a link, FIFO (blocks) or folder is not read
    if is_regular(out / name):
        with contextlib.suppress(OSError, ValueError):
            before = json.loads((out / name).read_text(encoding="utf-8"))
    if not isinstance(before, dict) or not isinstance(before.get("options"), dict):
        raise UsageError(
            f"--resume: {out / name} does not record the run that wrote {out} (damaged?), so "
            "this run cannot be checked against it; rerun without --resume (the images are "
            f"done again) or give a new {flag}"
        )
    diff = run_difference(before, now)
    if diff is not None:
        was, is_now = made_with(*diff)
        raise UsageError(
            f"--resume: {out} holds a run made {was}, this run {is_now}; "
            f"resume with the options of that run, or give a new {flag}"
        )
