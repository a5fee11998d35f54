"""Sharding (issue: reliability at scale): `--shard I/N`, `camcli merge`, eval over parts, and a
2-process gloo torchrun run equal to the single-process one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from camcli.cli import main
from camcli.data import inputs
from camcli.runs.merge import interleave
from camcli.runs.shards import Shard, parse_shard
from conftest import PYTHON, subprocess_env

pytestmark = pytest.mark.usefixtures("cli_one_thread")

TORCHRUN = Path(PYTHON).with_name("torchrun")


def run_main(*argv) -> int:
    """In-process run; image commands decode in-process, one image per batch: a batch's
    composition changes the float maths in the last bits (batched kernels), and shards batch
    different images together, so bit-identical outputs need --batch-size 1."""
    argv = [str(a) for a in argv]
    if argv[0] in ("predict", "cam", "bbox") and "--from-maps" not in argv:
        argv += ["--workers", "0", "--batch-size", "1"]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("main() returned without SystemExit")  # pragma: no cover


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def same_tree(a: Path, b: Path, skip=("run.json",)) -> None:
    """Same files; same bytes (npz: same arrays) except the files in ``skip``."""
    assert tree(a) == tree(b)
    for f in sorted(tree(a) - set(skip)):
        if f.endswith(".npz"):
            x, y = npz(a / f), npz(b / f)
            assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f


# --- pure parts -------------------------------------------------------------------------------


def test_parse_shard_and_select(cli_images):
    assert parse_shard("1/3") == Shard(1, 3) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    items = inputs.discover([str(cli_images)])
    assert len(items) == 6
    parts = [Shard(i, 4).select(items) for i in range(4)]
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    assert [it.index for it in parts[1]] == [1, 5]
    # together: every item exactly once, each keeping its global index and key
    assert sorted((it for p in parts for it in p), key=lambda it: it.index) == items
    assert Shard(2, 4).part(Path("d/boxes.jsonl")) == Path("d/boxes.shard-2-of-4.jsonl")
    assert Shard(0, 2).part(Path("noext")) == Path("noext.shard-0-of-2")


@pytest.mark.parametrize("bad", ["3/3", "-1/2", "1/0", "a/b", "1", "0/2/3"])
def test_bad_shard_is_a_one_line_usage_error(bad, cli_images, cli_ckpt, camcli_run):
    code, out, err = camcli_run("predict", cli_images, "-w", cli_ckpt, f"--shard={bad}")
    assert code == 2 and out == ""
    assert "--shard" in err and len(err.strip().splitlines()) == 1


def test_interleave_restores_order_and_checks_sizes():
    parts = [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert interleave(parts, ["p0", "p1", "p2"]) == list("abcdefg")
    assert interleave([[], []], ["p0", "p1"]) == []
    from camcli.errors import CamcliError

    for bad in ([["a"], ["b", "c"]], [["a", "c", "e"], ["b"]], [["a", "c"], [], ["b"]]):
        with pytest.raises(CamcliError, match="do not fit"):
            interleave(bad, [f"p{i}" for i in range(len(bad))])


def test_merge_fails_on_a_bad_line_naming_file_and_line(tmp_path):
    """A part being merged must be whole: a cut line is an error naming the file and line."""
    from camcli.errors import CamcliError, Exit
    from camcli.runs.merge import merge_jsonl
    from camcli.runs.shards import count_path

    target = tmp_path / "boxes.jsonl"
    Shard(0, 2).part(target).write_text('{"image": "a"}\n{"image": "c"}\n')
    bad = Shard(1, 2).part(target)
    for i, k in ((0, 2), (1, 1)):  # what a finished shard writes beside its part
        count_path(Shard(i, 2).part(target)).write_text(f'{{"inputs": {k}}}')
    bad.write_text('{"image": "b"}\n\n{"ima')
    with pytest.raises(CamcliError) as ex:
        merge_jsonl(target)
    assert str(ex.value) == (
        f"{bad} line 3: not a complete JSON record; rerun that shard with --resume"
    )
    assert ex.value.code == Exit.NO_INPUT and not target.exists()
    bad.write_text('{"image": "b"}\n')
    assert merge_jsonl(target) == 3
    assert [json.loads(x)["image"] for x in target.read_text().splitlines()] == ["a", "b", "c"]


def test_resumed_files_skip_bad_lines(tmp_path):
    """Resumed records and manifests skip a cut line, an error record and a non-object: those
    images are done again; the rewritten manifest holds the good lines only."""
    from camcli.runs.outdir import OutDir
    from camcli.runs.recordfile import RecordFile

    target = tmp_path / "boxes.jsonl"
    target.write_text('{"image": "a", "n": 1}\n{"image": "b", "error": "x"}\n[1]\n')
    (tmp_path / ".boxes.jsonl.partial").write_bytes(b'{"image": "c\xff"}\n{"image": "d"}\n{"ima')
    rf = RecordFile(target, resume=True)
    assert sorted(rf.done) == ["a", "c\udcff", "d"]
    rf.finish(["a", "b", "c\udcff", "d"])
    assert [json.loads(x)["image"] for x in target.read_text().splitlines()] == [
        "a", "c\udcff", "d"
    ]  # fmt: skip

    root = tmp_path / "cam"
    root.mkdir()
    (root / "k1.npz").write_bytes(b"x")
    good = [
        '{"key": "k0", "outputs": {"files": []}}',
        '{"key": "k1", "outputs": {"files": ["k1.npz"]}}',
    ]
    lost = '{"key": "k2", "outputs": {"files": ["k2.npz"]}}'  # its file is gone
    (root / "manifest.jsonl").write_text("\n".join([good[0], "{cut", lost, good[1], "{"]))
    od = OutDir(root, resume=True, workers=1)
    assert sorted(od.done) == ["k0", "k1"]
    assert (root / "manifest.jsonl").read_text() == "".join(g + "\n" for g in good)
    od.close()


def test_outdir_removes_its_own_manifest_temporaries_only(tmp_path):
    """A starting shard removes its own manifest and run json temporary files (and the old
    ``.manifest...jsonl.tmp`` name), never another shard's."""
    from camcli.atomic import tmp_path_for
    from camcli.runs.outdir import OutDir

    root = tmp_path / "cam"
    root.mkdir()
    mine = [
        tmp_path_for(root / "manifest.shard-0-of-2.jsonl"),
        tmp_path_for(root / "run.shard-0-of-2.json"),
        root / ".manifest.shard-0-of-2.jsonl.tmp",
    ]
    theirs = [
        tmp_path_for(root / "manifest.shard-1-of-2.jsonl"),
        tmp_path_for(root / "run.shard-1-of-2.json"),
        root / ".manifest.shard-1-of-2.jsonl.tmp",
    ]
    for p in mine + theirs:
        p.write_text("half")
    od = OutDir(root, resume=False, workers=1, shard=Shard(0, 2), own_keys={"a"})
    od.close()
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in mine)
    od = OutDir(root, resume=False, workers=1)  # unsharded: every stray temporary file goes
    od.close()
    assert not any(p.exists() for p in theirs[:2])


