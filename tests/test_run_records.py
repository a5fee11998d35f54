"""The files camcli keeps beside an output (``.F.run``, ``.F.partial``, ``.F.lock``, temporary
names): an output may not take one of their names, and a damaged one is resumed with a warning
line, never silently (left for later by trial 12)."""

from __future__ import annotations

import hashlib
import json

import pytest

from camcli.runs.shards import companion_name

pytestmark = pytest.mark.usefixtures("cli_one_thread")


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        (".boxes.jsonl.run", "boxes.jsonl"),
        (".boxes.jsonl.partial", "boxes.jsonl"),
        (".sub.txt.lock", "sub.txt"),
        (".a.b.run", "a.b"),
        (".x.jsonl.camcli-tmp123-456", "x.jsonl"),
        ("boxes.jsonl", None),
        ("boxes.run", None),  # no leading dot: not camcli's
        (".run", None),
        (".hidden.jsonl", None),
        (".x.running", None),
    ],
)
def test_companion_name(name, owner):
    assert companion_name(name) == owner


def test_an_output_named_like_a_companion_file_is_refused(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trial 12: ``bbox -o .x.jsonl.run`` then ``bbox -o x.jsonl`` overwrote the first file
    with the run record of the second. Every output file option refuses such a name before
    any work, and nothing is written."""
    base = ("-w", cli_ckpt, "--workers", "0", "-q")
    img = cli_images / "a.jpg"
    boxes = tmp_path / "x.jsonl"
    assert camcli_run("bbox", img, *base, "-o", boxes)[0] == 0
    sidecar = tmp_path / ".x.jsonl.run"
    before = sidecar.read_bytes()
    cases = [
        ("bbox", img, *base, "-o", sidecar),
        ("bbox", img, *base, "--submission", tmp_path / ".s.txt.partial"),
        ("predict", img, *base, "-o", tmp_path / ".p.jsonl.lock"),
        ("predict", img, *base, "-o", tmp_path / ".p.jsonl.camcli-tmp1-2"),
    ]
    for args in cases:
        listing = sorted(p.name for p in tmp_path.iterdir())
        code, out, err = camcli_run(*args)
        target = args[args.index("--submission") + 1 if "--submission" in args else -1]
        owner = target.name[1:].rsplit(".", 1)[0].split(".camcli-tmp")[0]
        assert code == 2 and out == "", err
        assert err.strip() == (
            f"error: {target}: camcli keeps a file of this name beside an output {owner!r} "
            "(its run, records so far, lock or temporary file): choose another name "
            f"(see 'camcli {args[0]} -h')"
        ), err
        assert sorted(p.name for p in tmp_path.iterdir()) == listing
    assert sidecar.read_bytes() == before


def _run(**options) -> dict:
    return {"command": "predict", "model": "m", "options": {"top_k": 5, **options}}


@pytest.mark.parametrize(
    ("which", "text", "warned"),
    [
        ("sidecar", "{not json", True),
        ("sidecar", '{"file": true}', True),
        ("sidecar", '{"camcli_run": 3, "file": true}', True),
        ("partial", 'garbage\n{"image": "x.jpg", "predictions": []}\n', True),
        ("partial", '{"camcli_run": [1]}\n{"image": "x.jpg", "predictions": []}\n', True),
        # an older camcli's partial file: records from its first line, no run line
        ("partial", '{"image": "x.jpg", "predictions": []}\n', False),
        ("partial", "", False),
    ],
)
def test_a_damaged_run_record_is_resumed_with_a_warning(tmp_path, capsys, which, text, warned):
    """A ``.F.run`` or ``.F.partial`` edited by hand or cut records no run: ``--resume`` goes
    on (nothing to compare) but says so in one line naming the file; an older camcli's files,
    which record no run by design, resume quietly."""
    from camcli.runs.recordfile import RecordFile, sidecar_path
    from camcli.runs.shards import partial_path

    target = tmp_path / "p.jsonl"
    rf = RecordFile(target, resume=False, run=_run())
    rf.write({"image": "x.jpg", "predictions": []})
    rf.release()  # killed: the partial file holds x.jpg
    damaged = sidecar_path(target) if which == "sidecar" else partial_path(target)
    damaged.write_text(text)
    capsys.readouterr()
    rf = RecordFile(target, resume=True, run=_run())  # the other file still records the run
    err = capsys.readouterr().err
    rf.release()
    if warned:
        assert err.splitlines() == [
            f"warning: --resume: {damaged} does not record the run that wrote it (damaged?): "
            "resumed without checking that run's options; rerun without --resume to start over"
        ]
    else:
        assert err == ""
    assert list(rf.done) == ([] if text == "" else ["x.jpg"])


def test_a_part_without_a_recorded_run_resumes_quietly_and_a_damaged_one_warns(tmp_path, capsys):
    """``PART.inputs`` of an older camcli records the input count only: resumed quietly. One
    that is not JSON: resumed with the warning."""
    from camcli.runs.recordfile import RecordFile
    from camcli.runs.shards import count_path

    part = tmp_path / "p.shard-0-of-2.jsonl"
    part.write_text('{"image": "x.jpg", "predictions": []}\n')
    for text, warned in (('{"inputs": 1}', False), ("{cut", True)):
        count_path(part).write_text(text)
        capsys.readouterr()
        RecordFile(part, resume=True, part=True, run=_run()).release()
        err = capsys.readouterr().err
        assert (f"warning: --resume: {count_path(part)} does not record" in err) is warned, err


def test_cam_resume_over_a_damaged_run_json_warns(tmp_path, cli_images, cli_ckpt, camcli_run):
    """A ``run.json`` that is not a run's record: ``cam --resume`` resumes the folder's
    manifest, with one warning line naming the file; a folder without ``run.json`` (an older
    camcli's killed run) quietly."""
    out = tmp_path / "cams"
    base = ("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "--workers", "0", "-q")
    assert camcli_run(*base)[0] == 0
    manifest = (out / "manifest.jsonl").read_text()
    (out / "run.json").write_text("[1, 2]")
    code, _, err = camcli_run(*base, "--top-k", "3", "--resume")
    assert code == 0, err
    assert err.splitlines() == [
        f"warning: --resume: {out / 'run.json'} does not record the run that wrote {out} "
        "(damaged?): resumed without checking that run's options; give a new --out to start "
        "over"
    ]
    assert (out / "manifest.jsonl").read_text() == manifest  # a.jpg was done: resumed
    assert json.loads((out / "run.json").read_text())["options"]["top_k"] == 3
    (out / "run.json").unlink()
    code, _, err = camcli_run(*base, "--resume")
    assert code == 0 and err == "", err


def _tree(root) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_a_new_run_replaces_the_earlier_runs_files(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial 12 (left for later): a rerun without --resume left the earlier run's other
    overlays (``2_*.jpg``, ``3_*.jpg``, ``grid.jpg``) and maps beside the new run's, listed in
    no manifest (and ``bbox --from-maps`` reads every ``.npz``). The files the earlier
    manifest lists now go with it: the folder equals a fresh run's, and files camcli did not
    write stay."""
    out, fresh = tmp_path / "cams", tmp_path / "fresh"
    base = ("cam", cli_images, "-w", cli_ckpt, "--workers", "0", "-q")
    assert camcli_run(*base, "--out", out, "-k", "3", "--grid", "--save-maps")[0] == 1
    assert "a/3_" in " ".join(_tree(out)) and "a.npz" in _tree(out)  # the broken image: exit 1
    (out / "a" / "notes.txt").write_text("mine")
    (out / "mine.jpg").write_bytes(b"mine")
    assert camcli_run(*base, "--out", out, "-k", "1")[0] == 1
    assert camcli_run(*base, "--out", fresh, "-k", "1")[0] == 1
    now, want = _tree(out), _tree(fresh)
    assert now.pop("a/notes.txt") == b"mine" and now.pop("mine.jpg") == b"mine"
    assert now.keys() == want.keys() and not [k for k in now if k.endswith(".npz")]
    assert all(now[k] == want[k] for k in now if k != "run.json")


def test_a_new_run_over_other_images_leaves_only_its_own(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    out = tmp_path / "cams"
    base = ("-w", cli_ckpt, "--out", out, "--workers", "0", "-q", "--save-maps")
    assert camcli_run("cam", cli_images / "a.jpg", *base)[0] == 0
    assert camcli_run("cam", cli_images / "b.png", *base)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["b", "b.npz", "manifest.jsonl", "run.json"]
    code, stdout, err = camcli_run("bbox", "--from-maps", out, "-q")
    assert code == 0, err
    assert [json.loads(x)["image"] for x in stdout.splitlines()] == [str(cli_images / "b.png")]


def test_only_files_the_earlier_manifest_owns_are_removed(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """A hand-edited manifest cannot make a new run remove anything but the image's own
    output files: not a path with ``..``, another image's file, an absolute path, a file
    without an output suffix, or a link (nor what it points to)."""
    out = tmp_path / "cams"
    out.mkdir()
    outside = tmp_path / "outside.npz"
    outside.write_bytes(b"x")
    (out / "zz.npz").symlink_to(outside)
    for rel in ("x.jpg", "b/1_x.jpg", "zz/notes.txt", "zz/1_a.jpg"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    files = ["zz/../x.jpg", "b/1_x.jpg", str(out / "x.jpg"), "zz/notes.txt", "zz.npz", "zz/1_a.jpg"]
    (out / "manifest.jsonl").write_text(
        json.dumps({"key": "zz", "outputs": {"files": files}}) + "\nnot json\n[1]\n"
    )
    assert camcli_run("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "-q")[0] == 0
    assert not (out / "zz" / "1_a.jpg").exists()  # the one file of its own
    for rel in ("x.jpg", "b/1_x.jpg", "zz/notes.txt"):
        assert (out / rel).read_bytes() == b"x", rel
    assert (out / "zz.npz").is_symlink() and outside.read_bytes() == b"x"


def test_gt_files_are_compared_by_their_contents():
    """``--gt`` is recorded as its path and sha256; two runs with the same contents at other
    paths (shards on machines that mount the file elsewhere) are one run; other contents at
    the same path are not; a run that records no digest (session 12's) compares paths."""
    from camcli.runs.samerun import made_with, run_difference

    def run(path, digest=None, **more):
        options = {"top_k": 5, "gt": path, **({"gt_sha256": digest} if digest else {}), **more}
        return {"model": "m", "options": options}

    a, b = "a" * 64, "b" * 64
    assert run_difference(run("/m1/gt.csv", a), run("/m2/gt.csv", a)) is None
    assert run_difference(run("/m1/gt.csv", a), run("/m2/gt.csv", b)) == (
        "--gt",
        "/m1/gt.csv",
        "/m2/gt.csv",
    )
    diff = run_difference(run("/m/gt.csv", a), run("/m/gt.csv", b))
    assert made_with(*diff) == (
        "with --gt /m/gt.csv (sha256 aaaaaaaaaaaa)",
        "has --gt /m/gt.csv (sha256 bbbbbbbbbbbb)",
    )
    assert run_difference(run("/m1/gt.csv"), run("/m2/gt.csv", a))[0] == "--gt"
    assert run_difference(run(None), run("/m/gt.csv", a)) == ("--gt", None, "/m/gt.csv")
    # the digest decides gt only: another option still differs
    assert run_difference(run("/m1/gt.csv", a), run("/m2/gt.csv", a, top_k=3)) == (
        "--top-k",
        5,
        3,
    )


def test_cam_resume_and_merge_accept_the_same_gt_at_another_path(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    gt1 = tmp_path / "m1" / "gt.csv"
    gt1.parent.mkdir()
    gt1.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,class a,0,0,9,9\n")
    gt2 = tmp_path / "m2" / "gt.csv"
    gt2.parent.mkdir()
    gt2.write_bytes(gt1.read_bytes())
    out = tmp_path / "cams"
    base = ("cam", cli_images / "a.jpg", cli_images / "b.png", "-w", cli_ckpt, "--out", out)
    base += ("--workers", "0", "-q")
    assert camcli_run(*base, "--gt", gt1, "--shard", "0/2")[0] == 0
    assert camcli_run(*base, "--gt", gt2, "--shard", "1/2")[0] == 0
    code, _, err = camcli_run("merge", out)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    digest = hashlib.sha256(gt1.read_bytes()).hexdigest()
    assert info["options"]["gt"] == str(gt1.resolve()) and info["options"]["gt_sha256"] == digest
    assert camcli_run(*base, "--gt", gt2, "--resume")[0] == 0  # the same file elsewhere
    gt2.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,class b,0,0,9,9\n")  # edited
    code, _, err = camcli_run(*base, "--gt", gt2, "--resume")
    assert code == 2, err
    assert f"made with --gt {gt2.resolve()} (sha256 " in err
    assert f"this run has --gt {gt2.resolve()} (sha256 " in err
