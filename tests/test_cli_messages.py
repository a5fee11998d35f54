"""Warnings and error lines of the commands in small cases: what they say, how often, and when
(before the model loads, not after the run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import CLI_CATEGORIES, records

pytestmark = pytest.mark.usefixtures("cli_one_thread")


# --- --top-k above the model's class count -----------------------------------------------------


@pytest.mark.parametrize("command", ["cam", "bbox", "predict"])
def test_top_k_above_the_class_count_is_lowered_with_one_warning(
    command, tmp_path, cli_images, cli_ckpt, camcli_run
):
    out = tmp_path / "o.jsonl"
    out_args = ("--out", tmp_path / "c", "--no-overlay", "--save-maps") if command == "cam" else (
        "--output", out)  # fmt: skip
    code, _, err = camcli_run(command, cli_images / "a.jpg", "--weights", cli_ckpt, "-k", "50",
                              *out_args, "--workers", "0", "-q")  # fmt: skip
    assert code == 0, err
    assert err.splitlines() == ["warning: --top-k 50 lowered to 10 (the model has 10 classes)"]
    rec = records(tmp_path / "c" / "manifest.jsonl" if command == "cam" else out)[0]
    assert len(rec["predictions"]) == len(CLI_CATEGORIES)


@pytest.fixture(scope="module")
def three_class_ckpt(tmp_path_factory) -> Path:
    import torch

    from camcli.models.load import random_model
    from camcli.models.registry import Preprocess

    torch.manual_seed(1)
    m = random_model("resnet18", num_classes=3)
    path = tmp_path_factory.mktemp("ckpt3") / "three.pt"
    torch.save({"format": "camcli-checkpoint", "model": "resnet18", "state_dict": m.state_dict(),
                "categories": ["ant", "bee", "cow"], "preprocess": Preprocess(input_size=64)
                .to_dict(), "pool": "avg"}, path)  # fmt: skip
    return path


def test_top_k_default_is_lowered_quietly_a_given_one_with_a_warning(
    tmp_path, cli_images, three_class_ckpt, camcli_run
):
    """The default -k 5 on a 3-class model: all 3 classes, no warning (a small model's every
    run would warn); the same value given on the command line is warned about once."""
    out = tmp_path / "p.jsonl"
    args = ("predict", cli_images / "a.jpg", "-w", three_class_ckpt, "-o", out, "--workers", "0")
    code, _, err = camcli_run(*args)
    assert code == 0 and "warning" not in err, err
    assert len(records(out)[0]["predictions"]) == 3
    code, _, err = camcli_run(*args, "--top-k", "5")
    assert code == 0
    assert err.count("warning:") == 1
    assert "warning: --top-k 5 lowered to 3 (the model has 3 classes)" in err


# --- cam --gt: labels that are not the model's classes -----------------------------------------


def test_cam_gt_unknown_labels_warn_once_each(tmp_path, cli_images, cli_ckpt, camcli_run):
    """A label the model does not know (a name, or a class index past its classes: that one
    used to end the run with an IndexError) is one warning per label, not per image; the other
    images get their GT map."""
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "path,label,xmin,ymin,xmax,ymax\n"
        "a.jpg,zebra,0,0,9,9\nb.png,zebra,0,0,9,9\nnested/c.jpg,zebra,0,0,9,9\n"
        "nested/deeper/d.png,17,0,0,9,9\nnested/e.jpeg,class_c,0,0,9,9\n"
    )
    out = tmp_path / "o"
    code, _, err = camcli_run("cam", cli_images, "--out", out, "-w", cli_ckpt, "--gt", gt,
                              "-k", "1", "--no-overlay", "--save-maps", "--workers", "0",
                              "-q")  # fmt: skip
    assert code == 1, err  # the corrupt image
    like = "'class a', 'class b', 'class c', ... or a class index 0..9"
    warnings = [x for x in err.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: --gt {gt}: label {lab!r} is not one of the model's classes (they look like "
        f"{like}): its images get no GT map"
        for lab in ("zebra", "17")
    ]
    recs = {Path(r["image"]).name: r for r in records(out / "manifest.jsonl") if "error" not in r}
    gt_maps = {n: [p for p in r["predictions"] if p.get("gt")] for n, r in recs.items()}
    assert all(not gt_maps[n] for n in ("a.jpg", "b.png", "c.jpg", "d.png"))
    assert [p["class_index"] for p in gt_maps["e.jpeg"]] == [2]  # class_c: the model's "class c"


def _unknown_label_lines(gt: Path, labels, what: str) -> list[str]:
    like = "'class a', 'class b', 'class c', ... or a class index 0..9"
    return [
        f"warning: --gt {gt}: label {lab!r} is not one of the model's classes (they look like "
        f"{like}): its images get no {what}"
        for lab in labels
    ]


def _gt_of_the_dataset(tmp_path: Path) -> Path:
    """Ground truth of more images than the runs below process: a.jpg (zebra), b.png (a model
    class), and two images that are not inputs (giraffe, 17)."""
    gt = tmp_path / "gt.csv"
    gt.write_text(
        "path,label,xmin,ymin,xmax,ymax\na.jpg,zebra,0,0,9,9\nb.png,class_b,0,0,9,9\n"
        "elsewhere/f.jpg,giraffe,0,0,9,9\nelsewhere/g.jpg,17,0,0,9,9\n"
    )
    return gt


def test_cam_gt_warns_only_about_labels_of_its_inputs(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial A4: a GT file of the whole dataset and a run on part of it warned about the labels
    of images that were not among the inputs (giraffe, 17)."""
    gt = _gt_of_the_dataset(tmp_path)
    code, _, err = camcli_run("cam", cli_images / "a.jpg", cli_images / "b.png", "--out",
                              tmp_path / "o", "-w", cli_ckpt, "--gt", gt, "-k", "1",
                              "--no-overlay", "--save-maps", "--workers", "0", "-q")  # fmt: skip
    assert code == 0, err
    assert err.splitlines() == _unknown_label_lines(gt, ["zebra"], "GT map")