# --- bbox / predict: parts of --output FILE, camcli merge, eval over parts --------------------


@pytest.fixture(scope="module")
def refs(tmp_path_factory, cli_images, cli_ckpt):
    """Unsharded runs: bbox records + drawings, predict records, cam folder."""
    t = tmp_path_factory.mktemp("shardref")
    w = ("--weights", cli_ckpt, "--quiet")
    assert run_main("bbox", cli_images, *w, "-o", t / "boxes.jsonl", "--draw", t / "draw") == 1
    assert run_main("predict", cli_images, *w, "-o", t / "preds.jsonl") == 1
    assert run_main("cam", cli_images, *w, "--out", t / "cam", "--top-k", 2, "--save-maps",
                    "--grid") == 1  # fmt: skip
    return t


def test_bbox_shards_merge_to_the_unsharded_records(refs, tmp_path, cli_images, cli_ckpt):
    out, draw = tmp_path / "boxes.jsonl", tmp_path / "draw"
    w = ("--weights", cli_ckpt, "--quiet", "-o", out, "--draw", draw)
    # shards of 6 inputs: items {0, 4}, {1, 5}, {2}, {3}; item 2 is the corrupt file
    codes = [run_main("bbox", cli_images, *w, "--shard", f"{i}/4") for i in (3, 0, 1)]
    assert codes == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        f"boxes.shard-{i}-of-4.jsonl" for i in (0, 1, 3)
    ]
    # a shard missing: nothing is merged, the error names it
    assert run_main("merge", out) == 3 and not out.exists()
    assert run_main("merge", draw) == 3 and not (draw / "manifest.jsonl").exists()
    assert run_main("bbox", cli_images, *w, "--shard", "2/4") == 3  # nothing usable in it
    assert run_main("merge", out, draw) == 0
    assert out.read_bytes() == (refs / "boxes.jsonl").read_bytes()
    # the merged FILE records the parts' run, as an unsharded run's does (trial 13)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".boxes.jsonl.run", "boxes.jsonl", "draw"]
    merged = json.loads((tmp_path / ".boxes.jsonl.run").read_text())
    unsharded = json.loads((refs / ".boxes.jsonl.run").read_text())
    assert merged == unsharded and merged["file"] is True
    same_tree(draw, refs / "draw")


