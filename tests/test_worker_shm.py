"""A DataLoader worker that cannot get shared memory for a batch (a full ``/dev/shm``, a
file-size limit) ends the run with one error line and exit 5: it used to print the worker's
queue-feeder traceback and leave the main process waiting for the batch forever (trial W1;
siblings: predict and cam, which also passes kept images)."""

from __future__ import annotations

import resource
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def _limit_file_size():
    # 50 KB: smaller than one batch of 224 x 224 inputs (torch's shared memory is a file)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


@pytest.mark.parametrize("command", ["predict", "cam"])
def test_no_shared_memory_for_a_batch_is_one_error_not_a_hang(tmp_path, command):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(imgs / f"im{i}.png")
    args = [command, str(imgs), "--workers", "1", "-b", "2", "-q"]
    if command == "cam":
        args += ["-o", str(tmp_path / "cams")]
    p = subprocess.run(
        [sys.executable, "-m", "camcli", *args], capture_output=True, text=True, timeout=180,
        preexec_fn=_limit_file_size,
    )  # fmt: skip
    assert p.returncode == 5, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == [
        "error: the decoder workers cannot pass images through shared memory (/dev/shm full, "
        "or a file-size limit such as ulimit -f): free /dev/shm (Docker: --shm-size 1g), raise "
        "the limit, or run with --workers 0"
    ], p.stderr
    assert p.stdout == ""
    if command == "cam":  # trial (session 11) S4: the folder says what run it was, unfinished
        import json

        info = json.loads((tmp_path / "cams" / "run.json").read_text())
        assert info["failed"] is True and info["command"] == "cam", info


def test_a_full_dev_shm_is_the_same_clean_error(monkeypatch, tmp_path):
    """Trial (session 11) S4: with /dev/shm full (a small tmpfs) torch says "unable to
    allocate shared memory(shm) for file ...: No space left on device", not the "unable to
    resize file" of a file-size limit: the run ended with exit 1 and torch's wrapped error."""
    import torch

    from camcli.data import loader
    from camcli.data.inputs import InputItem
    from camcli.errors import WriteError
    from camcli.models.registry import Preprocess

    class FullShm:
        def __init__(self, *a, **kw):
            pass

        def __iter__(self):
            raise RuntimeError(
                "Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback: ...\n"
                "RuntimeError: unable to allocate shared memory(shm) for file </torch_1_2>: "
                "No space left on device (28)"
            )

    monkeypatch.setattr(torch.utils.data, "DataLoader", FullShm)
    items = [InputItem(0, str(tmp_path / "a.png"), "a")]
    with pytest.raises(WriteError, match="shared memory"):
        list(loader.iter_batches(items, Preprocess(input_size=16), batch_size=1, workers=1))