def test_bbox_gt_warns_about_unknown_labels_before_the_run(
    tmp_path, cli_images, cli_ckpt, camcli_run, monkeypatch
):
    """Trial A3: bbox --gt with a label the model does not know said so only at the end, as
    "labels no prediction uses"; now one warning per label before any image is processed, as
    cam --gt, and only for the inputs' labels (trial A4). The end-of-run line no longer repeats
    it; it names only what the early warning does not (a label of a GT image with no
    prediction)."""
    import sys

    import camcli.api.bbox_job

    real = camcli.api.bbox_job.run_bbox

    def marked(*a, **k):
        print("<run starts>", file=sys.stderr, flush=True)
        return real(*a, **k)

    monkeypatch.setattr(camcli.api.bbox_job, "run_bbox", marked)
    gt = _gt_of_the_dataset(tmp_path)
    code, _, err = camcli_run("bbox", cli_images / "a.jpg", cli_images / "b.png", "-w", cli_ckpt,
                              "--gt", gt, "-k", "10", "--output", tmp_path / "b.jsonl",
                              "--workers", "0", "-q")  # fmt: skip
    assert code == 0, err
    lines = err.splitlines()
    assert lines[:2] == [*_unknown_label_lines(gt, ["zebra"], "GT-known box"), "<run starts>"]
    end = [x for x in lines if "no prediction uses" in x]
    assert len(end) == 1 and "giraffe" in end[0] and "zebra" not in end[0], err
    assert sum("zebra" in x for x in lines) == 1


