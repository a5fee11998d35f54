"""A kept image is decoded in the DataLoader worker straight into shared memory (issue 17: the
worker's copy to shared memory was a second image-sized block, 0.5 GB at 13000 x 13000)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camcli.data import loader
from camcli.data.codec import decode_image
from camcli.data.inputs import InputItem
from camcli.models.registry import Preprocess


@pytest.fixture
def as_worker(monkeypatch):
    monkeypatch.setattr(loader, "in_worker", lambda: True)


def _save(tmp_path, name, arr, **kw):
    path = tmp_path / name
    Image.fromarray(arr).save(path, **kw)
    return InputItem(0, str(path), name)


@pytest.mark.parametrize("kind", ["jpeg", "png_rgba", "grey16"])
def test_kept_image_is_decoded_into_shared_memory(tmp_path, as_worker, monkeypatch, kind):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    if kind == "jpeg":
        item = _save(tmp_path, "a.jpg", rgb, quality=95)
    elif kind == "png_rgba":
        item = _save(tmp_path, "a.png", np.dstack([rgb, rgb[..., 0]]))
    else:
        item = _save(tmp_path, "a.png", rgb[..., 0].astype(np.uint16) * 257)
    want = decode_image(item.path)  # numpy's memory, the reference
    ds = loader.ImageDataset([item], Preprocess(input_size=16), keep_image=True)
    s = ds[0]
    assert s.error is None
    assert s.image.is_shared()  # already shared: _to_shared_memory copies nothing
    np.testing.assert_array_equal(s.image.permute(1, 2, 0).numpy(), want)
    copies = []
    monkeypatch.setattr(torch.Tensor, "share_memory_", lambda t: copies.append(t) or t)
    loader._to_shared_memory(None, [s])
    assert copies == []


def test_not_kept_or_not_a_worker_uses_plain_memory(tmp_path, monkeypatch):
    item = _save(tmp_path, "a.jpg", np.zeros((8, 8, 3), np.uint8))
    s = loader.ImageDataset([item], Preprocess(input_size=8), keep_image=True)[0]
    assert not s.image.is_shared()  # the main process (--workers 0): no shared memory
    monkeypatch.setattr(loader, "in_worker", lambda: True)
    s = loader.ImageDataset([item], Preprocess(input_size=8), keep_image=False)[0]
    assert s.image is None
