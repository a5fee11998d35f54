"""The files camcli keeps beside an output (``.F.run``, ``.F.partial``, ``.F.lock``, temporary
names): an output may not take one of their names, and a damaged one is resumed with a warning
line, never silently (left for later by trial 12)."""

from __future__ import annotations

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
