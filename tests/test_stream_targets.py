"""An output that is a character device or FIFO (``-o /dev/null``, ``-o /dev/stdout``, a named
pipe) is written as a stream: never replaced by a regular file, nothing created beside it.

The devices are reached through links in tmp_path, so that a regression replaces the link,
never the machine's /dev/null."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from camcli import atomic
from camcli.errors import UsageError
from conftest import records, run_main

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")


def _reader(fifo: Path, got: list[bytes]) -> threading.Thread:
    def read():
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def test_stream_target_kinds(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "null").symlink_to("/dev/null")
    (tmp_path / "plain").write_text("x")
    assert atomic.stream_target(fifo)
    assert atomic.stream_target(tmp_path / "null")  # the link is followed
    assert not atomic.stream_target(tmp_path / "plain")
    assert not atomic.stream_target(tmp_path / "absent")
    (tmp_path / "to-plain").symlink_to(tmp_path / "plain")  # /dev/stdout -> a file: a link
    assert atomic.stream_target(tmp_path / "to-plain")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert atomic.stream_target(tmp_path / "dangling")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        with pytest.raises(UsageError, match="block device or socket"):
            atomic.stream_target(tmp_path / "sock")


def test_write_atomic_into_a_fifo_streams_and_keeps_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    t = _reader(fifo, got)
    atomic.write_atomic(
        fifo, b"one\ntwo\n", fsync=True, stream_ok=True
    )  # no fsync on a pipe (EINVAL)
    t.join(10)
    assert got == [b"one\ntwo\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_predict_output_into_a_fifo_and_dev_null(tmp_path, cli_images, cli_ckpt):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    t = _reader(fifo, got)
    assert run_main("predict", cli_images / "a.jpg", "-w", cli_ckpt, "-o", fifo, "-q") == 0
    t.join(30)
    assert got and got[0].decode().count("\n") == 1 and b'"predictions"' in got[0]
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    assert run_main("predict", cli_images / "a.jpg", "-w", cli_ckpt, "-o", null, "-q") == 0
    assert null.is_symlink() and stat.S_ISCHR(os.stat(null).st_mode)
    # no lock, partial or temporary file beside either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "pipe"]


def test_bbox_submission_and_eval_output_into_devices(tmp_path, cli_images, camcli_run):
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    full = tmp_path / "full"
    full.symlink_to("/dev/full")
    boxes = tmp_path / "b.jsonl"
    code = run_main(
        "bbox", cli_images / "a.jpg", "-o", boxes, "--submission", null,
        "--submission-format", "kaggle", "-q",  # the default ImageNet network: WNIDs built in
    )  # fmt: skip
    assert code == 0 and boxes.is_file()
    gt = tmp_path / "gt.csv"
    gt.write_text(f"image,label,xmin,ymin,xmax,ymax\n{cli_images / 'a.jpg'},0,0,0,9,9\n")
    code, _, err = camcli_run("eval", "--gt", gt, "--boxes", boxes, "-o", full, "-q")
    assert code == 5 and "No space left on device" in err  # /dev/full, written directly
    for link in (null, full):
        assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".b.jsonl.run",  # the run that wrote b.jsonl
        "b.jsonl",
        "full",
        "gt.csv",
        "null",
    ]


@pytest.mark.parametrize("command", ["predict", "bbox"])
def test_resume_into_a_device_is_a_usage_error(command, tmp_path, cli_images, cli_ckpt, capsys):
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    code = run_main(command, cli_images / "a.jpg", "-w", cli_ckpt, "-o", null, "--resume")
    assert code == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert null.is_symlink()


def test_output_into_a_socket_is_refused(tmp_path, cli_images, cli_ckpt, capsys):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "sock"))
        code = run_main("predict", cli_images / "a.jpg", "-w", cli_ckpt, "-o", tmp_path / "sock")
    err = capsys.readouterr().err
    assert code == 2 and "block device or socket" in err and len(err.strip().splitlines()) == 1
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)


# --- other findings of the session-9 trial ---------------------------------------------------


def test_missing_weights_file_without_model_says_so(tmp_path, cli_images, camcli_run):
    code, _, err = camcli_run("predict", cli_images / "a.jpg", "--weights", tmp_path / "no.pt")
    assert code == 4, err
    assert "not a file, URL or registry name" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"\x00garbage" * 40, b'{"a": 1}\n', b"hello world\n"])
def test_unloadable_weights_never_advise_weights_only_false(content, tmp_path, cli_images,
                                                           camcli_run):  # fmt: skip
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _, err = camcli_run(
        "predict", cli_images / "a.jpg", "--model", "resnet18", "--weights", bad
    )
    assert code == 4 and "not a loadable weights file" in err
    assert "weights_only" not in err and "False" not in err and "export the weights" in err
    assert "(101)" not in err  # second trial (session 11): torch's KeyError value of a text file


def test_bad_shard_is_a_usage_error_with_the_help(cli_images, tmp_path, camcli_run):
    code, _, err = camcli_run("cam", cli_images, "-o", tmp_path / "o", "--shard", "3/2")
    assert code == 2 and err.strip().endswith("(see 'camcli cam -h')")


def test_bbox_gt_file_that_cannot_be_read_stops_before_any_image(tmp_path, cli_images, cli_ckpt,
                                                                 camcli_run):  # fmt: skip
    gt = tmp_path / "gt.csv"
    gt.write_text(f"image,label,xmin,ymin,xmax,ymax\n{cli_images / 'a.jpg'},0,abc,0,9,9\n")
    out = tmp_path / "b.jsonl"
    code, _, err = camcli_run(
        "bbox", cli_images / "a.jpg", "-w", cli_ckpt, "--gt", gt, "-o", out, "--workers", "0"
    )
    assert code == 2, err
    assert err.strip() == f"error: --gt {gt} line 2: box coordinate 'abc' is not a number"
    assert not out.exists()


def test_output_through_a_link_to_a_file_keeps_the_link(tmp_path, cli_images, cli_ckpt):
    """``-o /dev/stdout`` with stdout redirected to a file is a link to a regular file: the
    records go through it (as a shell redirect), the link is never replaced."""
    real = tmp_path / "real.jsonl"
    real.write_text("OLD CONTENT, LONGER THAN ONE RECORD\n" * 40)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert run_main("predict", cli_images / "a.jpg", "-w", cli_ckpt, "-o", link, "-q") == 0
    assert link.is_symlink()
    recs = records(real)  # truncated first: only the new record
    assert len(recs) == 1 and recs[0]["image"].endswith("a.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl"]


def test_W2_files_camcli_names_itself_never_go_through_a_planted_link(
    tmp_path, cli_images, cli_ckpt
):
    """The stream rule is for outputs the user names: a link planted as run.json in an
    output folder is never written through (hostile W1/W2 family)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").symlink_to(victim)
    run_main("cam", cli_images / "a.jpg", "-w", cli_ckpt, "-o", out, "-k", "1", "-q")
    assert victim.read_text() == "keep"


