"""kill -9 in the middle of `cam` and `bbox` runs, then --resume: the outputs equal those of an
uninterrupted run, and no temporary file is left (issue: reliability at scale)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from camcli.cli import main
from conftest import PYTHON, make_image, subprocess_env

pytestmark = pytest.mark.usefixtures("cli_one_thread")

N_IMAGES = 80  # the runs must still be going when the kill lands
TORCHRUN = Path(PYTHON).with_name("torchrun")


def run_main(*argv) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("main() returned without SystemExit")  # pragma: no cover


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def is_temporary(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return ".camcli-tmp" in base or base.endswith((".tmp", ".partial"))


def same_files(a: Path, b: Path, skip=("run.json",)) -> None:
    assert tree(a) == tree(b)
    for f in sorted(tree(a) - set(skip)):
        if f.endswith(".npz"):
            with np.load(a / f) as x, np.load(b / f) as y:
                assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("many") / "imgs"
    for i in range(N_IMAGES):
        make_image(d / f"d{i % 3}" / f"img {i:02d}.jpg", (60 + 2 * (i % 40), 110 - i % 40), seed=i)
    (d / "d1" / "zz broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return d


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def start_and_kill(args: list, watch: Path, after: int) -> tuple[int, str]:
    """Run ``python -m camcli ARGS`` and SIGKILL it once ``watch`` holds ``after`` lines."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "camcli", *map(str, args)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if lines(watch) >= after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode(errors="replace")


CAM = ["--top-k", "3", "--save-maps", "--grid", "--batch-size", "1", "--workers", "0", "--quiet"]


def test_kill_9_mid_cam_then_resume_equals_an_uninterrupted_run(tmp_path, many, cli_ckpt, capsys):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_main("cam", many, "--out", ref, "-w", cli_ckpt, *CAM) == 1  # the broken file
    code, err = start_and_kill(
        ["cam", many, "--out", out, "-w", cli_ckpt, *CAM], out / "manifest.jsonl", after=4
    )
    assert code == -signal.SIGKILL, err
    assert 4 <= lines(out / "manifest.jsonl") < N_IMAGES + 1
    # run.json was written before the first image: the killed run says what it was
    info = json.loads((out / "run.json").read_text())
    assert info["running"] is True and info["options"]["top_k"] == 3
    done = lines(out / "manifest.jsonl")

    # resumed with another option: refused before anything is written (issue 17 follow-up)
    other = [a if a != "3" else "2" for a in CAM]
    capsys.readouterr()
    assert run_main("cam", many, "--out", out, "-w", cli_ckpt, *other, "--resume") == 2
    assert "made with --top-k 3, this run has --top-k 2" in capsys.readouterr().err
    assert lines(out / "manifest.jsonl") == done

    assert run_main("cam", many, "--out", out, "-w", cli_ckpt, *CAM, "--resume") == 1
    assert "running" not in json.loads((out / "run.json").read_text())
    assert not [f for f in tree(out) if is_temporary(f)]
    same_files(out, ref)


BBOX = ["--batch-size", "1", "--workers", "0", "--quiet"]


def test_kill_9_mid_bbox_then_resume_equals_an_uninterrupted_run(tmp_path, many, cli_ckpt, capsys):
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["bbox", many, "-w", cli_ckpt, *BBOX]
    assert run_main(*args, "-o", ref / "boxes.jsonl", "--draw", ref / "draw") == 1
    partial = out / ".boxes.jsonl.partial"
    code, err = start_and_kill(
        [*args, "-o", out / "boxes.jsonl", "--draw", out / "draw"], partial, after=4
    )
    assert code == -signal.SIGKILL, err
    assert not (out / "boxes.jsonl").exists() and 4 <= lines(partial) < N_IMAGES + 1
    # the partial file begins with the run that writes it (never read as a record), and the
    # run is recorded beside FILE from its start
    side = json.loads((out / ".boxes.jsonl.run").read_text())
    assert side["file"] is False and side["camcli_run"]["options"]["threshold"] == 0.2
    first = json.loads(partial.read_text().splitlines()[0])
    assert first["camcli_run"]["command"] == "bbox"
    assert first["camcli_run"]["options"]["threshold"] == 0.2
    before = partial.read_bytes()

    # resumed with another threshold: refused, the partial file untouched
    capsys.readouterr()
    code = run_main(*args, "-o", out / "boxes.jsonl", "--threshold", "0.3", "--resume")
    err = capsys.readouterr().err
    assert code == 2 and partial.read_bytes() == before
    assert "unfinished run made with --threshold 0.2, this run has --threshold 0.3" in err

    assert run_main(*args, "-o", out / "boxes.jsonl", "--draw", out / "draw", "--resume") == 1
    assert not [f for f in tree(out) if is_temporary(f)]
    same_files(out, ref, skip=("draw/run.json",))  # its resumed count differs


# --- torchrun: a rank that dies leaves its shard resumable ------------------------------------


def _pid_holding(path: Path) -> int | None:
    """The process that has ``path`` open (Linux /proc)."""
    target = str(path)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
            except OSError:
                continue
    return None


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() or not os.path.isdir("/proc"), reason="torchrun, /proc")
def test_torchrun_rank_killed_then_resume_finishes_equal(tmp_path, many, cli_ckpt):
    ref = tmp_path / "ref.jsonl"
    args = ["bbox", many, "-w", cli_ckpt, "--device", "cpu", *BBOX]
    assert run_main(*args, "-o", ref) == 1
    out = tmp_path / "out" / "boxes.jsonl"
    partial1 = out.with_name(".boxes.shard-1-of-2.jsonl.partial")
    cmd = [str(TORCHRUN), "--nproc-per-node", "2", "-m", "camcli", *map(str, args), "-o", str(out)]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        if lines(partial1) >= 3:
            pid = _pid_holding(partial1.resolve())
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.002)
    _, err = proc.communicate(timeout=120)
    assert killed and proc.returncode != 0, err.decode()
    assert not out.exists() and 3 <= lines(partial1) < N_IMAGES // 2 + 1
    r = subprocess.run([*cmd, "--resume"], env=subprocess_env(), capture_output=True, timeout=300)
    assert b"exitcode  : 1" in r.stderr  # the broken file: exit 1 on rank 0
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["boxes.jsonl"]
