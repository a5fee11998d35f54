"""Image files <-> pixels: decoding (CPU, and JPEG on the device) and encoding.

Decoding honours EXIF orientation and turns greyscale, palette, RGBA, CMYK and 16-bit images
into 8-bit RGB; any failure is a one-line ValueError (the caller makes it a per-item error,
never an exception of the run). Large plain PNGs are decoded by OpenCV's libpng straight into
the result in DataLoader workers (:data:`LARGE_PNG_PIXELS`: the same pixels, half the peak
memory); everything else by PIL. Plain JPEGs can instead be handed to the device's decoder
(nvJPEG on CUDA) as raw bytes. Every image camcli writes goes through :func:`encode_image`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from io import BytesIO as _BytesIO

import numpy as np

from camcli.data.inputs import DEFAULT_MAX_PIXELS

Alloc = Callable[[tuple[int, ...]], np.ndarray]
"""Makes an uninitialised C-contiguous uint8 numpy array of a shape (:func:`decode_image`)."""


def _numpy_alloc(shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.uint8)


#: The fix hints of per-input read errors.
_DAMAGED = "the file is damaged or incomplete: copy, download or export it again"
_UNREADABLE = (
    "permission denied: the file cannot be read; make it readable (chmod +r) or leave it out"
)


def decode_image(
    path: str, max_pixels: int = DEFAULT_MAX_PIXELS, *, alloc: Alloc | None = None
) -> np.ndarray:
    """Decode ``path`` into an RGB uint8 array [H, W, 3], EXIF orientation applied.

    Args:
        path: the image file.
        max_pixels: the decompression-bomb limit (width x height).
        alloc: makes the result's C-contiguous uint8 array for a shape (e.g. in shared memory,
            so that a DataLoader worker hands it over without a copy); numpy's by default.

    Raises:
        ValueError: a one-line reason for any failure (missing, unreadable, not an image,
            truncated, decompression bomb, zero-sized).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding
    _check_regular_file(path)
    try:
        with open(path, "rb") as fh, Image.open(fh) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError(
                    f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                    "(decompression bomb?); raise --max-pixels if it is genuine"
                )
            if w * h >= LARGE_PNG_PIXELS and im.format == "PNG" and in_worker():
                arr = _decode_png_cv2(path, h, w, alloc)  # the result only, no PIL image
                if arr is not None:
                    return arr
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # no copy when nothing to rotate
            return _to_rgb(im, alloc or _numpy_alloc)
    except FileNotFoundError:
        raise ValueError("file not found (moved or deleted during the run?)") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not an image") from None
    except PermissionError:
        raise ValueError(_UNREADABLE) from None
    except UnidentifiedImageError:
        raise ValueError(
            "not an image file (cannot identify its format); leave it out, or convert it to "
            "JPEG or PNG if it is an image"
        ) from None
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot decode image ({msg}); {_DAMAGED}") from None


