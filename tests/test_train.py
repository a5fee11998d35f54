"""camcli train: data layout, sampler, schedules, loop, checkpoints, resume, CLI, DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from camcli.data import synthetic
from camcli.errors import NonFiniteError, TrainingError
from camcli.models import hub
from camcli.models.load import build_model, entry_for, load_model
from camcli.models.registry import Preprocess
from camcli.train import initial, run
from camcli.train.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint
from camcli.train.data import (
    EpochSampler,
    FolderImages,
    make_loader,
    scan_folders,
    train_resize_size,
)
from camcli.train.initial import initial_model
from camcli.train.loop import evaluate, fit
from camcli.train.optim import lr_factor, param_groups
from camcli.train.options import TrainOptions, resolve_options
from camcli.train.run import train_folder

TINY = {"width": 4, "stages": 2, "downsamplings": 2, "blocks": 1}
# the same network as command-line options of `camcli train`
TINY_ARGS = [a for k, v in TINY.items() for a in ("--arch-option", f"{k}={v}")]
SHAPES3 = ("circle", "square", "cross")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x (12 train + 4 val) synthetic 32 px images, train/ and val/ layout."""
    root = tmp_path_factory.mktemp("shapes")
    return synthetic.generate(
        root, shapes=SHAPES3, train_per_class=12, val_per_class=4, size=32, seed=3
    )


def _opts(**kw) -> TrainOptions:
    base = dict(
        model="camnet-small",
        epochs=2,
        batch_size=8,
        image_size=16,
        workers=0,
        seed=0,
        arch_options=dict(TINY),
    )
    base.update(kw)
    return TrainOptions(**base)