def test_bbox_refuses_a_socket_target_before_any_work(tmp_path, cli_images, cli_ckpt, camcli_run):
    """A socket named as --submission was refused only once every image had been boxed and
    the records written; as --output, once the model had loaded (here: weights that do not
    exist, exit 4). Both are refused first, and nothing is created."""
    syn = tmp_path / "syn.txt"
    syn.write_text("".join(f"n{i:08d} class {i}\n" for i in range(10)))
    out = tmp_path / "out"
    out.mkdir()
    sock = out / "sock"
    sub = ("--submission", sock, "--submission-format", "kaggle", "--synsets", syn)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        for args in (("-w", cli_ckpt, "--output", out / "b.jsonl", *sub),
                     ("-w", tmp_path / "absent.pt", "--output", sock)):  # fmt: skip
            code, _, err = camcli_run("bbox", cli_images, *args, "--workers", "0")
            assert code == 2
            assert err.splitlines() == [
                f"error: {sock}: a block device or socket, not a file: give a file name "
                "(see 'camcli bbox -h')"
            ]
            assert [p.name for p in out.iterdir()] == ["sock"]  # no records, no partial file


def test_predict_refuses_a_socket_output_before_the_model_loads(tmp_path, cli_images, camcli_run):
    """The weights do not exist: a check after the model would report that (exit 4)."""
    sock = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        code, _, err = camcli_run("predict", cli_images, "-w", tmp_path / "absent.pt", "-o", sock)
    assert code == 2
    assert err.startswith(f"error: {sock}: a block device or socket"), err


