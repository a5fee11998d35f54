"""The one reader of `cam --save-maps` files (camcli.data.mapfiles), on hand-made .npz files."""

from __future__ import annotations

import numpy as np
import pytest

from camcli.data.mapfiles import (
    MapFileError,
    list_map_files,
    load_class_map,
    read_map_file,
    read_map_header,
)
from camcli.errors import NoInputError


def save(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def two_maps():
    cams = np.zeros((2, 3, 4), np.float32)
    cams[0, 0, 0] = 1.0
    cams[1, 2, 3] = 0.5
    return cams


def test_list_map_files_sorted_recursive_and_errors(tmp_path):
    for rel in ("b.npz", "a/z.npz", "a/b.npz", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_map_files(tmp_path)]
    assert got == ["a/b.npz", "a/z.npz", "b.npz"]
    with pytest.raises(NoInputError, match=r"^--from-maps .*nope: not a folder") as e:
        list_map_files(tmp_path / "nope", flag="--from-maps")
    assert e.value.code == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputError, match="--maps .*: no .npz files; save maps with"):
        list_map_files(tmp_path / "empty")


def test_header_names_the_image_or_falls_back_to_the_relative_path(tmp_path):
    f = save(
        tmp_path / "sub" / "x.npz",
        cams=two_maps(),
        class_indices=np.array([7, 3]),
        image="/data/x.jpg",
        labels=np.array(["cat", "dog"]),
    )
    h = read_map_header(f, tmp_path)
    assert (h.image, h.key, h.name) == ("/data/x.jpg", "sub/x", "/data/x.jpg")
    assert h.class_indices.dtype == np.int64 and h.class_indices.tolist() == [7, 3]
    assert h.labels == ["cat", "dog"]
    g = save(tmp_path / "y.npz", cams=two_maps(), class_indices=np.array([0, 1]))
    h = read_map_header(g, tmp_path)
    assert (h.image, h.labels, h.name) == (None, None, "y")


def test_load_class_map(tmp_path):
    f = save(tmp_path / "x.npz", cams=two_maps(), class_indices=np.array([7, 3]))
    m = load_class_map(f, 3)
    assert m.dtype == np.float64 and m.shape == (3, 4) and m[2, 3] == 0.5
    assert load_class_map(f, 5) is None
    one = save(tmp_path / "one.npz", cams=two_maps()[0], class_indices=np.array([1]))
    assert load_class_map(one, 1)[0, 0] == 1.0  # an [H, W] map is one class's
    bad = save(tmp_path / "bad.npz", cams=two_maps(), class_indices=np.array([1, 2, 3]))
    with pytest.raises(
        MapFileError,
        match=r"^cannot read map file \(cams has shape \[2, 3, 4\], expected .* k = 3\)$",
    ):
        load_class_map(bad, 1)


def test_read_map_file(tmp_path):
    f = save(
        tmp_path / "x.npz",
        cams=two_maps().astype(np.float64),
        class_indices=np.array([7, 3]),
        scores=np.array([0.9, 0.1]),
    )
    mf = read_map_file(f, tmp_path)
    assert mf.cams.dtype == np.float32 and mf.cams.shape == (2, 3, 4)
    assert mf.scores.dtype == np.float32 and mf.scores.tolist() == pytest.approx([0.9, 0.1])
    assert mf.header.key == "x" and mf.header.image is None and mf.header.labels is None
    no_scores = save(tmp_path / "n.npz", cams=two_maps(), class_indices=np.array([7, 3]))
    assert read_map_file(no_scores).scores is None
    bad = save(tmp_path / "bad.npz", cams=two_maps(), class_indices=np.array([1]))
    with pytest.raises(
        MapFileError, match=r"^cannot read map file \(cams has shape .*class_indices\)$"
    ):
        read_map_file(bad)


@pytest.mark.parametrize("reader", ["header", "class", "file"])
def test_unusable_files_are_one_line_errors(tmp_path, reader):
    good = save(tmp_path / "g.npz", cams=two_maps(), class_indices=np.array([0, 1]))
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "not npz": b"hello",
    }
    no_classes = save(tmp_path / "nc.npz", cams=two_maps())
    pickled = save(
        tmp_path / "p.npz",
        cams=np.array([object()], dtype=object),
        class_indices=np.array([0]),
    )
    paths = [no_classes]
    for name, raw in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.npz"
        p.write_bytes(raw)
        paths.append(p)
    if reader != "header":
        paths.append(pickled)  # the header does not touch cams
    for p in paths:
        with pytest.raises(MapFileError, match="^cannot read map file") as e:
            if reader == "header":
                read_map_header(p, tmp_path)
            elif reader == "class":
                load_class_map(p, 0)
            else:
                read_map_file(p, tmp_path)
        assert "\n" not in str(e.value)
        assert str(p) not in str(e.value)  # its callers name the file beside it
    # numpy's refusal suggests loading unsafely; the reason says what the file is instead
    text = tmp_path / "notes.npz"
    text.write_text("some text, not a map file\n")
    for p, why in ((pickled, "it holds pickled objects, not arrays; camcli never loads pickles"),
                   (text, "not a .npz (zip) file")):  # fmt: skip
        with pytest.raises(MapFileError) as e:
            load_class_map(p, 0)
        assert str(e.value) == f"cannot read map file ({why})"