class Collect:
    """A reporter that remembers what it was told."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.records: list[dict] = []
        self.steps = 0

    def epoch_start(self, epoch, epochs, steps):
        pass

    def step(self, loss):
        self.steps += 1

    def epoch_end(self, record):
        self.records.append(record)

    def info(self, text):
        self.infos.append(text)

    def warn(self, text):
        self.warnings.append(text)


# ------------------------------------------------------------------------------------ data


def _touch_images(root: Path, layout: dict[str, int]) -> None:
    from PIL import Image

    for cls, n in layout.items():
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(d / f"{i}.png")


def test_scan_flat_layout_split_is_per_class_and_seeded(tmp_path):
    _touch_images(tmp_path, {"b_cls": 10, "a_cls": 5, "c_cls": 1})
    fd = scan_folders(tmp_path, val_split=0.2, seed=1)
    assert fd.classes == ["a_cls", "b_cls", "c_cls"]
    per_val = [sum(1 for _, c in fd.val if c == i) for i in range(3)]
    assert per_val == [1, 2, 0]  # round(0.2 * 5) = 1, round(0.2 * 10) = 2, a lone image stays
    assert len(fd.train) + len(fd.val) == 16
    assert not {p for p, _ in fd.train} & {p for p, _ in fd.val}
    again = scan_folders(tmp_path, val_split=0.2, seed=1)
    assert again.val == fd.val
    other = scan_folders(tmp_path, val_split=0.2, seed=2)
    assert other.val != fd.val


def test_scan_train_val_layout_and_errors(tmp_path):
    _touch_images(tmp_path / "train", {"x": 3, "y": 2})
    _touch_images(tmp_path / "val", {"y": 1})
    fd = scan_folders(tmp_path)
    assert fd.classes == ["x", "y"]
    assert [c for _, c in fd.val] == [1] and len(fd.train) == 5
    assert fd.val_source == str(tmp_path / "val")
    _touch_images(tmp_path / "val", {"z": 1})
    with pytest.raises(TrainingError, match="is not a training class"):
        scan_folders(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(TrainingError, match="holds no images"):
        scan_folders(tmp_path / "train")
    with pytest.raises(TrainingError, match="not a folder"):
        scan_folders(tmp_path / "missing")


def test_epoch_sampler_order_and_shards():
    s = EpochSampler(10, shuffle=True, seed=5)
    s.set_epoch(2)
    order = [i for i, e in s]
    assert sorted(order) == list(range(10)) and all(e == 2 for _, e in s)
    g = torch.Generator().manual_seed(5 * 100_003 + 2)
    assert order == torch.randperm(10, generator=g).tolist()
    shards = [EpochSampler(10, shuffle=True, seed=5, rank=r, world=3) for r in range(3)]
    for sh in shards:
        sh.set_epoch(2)
    parts = [[i for i, _ in sh] for sh in shards]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded by wrapping around
    assert set().union(*map(set, parts)) == set(range(10))
    ev = [[i for i, _ in EpochSampler(10, shuffle=False, rank=r, world=3)] for r in range(3)]
    assert ev == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]  # evaluation: each image once


def test_augmentation_is_a_function_of_seed_epoch_index(shapes):
    fd = scan_folders(shapes)
    pre = Preprocess(input_size=16)
    ds = FolderImages(fd.train, pre, train=True, seed=0)
    a, la, _ = ds[(3, 1)]
    b, _, _ = ds[(3, 1)]
    c, _, _ = ds[(3, 2)]
    assert a.dtype == torch.uint8 and tuple(a.shape) == (3, 16, 16)
    assert torch.equal(a, b) and la == fd.train[3][1]
    assert train_resize_size(16) == 18 and train_resize_size(224) == 256
    ev = FolderImages(fd.train, pre, train=False)
    x, _, _ = ev[(3, 0)]
    from camcli.data.codec import decode_image
    from camcli.data.loader import preprocess_uint8

    ref = preprocess_uint8(torch.from_numpy(decode_image(fd.train[3][0])).permute(2, 0, 1), pre)
    assert torch.equal(x, ref)
    assert not torch.equal(a, c) or not torch.equal(a, x)


def test_lr_schedules_exact():
    o = _opts(epochs=6, schedule="step", warmup_epochs=0.0)
    f = [lr_factor(s, o=o, steps_per_epoch=10) for s in (0, 19, 20, 39, 40, 59)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    o = _opts(epochs=2, schedule="cosine", warmup_epochs=0.5)
    assert lr_factor(0, o=o, steps_per_epoch=10) == pytest.approx(1 / 6)
    assert lr_factor(4, o=o, steps_per_epoch=10) == pytest.approx(5 / 6)
    assert lr_factor(5, o=o, steps_per_epoch=10) == pytest.approx(1.0)
    assert lr_factor(10, o=o, steps_per_epoch=10) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 5 / 15))
    )


def test_schedule_help_and_readme_document_the_warm_up():
    """Trial B4: `--schedule cosine` warmed up linearly for one epoch from scratch, and neither
    its help nor the README said so. The documented defaults are the recipes' and the
    documented ramp (equal steps from lr / (n + 1) to lr) is lr_factor's."""
    import typer.main

    from camcli.cli import app
    from camcli.train.options import RECIPES

    cmd = typer.main.get_command(app).commands["train"]
    helps = {p.name: " ".join(p.help.split()) for p in cmd.params}
    assert "Either starts with --warmup-epochs of linear warm-up (default: 1 from scratch, " \
        "else 0)" in helps["schedule"]  # fmt: skip
    assert helps["warmup_epochs"].startswith("Linear warm-up before --schedule")
    wh = helps["warmup_epochs"]
    assert "default: 1 from scratch, 0 fine-tuning and with --freeze-backbone" in wh
    assert {k: r["warmup_epochs"] for k, r in RECIPES.items()} == {
        "scratch": 1.0, "finetune": 0.0, "linear-probe": 0.0}  # fmt: skip
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "`--warmup-epochs W` (either schedule starts with a linear warm-up" in readme
    assert "from `lr / (n + 1)` to `--lr`; fractions allowed; default 1 from scratch, 0 " \
        "fine-tuning and with `--freeze-backbone`)" in readme  # fmt: skip
    o = _opts(epochs=3, schedule="cosine", warmup_epochs=1.0)
    ramp = [lr_factor(s, o=o, steps_per_epoch=4) for s in range(5)]
    assert ramp == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])