@pytest.mark.parametrize("command", ["predict", "bbox"])
def test_failed_inputs_are_named_on_stderr_when_records_go_to_a_device(
    command, tmp_path, cli_ckpt, camcli_run
):
    """-o a link to /dev/null: the records are not on stdout, so the corrupt image's error
    line goes to stderr (it was left out, as if stdout carried the records)."""
    from conftest import make_image

    make_image(tmp_path / "in" / "good.jpg", (30, 40), seed=0)
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    code, out, err = camcli_run(command, tmp_path / "in", "-w", cli_ckpt, "-o", null,
                                "--workers", "0")  # fmt: skip
    assert code == 1 and out == ""
    lines = [x for x in err.splitlines() if x.startswith(str(bad))]
    assert lines == [f"{bad}: cannot decode image (Truncated File Read); the file is damaged or "
                     "incomplete: copy, download or export it again"], err  # fmt: skip
    assert null.is_symlink()
    code, out, err = camcli_run(command, tmp_path / "in", "-w", cli_ckpt, "-o", "-",
                                "--workers", "0")  # fmt: skip
    assert code == 1 and str(bad) not in err and str(bad) in out  # stdout carries it already


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{imgs}", "-o", "{dir}"],
        ["bbox", "{imgs}", "-o", "{dir}"],
        ["bbox", "{imgs}", "--submission", "{dir}", "--submission-format", "kaggle"],
        ["eval", "--gt", "{gt}", "--boxes", "{boxes}", "-o", "{dir}"],
        ["eval", "--gt", "{gt}", "--boxes", "{boxes}", "--plot", "{dir}"],
    ],
    ids=["predict-o", "bbox-o", "bbox-submission", "eval-o", "eval-plot"],
)
def test_an_output_file_that_is_a_folder_is_refused_before_any_work(
    args, tmp_path, cli_images, camcli_run
):
    """Trial W2: the folder was found only when the records were written, after every image,
    and the error advised freeing space and --resume. The weights do not exist, so a check
    after the model would say that instead (exit 4); eval's inputs do not exist either."""
    folder = tmp_path / "isdir"
    folder.mkdir()
    names = {"imgs": cli_images, "dir": folder, "gt": tmp_path / "gt.csv",
             "boxes": tmp_path / "boxes.jsonl"}  # fmt: skip
    argv = [a.format(**names) for a in args]
    if argv[0] != "eval":
        argv += ["-w", str(tmp_path / "absent.pt")]
    code, out, err = camcli_run(*argv)
    assert code == 2, err
    assert err.startswith(f"error: {folder}: a folder, not a file: give a file name"), err
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("under", [False, True], ids=["file", "under-file"])
@pytest.mark.parametrize(
    "args",
    [
        ["cam", "{imgs}", "--out", "{out}", "-w", "{absent}"],
        ["train", "{absent}", "-m", "camnet-small", "--out", "{out}"],
        ["bbox", "{imgs}", "--draw", "{out}", "-w", "{absent}"],
        ["report", "{absent}", "--out", "{out}"],
    ],
    ids=["cam-out", "train-out", "bbox-draw", "report-out"],
)
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(
    args, under, tmp_path, cli_images, camcli_run
):
    """Trial B1: `train --out afile` and `cam --out afile/sub` ended with exit 5 and advice to
    free space, `cam --out afile` with exit 2: now every output-folder option refuses a file,
    or a path under one, with exit 2 and one line, before the model loads or the data is read
    (the weights, data and runs do not exist: a later check would say that instead)."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = afile / "sub" if under else afile
    names = {"imgs": cli_images, "out": out, "absent": tmp_path / "absent.pt"}
    code, _, err = camcli_run(*[a.format(**names) for a in args])
    assert code == 2, err
    what = f"{afile} is " if under else ""
    assert err.splitlines() == [
        f"error: {out}: {what}a file, not a folder: give a folder name (see 'camcli {args[0]} -h')"
    ]
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{imgs}", "-o", "{out}", "-w", "{absent}"],
        ["bbox", "{imgs}", "-o", "{out}", "-w", "{absent}"],
        ["bbox", "{imgs}", "--submission", "{out}", "--submission-format", "kaggle", "-w",
         "{absent}"],
        ["eval", "--gt", "{absent}", "--boxes", "{absent}", "-o", "{out}"],
        ["eval", "--gt", "{absent}", "--maps", "{absent}", "--plot", "{out}", "-o", "{json}"],
    ],
    ids=["predict-o", "bbox-o", "bbox-submission", "eval-o", "eval-plot"],
)  # fmt: skip
def test_an_output_file_under_a_file_is_refused_before_any_work(
    args, tmp_path, cli_images, camcli_run
):
    """Trial E2: `eval --plot afile/x.png` (afile a regular file) ended after the whole
    evaluation with exit 5 and advice to free space. Every output-file option now refuses a
    path under a file with exit 2 and one line, before any work (the weights and inputs do not
    exist: a later check would say that instead)."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    out = afile / "sub" / "x.png"
    names = {"imgs": cli_images, "out": out, "absent": tmp_path / "absent",
             "json": tmp_path / "r.json"}  # fmt: skip
    code, _, err = camcli_run(*[a.format(**names) for a in args])
    assert code == 2, err
    assert err.splitlines() == [
        f"error: {out}: {afile} is a file, not a folder: give a file name in a folder "
        f"(see 'camcli {args[0]} -h')"
    ]
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