def test_bbox_from_maps_gt_warns_only_about_the_maps_images(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trials A3 and A4 from map files: the images the map files name are the inputs."""
    maps = tmp_path / "maps"
    code, _, err = camcli_run("cam", cli_images / "a.jpg", "--out", maps, "-w", cli_ckpt, "-k",
                              "1", "--no-overlay", "--save-maps", "--workers", "0",
                              "-q")  # fmt: skip
    assert code == 0, err
    gt = _gt_of_the_dataset(tmp_path)
    code, _, err = camcli_run("bbox", "--from-maps", maps, "--gt", gt, "--output",
                              tmp_path / "b.jsonl", "-q")  # fmt: skip
    assert code in (0, 1), err
    warned = [x for x in err.splitlines() if "is not one of the model's classes" in x]
    assert len(warned) == 1, err  # like: the labels the map files store ('class d', ...)
    assert warned[0].startswith(f"warning: --gt {gt}: label 'zebra' is not one of the model's")
    assert warned[0].endswith("): its images get no GT-known box")


def test_bbox_gt_class_index_past_the_model_is_no_crash(tmp_path, cli_images, cli_ckpt, camcli_run):
    gt = tmp_path / "gt.csv"
    gt.write_text("path,label,xmin,ymin,xmax,ymax\na.jpg,17,0,0,9,9\n")
    out = tmp_path / "b.jsonl"
    code, _, err = camcli_run("bbox", cli_images / "a.jpg", "-w", cli_ckpt, "--gt", gt,
                              "--output", out, "--workers", "0", "-q")  # fmt: skip
    assert code == 0, err
    assert "IndexError" not in err
    assert "gt_known" not in json.loads(out.read_text())


# --- bbox --from-maps: an unreadable map file --------------------------------------------------


def test_from_maps_error_line_names_the_map_file_once(tmp_path, camcli_run):
    import numpy as np

    maps = tmp_path / "maps"
    maps.mkdir()
    m = np.zeros((1, 20, 30), np.float32)
    m[0, 5:10, 5:15] = 1
    np.savez(maps / "good.npz", cams=m, class_indices=np.array([0]))
    (maps / "bad.npz").write_bytes(b"not a zip")
    out = tmp_path / "b.jsonl"
    code, _, err = camcli_run("bbox", "--from-maps", maps, "--output", out)
    assert code == 1
    bad = maps / "bad.npz"
    assert err.splitlines() == [f"{bad}: cannot read map file (not a .npz (zip) file)"]
    rec = records(out)[0]
    assert rec == {"image": str(bad), "error": "cannot read map file (not a .npz (zip) file)"}


# --- --codec device without a GPU --------------------------------------------------------------


def test_codec_device_on_the_cpu_warning_names_what_the_command_does(
    tmp_path, cli_images, cli_ckpt, camcli_run
):
    """predict and bbox write no overlays: their warning does not mention any."""
    for command, what in (
        ("predict", "JPEGs are decoded"),
        ("bbox", "JPEGs are decoded"),
        ("cam", "JPEGs are decoded and overlays encoded"),
    ):
        out = ("--out", tmp_path / "c") if command == "cam" else ("--output", tmp_path / "o")
        code, _, err = camcli_run(command, cli_images / "a.jpg", "-w", cli_ckpt, "--device",
                                  "cpu", "--codec", "device", *out, "--workers", "0",
                                  "-q")  # fmt: skip
        assert code == 0, err
        assert err.splitlines() == [
            f"warning: --codec device: the device is cpu, so {what} on the CPU in the main "
            "process (slower than --codec cpu's workers)"
        ]


# --- --gt is read before the model loads -------------------------------------------------------


@pytest.mark.parametrize("command", ["bbox", "cam"])
def test_a_bad_gt_file_fails_before_the_model_loads(command, tmp_path, cli_images, camcli_run):
    """The weights named do not exist: had the model been loaded first, that would be the error
    (exit 4). The ground truth's own error comes first, with its exit code (2 unreadable, 3
    missing)."""
    bad = tmp_path / "gt.csv"
    bad.write_text("garbage\n")
    out = ("--out", tmp_path / "c") if command == "cam" else ("--output", tmp_path / "o.jsonl")
    for gt, code_wanted, said in (
        (bad, 2, f"error: --gt {bad}: the CSV header needs an image column"),
        (tmp_path / "absent.csv", 3, f"error: --gt {tmp_path / 'absent.csv'}: no such file"),
    ):
        code, _, err = camcli_run(command, cli_images, "-w", tmp_path / "absent.pt", "--gt", gt,
                                  *out)  # fmt: skip
        assert code == code_wanted, err
        assert len(err.splitlines()) == 1 and err.startswith(said), err


@pytest.mark.parametrize("content", ["random", "truncated"])
def test_train_resume_of_a_damaged_last_pt_is_exit_4_without_torch_advice(
    content, tmp_path, camcli_run
):
    """Trial W5: exit 2 with torch's raw text (and its advice to load with
    weights_only=False); the same file as --weights was already exit 4."""
    import io

    import torch

    from conftest import make_image

    make_image(tmp_path / "imgs" / "a" / "x.jpg", (40, 30), seed=0)
    make_image(tmp_path / "imgs" / "b" / "y.jpg", (40, 30), seed=1)
    out = tmp_path / "run"
    out.mkdir()
    if content == "random":
        data = bytes((i * 97 + 13) % 256 for i in range(3000))
    else:
        buf = io.BytesIO()
        torch.save({"format": "camcli-checkpoint", "w": torch.zeros(1000)}, buf)
        data = buf.getvalue()[:-200]
    (out / "last.pt").write_bytes(data)
    code, _, err = camcli_run("train", tmp_path / "imgs", "--out", out, "--epochs", "1",
                              "--resume")  # fmt: skip
    assert code == 4, err
    assert err.startswith(f"error: {out / 'last.pt'}: not a loadable camcli checkpoint ("), err
    assert err.rstrip().endswith("restore it, or rerun without --resume to start again"), err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_cam_resume_refuses_a_folder_of_another_run(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial W3: --resume with other options (or another model) mixed two runs' records in one
    manifest and rewrote run.json, silently."""
    out = tmp_path / "cams"
    base = ["cam", cli_images, "-w", cli_ckpt, "--out", out, "--workers", "0", "-q"]
    first = camcli_run(*base, "-k", "1")[0]  # 1: cli_images holds a broken image
    assert first in (0, 1)
    manifest = (out / "manifest.jsonl").read_text()
    run_json = (out / "run.json").read_text()
    code, _, err = camcli_run(*base, "-k", "2", "--colormap", "turbo", "--resume")
    assert code == 2
    assert err.startswith(
        f"error: --resume: {out} holds a run made with --top-k 1, this run has --top-k 2; resume "
        "with the options of that run, or give a new --out"
    ), err
    code, _, err = camcli_run(*base, "-k", "1", "--grid", "--resume")
    assert code == 2 and "made without --grid, this run with it;" in err, err
    assert (out / "manifest.jsonl").read_text() == manifest  # nothing touched
    assert (out / "run.json").read_text() == run_json
    assert camcli_run(*base, "-k", "1", "--resume")[0] == first  # the same run resumes