def test_draw_shards_of_two_runs_are_not_merged(tmp_path, cli_images, cli_ckpt, capsys):
    """A ``--draw`` shard's run json records the model and the box options: ``merge`` of
    drawing shards made with another ``--threshold`` is refused, naming both files and the
    option (they recorded no model or option before)."""
    draw = tmp_path / "draw"
    w = ("--weights", cli_ckpt, "--quiet", "--draw", draw, "-o", tmp_path / "b.jsonl")
    assert run_main("bbox", cli_images, *w, "--shard", "0/2") in (0, 1)
    assert run_main("bbox", cli_images, *w, "--shard", "1/2", "--threshold", "0.3") in (0, 1)
    info = json.loads((draw / "run.shard-0-of-2.json").read_text())
    assert info["options"]["threshold"] == 0.2 and info["weights_sha256"]
    capsys.readouterr()
    assert run_main("merge", draw) == 2
    err = capsys.readouterr().err
    assert (
        "the shards are parts of different runs: run.shard-1-of-2.json was made with "
        "--threshold 0.3, run.shard-0-of-2.json with --threshold 0.2" in err
    ), err
    assert not (draw / "manifest.jsonl").exists()


def test_predict_shards_merge_and_eval_reads_the_parts(refs, tmp_path, cli_images, cli_ckpt,
                                                       capsys):  # fmt: skip
    out = tmp_path / "preds.jsonl"
    for i in range(3):
        code = run_main("predict", cli_images, "-w", cli_ckpt, "-q", "-o", out, "--shard", f"{i}/3")
        assert code == (1 if i == 2 else 0)  # items 2 and 5: the corrupt file is item 2
    parts = [str(Shard(i, 3).part(out)) for i in range(3)]
    # eval over the parts scores the same as over the unsharded file
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "path,label,xmin,ymin,xmax,ymax\n"
        + "".join(f"{n},class {n[0]},0,0,9,9\n" for n in ["a", "b", "broken", "c", "d", "e"])
    )
    cats = tmp_path / "cats.txt"
    cats.write_text("".join(f"class {c}\n" for c in "abcdefghij"))
    args = ["eval", "--gt", gt, "--categories", cats, "-o", "-", "-q"]
    capsys.readouterr()
    assert run_main(*args, *[x for p in parts for x in ("--boxes", p)]) == 1  # broken: failed
    split = json.loads(capsys.readouterr().out)
    assert run_main(*args, "--boxes", refs / "preds.jsonl") == 1
    whole = json.loads(capsys.readouterr().out)
    assert split == whole and whole["n_images"] == 6 and whole["n_failed"] == 1
    assert run_main("merge", out) == 0
    assert out.read_bytes() == (refs / "preds.jsonl").read_bytes()


