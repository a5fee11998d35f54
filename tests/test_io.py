"""Input discovery and decoding: files, folders, stdin, odd names, odd images."""

from __future__ import annotations

import io as _io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from camcli.data import codec, inputs, loader


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _keys(items) -> list[str]:
    return [it.key for it in items]


# --- discover -------------------------------------------------------------------------


def test_discover_nested_sorted_recursive_filtered(tmp_path):
    root = tmp_path / "root"
    for rel in ["b/x.jpg", "a/y.PNG", "a/z.txt", "c.JPEG", "a/sub/w.webp", "a/sub/noext", "d.Tif"]:
        _touch(root / rel)
    items = inputs.discover([str(root)])
    rels = [Path(it.path).relative_to(root).as_posix() for it in items]
    assert rels == ["a/sub/w.webp", "a/y.PNG", "b/x.jpg", "c.JPEG", "d.Tif"]
    assert _keys(items) == ["a/sub/w", "a/y", "b/x", "c", "d"]
    assert [it.index for it in items] == list(range(5))


def test_discover_files_keep_argument_order_and_missing_files(tmp_path):
    f1, f2 = _touch(tmp_path / "z.png"), _touch(tmp_path / "sub" / "a.jpg")
    items = inputs.discover([str(f1), str(tmp_path / "missing.jpg"), str(f2)])
    assert [it.path for it in items] == [str(f1), str(tmp_path / "missing.jpg"), str(f2)]
    assert _keys(items) == ["z", "missing", "a"]


def test_key_collisions_same_folder_and_two_roots(tmp_path):
    _touch(tmp_path / "r1" / "a.jpg")
    _touch(tmp_path / "r1" / "a.png")
    _touch(tmp_path / "r1" / "b.jpg")
    _touch(tmp_path / "r2" / "b.jpg")
    items = inputs.discover([str(tmp_path / "r1"), str(tmp_path / "r2")])
    assert _keys(items) == ["a_jpg", "a_png", "b_jpg", "b_jpg_2"]
    # a generated key never steals a real one: a_jpg.png exists too
    _touch(tmp_path / "r3" / "a.jpg")
    _touch(tmp_path / "r3" / "a.png")
    _touch(tmp_path / "r3" / "a_jpg.png")
    keys = _keys(inputs.discover([str(tmp_path / "r3")]))
    assert len(set(keys)) == 3 and keys == ["a_jpg", "a_png", "a_jpg_2"]


def test_stdin_paths(tmp_path):
    lines = ["/data/one.jpg\n", "\n", "rel dir/two words.png\r\n", "   \n", "/other/one.jpg"]
    items = inputs.discover(["-"], stdin=iter(lines))
    assert [it.path for it in items] == ["/data/one.jpg", "rel dir/two words.png", "/other/one.jpg"]
    assert _keys(items) == ["one_jpg", "two words", "one_jpg_2"]


def test_stdin_mixed_with_files(tmp_path):
    f = _touch(tmp_path / "f.jpg")
    items = inputs.discover([str(f), "-"], stdin=["g.png\n"])
    assert [(it.path, it.key) for it in items] == [(str(f), "f"), ("g.png", "g")]


def test_names_with_spaces_and_dots(tmp_path):
    _touch(tmp_path / "d" / "my photo.final.jpg")
    _touch(tmp_path / "d" / "..jpg")
    _touch(tmp_path / "d" / "a b" / "c d.png")
    items = inputs.discover([str(tmp_path / "d")])
    assert _keys(items) == ["_", "a b/c d", "my photo.final"]


def test_dotdot_never_becomes_a_key_part(tmp_path, monkeypatch):
    (tmp_path / "w" / "in").mkdir(parents=True)
    _touch(tmp_path / "w" / "x.jpg")
    monkeypatch.chdir(tmp_path / "w" / "in")
    items = inputs.discover(["../x.jpg", "..", "-"], stdin=["a/../b.jpg\n", "..\n", "../..\n"])
    assert _keys(items) == ["x_jpg", "x_jpg_2", "b", "_", "__2"]
    for it in items:
        parts = it.key.split("/")
        assert ".." not in parts and "" not in parts and not it.key.startswith("/"), it.key
    assert len({it.key for it in items}) == len(items)


