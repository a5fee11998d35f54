"""`camcli predict`: top-k classes per image as JSON Lines or a table."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from camcli.cli import options as o
from camcli.data.inputs import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from camcli.api.session import Session
    from camcli.api.sink import RecordSink
    from camcli.api.split import Split
    from camcli.data.inputs import InputItem


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    ctx: typer.Context,
    inputs: o.Inputs,
    model: o.Model = None,
    weights: o.Weights = None,
    top_k: o.TopK = 5,
    batch_size: o.BatchSize = None,
    device: o.Device = "auto",
    output: o.Output = None,
    resume: o.ResumeFile = False,
    follow_links: o.FollowLinks = False,
    shard: o.Shard = None,
    offline: o.Offline = False,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = DEFAULT_MAX_PIXELS,
    precision: o.Precision = "fp32",
    profile: o.Profile = False,
    codec: o.Codec = "auto",
    compile: o.Compile = False,
    streams: o.Streams = None,
    quiet: o.Quiet = False,
) -> int:
    """Classify images: one JSON Lines record per input, softmax scores, best first.

    Example: camcli predict photos/ --model resnet50 --top-k 5 --output preds.jsonl
    """
    from camcli.api.sink import RecordSink, part_run
    from camcli.api.split import plan_split
    from camcli.cli.run import (
        check_targets,
        fit_top_k,
        open_session,
        print_table,
        records_resumable,
        resolve_inputs,
        session_options,
    )
    from camcli.errors import UsageError

    check_targets(output)  # a folder, block device or socket: now, not after the model loads
    if resume and not records_resumable(output):
        raise UsageError(
            "--resume needs --output FILE (records on stdout, a device, a FIFO or a link cannot "
            "be resumed)"
        )
    items = resolve_inputs(inputs, follow_links=follow_links)
    split = plan_split(shard, inputs, stdout_ok=False, output=output)
    try:
        mine = split.select(items)
        session = open_session(model, weights, split=split, **session_options(locals()))
        top_k = fit_top_k(ctx, top_k, session.model.num_classes)
        from camcli.api import predict as api

        sink = RecordSink(
            output,
            split,
            resume=resume,
            table=output is None and sys.stdout.isatty(),
            run=part_run(session, "predict", {"top_k": top_k, "precision": session.precision}),
        )
        skipped = _write_predictions(session, mine, sink, split, top_k=top_k, quiet=quiet)
        if sink.table:
            print_table(sink.collected)
        st = session.stats
        ok, failed, skipped = split.total([st["ok"], st["failed"], skipped])
        split.barrier()
        sink.join(items)
        _report_end(
            session,
            split,
            ok=ok,
            failed=failed,
            resumed=skipped,
            selected=len(mine),
            inputs_total=len(items),
            profile=profile,
            quiet=quiet,
        )
        split.barrier()
    finally:
        split.close()
    code = api.exit_code({"ok": ok + skipped, "failed": failed})
    return code if split.main else 0


def _write_predictions(
    session: Session,
    mine: list[InputItem],
    sink: RecordSink,
    split: Split,
    *,
    top_k: int,
    quiet: bool,
) -> int:
    """Predict this process's inputs not in the output yet and write their records; then
    finish the output in input order (also after an error). Returns the inputs resumed."""
    from camcli.api import predict as api
    from camcli.cli.run import stream_records
    from camcli.console import info, plural

    todo = [it for it in mine if it.path not in sink.done]
    skipped = len(mine) - len(todo)
    if skipped:
        info(f"resume: {skipped} of {plural(len(mine), 'input')} already done", quiet)
    complete = False
    try:
        complete = stream_records(
            api.predict(session, todo, top_k=top_k),
            sink,
            total=len(todo),
            quiet=quiet,
            show_progress=split.main,
            what="predict",
        )
    finally:
        sink.finish([it.path for it in mine], complete=complete)
    return skipped


def _report_end(
    session: Session,
    split: Split,
    *,
    ok: int,
    failed: int,
    resumed: int,
    selected: int,
    inputs_total: int,
    profile: bool,
    quiet: bool,
) -> None:
    """On stderr at the end: the --profile report; the counts (main process, on a terminal)."""
    from camcli.console import info, plural

    if profile:
        session.profiler.images = session.stats["ok"]
        info(session.profiler.report(), multiline=True)
    summary = f"predict: {ok} done, {failed} failed" + (f", {resumed} resumed" if resumed else "")
    if split.shard is not None and split.dist is None:
        summary += f" (shard {split.shard}: {selected} of {plural(inputs_total, 'input')})"
    info(summary, quiet or not split.main or not sys.stderr.isatty())