@pytest.mark.parametrize(
    ("command", "second", "what", "was", "now"),
    [
        ("bbox", ("--model", "shapes"), "--model", "resnet18", "shapes"),
        ("bbox", ("-k", 1), "--top-k", "5", "1"),
        ("bbox", ("--box-rule", "all"), "--box-rule", "paper", "all"),
        ("predict", ("--model", "shapes"), "--model", "resnet18", "shapes"),
        ("predict", ("-k", 1), "--top-k", "5", "1"),
    ],
)
def test_merge_refuses_file_parts_of_different_runs(command, second, what, was, now, refs,
                                                    tmp_path, cli_images, cli_ckpt,
                                                    camcli_run):  # fmt: skip
    """Trial D1: `merge FILE` joined --output parts of different runs (another model, -k,
    --box-rule) into one file mixing their records. Each finished part's PART.inputs now
    records its run; merge refuses (exit 2) naming both parts, the option and both values,
    writes nothing, and merges the parts of one run as before."""
    out = tmp_path / "m.jsonl"
    base = (command, cli_images, "-q", "-o", out)
    assert run_main(*base, "-w", cli_ckpt, "--shard", "0/2") in (0, 1)
    w = () if "--model" in second else ("-w", cli_ckpt)
    assert run_main(*base, *w, *second, "--shard", "1/2") in (0, 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = camcli_run("merge", out)
    assert code == 2, err
    assert err.strip() == (
        f"error: {out}: the shards are parts of different runs: m.shard-1-of-2.jsonl was made "
        f"with {what} {now}, m.shard-0-of-2.jsonl with {what} {was}; rerun shard 1/2 without "
        "--resume with the options of the others (or remove the parts of the older run)"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing written
    assert run_main(*base, "-w", cli_ckpt, "--shard", "1/2") in (0, 1)  # the same run merges
    assert camcli_run("merge", out)[0] == 0
    ref = refs / ("boxes.jsonl" if command == "bbox" else "preds.jsonl")
    assert out.read_bytes() == ref.read_bytes()


def test_merge_compares_the_runs_parts_record(tmp_path):
    """Trial D1: parts of two commands are refused; parts without a run (an older camcli's
    PART.inputs: {"inputs": k}) are not compared and merge as before. Trial F2: a part without
    a run beside parts with one merged silently; now refused (exit 2) naming it and the fix."""
    from camcli.errors import CamcliError, Exit
    from camcli.runs.merge import merge_jsonl
    from camcli.runs.shards import count_path

    target = tmp_path / "r.jsonl"
    parts = [Shard(i, 3).part(target) for i in range(3)]
    for p, img in zip(parts, "abc"):
        p.write_text(f'{{"image": "{img}"}}\n')
    run = {"command": "bbox", "model": "m", "options": {"top_k": 5}}

    def write_runs(runs):
        for p, r in zip(parts, runs):
            count_path(p).write_text(json.dumps({"inputs": 1, **({"run": r} if r else {})}))

    def refusal() -> str:
        with pytest.raises(CamcliError) as ex:
            merge_jsonl(target)
        assert ex.value.code == Exit.USAGE and not target.exists()
        return str(ex.value)

    write_runs([run, run, {**run, "command": "predict"}])
    assert refusal() == (
        f"{target}: the shards are parts of different runs: r.shard-2-of-3.jsonl was made with "
        "camcli predict, r.shard-0-of-3.jsonl with camcli bbox; rerun shard 2/3 without "
        "--resume with the options of the others (or remove the parts of the older run)"
    )
    # trial F2: no run (or "run": null) beside parts that record theirs
    for none in ({}, {"run": None}):
        write_runs([run, run, run])
        count_path(parts[1]).write_text(json.dumps({"inputs": 1, **none}))
        assert refusal() == (
            f"{target}: r.shard-1-of-3.jsonl records no run in r.shard-1-of-3.jsonl.inputs (an "
            "older camcli's part) while r.shard-0-of-3.jsonl does; rerun shard 1/3 without "
            "--resume (or remove the parts of the older run)"
        )
    write_runs([None, None, None])  # all of an older camcli: merged as before
    assert merge_jsonl(target, keep_parts=True) == 3
    target.unlink()
    write_runs([run, run, run])
    assert merge_jsonl(target) == 3
    assert [json.loads(x)["image"] for x in target.read_text().splitlines()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("command", "first", "second", "was", "now"),
    [
        ("predict", ("-k", 3), ("-k", 5), "--top-k 3", "--top-k 5"),
        ("predict", ("-k", 5), ("-k", 3), "--top-k 5", "--top-k 3"),
        ("bbox", (), ("--threshold", 0.5), "--threshold 0.2", "--threshold 0.5"),
    ],
)
def test_resume_refuses_a_part_of_another_run(command, first, second, was, now, tmp_path,
                                              cli_images, cli_ckpt, camcli_run):  # fmt: skip
    """Trial F1: `--resume` of a finished --output part made with other options (-k,
    --threshold) kept its records, rewrote its PART.inputs with this run's options, and merge
    then joined records of two runs. Now exit 2 before anything is touched: one line naming
    the part, the difference and the fix; part and PART.inputs unchanged byte for byte. The
    same options resume as before; without --resume the part is rewritten."""
    from camcli.runs.shards import count_path

    out = tmp_path / "p.jsonl"
    base = (command, cli_images, "-w", cli_ckpt, "-q", "-o", out, "--shard", "1/2")
    assert run_main(*base, *first) in (0, 1)
    part = Shard(1, 2).part(out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == [part.name, count_path(part).name]
    code, _, err = camcli_run(*base, *second, "--resume", "--workers", "0")
    assert code == 2, err
    assert err.strip() == (
        f"error: --resume: {part} was made with {was}, this run has {now}; rerun that shard "
        "without --resume (the part is rewritten) or resume it with the part's options"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run_main(*base, *first, "--resume") in (0, 1)  # the same options: resumed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert run_main(*base, *second) in (0, 1)  # rewritten, with this run's options
    flag, value = now.split()
    opts = json.loads(count_path(part).read_text())["run"]["options"]
    assert str(opts["top_k" if flag == "--top-k" else "threshold"]) == value


def test_empty_shard_writes_an_empty_part(tmp_path, cli_images, cli_ckpt):
    out = tmp_path / "p.jsonl"
    assert run_main("predict", cli_images, "-w", cli_ckpt, "-q", "-o", out, "--shard", "7/8") == 0
    assert Shard(7, 8).part(out).read_text() == ""


def test_shard_refuses_whole_input_outputs(tmp_path, cli_images, cli_ckpt, camcli_run):
    syn = tmp_path / "syn.txt"
    syn.write_text("")
    code, _, err = camcli_run("bbox", cli_images, "-w", cli_ckpt, "--shard", "0/2",
                              "--submission", tmp_path / "s.txt", "--synsets", syn)  # fmt: skip
    assert code == 2 and "camcli merge" in err
    code, _, err = camcli_run("bbox", "--from-maps", tmp_path, "--shard", "0/2")
    assert code == 2 and "--from-maps" in err


# --- cam: shards writing into one folder ------------------------------------------------------


def test_cam_shards_share_one_folder_and_merge(refs, tmp_path, cli_images, cli_ckpt):
    out = tmp_path / "cam"
    args = ("--weights", cli_ckpt, "--quiet", "--out", out, "--top-k", 2, "--save-maps", "--grid")
    assert [run_main("cam", cli_images, *args, "--shard", f"{i}/3") for i in range(3)] == [0, 0, 1]
    names = {p.name for p in out.iterdir() if p.is_file() and p.suffix != ".npz"}
    assert names == {f"manifest.shard-{i}-of-3.jsonl" for i in range(3)} | {
        f"run.shard-{i}-of-3.json" for i in range(3)
    }
    assert run_main("merge", out) == 0
    same_tree(out, refs / "cam")
    info, ref_info = (json.loads((d / "run.json").read_text()) for d in (out, refs / "cam"))
    assert info["counts"] == ref_info["counts"] == {"ok": 5, "failed": 1}
    assert info["shards"] == 3 and info["options"] == ref_info["options"]


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory, cli_ckpt) -> Path:
    """cli_ckpt's network with other random weights (another weights sha256)."""
    import torch

    from camcli.models.load import random_model

    ck = torch.load(cli_ckpt, weights_only=True)
    torch.manual_seed(7)
    ck["state_dict"] = random_model("resnet18", num_classes=len(ck["categories"])).state_dict()
    path = tmp_path_factory.mktemp("ckpt_other") / "other.pt"
    torch.save(ck, path)
    return path


@pytest.mark.parametrize(
    ("second", "what", "was", "now"),
    [
        (("--top-k", 2), "--top-k", "1", "2"),
        (("--format", "png"), "--format", "jpg", "png"),
        (("--other-weights",), "weights (sha256)", None, None),
    ],
)
def test_merge_refuses_shards_of_different_runs(second, what, was, now, tmp_path, cli_images,
                                                cli_ckpt, other_ckpt, camcli_run):  # fmt: skip
    """Trial A1: shards made with other options or weights were merged: one run.json (shard
    0's) over a manifest mixing two runs' records. Now exit 2 naming the first difference, both
    run jsons and both values; nothing is written or removed."""
    out = tmp_path / "cam"
    base = ("cam", cli_images, "--quiet", "--out", out, "--top-k", 1, "--grid", "--no-overlay")
    assert run_main(*base, "--weights", cli_ckpt, "--shard", "0/2") in (0, 1)
    w = other_ckpt if second == ("--other-weights",) else cli_ckpt
    opts = () if second == ("--other-weights",) else second
    assert run_main(*base, "--weights", w, *opts, "--shard", "1/2") in (0, 1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = camcli_run("merge", out)
    assert code == 2, err
    if was is None:
        i0, i1 = (json.loads((out / f"run.shard-{i}-of-2.json").read_text()) for i in (0, 1))
        was, now = i0["weights_sha256"], i1["weights_sha256"]
    assert err.strip() == (
        f"error: {out}: the shards are parts of different runs: run.shard-1-of-2.json was made "
        f"with {what} {now}, run.shard-0-of-2.json with {what} {was}; rerun shard 1/2 without "
        "--resume with the options of the others (or remove the parts of the older run)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the same run merges
    assert run_main(*base, "--weights", cli_ckpt, "--shard", "1/2") in (0, 1)
    assert camcli_run("merge", out)[0] == 0
    assert json.loads((out / "run.json").read_text())["shards"] == 2


def test_a_shard_cleans_only_its_own_temporary_files(tmp_path, cli_images, cli_ckpt):
    """Shards may run at once in one folder: a starting shard must not delete the files another
    shard is writing (a.jpg is item 0 -> shard 0/2; b.png is item 1 -> shard 1/2)."""
    out = tmp_path / "cam"
    theirs = [out / "b" / ".1_x.jpg.camcli-tmp11-22", out / ".b.npz.camcli-tmp11-22"]
    mine = [out / "a" / ".1_x.jpg.camcli-tmp11-22", out / ".a.npz.camcli-tmp33-44"]
    for p in theirs + mine:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.jpg", "b.png"):
        shutil.copy(cli_images / n, two / n)
    assert run_main("cam", two, "-w", cli_ckpt, "-q", "--out", out, "--shard", "0/2") == 0
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in mine)


def test_resume_of_a_shard_after_merging_redoes_nothing(refs, tmp_path, cli_images, cli_ckpt,
                                                        monkeypatch):  # fmt: skip
    import camcli.api.cams

    out = tmp_path / "cam"
    shutil.copytree(refs / "cam", out)
    seen: list[str] = []
    api = camcli.api.cams
    real = api.iter_cams
    monkeypatch.setattr(
        api, "iter_cams", lambda s, items, *a, **k: seen.extend(it.key for it in items)
        or real(s, items, *a, **k)
    )  # fmt: skip
    args = ("--weights", cli_ckpt, "--quiet", "--out", out, "--top-k", 2, "--save-maps", "--grid")
    assert run_main("cam", cli_images, *args, "--shard", "0/2", "--resume") == 1
    assert seen == ["nested/broken"]  # only the failed input is retried


# --- torchrun ---------------------------------------------------------------------------------


def torchrun(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("CAMCLI_DEBUG", None)
    return subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "-m", "camcli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed beside python")
def test_torchrun_two_gloo_ranks_equal_one_process(refs, tmp_path, cli_images, cli_ckpt):
    out, draw = tmp_path / "boxes.jsonl", tmp_path / "draw"
    r = torchrun("bbox", cli_images, "-w", cli_ckpt, "--device", "cpu", "--workers", "0",
                 "--batch-size", "1", "-o", out, "--draw", draw, cwd=tmp_path)  # fmt: skip
    assert r.returncode != 0  # rank 0 reports the corrupt input: exit 1, so torchrun fails
    assert "exitcode  : 1" in r.stderr and r.stderr.count("broken.jpg: cannot decode") == 1
    assert out.read_bytes() == (refs / "boxes.jsonl").read_bytes()
    same_tree(draw, refs / "draw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxes.jsonl", "draw"]
    assert not [p for p in tree(draw) if "shard" in p]


def test_torchrun_usage_errors_need_no_process_group(tmp_path, cli_images, cli_ckpt, camcli_run,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    code, _, err = camcli_run("bbox", cli_images, "-w", cli_ckpt)
    assert code == 2 and "--output FILE" in err
    code, _, err = camcli_run("predict", cli_images, "-w", cli_ckpt, "-o", "x", "--shard", "0/2")
    assert code == 2 and "torchrun" in err
    assert not os.path.exists("x")


def test_run_difference_compares_only_the_options_both_runs_record():
    """An option one run.json does not record (an older camcli's, before ``gt`` was
    recorded) is not compared; the others are, the command first."""
    from camcli.runs.samerun import run_difference

    new = {"model": "m", "options": {"top_k": 5, "gt": True}}
    old = {"model": "m", "options": {"top_k": 5}}
    assert run_difference(new, old) is None and run_difference(old, new) is None
    assert run_difference(old, {"model": "m", "options": {"top_k": 3}}) == ("--top-k", 5, 3)
    assert run_difference(new, {**new, "options": {"top_k": 5, "gt": False}}) == (
        "--gt",
        True,
        False,
    )
    bbox, predict = {**old, "command": "bbox"}, {**old, "command": "predict"}
    assert run_difference(bbox, predict) == ("camcli", "bbox", "predict")


def test_a_killed_runs_partial_file_records_its_run_and_resume_checks_it(tmp_path):
    """``.FILE.partial`` begins with the run writing it (``{"camcli_run": ...}``, never read
    as a record): --resume after a kill is refused when the killed run was another (here:
    without --gt, resumed with it), and resumes its records when it was the same."""
    from camcli.errors import CamcliError
    from camcli.runs.recordfile import RecordFile

    run = {"command": "bbox", "model": "m", "options": {"threshold": 0.2, "gt": False}}
    target = tmp_path / "boxes.jsonl"
    rf = RecordFile(target, resume=False, run=run)
    rec = {"image": "a.jpg", "boxes": []}
    rf.write(rec)
    rf.release()  # killed: never finished
    partial = tmp_path / ".boxes.jsonl.partial"
    first, line = partial.read_text().splitlines()
    assert json.loads(first) == {"camcli_run": run} and json.loads(line) == rec
    other = {**run, "options": {"threshold": 0.2, "gt": True}}
    with pytest.raises(CamcliError) as exc:
        RecordFile(target, resume=True, run=other)
    assert exc.value.exit_code == 2
    assert str(exc.value).startswith(
        f"--resume: {partial} holds the records of an unfinished run made without --gt, "
        "this run with it; resume with the options of that run, or rerun without --resume"
    )
    rf = RecordFile(target, resume=True, run=run)
    assert list(rf.done) == ["a.jpg"]
    assert rf.finish(["a.jpg"]) == [rec]
    assert [json.loads(x) for x in target.read_text().splitlines()] == [rec]
    assert not partial.exists()


def test_a_whole_files_run_is_recorded_beside_it_and_resume_checks_it(tmp_path):
    """Trial 12: ``.FILE.run`` records the run writing FILE from its start: --resume after a
    finished (or interrupted) run with other options is refused; a run started without
    --resume over an older FILE (then killed) is resumed without that older FILE's records."""
    from camcli.errors import CamcliError
    from camcli.runs.recordfile import RecordFile, sidecar_path

    target = tmp_path / "p.jsonl"
    a = {"command": "predict", "model": "m", "options": {"top_k": 5}}
    b = {"command": "predict", "model": "m", "options": {"top_k": 3}}
    rf = RecordFile(target, resume=False, run=a)
    for img in ("x.jpg", "y.jpg"):
        rf.write({"image": img, "predictions": []})
    rf.finish(["x.jpg", "y.jpg"])
    side = sidecar_path(target)
    assert side.name == ".p.jsonl.run"
    assert json.loads(side.read_text()) == {"camcli_run": a, "file": True}
    # a finished run, resumed with another option: refused, nothing touched
    with pytest.raises(CamcliError) as exc:
        RecordFile(target, resume=True, run=b)
    assert exc.value.exit_code == 2 and str(exc.value).startswith(
        f"--resume: {target} holds records made with --top-k 5, this run has --top-k 3;"
    )
    # run b without --resume over a's FILE, killed after one record
    rf = RecordFile(target, resume=False, run=b)
    assert json.loads(side.read_text()) == {"camcli_run": b, "file": False}
    rf.write({"image": "x.jpg", "predictions": [], "k": 3})
    rf.release()
    with pytest.raises(CamcliError):  # resumed as a: refused (the partial file says so too)
        RecordFile(target, resume=True, run=a)
    rf = RecordFile(target, resume=True, run=b)  # resumed as b: a's FILE is not read
    assert list(rf.done) == ["x.jpg"] and rf.done["x.jpg"]["k"] == 3
    rf.release()


def test_run_difference_names_class_before_top_k():
    """With --class the maps are those classes: a refusal names --class, not the --top-k the
    user did not type (trial 12)."""
    from camcli.runs.samerun import run_difference

    before = {"options": {"top_k": 2, "classes": None}}
    now = {"options": {"top_k": 5, "classes": [1, 2]}}
    assert run_difference(before, now) == ("--class", None, [1, 2])


def test_a_finished_cam_shard_resumed_with_other_options_is_refused(
    tmp_path, cli_images, cli_ckpt, capsys
):
    """Trial 12: ``cam --shard 0/2 --top-k 2`` finished, then resumed with ``--top-k 3``,
    rewrote its run json to say top 3 over top-2 files; now refused like an unsharded
    folder's --resume (its run json is checked before it is replaced)."""
    out = tmp_path / "cams"
    base = ["cam", cli_images, "-w", cli_ckpt, "--out", out, "--shard", "0/2", "--quiet"]
    assert run_main(*base, "--top-k", "2") in (0, 1)
    shard_json = (out / "run.shard-0-of-2.json").read_text()
    capsys.readouterr()
    assert run_main(*base, "--top-k", "3", "--resume") == 2
    assert "made with --top-k 2, this run has --top-k 3" in capsys.readouterr().err
    assert (out / "run.shard-0-of-2.json").read_text() == shard_json
    assert run_main(*base, "--top-k", "2", "--resume") in (0, 1)  # the same run resumes


def test_a_stopped_cam_shard_is_recorded_as_running(tmp_path, cli_images, cli_ckpt, capsys,
                                                    monkeypatch):  # fmt: skip
    """Trial 12b: a cam shard stopped before it finished recorded nothing, so its --resume
    with other options mixed two runs. Its run json is now written at the start with
    ``"running": true``: --resume with other options is refused, and merge takes the shard
    as unfinished until it completes."""
    from camcli.api import cam_job

    out = tmp_path / "cams"
    base = ["cam", cli_images, "-w", cli_ckpt, "--out", out, "--quiet"]

    def stopped(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cam_job, "run_cam", stopped)
        assert run_main(*base, "--shard", "0/2", "--top-k", "2") == 130
    info = json.loads((out / "run.shard-0-of-2.json").read_text())
    assert info["running"] is True and info["options"]["top_k"] == 2
    capsys.readouterr()
    assert run_main(*base, "--shard", "0/2", "--top-k", "3", "--resume") == 2
    assert "made with --top-k 2, this run has --top-k 3" in capsys.readouterr().err
    assert run_main(*base, "--shard", "1/2", "--top-k", "2") in (0, 1)
    assert run_main("merge", out) == 3  # shard 0 did not finish
    assert "shard(s) 0/2 not finished" in capsys.readouterr().err
    assert run_main(*base, "--shard", "0/2", "--top-k", "2", "--resume") in (0, 1)
    assert "running" not in json.loads((out / "run.shard-0-of-2.json").read_text())
    assert run_main("merge", out) == 0


def test_the_run_is_recorded_beside_the_file_a_link_names(tmp_path):
    """Trial 12b: ``-o link.jsonl`` (a link to target.jsonl) wrote target.jsonl but recorded
    its run beside the link: target's own record went stale."""
    from camcli.runs.recordfile import RecordFile

    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("")
    link.symlink_to(target.name)
    run = {"command": "predict", "model": "m", "options": {"top_k": 2}}
    rf = RecordFile(link, resume=False, run=run)
    rf.finish([])
    assert json.loads((tmp_path / ".target.jsonl.run").read_text())["camcli_run"] == run
    assert not (tmp_path / ".link.jsonl.run").exists()