def test_non_utf8_file_name(tmp_path):
    d = tmp_path / "nu"
    d.mkdir()
    raw = os.path.join(os.fsencode(d), b"caf\xe9 \xff.png")
    with open(raw, "wb") as fh:
        Image.new("RGB", (3, 2), (1, 2, 3)).save(fh, format="PNG")
    items = inputs.discover([str(d)])
    assert len(items) == 1
    assert os.fsencode(items[0].path) == raw
    assert items[0].key == "caf_ _"
    items[0].key.encode("utf-8")  # keys are always valid text
    assert codec.decode_image(items[0].path)[0, 0].tolist() == [1, 2, 3]


def test_broken_and_looping_symlinks(tmp_path):
    root = tmp_path / "root"
    _touch(root / "sub" / "real.jpg")
    (root / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (root / "self").symlink_to("self")
    (root / "selfimg.jpg").symlink_to("selfimg.jpg")
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "alias").symlink_to(root / "sub", target_is_directory=True)
    items = inputs.discover([str(root)])
    rels = [Path(it.path).relative_to(root).as_posix() for it in items]
    # The loop is pruned; a folder reached twice (alias -> sub) is listed once, under the
    # first name in sorted order. Broken links stay as inputs whose records carry the error.
    assert rels == ["alias/real.jpg", "broken.jpg", "selfimg.jpg"]
    by_name = {Path(it.path).name: it.path for it in items}
    with pytest.raises(ValueError, match="file not found"):
        codec.decode_image(by_name["broken.jpg"])
    with pytest.raises(ValueError, match="cannot decode image"):
        codec.decode_image(by_name["selfimg.jpg"])


# --- decode_image ------------------------------------------------------------------------


