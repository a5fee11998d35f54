"""`camcli predict`: top-k classes per image as JSON Lines or a table."""

from __future__ import annotations

import sys

import typer

from camcli.cli import options as o
from camcli.io import DEFAULT_MAX_PIXELS


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    inputs: o.Inputs,
    model: o.Model = None,
    weights: o.Weights = None,
    top_k: o.TopK = 5,
    batch_size: o.BatchSize = None,
    device: o.Device = "auto",
    output: o.Output = None,
    offline: o.Offline = False,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS,
    precision: o.Precision = "fp32",
    profile: o.Profile = False,
    codec: o.Codec = "auto",
    compile: o.Compile = False,
    quiet: o.Quiet = False,
) -> int:
    """Classify images: one JSON Lines record per input, softmax scores, best first.

    Example: camcli predict photos/ --model resnet50 --top-k 5 --output preds.jsonl
    """
    from camcli.cli.run import open_session, resolve_inputs, stream_records

    items = resolve_inputs(inputs)
    session = open_session(
        model,
        weights,
        precision=precision,
        profile=profile,
        codec=codec,
        compile=compile,
        device=device,
        batch_size=batch_size,
        offline=offline,
        workers=workers,
        max_pixels=max_pixels,
    )
    from camcli import api

    as_table = output is None and sys.stdout.isatty()
    records = api.predict(session, items, top_k=top_k)
    code = stream_records(
        records, session, items, output=output, table=as_table, quiet=quiet, what="predict"
    )
    if profile:
        from camcli.output import info

        session.profiler.images = session.stats["ok"]
        info(session.profiler.report())
    return code