def test_recipes():
    scratch = resolve_options(_opts(epochs=None, batch_size=None), entry_for("camnet-small"))
    assert (scratch.recipe, scratch.optimizer, scratch.lr, scratch.epochs) == (
        "scratch",
        "adamw",
        2e-3,
        30,
    )
    ft = resolve_options(TrainOptions(model="vgg-gap"), entry_for("vgg-gap"))
    assert (ft.recipe, ft.optimizer, ft.lr, ft.weight_decay, ft.head_lr_mult, ft.batch_size) == (
        "finetune",
        "sgd",
        1e-3,
        5e-4,
        10.0,
        64,
    )
    assert ft.pretrained and ft.image_size == 224 and ft.schedule == "step"
    gmp = resolve_options(TrainOptions(model="vgg-gap", pool="gmp"), entry_for("vgg-gap"))
    assert gmp.pool == "max"
    with pytest.raises(TrainingError, match="no pretrained weights"):
        resolve_options(_opts(pretrained=True), entry_for("camnet-small"))
    with pytest.raises(TrainingError, match="freeze-backbone"):
        resolve_options(_opts(freeze_backbone=True), entry_for("camnet-small"))


# ------------------------------------------------------------------------------------ loop


def test_a_few_steps_lower_the_loss(shapes):
    fd = scan_folders(shapes)
    o = resolve_options(_opts(epochs=3, lr=5e-3, warmup_epochs=0.0), entry_for("camnet-small"))
    torch.manual_seed(0)
    model, _ = initial_model(entry_for("camnet-small"), o, fd.classes)
    ds = FolderImages(fd.train, model.preprocess, train=True, seed=0)
    loader = make_loader(ds, batch_size=8, shuffle=True, seed=0, workers=0)
    ev = make_loader(
        FolderImages(fd.train, model.preprocess, train=False),
        batch_size=36,
        shuffle=False,
        seed=0,
        workers=0,
    )
    dev = torch.device("cpu")
    before = evaluate(model, ev, preprocess=model.preprocess, device=dev)
    res = fit(model, loader, None, options=o, device=dev)
    after = evaluate(res.model, ev, preprocess=model.preprocess, device=dev)
    assert before["images"] == after["images"] == 36
    assert after["loss"] < before["loss"] - 0.05
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_checkpoint_round_trips_through_predict(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    rep = Collect()
    res = train_folder(shapes, out, _opts(epochs=1), device="cpu", reporter=rep)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    ck = hub.load_file(out / "best.pt").checkpoint  # weights_only loading
    assert ck["format"] == "camcli-checkpoint" and ck["model"] == "camnet-small"
    assert ck["categories"] == sorted(SHAPES3) and ck["pool"] == "avg"
    assert ck["arch_options"] == TINY and ck["preprocess"]["input_size"] == 16
    assert ck["train_options"]["recipe"] == "scratch" and ck["epoch"] == 1
    assert "training_state" not in ck
    assert "training_state" in torch.load(out / "last.pt", weights_only=True)
    rec = json.loads((out / "metrics.jsonl").read_text())
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"):
        assert rec[key] is not None
    assert rec["val_images"] == 12 and rec["train_images"] == 32  # 36 images, drop_last at 8

    imgs = sorted((shapes / "val").rglob("*.png"))
    code, stdout, err = _cli(
        [
            "predict",
            *map(str, imgs),
            "--weights",
            str(out / "best.pt"),
            "--workers",
            "0",
            "--device",
            "cpu",
            "--output",
            "-",
            "--top-k",
            "3",
        ],
        capsys,
    )
    assert code == 0, err
    lines = [json.loads(x) for x in stdout.splitlines()]
    assert len(lines) == len(imgs)
    from camcli.data.codec import decode_image
    from camcli.data.loader import normalize_batch, preprocess_uint8

    m = res.model.cpu().eval()
    x = torch.stack(
        [
            preprocess_uint8(torch.from_numpy(decode_image(str(p))).permute(2, 0, 1), m.preprocess)
            for p in imgs
        ]
    )
    with torch.no_grad():
        probs = torch.softmax(m(normalize_batch(x, m.preprocess)), 1)
    for rec, p in zip(lines, probs):
        idx = [q["class_index"] for q in rec["predictions"]]
        assert idx == p.argsort(descending=True).tolist()
        got = [q["score"] for q in rec["predictions"]]
        np.testing.assert_allclose(got, p[idx].numpy(), atol=2e-6)
        assert rec["predictions"][0]["label"] == sorted(SHAPES3)[idx[0]]


class Interrupt(Exception):
    pass


def test_killed_mid_epoch_then_resumed_matches_uninterrupted_run(shapes, tmp_path):
    full = train_folder(shapes, tmp_path / "full", _opts(epochs=3), device="cpu")

    def kill(epoch, step):
        if epoch == 1 and step == 2:
            raise Interrupt

    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train_folder(shapes, run, _opts(epochs=3), device="cpu", step_callback=kill)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    with pytest.raises(TrainingError, match="already holds a run"):
        train_folder(shapes, run, _opts(epochs=3), device="cpu")
    res = train_folder(shapes, run, TrainOptions(model=""), resume=True, device="cpu")
    assert res.epochs_done == 3
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 3
    for k, v in load_checkpoint(tmp_path / "full" / "last.pt")["state_dict"].items():
        assert torch.equal(v, last["state_dict"][k]), k
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == res.best["epoch"]
    assert best["metrics"]["val_top1"] == max(r["val_top1"] for r in recs)
    m = load_model(None, str(run / "best.pt"))
    assert m.name == "camnet-small" and m.categories == sorted(SHAPES3)
    assert full.best == res.best
    # Resuming a finished run does nothing.
    again = train_folder(shapes, run, TrainOptions(model=""), resume=True, device="cpu")
    assert again.epochs_done == 3


class _Loader:
    """In-memory batches; epoch 2 feeds NaN to provoke a non-finite loss."""

    def __init__(self, x, y, nan_from_epoch):
        self.x, self.y, self.nan_from, self.epoch = x, y, nan_from_epoch, 0

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return 2

    def __iter__(self):
        for i in range(2):
            xb = self.x[i * 4 : (i + 1) * 4].clone()
            if self.epoch >= self.nan_from:
                xb[:] = float("nan")
            yield xb, self.y[i * 4 : (i + 1) * 4]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    o = resolve_options(_opts(epochs=3), entry_for("camnet-small"))
    model = build_model(
        entry_for("camnet-small"),
        None,
        num_classes=2,
        categories=["a", "b"],
        preprocess=Preprocess(input_size=16),
        arch_options=TINY,
    )
    loader = _Loader(torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4), nan_from_epoch=1)
    with pytest.raises(NonFiniteError) as ei:
        fit(model, loader, None, options=o, device=torch.device("cpu"), out_dir=tmp_path)
    assert isinstance(ei.value, TrainingError) and ei.value.exit_code == 1
    msg = str(ei.value)
    assert "non-finite loss" in msg and "epoch 2, step 1" in msg and "keeps epoch 1" in msg
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v.float()).all() for v in ck["state_dict"].values())