def _save(img: Image.Image, path: Path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def test_decode_rgb_and_l_exact(tmp_path):
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7
    out = codec.decode_image(_save(Image.fromarray(a), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, a)
    g = np.array([[0, 10, 255]], dtype=np.uint8)
    out = codec.decode_image(_save(Image.fromarray(g), tmp_path / "g.png"))
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out, np.repeat(g[:, :, None], 3, axis=2))


def test_decode_palette_with_transparency(tmp_path):
    p = Image.new("P", (3, 2))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    p.putpixel((1, 0), 1)
    p.putpixel((2, 1), 2)
    out = codec.decode_image(_save(p, tmp_path / "p.png", transparency=0))
    assert out.shape == (2, 3, 3)
    assert out[0, 1].tolist() == [0, 255, 0]
    assert out[1, 2].tolist() == [0, 0, 255]
    assert out[0, 0].tolist() == [255, 0, 0]  # the transparent index keeps its colour
    gif = codec.decode_image(_save(p, tmp_path / "p.gif", transparency=0))
    np.testing.assert_array_equal(gif, out)


def test_decode_rgba_and_la_drop_alpha(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    out = codec.decode_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, rgba[:, :, :3])
    la = Image.new("LA", (2, 1), (77, 0))
    assert codec.decode_image(_save(la, tmp_path / "la.png")).tolist() == [[[77] * 3, [77] * 3]]


def test_decode_cmyk_jpeg(tmp_path):
    out = codec.decode_image(_save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 2


def test_decode_16bit_png_scaled_exactly(tmp_path):
    a = np.array([[0, 257, 65535, 32768], [1, 128, 32767, 65280]], dtype=np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = codec.decode_image(path)
    expected = np.array([[0, 1, 255, 128], [0, 0, 127, 254]], dtype=np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 1], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_decode_1x1_and_bilevel(tmp_path):
    assert codec.decode_image(
        _save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "a.png")
    ).tolist() == [[[9, 8, 7]]]
    assert codec.decode_image(_save(Image.new("1", (2, 1), 1), tmp_path / "b.png")).tolist() == [
        [[255] * 3, [255] * 3]
    ]


def test_decode_exif_orientation_6(tmp_path):
    """Orientation 6: stored image rotated 90 degrees clockwise for display."""
    w, h = 32, 16
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)  # stored top-left: red
    a[: h // 2, w // 2 :] = (0, 0, 255)  # stored top-right: blue
    a[h // 2 :, : w // 2] = (0, 255, 0)  # stored bottom-left: green
    a[h // 2 :, w // 2 :] = (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(a), tmp_path / "r.jpg", exif=exif, quality=95, subsampling=0)
    out = codec.decode_image(path)
    assert out.shape == (w, h, 3)  # transposed
    # clockwise: stored (x, y) -> displayed (h - 1 - y, x)
    quad = {
        "top-left": out[4, 4],
        "top-right": out[4, h - 5],
        "bottom-left": out[w - 5, 4],
        "bottom-right": out[w - 5, h - 5],
    }
    near = lambda px, rgb: np.abs(px.astype(int) - rgb).max() <= 8  # noqa: E731
    assert near(quad["top-right"], (255, 0, 0))
    assert near(quad["bottom-right"], (0, 0, 255))
    assert near(quad["top-left"], (0, 255, 0))
    assert near(quad["bottom-left"], (255, 255, 255))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_truncated(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = _io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    path = _touch(tmp_path / f"t.{fmt.lower()}", data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot decode image") as ei:
        codec.decode_image(str(path))
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("zero.jpg", b"", "not an image file"),
        ("text.jpg", b"hello, I am text\n", "not an image file"),
    ],
)
def test_decode_not_images(tmp_path, name, data, match):
    with pytest.raises(ValueError, match=match):
        codec.decode_image(str(_touch(tmp_path / name, data)))


def test_decode_missing_and_directory(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        codec.decode_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ValueError, match="is a directory"):
        codec.decode_image(str(tmp_path))


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    path = _touch(tmp_path / "bomb.png", _png_header_only(100_000, 100_000))

    def no_load(self, *a, **k):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    with pytest.raises(ValueError, match="100000x100000 = 10000000000 pixels, over the limit"):
        codec.decode_image(str(path))
    small = _save(Image.new("RGB", (10, 10)), tmp_path / "s.png")
    with pytest.raises(ValueError, match="over the limit of 99"):
        codec.decode_image(small, max_pixels=99)


def test_max_pixels_boundary(tmp_path):
    small = _save(Image.new("RGB", (10, 10), (5, 5, 5)), tmp_path / "s.png")
    assert codec.decode_image(small, max_pixels=100).shape == (10, 10, 3)


def test_normalize_batch_exact():
    import torch

    from camcli.models.registry import Preprocess

    pre = Preprocess()
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = loader.normalize_batch(x, pre)
    for c in range(3):
        lo = (0 - pre.mean[c]) / pre.std[c]
        hi = (1 - pre.mean[c]) / pre.std[c]
        torch.testing.assert_close(out[0, c, 0], torch.tensor([lo, hi]), rtol=1e-6, atol=1e-6)


def test_batches_keep_order_and_errors(tmp_path):
    from camcli.models.registry import Preprocess

    pre = Preprocess(input_size=8)
    paths = []
    for i in range(5):
        if i in (1, 4):
            paths.append(str(_touch(tmp_path / f"{i}.jpg", b"bad")))
        else:
            paths.append(_save(Image.new("RGB", (3 + i, 5), (i, i, i)), tmp_path / f"{i}.png"))
    items = inputs.discover(paths)
    batches = list(loader.iter_batches(items, pre, batch_size=2, workers=0))
    assert len(batches) == 3
    seen = []
    for b in batches:
        seen += [(s.item.index, "ok") for s in b.samples] + [
            (s.item.index, "bad") for s in b.failed
        ]
        if b.x is not None:
            assert b.x.dtype.is_floating_point is False and tuple(b.x.shape[1:]) == (3, 8, 8)
    assert sorted(seen) == [(0, "ok"), (1, "bad"), (2, "ok"), (3, "ok"), (4, "bad")]
    assert batches[0].samples[0].size == (5, 3)


def test_each_unreadable_image_error_says_what_to_do(tmp_path):
    """A per-input error names the problem and the fix, on one line."""
    buf = _io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not pixels\n")
    fixes = {
        "trunc.jpg": "copy, download or export it again",
        "empty.png": "copy, download or export it again",
        "text.jpg": "leave it out, or convert it to JPEG or PNG if it is an image",
    }
    for name, fix in fixes.items():
        with pytest.raises(ValueError) as ei:
            codec.decode_image(str(tmp_path / name))
        msg = str(ei.value)
        assert fix in msg and "\n" not in msg, msg
