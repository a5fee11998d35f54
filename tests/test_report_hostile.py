"""`camcli report` against a hostile output folder and unused options: planted links, a second
run on the same folder, --synsets/--gt-format/--iou without ground truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

from camcli.api import report_thumbs as T
from report_fixture import build_run


def snapshot(base: Path) -> dict[str, tuple]:
    """Every entry under ``base`` (links not followed): type, size, mtime."""
    snap = {}
    for dirpath, dirnames, files in os.walk(base):
        for name in dirnames + files:
            st = os.lstat(Path(dirpath, name))
            snap[str(Path(dirpath, name))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "p.txt").write_text("precious\n")
    return victim


def test_report_refuses_a_thumbs_link_and_writes_nothing_outside_out(tmp_path, camcli_run):
    run = build_run(tmp_path)
    victim = _victim(tmp_path)
    out = tmp_path / "r4"
    out.mkdir()
    (out / "thumbs").symlink_to("../victim")
    before = snapshot(victim)
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert snapshot(victim) == before  # no thumbnail folder made in the link's target
    assert code == 5
    assert err.strip().splitlines() == [
        f"error: cannot write to {out}: {out / 'thumbs'} is a symbolic link; camcli does not "
        "write through links: remove it or choose another output folder"
    ]
    assert not (out / "index.html").exists()
    assert sorted(p.name for p in out.iterdir()) == ["thumbs"]  # no lock file left


def test_report_refuses_a_link_below_thumbs(tmp_path, camcli_run):
    run = build_run(tmp_path)
    victim = _victim(tmp_path)
    out = tmp_path / "r"
    # every thumbnail folder thumbs/xx/ planted as a link to the victim
    names = {T.thumb_name(p, 160) for p in run["images"].iterdir()}
    names |= {T.thumb_name(p, 160) for p in run["cams"].glob("*/*.jpg")}
    for sub in {Path(n).parent for n in names if n}:
        (out / sub).parent.mkdir(parents=True, exist_ok=True)
        (out / sub).symlink_to(victim)
    before = snapshot(victim)
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert snapshot(victim) == before
    assert code == 5
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "is a symbolic link; camcli does not write through links" in lines[0]
    assert f"{out / 'thumbs'}/" in lines[0]


def test_report_replaces_planted_page_and_thumbnail_links(tmp_path, camcli_run):
    run = build_run(tmp_path)
    victim = _victim(tmp_path)
    target = victim / "keep" / "p.txt"
    out = tmp_path / "r"
    out.mkdir()
    (out / "index.html").symlink_to(target)
    src = run["images"] / "good.jpg"
    thumb = out / T.thumb_name(src, 160)
    thumb.parent.mkdir(parents=True)
    thumb.symlink_to(target)  # a "thumbnail" that is a link: not reused, not written through
    before = snapshot(victim)
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0, err
    assert snapshot(victim) == before and target.read_text() == "precious\n"
    assert "thumbnails 18 made, 0 reused" in err
    for p in (out / "index.html", thumb):
        assert not p.is_symlink() and p.is_file()
    assert thumb.read_bytes()[:2] == b"\xff\xd8"  # a JPEG made from good.jpg
    assert "<!doctype html>" in (out / "index.html").read_text().lower()


def test_report_second_run_on_a_locked_out_folder_is_refused(tmp_path, camcli_run):
    from camcli.runs.locks import RunLock

    run = build_run(tmp_path)
    out = tmp_path / "r"
    out.mkdir()
    held = RunLock(out / ".camcli.lock")  # a first report is writing out
    try:
        code, _o, err = camcli_run("report", run["cams"], "--out", out)
        assert code == 2
        assert err.strip().splitlines() == [
            f"error: {out}: another camcli run is writing it; wait for it to finish or "
            "choose another output folder"
        ]
        assert sorted(p.name for p in out.iterdir()) == [".camcli.lock"]  # nothing written
    finally:
        held.release()
    code, _o, err = camcli_run("report", run["cams"], "--out", out)
    assert code == 0, err
    assert (out / "index.html").is_file() and not (out / ".camcli.lock").exists()


def test_report_gt_options_without_gt_are_usage_errors(tmp_path, camcli_run):
    run = build_run(tmp_path)
    out = tmp_path / "r"
    syn = tmp_path / "map.txt"
    syn.write_text("n01440764 tench\n")
    code, _o, err = camcli_run("report", run["cams"], "--out", out, "--synsets", syn)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --synsets does nothing without --gt: drop it (see 'camcli report -h')"
    ]
    code, _o, err = camcli_run("report", run["cams"], "--out", out, "--gt-format", "csv")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --gt-format does nothing without --gt: drop it (see 'camcli report -h')"
    ]
    # no --gt and no record carries its own "gt": --iou judges nothing
    code, _o, err = camcli_run("report", run["boxes"], "--out", out, "--iou", "0.3")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --iou does nothing without ground truth (no --gt, and no record carries its own "
        "\"gt\"): drop it or give --gt (see 'camcli report -h')"
    ]
    assert not out.exists()
    # records with their own "gt": --iou is used
    rec = json.loads(run["boxes"].read_text().splitlines()[1])  # "missed": IoU 0 with GT_BOX
    rec["gt"] = {"label": "cat", "class_index": 0, "boxes": [[150, 100, 229, 169]]}
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps(rec) + "\n")
    code, _o, err = camcli_run("report", own, "--out", out, "--iou", "0.3")
    assert code == 0, err
    assert "report: 1 image (0 failed)" in err


def test_report_shows_a_hand_edited_or_unfinished_run_json(tmp_path, camcli_run):
    """Trial 12: a run.json that is a list, or whose options are not an object, crashed the
    report (AttributeError, exit 1); a NaN crashed it too (ValueError). Now the first is
    skipped with a warning, the others shown; run states read as JSON (``true``)."""
    run = build_run(tmp_path)
    cams = Path(run["cams"])
    info = json.loads((cams / "run.json").read_text())
    (cams / "run.json").write_text("[1, 2]")
    code, _o, err = camcli_run("report", cams, "--out", tmp_path / "r1")
    assert code == 0 and f"{cams / 'run.json'}: not a JSON object" in err, err
    bad = {**info, "options": [1], "counts": 3, "running": True, "wall_time_s": float("nan")}
    (cams / "run.json").write_text(json.dumps(bad))
    code, _o, err = camcli_run("report", cams, "--out", tmp_path / "r2", "-q")
    assert code == 0, err
    page = (tmp_path / "r2" / "index.html").read_text()
    assert "<th>running</th><td><code>true</code>" in page
    assert "<th>wall_time_s</th><td><code>nan</code>" in page