def test_bad_image_warned_once_and_run_goes_on(shapes, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    bad = data / "train" / "circle" / "zz_broken.png"
    bad.write_bytes(b"not an image at all")
    rep = Collect()
    res = train_folder(data, tmp_path / "run", _opts(epochs=2), device="cpu", reporter=rep)
    assert res.epochs_done == 2
    hits = [w for w in rep.warnings if "zz_broken.png" in w]
    assert len(hits) == 1 and "not an image file" in hits[0]


def test_linear_probe_trains_only_the_classifier(shapes, tmp_path, monkeypatch):
    torch.manual_seed(1)
    donor = build_model(
        entry_for("camnet-small"),
        None,
        num_classes=5,
        arch_options=TINY,
        preprocess=Preprocess(input_size=16),
    )
    ck = make_checkpoint(donor, options=_opts(), epoch=1, metrics=None, history=[], best=None)
    from dataclasses import replace

    entry = replace(entry_for("camnet-small"), url="package:fake.pt", sha256=None)
    monkeypatch.setattr(run, "entry_for", lambda name: entry)
    monkeypatch.setattr(initial, "_load_state", lambda url, sha, offline: (ck["state_dict"], ck))
    rep = Collect()
    res = train_folder(
        shapes,
        tmp_path / "probe",
        _opts(freeze_backbone=True, epochs=3, arch_options={}),
        device="cpu",
        reporter=rep,
    )
    assert res.options.recipe == "linear-probe"
    for k, v in donor.trunk.state_dict().items():
        assert torch.equal(v, res.model.trunk.state_dict()[k]), k
    assert res.model.fc.out_features == 3
    # 36 cached feature rows in batches of 8, drop_last
    assert rep.records[0]["train_images"] == 32
    saved = load_checkpoint(tmp_path / "probe" / "last.pt")
    assert saved["arch_options"] == TINY and saved["epoch"] == 3
    assert torch.equal(saved["state_dict"]["fc.weight"], res.model.fc.weight.detach())


# ------------------------------------------------------------------------------------ CLI


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the console entry point; -> (exit code, stdout, stderr)."""
    from camcli.cli import main

    with pytest.raises(SystemExit) as ei:
        main(argv)
    cap = capsys.readouterr()
    return int(ei.value.code or 0), cap.out, cap.err


def test_cli_train_and_errors(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        str(shapes),
        "--model",
        "camnet-small",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--image-size",
        "16",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        *TINY_ARGS,
        "--pool",
        "gmp",
    ]
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    assert "epoch 1/1" in err and "train loss" in err and "pool GMP" in err
    ck = load_checkpoint(out / "best.pt")
    assert ck["pool"] == "max" and ck["arch_options"] == TINY
    code, _, err = _cli(args, capsys)
    assert code == 2 and "already holds a run" in err
    code, _, err = _cli(args[:6] + ["--resume", "--lr", "0.5", "--epochs", "2"], capsys)
    assert code == 2 and err.splitlines() == [  # the optimizer state it resumes sets the lr
        f"error: --lr 0.5: a resumed run keeps its learning rate (0.002, set by the optimizer "
        f"and schedule state {out / 'last.pt'} resumes); drop --lr to continue it (see 'camcli "
        "train -h')"
    ]
    code, _, err = _cli(args[:6] + ["--resume", "--lr", "0.002", "--epochs", "2"], capsys)
    assert code == 0 and "epoch 2/2" in err  # the same lr
    assert "ignoring" not in err  # --model as the checkpoint's: nothing is ignored (trial W8)
    code, _, err = _cli(args[:6] + ["--resume", "--image-size", "32", "--epochs", "3"], capsys)
    assert code == 0 and "epoch 3/3" in err
    assert "--resume continues with the checkpoint's options; ignoring --image-size\n" in err
    # a folder never trained: the error alone, no "ignoring --model" before it
    never = tmp_path / "x"
    code, _, err = _cli(["train", str(shapes), "--out", str(never), "-m", "camnet-small",
                         "--resume"], capsys)  # fmt: skip
    assert code == 2 and err.splitlines() == [
        f"error: --resume: {never / 'last.pt'} not found; nothing to resume (no epoch of a run "
        f"in {never} was saved): rerun without --resume to start it"
    ]
    code, _, err = _cli(["train", str(shapes), "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "--model is required" in err
    code, _, err = _cli(
        [
            "train",
            str(shapes),
            "-m",
            "camnet-small",
            "--out",
            str(tmp_path / "z"),
            "--arch-option",
            "depth=3",
        ],
        capsys,
    )
    assert code == 2 and "unknown camnet-small option 'depth'" in err


def test_cli_non_finite_loss_exits_1_with_the_loop_message(shapes, tmp_path, capsys, monkeypatch):
    from camcli.train import loop

    # NaN inputs: the first step's loss is non-finite
    monkeypatch.setattr(loop, "prepare_inputs", lambda x, pre, dev: torch.full(x.shape, math.nan))
    args = ["train", str(shapes), "-m", "camnet-small", "--out", str(tmp_path / "nan"),
            "--epochs", "1", "--image-size", "16", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", *TINY_ARGS]  # fmt: skip
    code, _, err = _cli(args, capsys)
    assert code == 1, err
    assert (
        "non-finite loss (nan) at epoch 1, step 1: training stopped; lower --lr (now 0.002); "
        "no good checkpoint exists (none was written)"
    ) in err


def test_format_record():
    from camcli.cli.train_progress import format_record

    line = format_record(
        {
            "epoch": 2,
            "epochs": 5,
            "train_loss": 1.5,
            "train_top1": 0.25,
            "val_loss": 1.25,
            "val_top1": 0.5,
            "val_top5": 1.0,
            "lr": 0.001,
            "images_per_s": 123.4,
            "epoch_seconds": 2.0,
            "best": True,
        }
    )
    assert line == (
        "epoch 2/5  train loss 1.5000 top-1 25.00%  val loss 1.2500 top-1 50.00% "
        "top-5 100.00%  lr 0.001  123 img/s  2.0 s  *best"
    )


# ------------------------------------------------------------------------------------ DDP


def _torchrun() -> str | None:
    cand = Path(sys.executable).with_name("torchrun")
    return str(cand) if cand.exists() else shutil.which("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(_torchrun() is None, reason="torchrun not found")
def test_two_process_gloo_run_writes_one_checkpoint(shapes, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(run.__file__).parents[2])}
    cmd = [
        _torchrun(),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "camcli",
        "train",
        str(shapes),
        "--model",
        "camnet-small",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        *TINY_ARGS,
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(x.name for x in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    # 36 images over 2 ranks -> 18 each, batches of 4 with drop_last -> 16 per rank
    assert recs[0]["train_images"] == 32 and recs[0]["val_images"] == 12
    assert "gloo" in p.stderr and "x 2 processes" in p.stderr
    m = load_model(None, str(out / "best.pt"))
    assert m.categories == sorted(SHAPES3)


# ------------------------------------------------------------------------------ model set-up


def test_paper_googlenet_finetune_setup_round_trips(monkeypatch):
    import torchvision

    from camcli.models.gap import TransformInput

    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    state = tv.state_dict()
    monkeypatch.setattr(initial, "_load_state", lambda url, sha, offline: (state, None))
    entry = entry_for("googlenet-gap")
    o = resolve_options(TrainOptions(model="googlenet-gap", image_size=64), entry)
    torch.manual_seed(0)
    model, prefixes = initial_model(entry, o, ["a", "b", "c"])
    assert o.arch_options == {"transform_input": True}
    n = len(model.trunk)
    assert prefixes == [f"trunk.{n - 2}.", f"trunk.{n - 1}.", "fc."]
    assert isinstance(model.trunk[0], TransformInput)
    assert torch.equal(model.trunk[1].conv.weight, state["conv1.conv.weight"])
    lrs = {g["name"]: g["lr"] for g in param_groups(model, prefixes, 1e-3, 10.0, 5e-4)}
    assert lrs == pytest.approx(
        {
            "pretrained-decay": 1e-3,
            "pretrained-no_decay": 1e-3,
            "new-decay": 1e-2,
            "new-no_decay": 1e-2,
        }
    )
    ck = make_checkpoint(model, options=o, epoch=1, metrics=None, history=[], best=None)
    again = model_from_checkpoint(ck)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model.eval()(x))


def test_torchvision_finetune_replaces_the_classifier(monkeypatch):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(initial, "_load_state", lambda url, sha, offline: (state, None))
    entry = entry_for("resnet18")
    o = resolve_options(TrainOptions(model="resnet18", image_size=32, pool="gmp"), entry)
    model, prefixes = initial_model(entry, o, ["x", "y"])
    assert prefixes == ["fc."] and model.fc.out_features == 2 and model.pool == "max"
    assert torch.equal(model.trunk[0].weight, state["conv1.weight"])
    assert model.preprocess.input_size == 32 and model.categories == ["x", "y"]
