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
        ("b.shard-0-of-2.jsonl.inputs", "b.shard-0-of-2.jsonl"),  # trial 13
        ("b.shard-1-of-12.inputs", "b.shard-1-of-12"),
        ("b.inputs", None),
        ("shard-0-of-2.inputs", None),
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
        ("predict", img, *base, "-o", tmp_path / "x.shard-0-of-2.jsonl.inputs"),
    ]
    link = tmp_path / "lnk.jsonl"  # trial 13: through a link to a companion file
    link.symlink_to(sidecar.name)
    for args in cases:
        listing = sorted(p.name for p in tmp_path.iterdir())
        code, out, err = camcli_run(*args)
        target = args[args.index("--submission") + 1 if "--submission" in args else -1]
        owner = (
            target.name.removesuffix(".inputs")
            if target.name.endswith(".inputs")
            else target.name[1:].rsplit(".", 1)[0].split(".camcli-tmp")[0]
        )
        assert code == 2 and out == "", err
        assert err.strip() == (
            f"error: {target}: camcli keeps a file of this name beside an output {owner!r} "
            "(its run, input count, records so far, lock or temporary file): choose another name "
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


def _listing(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    ("which", "text", "refused"),
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
def test_resume_over_a_damaged_run_record_is_refused(tmp_path, which, text, refused):
    """A ``.F.run`` or ``.F.partial`` edited by hand or cut records no run. Resuming over it
    unchecked would then record the resumed run as the records' run (trial 13: a mixed run
    came out looking clean), so it is refused, nothing touched; an older camcli's files,
    which record no run by design, resume quietly."""
    from camcli.errors import CamcliError
    from camcli.runs.recordfile import RecordFile, sidecar_path
    from camcli.runs.shards import partial_path

    target = tmp_path / "p.jsonl"
    rf = RecordFile(target, resume=False, run=_run())
    rf.write({"image": "x.jpg", "predictions": []})
    rf.release()  # killed: the partial file holds x.jpg
    damaged = sidecar_path(target) if which == "sidecar" else partial_path(target)
    damaged.write_text(text)
    before = _listing(tmp_path)
    if refused:
        with pytest.raises(CamcliError) as exc:
            RecordFile(target, resume=True, run=_run())
        assert exc.value.exit_code == 2 and str(exc.value) == (
            f"--resume: {damaged} does not record the run that wrote it (damaged?), so this "
            "run cannot be checked against it; rerun without --resume (the records are done "
            "again)"
        )
        assert _listing(tmp_path) == before
        return
    rf = RecordFile(target, resume=True, run=_run())  # the other file still records the run
    rf.release()
    assert list(rf.done) == ([] if text == "" else ["x.jpg"])


def test_a_part_without_a_recorded_run_resumes_and_a_damaged_one_is_refused(tmp_path):
    """``PART.inputs`` of an older camcli records the input count only: resumed. One that is
    not JSON or holds no count: refused (trial 13: resumed with other options, then merged as
    one run)."""
    from camcli.errors import CamcliError
    from camcli.runs.recordfile import RecordFile
    from camcli.runs.shards import count_path

    part = tmp_path / "p.shard-0-of-2.jsonl"
    part.write_text('{"image": "x.jpg", "predictions": []}\n')
    for text, refused in (('{"inputs": 1}', False), ("{cut", True), ("{}", True), ("[]", True)):
        count_path(part).write_text(text)
        if refused:
            with pytest.raises(CamcliError, match=r"does not record the run that wrote it"):
                RecordFile(part, resume=True, part=True, run=_run())
        else:
            RecordFile(part, resume=True, part=True, run=_run()).release()


@pytest.mark.parametrize("damage", ["list", "fifo"])
def test_cam_resume_over_a_damaged_run_json_is_refused(
    tmp_path, cli_images, cli_ckpt, camcli_run, damage
):
    """A ``run.json`` that is not a run's record (a list; a FIFO, which blocked ``cam
    --resume`` for ever before trial 13): refused, naming the file, nothing touched; a folder
    without ``run.json`` (an older camcli's killed run) resumes."""
    out = tmp_path / "cams"
    base = ("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "--workers", "0", "-q")
    assert camcli_run(*base)[0] == 0
    (out / "run.json").unlink()
    if damage == "list":
        (out / "run.json").write_text("[1, 2]")
    else:
        os.mkfifo(out / "run.json")
    manifest = (out / "manifest.jsonl").read_text()
    code, _, err = camcli_run(*base, "--top-k", "3", "--resume")
    assert code == 2
    assert err.splitlines() == [
        f"error: --resume: {out / 'run.json'} does not record the run that wrote {out} "
        "(damaged?), so this run cannot be checked against it; rerun without --resume (the "
        "images are done again) or give a new --out (see 'camcli cam -h')"
    ]
    assert (out / "manifest.jsonl").read_text() == manifest
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


def test_cam_and_bbox_draw_do_not_share_a_folder(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial 13: ``bbox --draw`` into a ``cam`` folder replaced its manifest, and ``cam
    --resume`` then took the drawings for complete images. A ``--draw`` folder now records its
    run (``run.json``, command ``bbox --draw``), and each command refuses a folder holding
    the other's run, before the model loads, nothing touched."""
    cams, draw = tmp_path / "cams", tmp_path / "draw"
    base = (cli_images / "a.jpg", "-w", cli_ckpt, "--workers", "0", "-q")
    assert camcli_run("cam", *base, "--out", cams)[0] == 0
    assert camcli_run("bbox", *base, "--draw", draw, "-o", tmp_path / "b.jsonl")[0] == 0
    assert json.loads((draw / "run.json").read_text())["command"] == "bbox --draw"
    for args, folder, held in (
        (("bbox", *base, "--draw", cams), cams, "cam"),
        (("cam", *base, "--out", draw, "--resume"), draw, "bbox --draw"),
        (("cam", *base, "--out", draw), draw, "bbox --draw"),
    ):
        before = _tree(folder)
        code, _, err = camcli_run(*args)
        flag = "--draw" if "--draw" in args else "--out"
        assert code == 2 and err.startswith(
            f"error: {flag} {folder}: holds the files of a `camcli {held}` run (run.json); give "
            f"`camcli {args[0] if args[0] == 'cam' else 'bbox --draw'}` a folder of its own"
        ), err
        assert _tree(folder) == before
    # each command into its own folder again: fine
    assert camcli_run("cam", *base, "--out", cams, "--resume")[0] == 0
    assert camcli_run("bbox", *base, "--draw", draw, "-o", tmp_path / "b.jsonl", "--resume")[0] == 0


def _tree(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_from_maps_warns_about_listed_maps_that_are_missing_and_trusts_no_damaged_manifest(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trial 13: a map the manifest lists but that was deleted went unmentioned; a manifest
    of garbage made every map "not in its manifest"."""
    out = tmp_path / "cams"
    args = ("cam", cli_images / "a.jpg", cli_images / "b.png", "-w", cli_ckpt, "--out", out)
    assert camcli_run(*args, "--workers", "0", "-q", "--save-maps")[0] == 0
    (out / "a.npz").unlink()
    code, stdout, err = camcli_run("bbox", "--from-maps", out, "-q")
    assert code == 0 and len(stdout.splitlines()) == 1, err
    assert err.splitlines() == [
        f"warning: --from-maps {out}: 1 map file(s) its manifest lists are missing, e.g. "
        "a.npz; rerun cam with --resume to make them again"
    ]
    (out / "manifest.jsonl").write_bytes(b"\x00garbage\nnot json\n")
    code, stdout, err = camcli_run("bbox", "--from-maps", out, "-q")
    assert code == 0 and err == "" and len(stdout.splitlines()) == 1, err


def test_an_output_link_that_loops_is_refused_before_the_model_loads(tmp_path, camcli_run):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop.name)
    code, _, err = camcli_run("predict", tmp_path / "absent.jpg", "-w", tmp_path / "x", "-o", loop)
    assert code == 2 and err.startswith(
        f"error: {loop}: a link that leads back to itself: give a file name"
    ), err


def test_records_written_through_a_link_are_recorded_beside_the_file(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trial 13: ``predict -o LINK`` to a ``bbox`` records file replaced its records but left
    its ``.FILE.run`` naming the bbox run, so ``bbox -o FILE --resume`` kept predict records.
    That ``.FILE.run`` now records the run that wrote through the link; a file without one
    (a shell redirect's) gets none."""
    base = (cli_images / "a.jpg", "-w", cli_ckpt, "--workers", "0", "-q")
    boxes = tmp_path / "b.jsonl"
    assert camcli_run("bbox", *base, "-o", boxes)[0] == 0
    link = tmp_path / "L"
    link.symlink_to(boxes.name)
    assert camcli_run("predict", *base, "-o", link)[0] == 0
    side = json.loads((tmp_path / ".b.jsonl.run").read_text())
    assert side["camcli_run"]["command"] == "predict" and side["file"] is True
    code, _, err = camcli_run("bbox", *base, "-o", boxes, "--resume")
    assert code == 2 and "holds records made with camcli predict, this run has camcli bbox" in err
    plain, link2 = tmp_path / "plain.jsonl", tmp_path / "L2"
    plain.write_text("")
    link2.symlink_to(plain.name)
    assert camcli_run("predict", *base, "-o", link2)[0] == 0
    assert not (tmp_path / ".plain.jsonl.run").exists()


# --- trial 13c ---------------------------------------------------------------------------------


def test_a_shard_resuming_from_a_merged_file_of_another_run_is_refused(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """``bbox -o F -k 2``, then ``bbox -o F --shard 0/2 --resume`` (top 5) took F's top-2
    records into its part unchecked; F's ``.F.run`` is now checked as F's own resume would."""
    out = tmp_path / "s.jsonl"
    base = ("bbox", cli_images / "a.jpg", cli_images / "b.png", "-w", cli_ckpt, "-o", out)
    base += ("--workers", "0", "-q")
    assert camcli_run(*base, "-k", "2")[0] == 0
    code, _, err = camcli_run(*base, "--shard", "0/2", "--resume")
    assert code == 2 and "holds records made with --top-k 2, this run has --top-k 5" in err, err
    assert not list(tmp_path.glob("s.shard-*"))
    assert camcli_run(*base, "-k", "2", "--shard", "0/2", "--resume")[0] == 0  # the same run


@pytest.mark.parametrize("what", ["dangling link", "fifo", "folder"])
def test_a_run_record_that_is_not_a_regular_file_is_refused(tmp_path, what):
    """camcli writes its run records as regular files: a link, FIFO or folder in place of
    ``.F.run`` or ``PART.inputs`` is damage, refused on --resume (it was taken as no record,
    and the resumed run recorded over it). ``.F.partial`` stays lenient (replaced, never read
    through a link)."""
    from camcli.errors import CamcliError
    from camcli.runs.recordfile import RecordFile, sidecar_path
    from camcli.runs.shards import count_path, partial_path

    def plant(path):
        path.unlink(missing_ok=True)
        if what == "dangling link":
            path.symlink_to("nowhere")
        elif what == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()

    target = tmp_path / "p.jsonl"
    RecordFile(target, resume=False, run=_run()).finish([])
    plant(sidecar_path(target))
    with pytest.raises(CamcliError, match="does not record the run that wrote it"):
        RecordFile(target, resume=True, run=_run())
    part = tmp_path / "q.shard-0-of-2.jsonl"
    RecordFile(part, resume=False, part=True, run=_run()).finish([])
    plant(count_path(part))
    with pytest.raises(CamcliError, match="does not record the run that wrote it"):
        RecordFile(part, resume=True, part=True, run=_run())
    if what != "folder":  # (a folder there cannot be replaced: exit 5, as before)
        other = tmp_path / "r.jsonl"
        plant(partial_path(other))
        RecordFile(other, resume=True, run=_run()).release()  # the partial file: lenient


def test_a_draw_folder_records_its_run_from_the_start_and_resume_checks_it(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """An interrupted ``bbox --draw`` left no ``run.json``, so ``cam --resume`` took its
    drawings for complete images; and ``bbox --draw D --resume`` with other options kept D's
    drawings. The draw folder's run json now says ``"running": true`` from the start, and
    ``--resume`` compares it."""
    from camcli.api.drawing import open_drawdir
    from camcli.api.split import Split

    d = tmp_path / "killed"
    open_drawdir(d, False, Split(), None, {"model": "m", "options": {"top_k": 5}}).release()
    info = json.loads((d / "run.json").read_text())
    assert info == {
        "model": "m",
        "options": {"top_k": 5},
        "command": "bbox --draw",
        "running": True,
    }
    code, _, err = camcli_run("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", d, "--resume")
    assert code == 2 and "holds the files of a `camcli bbox --draw` run" in err, err
    draw = tmp_path / "draw"
    base = ("bbox", cli_images / "a.jpg", "-w", cli_ckpt, "--draw", draw, "--workers", "0", "-q")
    assert camcli_run(*base, "-k", "3", "-o", tmp_path / "b.jsonl")[0] == 0
    code, _, err = camcli_run(*base, "--resume", "-o", tmp_path / "new.jsonl")
    assert code == 2 and err.startswith(
        f"error: --resume: {draw} holds a run made with --top-k 3, this run has --top-k 5; "
        "resume with the options of that run, or give a new --draw"
    ), err
    assert camcli_run(*base, "-k", "3", "--resume", "-o", tmp_path / "b.jsonl")[0] == 0


def test_a_shard_written_through_a_link_records_its_run_beside_the_file(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """``bbox -o LINK --shard 0/2`` removed the ``.F.run`` of the file behind the link, and
    ``bbox -o F --resume`` then mixed the shard's records with its own."""
    base = (cli_images / "a.jpg", cli_images / "b.png", "-w", cli_ckpt, "--workers", "0", "-q")
    target = tmp_path / "t.jsonl"
    assert camcli_run("bbox", *base, "-o", target)[0] == 0
    link = tmp_path / "l1"
    link.symlink_to(target.name)
    assert camcli_run("bbox", *base, "-o", link, "--shard", "0/2", "-k", "2")[0] == 0
    side = json.loads((tmp_path / ".t.jsonl.run").read_text())
    assert side["camcli_run"]["options"]["top_k"] == 2
    code, _, err = camcli_run("bbox", *base, "-o", target, "--resume")
    assert code == 2 and "made with --top-k 2, this run has --top-k 5" in err, err