@pytest.mark.parametrize(
    ("first", "second", "said"),
    [
        (("--format", "png"), (), "made with --format png, this run has --format jpg;"),
        (("--no-overlay", "--grid"), ("--grid",), "made with --no-overlay, this run without it;"),
        ((), ("--precision", "bf16"), "made with --precision fp32, this run has --precision bf16;"),
    ],
)
def test_cam_resume_refusal_names_options_as_typed(
    first, second, said, tmp_path, cli_images, cli_ckpt, camcli_run
):
    """Trial A5: the refusal named run.json's field (``--fmt``, ``--overlays``), not the
    option the user types (``--format``, ``--no-overlay``)."""
    out = tmp_path / "cams"
    base = ["cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "--workers", "0", "-q"]
    assert camcli_run(*base, *first)[0] == 0
    code, _, err = camcli_run(*base, *second, "--resume")
    assert code == 2 and said in err, err


def _two_gt_files(tmp_path) -> list:
    """Two ground-truth CSVs of ``a.jpg`` with other labels (other contents)."""
    gts = []
    for name, label in (("gt1.csv", "class a"), ("gt2.csv", "class b")):
        gts.append(tmp_path / name)
        gts[-1].write_text(f"path,label,xmin,ymin,xmax,ymax\na.jpg,{label},0,0,9,9\n")
    return gts


def _gt_shown(gt) -> str:
    """A ``--gt`` file as a refusal names it: its absolute path and digest's first digits."""
    return f"{gt.resolve()} (sha256 {hashlib.sha256(gt.read_bytes()).hexdigest()[:12]})"


def test_records_file_resume_refuses_another_run(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial 12: a finished ``predict -o F`` resumed with another --top-k, and a ``bbox -o F
    --gt A`` resumed with --gt B, kept the first run's records under the second's name. The
    run is now recorded beside F (``.F.run``): both refused, F untouched."""
    preds = tmp_path / "p.jsonl"
    base = ["predict", cli_images / "a.jpg", "-w", cli_ckpt, "-o", preds, "--workers", "0", "-q"]
    assert camcli_run(*base)[0] == 0
    before = preds.read_bytes()
    code, _, err = camcli_run(*base, "--top-k", "3", "--resume")
    assert code == 2 and err.startswith(
        f"error: --resume: {preds} holds records made with --top-k 5, this run has --top-k 3; "
        "resume with the options of that run, or rerun without --resume"
    ), err
    assert preds.read_bytes() == before
    assert camcli_run(*base, "--resume")[0] == 0  # the same run resumes
    gts = _two_gt_files(tmp_path)
    boxes = tmp_path / "b.jsonl"
    base = ["bbox", cli_images / "a.jpg", "-w", cli_ckpt, "-o", boxes, "--workers", "0", "-q"]
    assert camcli_run(*base, "--gt", gts[0])[0] == 0
    code, _, err = camcli_run(*base, "--gt", gts[1], "--resume")
    assert code == 2, err
    assert f"made with --gt {_gt_shown(gts[0])}, this run has --gt {_gt_shown(gts[1])};" in err
    # trial 12b: records written from maps are recorded too; a network run never resumes them
    maps = tmp_path / "cams"
    assert camcli_run("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", maps, "-q",
                      "--save-maps", "--no-overlay")[0] == 0  # fmt: skip
    assert camcli_run("bbox", "--from-maps", maps, "-o", boxes, "-q")[0] == 0
    code, _, err = camcli_run(*base, "--resume")
    assert code == 2 and "made with camcli bbox --from-maps, this run" in err, err


def test_cam_resume_refuses_another_gt(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial D2: --resume with another --gt file (or --gt when the first run had none) was
    accepted: --gt was not in run.json's options. Now run.json records the file's absolute
    path, and the refusal names --gt and both values."""
    gts = _two_gt_files(tmp_path)
    out = tmp_path / "cams"
    base = ["cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out", out, "--workers", "0", "-q"]
    assert camcli_run(*base, "--gt", gts[0])[0] == 0
    info = json.loads((out / "run.json").read_text())
    assert info["options"]["gt"] == str(gts[0].resolve())
    code, _, err = camcli_run(*base, "--gt", gts[1], "--resume")
    assert code == 2 and err.startswith(
        f"error: --resume: {out} holds a run made with --gt {_gt_shown(gts[0])}, this run has "
        f"--gt {_gt_shown(gts[1])}; resume with the options of that run, or give a new --out"
    ), err
    code, _, err = camcli_run(*base, "--resume")
    assert code == 2 and f"made with --gt {gts[0].resolve()}, this run without --gt;" in err
    assert camcli_run(*base, "--gt", gts[0], "--resume")[0] == 0  # the same run resumes
    # a run without --gt, resumed with one
    out2 = tmp_path / "cams2"
    base[base.index(out)] = out2
    assert camcli_run(*base)[0] == 0
    assert json.loads((out2 / "run.json").read_text())["options"]["gt"] is None
    code, _, err = camcli_run(*base, "--gt", gts[0], "--resume")
    assert code == 2 and f"made without --gt, this run has --gt {gts[0].resolve()};" in err
    # an older camcli's run.json records no gt at all: resumed with any --gt
    info = json.loads((out2 / "run.json").read_text())
    del info["options"]["gt"]
    (out2 / "run.json").write_text(json.dumps(info))
    assert camcli_run(*base, "--gt", gts[0], "--resume")[0] == 0


# --- bad option values are usage errors with the help's place (trial B2) ---------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--lr", "0"], "--lr 0: must be a positive number"),
        (["--lr", "nan"], "--lr nan: must be a positive number"),
        (["--lr", "-1e-3"], "--lr -0.001: must be a positive number"),
        (["--head-lr-mult", "0"], "--head-lr-mult 0: must be a positive number"),
        (["--head-lr-mult", "inf"], "--head-lr-mult inf: must be a positive number"),
        (["--weight-decay", "nan"], "--weight-decay nan: must be a number >= 0 (0: no decay)"),
        (["--image-size", "100000"], "--image-size 100000: must be 16..1024"),
        (["--arch-option", "foo"], "--arch-option 'foo': use KEY=VALUE, e.g. width=24"),
        (
            ["--arch-option", "foo=1"],
            "--arch-option: unknown camnet-small option 'foo'; known: width, stages, "
            "downsamplings, blocks",
        ),
        (["--arch-option", "width=1000"], "--arch-option: width must be in 4..256, got 1000"),
        (
            ["--pretrained"],
            "--pretrained: camnet-small has no pretrained weights to start from; "
            "use --no-pretrained",
        ),
    ],
    ids=[
        "lr-0",
        "lr-nan",
        "lr-negative",
        "head-lr-mult-0",
        "head-lr-mult-inf",
        "wd-nan",
        "image-size",
        "arch-no-equals",
        "arch-unknown",
        "arch-range",
        "pretrained",
    ],
)
def test_train_bad_option_value_is_a_usage_error_naming_it(args, line, tmp_path, camcli_run):
    """Trial B2: these ended with the bare message, without "(see 'camcli train -h')", which
    every other usage error has (and `--arch-option foo=1` only once the data was read and the
    network built). DATA does not exist: the option is refused before it is read. Trial E3:
    `--lr 0` was echoed as `0.0`, `--lr nan` said "Input should be greater than or equal to 0"
    and `--head-lr-mult inf` was taken."""
    code, _, err = camcli_run(
        "train", tmp_path / "absent", "-m", "camnet-small", "--out", tmp_path / "run", *args
    )
    assert code == 2, err
    assert err.splitlines() == [f"error: {line} (see 'camcli train -h')"]
    assert not (tmp_path / "run").exists()


