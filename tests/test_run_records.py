"""The files camcli keeps beside an output (``.F.run``, ``.F.partial``, ``.F.lock``, temporary
names): an output may not take one of their names, and a damaged one is resumed with a warning
line, never silently (left for later by trial 12)."""

from __future__ import annotations

import hashlib
import json
import os

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
    link = tmp_path / "lnk.jsonl"  # trial 13: through a link to a companion file
    link.symlink_to(sidecar.name)
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
    code, _, err = camcli_run("predict", img, *base, "-o", link)
    assert code == 2 and err.startswith(
        f"error: {link}: a link to {sidecar}, and camcli keeps a file of this name beside an "
        "output 'x.jsonl'"
    ), err
    assert sidecar.read_bytes() == before


def _run(**options) -> dict:
    return {"command": "predict", "model": "m", "options": {"top_k": 5, **options}}


@pytest.mark.parametrize(
    ("which", "text", "warned"),
    [
        ("sidecar", "{not json", True),
        ("sidecar", '{"file": true}', True),
        ("sidecar", '{"camcli_run": 3, "file": true}', True),
        ("sidecar", '{"image": "x.jpg"}', True),  # trial 13: a record is no run's record here
        ("sidecar", "", True),
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
    assert list(rf.done) == ([] if (which, text) == ("partial", "") else ["x.jpg"])


def test_a_part_without_a_recorded_run_resumes_quietly_and_a_damaged_one_warns(tmp_path, capsys):
    """``PART.inputs`` of an older camcli records the input count only: resumed quietly. One
    that is not JSON: resumed with the warning."""
    from camcli.runs.recordfile import RecordFile
    from camcli.runs.shards import count_path

    part = tmp_path / "p.shard-0-of-2.jsonl"
    part.write_text('{"image": "x.jpg", "predictions": []}\n')
    for text, warned in (('{"inputs": 1}', False), ("{cut", True), ("{}", True), ("[]", True)):
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
        "/m1/gt.csv (sha256 aaaaaaaaaaaa)",
        "/m2/gt.csv (sha256 bbbbbbbbbbbb)",
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


def test_from_maps_warns_about_maps_the_folders_manifest_does_not_list(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trial 13: a second ``cam --save-maps`` run (without --resume) into a folder leaves the
    first run's maps there, listed in no manifest, and ``bbox --from-maps`` read them as the
    folder's without a word. They are still read (each file is an input; a bad one fails
    alone), with one warning line; a folder without a manifest is read quietly."""
    import shutil

    out = tmp_path / "cams"
    base = ("-w", cli_ckpt, "--out", out, "--workers", "0", "-q", "--save-maps")
    assert camcli_run("cam", cli_images / "a.jpg", *base)[0] == 0
    code, stdout, err = camcli_run("bbox", "--from-maps", out, "-q")
    assert code == 0 and err == "" and len(stdout.splitlines()) == 1, err
    assert camcli_run("cam", cli_images / "b.png", *base)[0] == 0
    code, stdout, err = camcli_run("bbox", "--from-maps", out, "-q")
    assert code == 0, err
    assert [json.loads(x)["image"] for x in stdout.splitlines()] == [
        str(cli_images / "a.jpg"),
        str(cli_images / "b.png"),
    ]
    assert err.splitlines() == [
        f"warning: --from-maps {out}: 1 .npz file(s) not in its manifest (an earlier run's?), "
        "e.g. a.npz, read too; give each cam run its own --out to read one run"
    ]
    loose = tmp_path / "loose"
    loose.mkdir()
    for name in ("a.npz", "b.npz"):
        shutil.copy(out / name, loose / name)
    code, stdout, err = camcli_run("bbox", "--from-maps", loose, "-q")
    assert code == 0 and err == "" and len(stdout.splitlines()) == 2, err


def test_a_gt_folder_of_xml_files_is_compared_by_its_files(tmp_path):
    """ILSVRC's XML folders: the digest covers each ``*.xml`` file's relative path and
    contents (trial 13: a folder was compared by path only, and an edited file resumed)."""
    import shutil

    from camcli.runs.samerun import gt_options

    one = tmp_path / "m1" / "val"
    (one / "sub").mkdir(parents=True)
    (one / "a.xml").write_text("<annotation/>")
    (one / "sub" / "b.xml").write_text("<annotation><x/></annotation>")
    (one / "notes.txt").write_text("not read by the reader")
    two = tmp_path / "m2" / "val"
    shutil.copytree(one, two)
    digest = gt_options(one)["gt_sha256"]
    assert gt_options(one)["gt"] == str(one.resolve()) and len(digest) == 64
    assert gt_options(two)["gt_sha256"] == digest
    (two / "notes.txt").write_text("changed")
    assert gt_options(two)["gt_sha256"] == digest
    (two / "sub" / "b.xml").write_text("<annotation><y/></annotation>")
    assert gt_options(two)["gt_sha256"] != digest
    shutil.rmtree(two)
    shutil.copytree(one, two)
    (two / "sub" / "b.xml").rename(two / "b.xml")  # the same contents, another name
    assert gt_options(two)["gt_sha256"] != digest
    assert gt_options(None) == {"gt": None, "gt_sha256": None}


def test_cam_resume_over_a_fifo_run_json_does_not_block(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial 13: a FIFO in place of ``run.json`` blocked ``cam --resume`` for ever (the check
    read it). It is now taken as damaged: a warning, and the run goes on."""
    out = tmp_path / "cams"
    base = ("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "--workers", "0", "-q")
    assert camcli_run(*base)[0] == 0
    (out / "run.json").unlink()
    os.mkfifo(out / "run.json")
    code, _, err = camcli_run(*base, "--resume")
    assert code == 0, err
    assert err.startswith(f"warning: --resume: {out / 'run.json'} does not record the run"), err
    assert json.loads((out / "run.json").read_text())["options"]["top_k"] == 5
