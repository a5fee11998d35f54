"""``bbox --draw``: boxes drawn onto images, written into an output folder.

The folder has the layout of a ``cam`` output folder (:class:`camcli.runs.outdir.OutDir`):
``<key>/boxes.jpg`` per input, ``manifest.jsonl`` in input order, resumable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from camcli.api import cams
from camcli.api.split import Split
from camcli.atomic import write_atomic
from camcli.data import codec, inputs
from camcli.data.codec import encode_image
from camcli.runs.outdir import OutDir


def draw_boxes(image: torch.Tensor, entries: list[dict]) -> np.ndarray:
    """The image with each box, its rank, label and score drawn.

    Args:
        image: uint8 [3, H, W] RGB (any device).
        entries: a bbox record's ``boxes``: ``box`` [x0, y0, x1, y1] inclusive pixels, or
            None (skipped).

    Returns:
        uint8 [H, W, 3] RGB numpy array. Drawn from the last guess to the first, so the best
        class's box and label end on top; one colour per class rank.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(img)
    colours = [(255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255)]
    font, lw = caption_style(img.size)
    places = caption_places(draw, entries, font, lw, img.size)
    for e in reversed(entries):  # boxes first, the best class's on top
        if e["box"] is not None:
            c = colours[(e["rank"] - 1) % len(colours)]
            draw.rectangle(list(e["box"]), outline=c, width=lw)
    for i, (tb, text) in reversed(list(places.items())):  # then every caption, over the boxes
        c = colours[(entries[i]["rank"] - 1) % len(colours)]
        draw.rectangle(tb, fill=c)
        draw.text((tb[0], tb[1] - _ascent_gap(draw, text, font)), text, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def caption_style(size: tuple[int, int]):
    """(font, box line width in pixels) of the drawing of an image of ``size`` (width,
    height): they follow the long side, capped by the short side (a panorama's captions must
    still fit several high)."""
    from PIL import ImageFont

    long, short = max(size), min(size)
    lw = max(1, round(min(long / 250, short / 50)))
    try:
        font = ImageFont.load_default(size=max(10, round(min(long / 40, short / 10))))
    except TypeError:  # pragma: no cover - old Pillow
        font = ImageFont.load_default()
    return font, lw


def _caption(e: dict) -> str:
    from camcli.cam.render import caption_text

    score = "" if e["score"] is None else f" {e['score']:.2f}"
    kind = f" ({e['kind']})" if e["kind"] in ("loose", "tight") else ""
    return f"{e['rank']}. {caption_text(e['label'])}{score}{kind}"


def _ascent_gap(draw, text: str, font) -> int:
    """Rows between the anchor of ``draw.text`` and the top of its ink (PIL's textbbox)."""
    return draw.textbbox((0, 0), text, font=font)[1]


def caption_places(
    draw, entries: list[dict], font, lw: int, size: tuple[int, int]
) -> dict[int, tuple[tuple, str]]:
    """Where each box's caption goes: above its box's top-left corner (inside the box when
    there is no room above), kept inside the image, and moved down past the captions of
    better-ranked classes it would cover (several boxes often share a corner).

    Args:
        draw: the ``PIL.ImageDraw`` of the image.
        entries: a bbox record's ``boxes`` (best first; ``box`` None: no caption).
        font: the caption font.
        lw: the boxes' line width, in pixels.
        size: (width, height) of the image.

    Returns:
        entry index -> ((x0, y0, x1, y1) of the caption's filled rectangle, inclusive pixels;
        its text). Rectangles never overlap while the image has rows for them.
    """
    width, height = size
    placed: dict[int, tuple[tuple, str]] = {}
    for i, e in enumerate(entries):
        if e["box"] is None:
            continue
        text = _caption(e)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        x0, y0 = e["box"][0], e["box"][1]
        x = max(0, min(x0 + lw, width - 1 - w))
        y = y0 - h - 2 if y0 - h - 2 >= 0 else y0 + lw
        moved = True
        while moved:
            moved = False
            for (px0, py0, px1, py1), _ in placed.values():
                if x <= px1 and px0 <= x + w and y <= py1 and py0 <= y + h and py1 + 1 + h < height:
                    y, moved = py1 + 1, True
        placed[i] = ((x, y, x + w, y + h), text)
    return placed


def open_drawdir(
    draw: Path | None,
    resume: bool,
    split: Split,
    mine: list[inputs.InputItem] | None,
    run: dict | None = None,
) -> OutDir | None:
    """The ``--draw`` folder (a shard's owns only its inputs' keys); None without ``draw``.

    With ``run`` (:func:`camcli.api.sink.part_run`): ``resume`` is refused when the folder's
    run json records another run (:func:`camcli.runs.samerun.check_same_run`), and the run
    json says ``"running": true`` from the start, so that a stopped or killed run is known
    (and ``cam`` refuses the folder: :func:`camcli.runs.samerun.refuse_other_command`)."""
    if draw is None:
        return None
    from camcli.runs.samerun import check_same_run
    from camcli.runs.shards import DRAW_MARK, shard_names

    names = ["run.json"]
    if split.shard is not None:
        names.insert(0, shard_names(split.shard.index, split.shard.count)[1])
    if resume and run is not None:
        for name in names:
            check_same_run(Path(draw), {**run, "command": DRAW_MARK}, name, "--draw")
    drawdir = OutDir(
        draw,
        resume=resume,
        shard=split.shard,
        own_keys={it.key for it in mine} if split.shard is not None else None,
    )
    if run is not None and (split.shard is not None or split.main):
        try:
            drawdir.write_run_json({**run, "command": DRAW_MARK, "running": True})
        except BaseException:
            drawdir.release()
            raise
    return drawdir


def finish_drawings(
    drawdir: OutDir,
    completed: bool,
    split: Split,
    items: list[inputs.InputItem] | None,
    stats: dict,
    skipped: int,
    run: dict | None = None,
) -> None:
    """Raise a failed drawing's write error; a completed run marks its ``--draw`` folder (a
    shard its part) with its run json (``run.json``; ``run.shard-I-of-N.json``): ``command``
    ``bbox --draw``, ``run`` (:func:`camcli.api.sink.part_run`: the model and the options
    that change the boxes, which ``camcli merge`` compares between the shards), its shard,
    input total and counts, so that ``cam`` does not take the folder for its own
    (:func:`camcli.runs.samerun.refuse_other_command`). Releases the folder's lock."""
    try:
        _finish_drawings(drawdir, completed, split, items, stats, skipped, run or {})
    finally:
        drawdir.release()


def _finish_drawings(drawdir, completed, split, items, stats, skipped, run: dict) -> None:
    drawdir.check_errors()
    if completed and (split.shard is not None or split.main):
        from camcli.runs.shards import DRAW_MARK

        shard = {} if split.shard is None else {"shard": str(split.shard)}
        drawdir.write_run_json(
            {
                **run,
                "command": DRAW_MARK,
                **shard,
                "inputs_total": len(items) if items is not None else stats.get("ok", 0),
                "counts": dict(stats),
                "options": {**run.get("options", {}), "resumed": skipped},
            }
        )


def draw_order(
    mine: list[inputs.InputItem] | None, seen: list[tuple[int, str]]
) -> list[tuple[int, str]]:
    """(index, key) of the inputs for the --draw manifest, in input order: this process's
    inputs, or from maps the map files in sorted order (as they were read)."""
    if mine is not None:
        return [(it.index, it.key) for it in mine]
    return sorted(seen)


def _draw_and_write(path: Path, image: torch.Tensor, entries: list[dict]) -> None:
    """In a writer thread: the boxes drawn onto the image, encoded and written."""
    write_atomic(path, encode_image(draw_boxes(image, entries), "jpg"))


def draw_record(drawdir: OutDir, res: cams.CamResult, rec: dict) -> str | None:
    """Queue ``<key>/boxes.jpg``, the image with the record's boxes, and its manifest line.

    From maps the source image is read again when it is still there (same size); otherwise
    nothing is drawn and the reason is returned (None when the drawing was queued)."""
    import os

    img = res.sample.image
    if img is None:  # from maps: the source image, when it is still there
        src = res.sample.item.path
        if not os.path.isfile(src):
            return f"{src}: source image not found"
        try:
            arr = codec.decode_image(src)
        except ValueError as exc:
            return f"{src}: source image unreadable ({exc})"
        img = torch.from_numpy(arr).permute(2, 0, 1)
        if tuple(img.shape[1:]) != tuple(res.sample.size):
            return f"{src}: source image is no longer the size the maps were made at"
    path = drawdir.root / res.sample.item.key / "boxes.jpg"
    fut = drawdir.submit(_draw_and_write, path, img, rec["boxes"])
    drawdir.record(
        res.sample.item.index,
        {**rec, "key": res.sample.item.key, "outputs": {"files": [drawdir.rel(path)]}},
        [fut],
    )
    return None