def test_train_arch_option_of_a_network_that_takes_none_is_refused(tmp_path, camcli_run):
    """Trial B2: `-m resnet18 --arch-option width=3` trained resnet18 as if it were not given."""
    code, _, err = camcli_run("train", tmp_path / "absent", "-m", "resnet18", "--no-pretrained",
                              "--out", tmp_path / "run", "--arch-option", "width=3")  # fmt: skip
    assert code == 2, err
    assert err.splitlines() == [
        "error: --arch-option width=3: resnet18 takes no architecture options (camnet-small "
        "does: width, stages, downsamplings, blocks); drop it (see 'camcli train -h')"
    ]


def test_cam_unknown_class_is_a_usage_error_naming_it(tmp_path, cli_images, cli_ckpt, camcli_run):
    """Trial B2: `cam --class <unknown>` lacked "(see 'camcli cam -h')"."""
    code, _, err = camcli_run("cam", cli_images / "a.jpg", "-w", cli_ckpt, "--out",
                              tmp_path / "c", "--class", "nosuch", "--workers", "0")  # fmt: skip
    assert code == 2, err
    assert err.splitlines() == [
        "error: --class 'nosuch': not a class index 0..9 or a category name of resnet18 "
        "(see 'camcli cam -h')"
    ]


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("lr", 0.0, "--lr 0: must be a positive number"),
        ("image_size", 100000, "--image-size 100000: must be 16..1024"),
    ],
)
def test_train_resume_bad_saved_option_is_a_checkpoint_error_not_usage(
    key, value, why, tmp_path, camcli_run
):
    """Trial B2's other side: the same bounds on an option SAVED in last.pt are no usage error
    of the command line: exit 4 naming the checkpoint's field, without the help's place."""
    import torch

    ck = torch.load(Path(__file__).parents[1] / "src/camcli/assets/shapes.pt", weights_only=True)
    ck["train_options"][key] = value
    (tmp_path / "run").mkdir()
    torch.save(ck, tmp_path / "run" / "last.pt")
    code, _, err = camcli_run("train", tmp_path / "absent", "--out", tmp_path / "run", "--resume")
    assert code == 4, err
    last = tmp_path / "run" / "last.pt"
    assert err.splitlines() == [
        f"error: {last}: checkpoint field 'train_options' cannot be used ({why})"
    ]
