"""Large PNGs decoded by OpenCV's libpng straight into the result (no PIL image beside it):
the same pixels as PIL, every other PNG left to PIL, nothing printed, bounded memory
(issue 17: 13000 x 13000 PNG, predict's worker at 1.6 GB)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from camcli.data import codec

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (37, 53), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _info(kind: bytes, data: bytes):
    info = PngImagePlugin.PngInfo()
    info.add(kind, data)
    return info


def _plain_cases():
    pal = Image.fromarray(RGB).quantize(200)
    pal16 = Image.fromarray(RGB).quantize(16)
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    la = Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(GREY[::-1].copy())])
    return {
        "rgb": (Image.fromarray(RGB), {}),
        "rgba": (Image.fromarray(np.dstack([RGB, GREY])), {}),
        "grey": (Image.fromarray(GREY), {}),
        "grey_alpha": (la, {}),
        "palette": (pal, {}),
        "palette_4bit": (pal16, {"bits": 4}),
        "palette_trns": (pal, {"transparency": 3}),
        "grey_trns": (Image.fromarray(GREY), {"transparency": 7}),
        "rgb_trns": (Image.fromarray(RGB), {"transparency": (1, 2, 3)}),
        "gamma": (Image.fromarray(RGB), {"pnginfo": _info(b"gAMA", struct.pack(">I", 200000))}),
        "sbit": (Image.fromarray(RGB), {"pnginfo": _info(b"sBIT", b"\x05\x06\x05")}),
        # libpng warns about this profile on standard error: silenced
        "icc_lab": (Image.fromarray(RGB), {"icc_profile": lab}),
    }


@pytest.mark.parametrize("name", sorted(_plain_cases()))
def test_opencv_decode_equals_pil(tmp_path, name, capfd):
    im, kw = _plain_cases()[name]
    path = str(tmp_path / f"{name}.png")
    im.save(path, **kw)
    assert codec.png_plain_8bit(path)
    fast = codec._decode_png_cv2(path, 37, 53)
    ref = codec.decode_image(path)  # small: PIL
    assert fast is not None and fast.dtype == np.uint8 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, ref)
    assert capfd.readouterr().err == ""


def test_other_pngs_are_left_to_pil(tmp_path):
    paths = {}
    paths["grey16"] = tmp_path / "grey16.png"
    Image.fromarray(GREY.astype(np.uint16) * 257 + 3).save(paths["grey16"])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: PIL turns it, OpenCV would not be asked to
    paths["exif"] = tmp_path / "exif.png"
    Image.fromarray(RGB).save(paths["exif"], exif=exif)
    paths["apng"] = tmp_path / "anim.png"
    frames = [Image.fromarray(RGB), Image.fromarray(255 - RGB)]
    frames[0].save(paths["apng"], save_all=True, append_images=frames[1:])
    paths["truncated"] = tmp_path / "cut.png"
    whole = tmp_path / "whole.png"
    Image.fromarray(RGB).save(whole)
    paths["truncated"].write_bytes(whole.read_bytes()[:300])
    paths["jpeg"] = tmp_path / "photo.jpg"
    Image.fromarray(RGB).save(paths["jpeg"])
    for name, p in paths.items():
        assert not codec.png_plain_8bit(str(p)), name
        assert codec._decode_png_cv2(str(p), 37, 53) is None, name


@pytest.fixture
def large_everything(monkeypatch):
    """Every PNG counts as large and this process as a DataLoader worker."""
    monkeypatch.setattr(codec, "LARGE_PNG_PIXELS", 0)
    monkeypatch.setattr(codec, "in_worker", lambda: True)


def test_decode_image_takes_the_opencv_path(tmp_path, large_everything, monkeypatch):
    path = str(tmp_path / "a.png")
    Image.fromarray(RGB).save(path)
    calls = []
    real = codec._decode_png_cv2
    monkeypatch.setattr(codec, "_decode_png_cv2", lambda *a: calls.append(a) or real(*a))
    np.testing.assert_array_equal(codec.decode_image(path), RGB)
    assert [c[:3] for c in calls] == [(path, 37, 53)]


def test_damaged_png_silent_and_named_by_pil(tmp_path, large_everything, capfd):
    """A PNG whose chunks are whole but whose image data is not: libpng's own error lines go
    to the null device; the item's error is PIL's one line, as for any damaged image."""
    ihdr = struct.pack(">IIBBBBB", 53, 37, 8, 2, 0, 0, 0)
    bad = tmp_path / "bad.png"
    bad.write_bytes(
        codec._PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"not a zlib stream" * 20)
        + _chunk(b"IEND", b"")
    )
    assert codec.png_plain_8bit(str(bad))
    with pytest.raises(ValueError, match="damaged or incomplete"):
        codec.decode_image(str(bad))
    fd2 = capfd.readouterr().err
    assert "libpng" not in fd2 and fd2 == ""
    # standard error works again afterwards
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak RSS reset")
def test_large_png_peak_memory_is_the_result_only(tmp_path):
    """In a fresh process acting as a worker: a 4000 x 4000 RGB PNG (48 MB of pixels) raises
    the peak RSS by about the result's size; PIL's path holds its 64 MB image beside it."""
    path = tmp_path / "big.png"
    Image.fromarray(np.full((4000, 4000, 3), (40, 120, 200), np.uint8)).save(path)
    small = tmp_path / "small.png"
    Image.fromarray(RGB).save(small)
    script = textwrap.dedent(
        f"""
        import sys
        from camcli.data import codec

        def kib(field):
            status = open("/proc/self/status").read()
            return int(status.split(field + ":")[1].split()[0])

        codec.in_worker = lambda: True
        codec.LARGE_PNG_PIXELS = int(sys.argv[1])
        codec.decode_image({str(small)!r})  # imports done
        open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts here
        before = kib("VmRSS")
        arr = codec.decode_image({str(path)!r})
        assert arr.shape == (4000, 4000, 3) and (arr[-1, -1] == (40, 120, 200)).all()
        print((kib("VmHWM") - before) / 1024)
        """
    )
    grew = {}
    for mode, limit in (("opencv", 0), ("pil", 1 << 60)):
        run = subprocess.run(
            [sys.executable, "-c", script, str(limit)], capture_output=True, text=True, check=True
        )
        grew[mode] = float(run.stdout.strip())
    result_mib = 4000 * 4000 * 3 / 2**20
    assert grew["opencv"] < 1.25 * result_mib, grew
    assert grew["pil"] > 1.8 * result_mib, grew  # the test can tell the two apart


# --- trial (session 11): PNGs OpenCV must not be given ----------------------------------------


def test_a_png_past_libpngs_side_limit_is_left_to_pil(tmp_path):
    """Trial P1: libpng refuses a side over 1,000,000 pixels and OpenCV then handed the
    array back undecoded: a 2,000,000 x 9 PNG was read as black, exit 0."""
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((2, 1_000_001, 3), 9, np.uint8)).save(path)
    assert not codec.png_plain_8bit(str(path))
    ok = tmp_path / "ok.png"
    Image.fromarray(np.full((2, 1_000_000, 3), 9, np.uint8)).save(ok)
    assert codec.png_plain_8bit(str(ok))


def test_an_array_opencv_did_not_touch_is_never_the_image(tmp_path, large_everything):
    """Trial P1's family: any PNG whose header libpng refuses after the chunk walk accepted
    it (here an unknown interlace method) comes back from imread untouched; the marked
    pixels tell, and PIL decides (here: an error)."""
    ihdr = struct.pack(">IIBBBBB", 6, 5, 8, 2, 0, 0, 2)  # interlace method 2: none such
    rows = b"".join(b"\x00" + bytes(18) for _ in range(5))
    path = tmp_path / "odd.png"
    path.write_bytes(
        codec._PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )
    assert codec.png_plain_8bit(str(path))
    assert codec._decode_png_cv2(str(path), 5, 6) is None
    with pytest.raises(ValueError, match="damaged or incomplete"):
        codec.decode_image(str(path))


def test_a_name_that_is_not_utf8_is_left_to_pil(tmp_path):
    """Trial P2: OpenCV crashed (SIGSEGV) on a file name with undecodable bytes, killing the
    worker and the whole run. In a fresh process: the crash would end the test run."""
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.fsencode(str(folder)) + b"/name_\xff\xfe.png"
    Image.fromarray(RGB).save(raw)
    script = textwrap.dedent(
        f"""
        import os
        from camcli.data import codec
        codec.LARGE_PNG_PIXELS = 0
        codec.in_worker = lambda: True
        path = os.fsdecode({raw!r})
        assert codec._decode_png_cv2(path, 37, 53) is None
        print(codec.decode_image(path).shape)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(37, 53, 3)"


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        ("Raw profile type exif", False),
        ("Raw profile type APP1", False),
        ("XML:com.adobe.xmp", False),
        ("Comment", True),
    ],
)
@pytest.mark.parametrize("kind", ["text", "ztxt"])
def test_imagemagick_exif_text_chunks_are_left_to_pil(tmp_path, key, plain, kind):
    """Trial P5: ImageMagick stores EXIF (orientation) as hex in a "Raw profile type exif"
    text chunk, which PIL reads and turns the image by; OpenCV would not."""
    info = PngImagePlugin.PngInfo()
    info.add_text(key, "\nexif\n 4\n00000000\n", zip=kind == "ztxt")
    path = tmp_path / "a.png"
    Image.fromarray(RGB).save(path, pnginfo=info)
    assert codec.png_plain_8bit(str(path)) is plain


@pytest.mark.parametrize("zip_", [False, True])
def test_an_xmp_orientation_is_left_to_pil(tmp_path, large_everything, zip_):
    """Second trial (session 11) X2: PIL turns a PNG by the tiff:Orientation of its XMP
    packet (an iTXt chunk); the OpenCV path would not have."""
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp, zip=zip_)
    path = tmp_path / "xmp.png"
    Image.fromarray(RGB).save(path, pnginfo=info)
    assert not codec.png_plain_8bit(str(path))
    assert codec.decode_image(str(path)).shape == (53, 37, 3)  # turned, as PIL turns it
