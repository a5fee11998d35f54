"""Hostile outputs, round 2 (issue 15, cases W1-W7, S1-S3 of ``hostile-2.md``): writes never
leave the output folder, one run per output, resume validates what it reads, output names
cannot collide, links out of an input folder are not followed, the weights cache is keyed by
URL, SIGTERM ends a run like Ctrl-C, and no stray temporary files are left.

Each test names its case id. A snapshot of the folder around the output (``snapshot``) shows
nothing was written outside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from camcli.cli import main
from conftest import make_image, snapshot

pytestmark = pytest.mark.usefixtures("cli_one_thread")

ARGS = ["--batch-size", "1", "--workers", "0", "--quiet"]


def run_main(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:  # pragma: no cover - main always exits
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def two(tmp_path) -> Path:
    """A folder of two small images, a.jpg and b.png."""
    d = tmp_path / "in"
    make_image(d / "a.jpg", (40, 30), 1)
    make_image(d / "b.png", (30, 44), 2)
    return d


# --- W1: a directory link inside --out ---------------------------------------------------------


def test_W1_cam_refuses_a_folder_link_inside_out(tmp_path, two, cli_ckpt, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "1_class_a.jpg").write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").symlink_to(victim, target_is_directory=True)  # a.jpg's key is "a"
    before = snapshot(tmp_path, out)
    code, _, err = run_main(capsys, "cam", two, "--out", out, "-w", cli_ckpt, "--top-k", "1", *ARGS)
    assert snapshot(tmp_path, out) == before  # nothing written outside --out
    assert sorted(p.name for p in victim.iterdir()) == ["1_class_a.jpg"]
    assert (victim / "1_class_a.jpg").read_bytes() == b"precious"
    assert code == 5
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(out / "a") in lines[0] and "link" in lines[0]
    assert ".camcli-tmp" not in err
    assert not [f for f in tree(out) if ".camcli-tmp" in f]


def _confined_root_with_a_link(tmp_path):
    """(victim folder, root): ``root`` confined for the atomic writer, with a link
    ``root/sub/deep`` -> victim planted below it."""
    from camcli import atomic

    victim = tmp_path / "victim"
    victim.mkdir()
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "deep").symlink_to(victim)
    atomic.confine(root)
    return victim, root


def test_W1_atomic_writer_refuses_links_below_a_confined_root(tmp_path):
    from camcli import atomic

    victim, root = _confined_root_with_a_link(tmp_path)
    try:
        with pytest.raises(atomic.LinkError) as ei:
            atomic.write_atomic(root / "sub" / "deep" / "x" / "f.bin", b"1")
        assert str(root / "sub" / "deep") in str(ei.value)
        atomic.write_atomic(root / "sub" / "ok" / "f.bin", b"2")  # real folders are made
    finally:
        atomic.release(root)
    assert list(victim.iterdir()) == []
    assert (root / "sub" / "ok" / "f.bin").read_bytes() == b"2"


# --- W2: a planted .FILE.partial link -----------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True])
def test_W2_bbox_does_not_write_through_a_planted_partial_link(
    tmp_path, two, cli_ckpt, capsys, resume
):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "p").write_text("precious\n")
    o = tmp_path / "o"
    o.mkdir()
    (o / ".boxes.jsonl.partial").symlink_to(victim / "p")
    before = snapshot(tmp_path, o)
    extra = ["--resume"] if resume else []
    code, _, err = run_main(
        capsys, "bbox", two, "--output", o / "boxes.jsonl", "-w", cli_ckpt, *extra, *ARGS
    )
    assert snapshot(tmp_path, o) == before
    assert (victim / "p").read_text() == "precious\n"
    assert code == 0, err
    recs = [json.loads(x) for x in (o / "boxes.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in recs] == ["a.jpg", "b.png"]
    # link, lock, partial gone; the run that wrote FILE recorded beside it
    assert sorted(p.name for p in o.iterdir()) == [".boxes.jsonl.run", "boxes.jsonl"]


def test_W2_atomic_temporary_file_never_follows_a_planted_link(tmp_path):
    from camcli import atomic

    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "d" / "f.txt"
    target.parent.mkdir()
    atomic.tmp_path_for(target).symlink_to(victim)  # planted at the exact temporary name
    atomic.write_atomic(target, b"new")
    assert victim.read_text() == "precious"
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


# --- W3: two runs on one output -----------------------------------------------------------------


def test_W3_second_run_on_a_locked_out_folder_is_refused(tmp_path, two, cli_ckpt, capsys):
    from camcli.runs.locks import RunLock

    out = tmp_path / "out"
    out.mkdir()
    held = RunLock(out / ".camcli.lock")  # a first run is writing out
    try:
        before = snapshot(tmp_path)
        code, _, err = run_main(capsys, "cam", two, "--out", out, "-w", cli_ckpt, *ARGS)
        assert snapshot(tmp_path) == before  # nothing written at all
        assert code == 2
        assert err.strip().splitlines() == [
            f"error: {out}: another camcli run is writing it; wait for it to finish or "
            "choose another output folder"
        ]
    finally:
        held.release()
    # the lock is gone with its holder: the run goes through and leaves no lock file
    code, _, err = run_main(capsys, "cam", two, "--out", out, "-w", cli_ckpt, *ARGS)
    assert code == 0, err
    assert not (out / ".camcli.lock").exists()


def test_W3_second_run_on_a_locked_output_file_is_refused(tmp_path, two, cli_ckpt, capsys):
    from camcli.runs.locks import RunLock

    o = tmp_path / "o"
    o.mkdir()
    (o / "boxes.jsonl").write_text('{"image": "first run"}\n')
    held = RunLock(o / ".boxes.jsonl.lock")
    try:
        before = snapshot(tmp_path)
        code, _, err = run_main(
            capsys, "predict", two, "--output", o / "boxes.jsonl", "-w", cli_ckpt, *ARGS
        )
        assert snapshot(tmp_path) == before
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "another camcli run is writing it" in lines[0], err
        assert str(o / "boxes.jsonl") in lines[0]
    finally:
        held.release()


def test_W3_lock_of_a_killed_process_does_not_block(tmp_path, two, cli_ckpt, capsys):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    # a process that took the lock and was killed (-9): the kernel dropped its lock
    code = (
        "import fcntl, os, sys; fh = open(sys.argv[1], 'a'); fcntl.flock(fh, fcntl.LOCK_EX);"
        " os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code, str(out / ".camcli.lock")], check=False)
    assert (out / ".camcli.lock").exists()
    code, _, err = run_main(capsys, "cam", two, "--out", out, "-w", cli_ckpt, *ARGS)
    assert code == 0, err
    assert not (out / ".camcli.lock").exists()


# --- W4: --resume validates the manifest and the partial records --------------------------------


def test_W4_resume_redoes_manifest_records_with_bad_paths_or_types(tmp_path, two, cli_ckpt, capsys):
    out = tmp_path / "out"
    code, _, err = run_main(capsys, "cam", two, "--out", out, "-w", cli_ckpt, "--top-k", "1", *ARGS)
    assert code == 0, err
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    good = {r["key"]: r for r in recs}
    # a's overlay is removed; its record now names a file outside the folder, which exists
    for f in good["a"]["outputs"]["files"]:
        (out / f).unlink()
    hostile = [
        {**good["a"], "outputs": {"files": ["../../../../../../../../etc/passwd"]}},
        {**good["a"], "outputs": {"files": [str(tmp_path / "in" / "a.jpg")]}},
        {**good["a"], "outputs": ["a/1_class_a.jpg"]},
        {**good["a"], "outputs": {"files": [5]}},
        {**good["a"], "key": ["a"]},
        {**good["b"], "key": "a"},  # b's existing files under a's key
        {**good["b"], "outputs": "b"},
    ]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hostile))
    before = snapshot(tmp_path, out)
    code, _, err = run_main(
        capsys, "cam", two, "--out", out, "-w", cli_ckpt, "--top-k", "1", "--resume", *ARGS
    )
    assert snapshot(tmp_path, out) == before
    assert code == 0, err
    assert err == ""
    after = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in after] == ["a", "b"]
    for r in after:
        assert all((out / f).is_file() for f in r["outputs"]["files"])
    assert after == recs  # both redone, the same records


def test_W4_resume_redoes_partial_records_with_wrong_types(tmp_path, two, cli_ckpt, capsys):
    o = tmp_path / "o"
    o.mkdir()
    target = o / "boxes.jsonl"
    a, b = str(two / "a.jpg"), str(two / "b.png")
    (o / ".boxes.jsonl.partial").write_text(
        json.dumps({"image": ["x"], "boxes": []}) + "\n"
        + json.dumps({"image": {"a": 1}}) + "\n"
        + json.dumps({"image": 5}) + "\n"
        + json.dumps({"image": None}) + "\n"
    )  # fmt: skip
    code, _, err = run_main(
        capsys, "bbox", two, "--output", target, "-w", cli_ckpt, "--resume", *ARGS
    )
    assert code == 0, err
    recs = [json.loads(x) for x in target.read_text().splitlines()]
    assert [r["image"] for r in recs] == [a, b]
    assert all(isinstance(r["boxes"], list) for r in recs)


# --- W5: output names that collide or are too long ----------------------------------------------


def test_W5_keys_cannot_collide_with_output_files(tmp_path, cli_ckpt, capsys):
    d = tmp_path / "in"
    make_image(d / "b.jpg", (30, 30), 1)
    make_image(d / "b.npz.png", (30, 30), 2)  # would be the folder DIR/b.npz/ beside b.npz
    make_image(d / "c.jpg", (30, 30), 3)
    make_image(d / "c" / "1_class_a.png.jpg", (30, 30), 4)  # would be DIR/c/1_class_a.png/
    out = tmp_path / "out"
    code, _, err = run_main(
        capsys, "cam", d, "--out", out, "-w", cli_ckpt, "--top-k", "1", "--save-maps",
        "--format", "png", *ARGS,
    )  # fmt: skip
    assert code == 0, err
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and not [r for r in recs if "error" in r]
    files = [f for r in recs for f in r["outputs"]["files"]]
    assert len(set(files)) == len(files) == 8
    assert all((out / f).is_file() for f in files)
    # and again: --resume finds every image complete
    code, _, err = run_main(
        capsys, "cam", d, "--out", out, "-w", cli_ckpt, "--top-k", "1", "--save-maps",
        "--format", "png", "--resume", *ARGS,
    )  # fmt: skip
    assert code == 0, err


def test_W5_long_names_stay_within_the_file_name_limit(tmp_path, cli_ckpt, capsys):
    d = tmp_path / "in"
    stem = "é" * 125  # 250 bytes; with .jpg/.png 254 bytes, the longest a name can be
    make_image(d / f"{stem}.jpg", (30, 30), 1)
    make_image(d / f"{stem}.png", (30, 30), 2)
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    code, _, err = run_main(
        capsys, "cam", d, "--out", out, "-w", cli_ckpt, "--top-k", "1", "--save-maps", *ARGS
    )
    assert snapshot(tmp_path, out) == before
    assert code == 0, err
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and not [r for r in recs if "error" in r]
    keys = [r["key"] for r in recs]
    assert len(set(keys)) == 2
    for r in recs:
        assert all((out / f).is_file() for f in r["outputs"]["files"])
        assert all(
            len(os.fsencode(part)) <= 255 for f in r["outputs"]["files"] for part in f.split("/")
        )


# --- W6: folder links that leave the input folder -----------------------------------------------


def test_W6_folder_links_out_of_the_input_folder_are_not_followed(tmp_path, cli_ckpt, capsys):
    outside = tmp_path / "outside"
    make_image(outside / "secret.jpg", (30, 30), 1)
    r = tmp_path / "r"
    make_image(r / "a.jpg", (30, 30), 2)
    make_image(r / "sub" / "b.jpg", (30, 30), 3)
    (r / "all").symlink_to(outside, target_is_directory=True)  # leaves r
    (r / "again").symlink_to(r / "sub", target_is_directory=True)  # stays inside r
    out = tmp_path / "p.jsonl"
    code, _, err = run_main(capsys, "predict", r, "--output", out, "-w", cli_ckpt, *ARGS)
    assert code == 0, err
    names = [json.loads(x)["image"] for x in out.read_text().splitlines()]
    # the link inside r is followed (each folder is read once: through the first name)
    assert names == [str(r / "a.jpg"), str(r / "again" / "b.jpg")]
    code, _, err = run_main(
        capsys, "predict", r, "--output", out, "-w", cli_ckpt, "--follow-links", *ARGS
    )
    assert code == 0, err
    names = [json.loads(x)["image"] for x in out.read_text().splitlines()]
    assert names == [str(r / "a.jpg"), str(r / "again" / "b.jpg"), str(r / "all" / "secret.jpg")]


# --- W7: the weights cache and plain http -------------------------------------------------------


@pytest.fixture
def web(monkeypatch, tmp_path):
    from test_hub import _Server

    monkeypatch.setenv("CAMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    s = _Server()
    yield s
    s.close()


def test_W7_two_urls_with_one_file_name_do_not_share_a_cache_entry(web, tmp_path, cli_ckpt):
    from camcli.models import hub

    first = cli_ckpt.read_bytes()
    second = first + b"\0" * 7  # a different file with the same name
    web.files["/a/model.pt"] = first
    web.files["/b/model.pt"] = second
    pa = hub.download(f"{web.url}/a/model.pt", None, progress=False)
    pb = hub.download(f"{web.url}/b/model.pt", None, progress=False)
    assert pa != pb
    assert pa.read_bytes() == first and pb.read_bytes() == second
    assert web.requests == ["/a/model.pt", "/b/model.pt"]
    # each is reused from the cache, not downloaded again
    assert hub.download(f"{web.url}/b/model.pt", None, progress=False).read_bytes() == second
    assert hub.download(f"{web.url}/a/model.pt", None, offline=True).read_bytes() == first
    assert len(web.requests) == 2
    # a pinned digest keys by file name (what the registry's entries use), and checks it
    import hashlib

    pinned = hub.download(
        f"{web.url}/a/model.pt#sha256={hashlib.sha256(first).hexdigest()}", None, progress=False
    )
    assert pinned.parent == tmp_path / "cache" / "weights" and pinned.read_bytes() == first


def test_W7_plain_http_needs_a_pinned_sha256(web, tmp_path, two, capsys, monkeypatch):
    import urllib.request

    def no_network(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("downloaded an unpinned http URL")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    url = "http://weights.example.com/w/model.pt"
    code, _, err = run_main(
        capsys, "predict", two / "a.jpg", "--model", "resnet18", "--weights", url, *ARGS
    )
    assert code == 4
    assert err.strip().splitlines() == [
        f"error: {url}: plain http needs the file's full digest, as "
        f"{url}#sha256=<64 hex digits>; or use https"
    ]
    assert not (tmp_path / "cache").exists()


# --- S3: read-only output folders, error messages, numpy warnings -------------------------------


@pytest.fixture
def ro_fs(tmp_path) -> Path:
    """A read-only tmpfs (needs root, or skips)."""
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_S3_output_folder_on_a_read_only_fs_exits_5(ro_fs, two, cli_ckpt, capsys):
    for argv, where in [
        (["cam", two, "--out", ro_fs / "out"], ro_fs / "out"),
        (["bbox", two, "--output", ro_fs / "o" / "b.jsonl"], ro_fs / "o" / "b.jsonl"),
        (["predict", two, "--output", ro_fs / "p.jsonl"], ro_fs / "p.jsonl"),
    ]:
        code, _, err = run_main(capsys, *argv, "-w", cli_ckpt, *ARGS)
        assert code == 5, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to {where}:"), err
        assert "Read-only file system" in lines[0]
    assert list(ro_fs.iterdir()) == []


def test_S3_eval_and_submission_write_errors_name_the_target(ro_fs, tmp_path, two, cli_ckpt,
                                                            capsys):  # fmt: skip
    from test_bbox_cli import write_map_clsloc

    recs = tmp_path / "r.jsonl"
    syn = write_map_clsloc(tmp_path / "map_clsloc.txt", n=10)
    code, _, err = run_main(
        capsys, "bbox", two, "-w", cli_ckpt, "--output", recs, "--submission",
        ro_fs / "s.txt", "--synsets", syn, *ARGS,
    )  # fmt: skip
    assert code == 5, err
    assert err.strip().splitlines() == [
        f"error: cannot write to {ro_fs / 's.txt'}: Read-only file system; free space or fix "
        "permissions, then rerun"
    ]
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "ImageId,PredictionString\n"
        f"a,{open(syn).read().split()[0]} 0 0 9 9\nb,{open(syn).read().split()[0]} 1 1 5 5\n"
    )
    for opt, name in [("--output", "m.json")]:  # --plot writes through the same function
        code, _, err = run_main(capsys, "eval", "--gt", gt, "--boxes", recs, opt, ro_fs / name,
                                "--synsets", syn, "--quiet")  # fmt: skip
        assert code == 5, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to {ro_fs / name}:")
        assert ".camcli-tmp" not in err


def test_S3_numpy_warnings_do_not_reach_stderr(tmp_path, capsys):
    import numpy as np

    maps = tmp_path / "maps"
    maps.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        maps / "x.npz",
        cams=(rng.random((1, 20, 20)) + 1j).astype(np.complex64),  # ComplexWarning when cast
        class_indices=np.array([0]),
        scores=np.array([0.5], np.float32),
        labels=np.array(["a"]),
        image=np.array("x.jpg"),
    )
    import subprocess
    import sys

    from conftest import subprocess_env

    r = subprocess.run(
        [sys.executable, "-m", "camcli", "bbox", "--from-maps", str(maps), "--output",
         str(tmp_path / "b.jsonl")],
        capture_output=True, text=True, env=subprocess_env(), timeout=120,
    )  # fmt: skip
    assert "Warning" not in r.stderr and "np." not in r.stderr, r.stderr
    # the complex map is refused by the map reader (a one-line error record): no usable input
    assert r.returncode in (0, 1, 3)


# --- S1: SIGTERM and process pools --------------------------------------------------------------


def _term_after_first_record(
    argv: list[str], progress_file: Path, *, group: bool = False, lines: int = 1
) -> tuple[int, str]:
    """Run ``python -m camcli argv``, SIGTERM it (``group``: its whole process group, as Slurm
    does) once ``progress_file`` holds ``lines`` lines -> (exit code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import subprocess_env

    p = subprocess.Popen(
        [sys.executable, "-m", "camcli", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        start_new_session=group,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if progress_file.is_file() and progress_file.read_text().count("\n") >= lines:
                break
            time.sleep(0.05)
        assert p.poll() is None, "finished before it could be terminated"
        if group:
            os.killpg(p.pid, signal.SIGTERM)
        else:
            p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # pragma: no cover
            p.kill()
    return p.returncode, err


@pytest.fixture
def many(tmp_path) -> Path:
    d = tmp_path / "many"
    for i in range(60):
        make_image(d / f"i{i:02d}.jpg", (48, 48), i)
    return d


def test_S1_sigterm_during_cam_ends_like_ctrl_c(tmp_path, many, cli_ckpt):
    out = tmp_path / "out"
    code, err = _term_after_first_record(
        ["cam", str(many), "--out", str(out), "-w", str(cli_ckpt), "--top-k", "1", *ARGS],
        out / "manifest.jsonl",
    )
    assert code == 143
    assert err.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert "Traceback" not in err
    info = json.loads((out / "run.json").read_text())
    assert info["interrupted"] is True
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert 1 <= len(recs) < 60
    for r in recs:  # every listed image is complete; nothing half-written, no lock left
        assert all((out / f).is_file() for f in r["outputs"]["files"])
    assert not [f for f in tree(out) if ".camcli-tmp" in f or f.endswith(".lock")]


def test_S1_sigterm_during_bbox_writes_the_records_file(tmp_path, many, cli_ckpt, capsys):
    target = tmp_path / "boxes.jsonl"
    code, err = _term_after_first_record(
        ["bbox", str(many), "--output", str(target), "-w", str(cli_ckpt), *ARGS],
        tmp_path / ".boxes.jsonl.partial",
        lines=2,  # the run's own line, then a record
    )
    assert code == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    recs = [json.loads(x) for x in target.read_text().splitlines()]
    assert 1 <= len(recs) < 60
    assert [r["image"] for r in recs] == sorted(r["image"] for r in recs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".boxes.jsonl.run", "boxes.jsonl", "many"]
    # the interrupted run is recorded beside FILE: resumed with another option, refused
    code, _, err = run_main(
        capsys, "bbox", many, "-o", target, "-w", cli_ckpt, *ARGS, "--threshold", "0.3",
        "--resume",
    )  # fmt: skip
    assert code == 2 and "made with --threshold 0.2, this run has --threshold 0.3" in err, err
    assert len(target.read_text().splitlines()) == len(recs)  # untouched


def test_S1_sigterm_to_the_process_group_with_loader_workers(tmp_path, many, cli_ckpt):
    out = tmp_path / "out"
    argv = ["cam", str(many), "--out", str(out), "-w", str(cli_ckpt), "--top-k", "1",
            "--batch-size", "1", "--workers", "2", "--quiet"]  # fmt: skip
    code, err = _term_after_first_record(argv, out / "manifest.jsonl", group=True)
    assert code == 143
    assert err.strip().splitlines() == ["error: terminated (SIGTERM)"]  # no worker traceback
    assert json.loads((out / "run.json").read_text())["interrupted"] is True


def test_S1_map_job_pool_is_shut_down_on_early_exit(tmp_path, monkeypatch):
    import multiprocessing as mp

    import numpy as np

    from camcli.evaluate import mapjobs

    monkeypatch.setattr(mapjobs, "POOL_MIN_SECONDS", 0.0)
    jobs = []
    for i in range(80):
        p = tmp_path / f"m{i}.npz"
        np.savez(p, cams=np.random.default_rng(i).random((1, 16, 16)).astype(np.float32),
                 class_indices=np.array([0]))  # fmt: skip
        jobs.append(mapjobs.MapJob(str(p), 0, ((0, 0, 5, 5),), None, (), None, (0.5,), True))
    gen = mapjobs.run_jobs(jobs, 2, None)
    results = [next(gen) for _ in range(40)]  # 32 here, then 8 from the pool
    assert all(r[0] == "ok" for r in results)
    assert mp.active_children()  # the pool is running
    gen.close()  # the consumer stops (an error, Ctrl-C or SIGTERM upstream)
    assert mp.active_children() == []


_POOL_SCRIPT = r"""
import multiprocessing as mp, sys, time
import numpy as np
from camcli.evaluate import mapjobs
mapjobs.POOL_MIN_SECONDS = 0.0
jobs = []
for i in range(80):
    p = f"{sys.argv[1]}/m{i}.npz"
    np.savez(p, cams=np.random.default_rng(i).random((1, 16, 16)).astype(np.float32),
             class_indices=np.array([0]))
    jobs.append(mapjobs.MapJob(p, 0, ((0, 0, 5, 5),), None, (), None, (0.5,), True))
gen = mapjobs.run_jobs(jobs, 2, None)
for _ in range(40):
    next(gen)
from multiprocessing import forkserver
pids = [p.pid for p in mp.active_children()] + [forkserver._forkserver._forkserver_pid]
print(" ".join(map(str, pids)), flush=True)
time.sleep(300)
"""


def test_S1_pool_workers_and_forkserver_leave_with_a_killed_parent(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import subprocess_env

    p = subprocess.Popen([sys.executable, "-c", _POOL_SCRIPT, str(tmp_path)],
                         stdout=subprocess.PIPE, text=True, env=subprocess_env())  # fmt: skip
    try:
        pids = [int(x) for x in p.stdout.readline().split()]
        assert len(pids) == 3  # two workers and the forkserver
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [q for q in alive if _alive(q)]
            time.sleep(0.1)
        assert alive == []
    finally:
        if p.poll() is None:  # pragma: no cover
            p.kill()
        for q in pids if "pids" in locals() else []:
            if _alive(q):  # pragma: no cover - leave nothing behind on failure
                os.kill(q, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- S2: train killed while saving --------------------------------------------------------------


def test_S2_train_resume_removes_a_killed_save_and_says_to_rerun(tmp_path, capsys):
    from camcli.data import synthetic
    from test_train import SHAPES3, TINY_ARGS

    shapes = synthetic.generate(tmp_path / "shapes", shapes=SHAPES3, train_per_class=4,
                                val_per_class=2, size=32, seed=3)  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    # killed during the first best.pt save: only its temporary files are there
    stray = [".best.pt.camcli-tmp4194305-1", ".last.pt.camcli-tmp4194305-2", ".best.pt.tmp123"]
    for name in stray:
        (out / name).write_bytes(b"half a checkpoint")
    base = ["train", shapes, "--out", out, "--epochs", "1", "--image-size", "16",
            "--batch-size", "8", "--workers", "0", "--device", "cpu"]  # fmt: skip
    code, _, err = run_main(capsys, *base[:4], "--device", "cpu", "--resume")
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --resume: {out / 'last.pt'} not found; nothing to resume (no epoch of a run in "
        f"{out} was saved): rerun without --resume to start it"
    ]
    code, _, err = run_main(capsys, *base, "--model", "camnet-small", *TINY_ARGS)
    assert code == 0, err
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    # killed while saving last.pt of epoch 2: the resume that finishes leaves nothing stray
    (out / ".last.pt.camcli-tmp4194305-3").write_bytes(b"half")
    code, _, err = run_main(capsys, *base[:4], "--epochs", "2", "--device", "cpu", "--resume")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["best.pt", "last.pt", "metrics.jsonl"]


def test_S2_records_file_temporary_file_of_a_killed_run_is_removed(tmp_path, two, cli_ckpt,
                                                                  capsys):  # fmt: skip
    o = tmp_path / "o"
    o.mkdir()
    (o / ".p.jsonl.camcli-tmp4194305-7").write_text("half\n")  # killed as it wrote p.jsonl
    (o / ".other.jsonl.camcli-tmp4194305-7").write_text("not ours\n")
    (o / f".p.jsonl.camcli-tmp{os.getppid()}-7").write_text("a live process's\n")
    code, _, err = run_main(
        capsys, "predict", two, "--output", o / "p.jsonl", "-w", cli_ckpt, *ARGS
    )
    assert code == 0, err
    assert sorted(os.listdir(o)) == [
        ".other.jsonl.camcli-tmp4194305-7",
        f".p.jsonl.camcli-tmp{os.getppid()}-7",
        ".p.jsonl.run",
        "p.jsonl",
    ]


def test_W3_second_train_into_a_locked_run_folder_is_refused(tmp_path, capsys):
    from camcli.runs.locks import RunLock

    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out / ".camcli.lock")
    try:
        code, _, err = run_main(capsys, "train", tmp_path / "nodata", "--out", out, "--model",
                                "camnet-small", "--device", "cpu")  # fmt: skip
        assert code == 2
        assert err.strip().splitlines() == [
            f"error: --out {out}: another camcli run is writing it; wait for it to finish or "
            "choose another --out"
        ]
    finally:
        held.release()
    assert os.listdir(out) == []


def test_W1_open_folder_writes_several_files_relative_to_one_folder(tmp_path):
    """open_folder + write_atomic(dir_fd=): the same refusals as a path write, files renamed
    inside the folder opened (a folder swapped for a link afterwards is not followed)."""
    from camcli import atomic

    victim, root = _confined_root_with_a_link(tmp_path)
    try:
        with pytest.raises(atomic.LinkError) as ei, atomic.open_folder(root / "sub" / "deep" / "x"):
            pass
        assert str(root / "sub" / "deep") in str(ei.value)
        with atomic.open_folder(root / "sub" / "key") as fd:
            atomic.write_atomic(root / "sub" / "key" / "1.jpg", b"one", dir_fd=fd)
            # the folder is moved away and a link to the victim planted at its name: the next
            # write still lands in the folder that was opened, never in the victim
            (root / "sub" / "key").rename(root / "sub" / "moved")
            (root / "sub" / "key").symlink_to(victim)
            atomic.write_atomic(root / "sub" / "key" / "2.jpg", b"two", dir_fd=fd)
            with (
                pytest.raises(ZeroDivisionError),
                atomic.AtomicFile(root / "sub" / "key" / "3.jpg", dir_fd=fd) as fh,
            ):
                fh.write(b"half")
                raise ZeroDivisionError  # aborted: its temporary file is removed
    finally:
        atomic.release(root)
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in (root / "sub" / "moved").iterdir()) == ["1.jpg", "2.jpg"]
    assert (root / "sub" / "moved" / "2.jpg").read_bytes() == b"two"
