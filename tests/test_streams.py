"""Forward streams (camcli.runs.streams): several CPU forward passes at once, results in input
order, bounded memory in flight; the commands give the same records and maps with 1 or 2."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pytest
import torch

from camcli.runs.streams import Streams, default_streams, threads_per_stream
from conftest import full_maps, run_main


def test_default_streams_and_threads_share_the_budget():
    assert default_streams(1) == 1
    assert default_streams(2) == 2
    assert default_streams(16) == 2
    assert threads_per_stream(2, 2) == 1
    assert threads_per_stream(2, 16) == 8
    assert threads_per_stream(3, 2) == 1  # never 0


def test_ordered_keeps_input_order_and_bounds_concurrency():
    s = Streams(3, 1)
    running, peak, lock = [0], [0], threading.Lock()

    def fn(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(random.Random(i).uniform(0, 0.01))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i

    out = list(s.ordered(range(40), fn, needed=lambda i: i % 7 != 0))
    s.close()
    assert [i for i, _ in out] == list(range(40))
    assert [r for _, r in out] == [None if i % 7 == 0 else i * i for i in range(40)]
    assert 2 <= peak[0] <= 3


def test_ordered_runs_each_stream_on_its_share_of_threads():
    s = Streams(2, 1)
    seen = list(s.ordered(range(6), lambda _: (torch.get_num_threads(), threading.get_ident())))
    s.close()
    assert {n for _, (n, _) in seen} == {1}
    assert threading.get_ident() not in {t for _, (_, t) in seen}


def test_ordered_holds_at_most_max_cost_in_flight_but_always_one():
    s = Streams(4, 1)
    running, peak, lock = [0], [0], threading.Lock()
    cost = {0: 5, 1: 5, 2: 5, 3: 100, 4: 1, 5: 1}

    def fn(i):
        with lock:
            running[0] += cost[i]
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= cost[i]
        return i

    out = list(s.ordered(range(6), fn, cost=cost.get, max_cost=10))
    s.close()
    assert [r for _, r in out] == list(range(6))
    # 0 and 1 together (10); 2 waits for them; 3 (over the bound alone) runs by itself
    assert peak[0] == 100


def test_an_error_is_raised_at_its_items_turn_after_the_earlier_results():
    s = Streams(2, 1)

    def fn(i):
        if i == 3:
            raise ValueError("bad batch")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for _, r in s.ordered(range(10), fn):
            got.append(r)
    s.close()
    assert got == [0, 1, 2]


def test_streams_of_zero_are_refused():
    with pytest.raises(ValueError):
        Streams(0, 1)


@pytest.mark.parametrize("command", ["cam", "bbox", "predict"])
def test_two_streams_give_the_records_and_maps_of_one(tmp_path, cli_ckpt, cli_images, command):
    """The same inputs (a corrupt file among them) through 1 and 2 streams, batch size 1 so that
    batches finish out of order: identical records, in input order; the same maps."""
    outs = []
    for n in (1, 2):
        out = tmp_path / f"s{n}"
        args = [command, cli_images, "-w", cli_ckpt, "--batch-size", "1", "--streams", n]
        if command == "cam":
            args += ["--out", out, "-k", "2", "--save-maps", "-q"]
        elif command == "bbox":
            args += ["--output", out.with_suffix(".jsonl"), "-q"]
        else:
            args += ["--output", out.with_suffix(".jsonl"), "-q"]
        code = run_main(*args)
        assert code == 1  # the corrupt file fails, the rest is done
        outs.append(out)
    if command == "cam":
        a, b = (
            [json.loads(x) for x in (o / "manifest.jsonl").read_text().splitlines()] for o in outs
        )
        assert [r["image"] for r in a] == [r["image"] for r in b]
        for ra, rb in zip(a, b):
            assert ra.get("error") == rb.get("error")
            if "predictions" in ra:
                assert [p["class_index"] for p in ra["predictions"]] == [
                    p["class_index"] for p in rb["predictions"]
                ]
                np.testing.assert_allclose(
                    full_maps(outs[0] / ra["outputs"]["maps"]),
                    full_maps(outs[1] / rb["outputs"]["maps"]),
                    atol=1e-5,
                )
        run = json.loads((outs[1] / "run.json").read_text())
        assert run["streams"] == 2
    else:
        a, b = (o.with_suffix(".jsonl").read_text().splitlines() for o in outs)
        assert len(a) == len(b) > 2
        ra, rb = [json.loads(x) for x in a], [json.loads(x) for x in b]
        assert [r["image"] for r in ra] == [r["image"] for r in rb]
        for x, y in zip(ra, rb):
            assert x.get("error") == y.get("error")
            if command == "bbox" and "boxes" in x:
                assert [e["box"] for e in x["boxes"]] == [e["box"] for e in y["boxes"]]
            if "predictions" in x:
                assert [p["class_index"] for p in x["predictions"]] == [
                    p["class_index"] for p in y["predictions"]
                ]


def test_an_explicit_streams_ignored_with_compile_is_said(tmp_path, cli_ckpt, cli_images, capsys):
    from conftest import CLI_IMAGES

    one = cli_images / CLI_IMAGES[0][0]
    code = run_main("predict", one, "-w", cli_ckpt, "--compile", "--streams", "2", "-q")
    err = capsys.readouterr().err
    assert code == 0
    assert "--streams 2 is ignored with --compile" in err


def test_profile_report_aligns_its_columns_on_the_longest_stage_name():
    from camcli.runs.profiling import Profiler

    p = Profiler(True)
    p.images = 4
    p.add("forward", 2.0)
    p.add("encode+write (waited)", 1.0)
    p.decode_worker_s = 0.5
    rows = p.report().splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["forward", "encode+write", "decode", "other"]
    # every seconds figure ends in the same column
    assert len({r.index(" s ") for r in rows}) == 1, rows