LARGE_PNG_PIXELS = 1 << 24
"""PNGs of this many pixels or more are decoded by OpenCV's libpng straight into the result
(:func:`_decode_png_cv2`) where that gives PIL's pixels exactly: PIL would hold its own
4-byte-per-pixel image beside the 3-byte result (1.1 GB at peak for 13000 x 13000 instead of
0.5 GB)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_PNG_MAX_SIDE = 1_000_000
"""libpng's default limit on a PNG's width and height: it refuses the header of a larger one
(PIL has no such limit)."""


def png_plain_8bit(path: str) -> bool:
    """Whether ``path`` is a PNG that libpng's 8-bit colour decoding turns into exactly the
    pixels :func:`decode_image` makes with PIL: 8-bit grey, grey + alpha, RGB or RGBA, or a
    palette (any index depth; transparency, like alpha, is dropped), at most
    :data:`_PNG_MAX_SIDE` pixels a side (libpng's own limit), with no orientation PIL could
    read (an ``eXIf`` chunk, ImageMagick's "Raw profile type" text chunks, an XMP packet's
    ``tiff:Orientation``: any of these sends the file to PIL) and no animation. It walks the
    chunk headers only (seeking over the data).

    Args:
        path: a file path.

    Returns:
        False for anything else, a 16-bit or 1/2/4-bit grey PNG, or a file it cannot read.
    """
    import struct

    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return False
            head = fh.read(8 + 13)
            if len(head) < 21 or head[4:8] != b"IHDR":
                return False
            w, h = struct.unpack(">II", head[8:16])
            if max(w, h) > _PNG_MAX_SIDE or w * h >= 1 << 30:  # libpng's, OpenCV's limits
                return False
            depth, colour = head[16], head[17]
            if not (depth == 8 and colour in (0, 2, 4, 6) or colour == 3 and depth <= 8):
                return False
            fh.seek(4, os.SEEK_CUR)  # IHDR's CRC
            while True:
                hdr = fh.read(8)
                if len(hdr) < 8:
                    return False  # no IEND: damaged; PIL says so
                size, kind = struct.unpack(">I4s", hdr)
                if kind in (b"eXIf", b"acTL"):
                    return False
                if kind == b"IEND":
                    return True
                if kind in (b"tEXt", b"zTXt", b"iTXt"):
                    key = fh.read(min(size, 17))
                    if key.startswith((b"Raw profile type", b"XML:com.adobe.xmp")):
                        return False  # EXIF as hex text (ImageMagick), XMP: PIL reads either
                    fh.seek(size - len(key) + 4, os.SEEK_CUR)
                    continue
                fh.seek(size + 4, os.SEEK_CUR)
    except OSError:
        return False


def in_worker() -> bool:
    """Whether this is a DataLoader worker process: where nothing else writes to standard
    error while :func:`_decode_png_cv2` silences it, and where a kept image goes to the main
    process through shared memory (:mod:`camcli.data.loader`)."""
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


def _decode_png_cv2(path: str, h: int, w: int, alloc: Alloc | None = None) -> np.ndarray | None:
    """uint8 [H, W, 3] RGB of a :func:`png_plain_8bit` PNG decoded by OpenCV, or None (not
    such a PNG, or OpenCV could not decode it: the caller then decodes with PIL, which names
    the fault). ``h`` x ``w``: the size its header gives; the pixels are decoded straight into
    the array returned (``imread``'s own result would be copied into a new array). libpng
    prints its warnings and errors to file descriptor 2 itself: that is pointed at the null
    device for the call (the caller is a DataLoader worker process)."""
    try:
        path.encode("utf-8")  # OpenCV crashes (SIGSEGV) on a name that is not valid UTF-8
    except UnicodeEncodeError:
        return None
    if not png_plain_8bit(path):
        return None
    import cv2

    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    out = (alloc or _numpy_alloc)((h, w, 3))
    # imread hands ``out`` back untouched when it refuses the file before decoding: the first
    # and last pixels are marked, and a result that still holds both marks is decoded by PIL
    out[0, 0], out[-1, -1] = _MARKS
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        arr = cv2.imread(path, out, flags)
    except cv2.error:
        return None
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    if arr is None or arr.shape != out.shape or arr.dtype != np.uint8:
        return None
    if (arr[0, 0] == _MARKS[0]).all() and (arr[-1, -1] == _MARKS[1]).all():
        return None
    return arr


_MARKS = ((1, 254, 3), (252, 5, 250))
"""The first and last pixels of :func:`_decode_png_cv2`'s array before OpenCV decodes into it."""


def _check_regular_file(path: str) -> None:
    """A one-line ValueError for what is no image file at all, before opening it: broken or
    looping symbolic links, FIFOs (opening one would block), devices, empty files."""
    import errno
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ValueError(
                f"file not found (broken symbolic link to {os.readlink(path)!r})"
            ) from None
        raise ValueError("file not found") from None
    except PermissionError:
        raise ValueError(_UNREADABLE) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("cannot decode image (symbolic link loop)") from None
        raise ValueError(f"cannot open ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError("is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file (a FIFO, socket or device), not an image")
    if st.st_size == 0:
        raise ValueError(f"not an image file (empty: 0 bytes); {_DAMAGED}")


_STRIP_PIXELS = 1 << 22
"""Pixels per strip when copying a decoded image out of PIL (bounded extra memory)."""


def _rows_to_rgb(im, via: str, alloc: Alloc) -> np.ndarray:
    """uint8 [H, W, 3] RGB from a PIL image, converted (to ``via``, then its first three
    channels) and copied in row strips: one array of the result's size beside PIL's own
    image, never a whole-image intermediate (large images stay within bounded memory)."""
    w, h = im.size
    if w == 0 or h == 0:
        raise ValueError("image has zero width or height")
    out = alloc((h, w, 3))
    rows = max(1, _STRIP_PIXELS // w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        part = im.crop((0, y0, w, y1))
        if part.mode != via:
            part = part.convert(via)
        out[y0:y1] = np.asarray(part)[:, :, :3]
    return out


def _to_rgb(im, alloc: Alloc) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        else:
            arr8 = (
                np.round(arr.astype(np.float64) * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
            )
        out = np.repeat(arr8[:, :, None], 3, axis=2)
    elif mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        out = np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode in ("P", "PA") and "transparency" in im.info or mode in ("RGBA", "LA", "PA"):
        return _rows_to_rgb(im, "RGBA", alloc)
    else:
        return _rows_to_rgb(im, "RGB", alloc)
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError("image has zero width or height")
    res = alloc(out.shape)
    np.copyto(res, out)
    return res


def read_plain_jpeg(path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """(bytes tensor, (H, W)) when the file is a plain baseline RGB/grey JPEG with no EXIF
    rotation that a device decoder can take as is; None otherwise (decode on the CPU)."""
    import torch
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        if data[:3] != b"\xff\xd8\xff":
            return None
        with Image.open(_BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if im.getexif().get(0x0112, 1) not in (1, None):
                return None
            w, h = im.size
        if w * h > max_pixels or w < 1 or h < 1:
            return None
    except Exception:  # noqa: BLE001 - anything odd goes through the CPU path and its errors
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), (h, w)


def decode_jpegs_on_device(raws: list, device) -> list:
    """Decode JPEG byte tensors (from :func:`read_plain_jpeg`) on ``device`` in one batched
    call (nvJPEG on CUDA) -> a list of uint8 [3, H, W] tensors on ``device``, all None when the
    device decoder refuses the batch (the caller decodes those files on the CPU instead)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(raws, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            return [None] * len(raws)


def encode_image(pixels, fmt: str, quality: int = 90, *, bgr: bool = False) -> bytes:
    """uint8 [H, W, 3] numpy (RGB, or BGR with ``bgr=True``) -> encoded bytes.

    One encoder for every image camcli writes: OpenCV (its bundled libjpeg-turbo; baseline JPEG,
    4:2:0 chroma, ``quality``; PNG at the fast deflate level 1). OpenCV takes BGR, so the overlay
    path renders in BGR and skips the channel swap. The GIL is released while encoding.
    """
    import cv2

    if fmt not in ("jpg", "png"):
        raise ValueError(f"unknown image format {fmt!r}; use jpg or png")
    img = pixels if bgr else cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV failing on a valid uint8 image
        raise OSError(f"cannot encode {fmt}")
    return buf.tobytes()
