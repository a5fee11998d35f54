"""Shared fixtures. Each block is self-contained; fixture names say which tests they serve."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

# A test run started in the background without job control (`make test &`, nohup) inherits
# SIGINT ignored, and so would every camcli it starts: the Ctrl-C tests then saw a run finish
# with exit 0. Restored here; the processes the tests start get the default disposition.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Test the tree these tests live in, also from another checkout or worktree that shares a venv
# (whose editable install points elsewhere); subprocesses (python -m camcli) inherit it.
_SRC = str(Path(__file__).resolve().parents[1] / "src")
if sys.path[0] != _SRC:
    sys.path.insert(0, _SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SRC, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _SRC]]
)

# --------------------------------------------------------------------------------------------
# CLI acceptance tests (test_cam_cli.py, test_bbox_cli.py): a tiny checkpoint, generated images
# --------------------------------------------------------------------------------------------

CLI_CATEGORIES = [f"class {c}" for c in "abcdefghij"]
CLI_INPUT_SIZE = 64

# (relative path, (height, width)) of the generated images; odd, non-square sizes.
CLI_IMAGES = [
    ("a.jpg", (53, 37)),
    ("b.png", (80, 120)),
    ("nested/c.jpg", (41, 90)),
    ("nested/deeper/d.png", (64, 33)),
    ("nested/e.jpeg", (29, 70)),
]
CLI_CORRUPT = "nested/broken.jpg"


def make_image(path: Path, hw: tuple[int, int], seed: int) -> None:
    """Write a smooth random RGB image of size ``hw`` (H, W) as JPEG or PNG by extension."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, size=3)
    img = base + 80 * np.sin(xx[..., None] / (3 + seed) + yy[..., None] / 5.0 + np.arange(3))
    img = img + rng.normal(0, 10, size=(h, w, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def make_image_tree(root: Path, images=CLI_IMAGES, corrupt: str | None = CLI_CORRUPT) -> Path:
    for i, (rel, hw) in enumerate(images):
        make_image(root / rel, hw, seed=i)
    if corrupt:
        (root / corrupt).parent.mkdir(parents=True, exist_ok=True)
        (root / corrupt).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="session")
def cli_ckpt(tmp_path_factory) -> Path:
    """A camcli checkpoint of a random resnet18 with 10 classes and 64 px input."""
    import torch

    from camcli.models.load import random_model
    from camcli.models.registry import Preprocess

    torch.manual_seed(0)
    m = random_model("resnet18", num_classes=len(CLI_CATEGORIES))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(
        {
            "format": "camcli-checkpoint",
            "model": "resnet18",
            "state_dict": m.state_dict(),
            "categories": CLI_CATEGORIES,
            "preprocess": Preprocess(input_size=CLI_INPUT_SIZE).to_dict(),
            "pool": "avg",
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def cli_model(cli_ckpt):
    """The checkpoint loaded as a GapModel (CPU, eval), for reference computations."""
    from camcli.models.load import load_model

    return load_model(None, str(cli_ckpt)).eval()


@pytest.fixture(scope="session")
def cli_images(tmp_path_factory) -> Path:
    """A read-only folder of CLI_IMAGES plus one corrupt file. Do not write into it."""
    return make_image_tree(tmp_path_factory.mktemp("images") / "imgs")


@pytest.fixture(scope="module")
def cli_one_thread():
    """torch on one intra-op thread for a module: several times faster on a small, shared CPU,
    and the same float maths as a ``python -m camcli`` subprocess run with OMP_NUM_THREADS=1."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def camcli_run(capsys):
    """Run ``camcli.cli.main(argv)`` in-process -> (exit code, stdout, stderr)."""
    from camcli.cli import main

    def run(*argv) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:  # pragma: no cover - main always exits
            code = 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


def subprocess_env() -> dict:
    """Environment for ``python -m camcli`` with this checkout's src on PYTHONPATH."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


PYTHON = sys.executable


def full_maps(path) -> np.ndarray:
    """float32 [k, H, W]: the maps of a map file on the original image (v1: as stored; v2:
    rebuilt by camcli's reader from the feature-resolution maps and their geometry)."""
    from camcli.data.mapfiles import read_map_file

    mf = read_map_file(path)
    return mf.cams if mf.v2 is None else mf.v2.stack()


def run_main(*argv) -> int:
    """``camcli.cli.main`` in-process -> exit code (decoding in-process: --workers 0 unless
    given, or reading --from-maps)."""
    from camcli.cli import main

    argv = [str(a) for a in argv]
    if "--from-maps" not in argv and "--workers" not in argv:
        argv += ["--workers", "0"]
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("main() returned without SystemExit")  # pragma: no cover


def records(path) -> list[dict]:
    """The JSON Lines records of a file (every line must be one: camcli writes no blanks)."""
    import json
    from pathlib import Path

    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def snapshot(base, skip=None) -> dict[str, tuple]:
    """Every entry under ``base`` (links not followed) except ``skip``: type, size, mtime."""
    import os
    from pathlib import Path

    snap = {}
    for dirpath, dirnames, files in os.walk(base):
        if skip is not None and Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for name in dirnames + files:
            p = Path(dirpath, name)
            if p == skip:
                continue
            st = os.lstat(p)
            snap[str(p)] = (st.st_mode, st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return snap
