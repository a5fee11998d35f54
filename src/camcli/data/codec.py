"""Image files <-> pixels: decoding (CPU, and JPEG on the device) and encoding.

Decoding honours EXIF orientation and turns greyscale, palette, RGBA, CMYK and 16-bit images
into 8-bit RGB; any failure is a one-line ValueError (the caller makes it a per-item error,
never an exception of the run). Plain JPEGs can instead be handed to the device's decoder
(nvJPEG on CUDA) as raw bytes. Every image camcli writes goes through :func:`encode_image`.
"""

from __future__ import annotations

import os
import warnings
from io import BytesIO as _BytesIO

import numpy as np

from camcli.data.inputs import DEFAULT_MAX_PIXELS

#: The fix hints of per-input read errors.
_DAMAGED = "the file is damaged or incomplete: copy, download or export it again"
_UNREADABLE = (
    "permission denied: the file cannot be read; make it readable (chmod +r) or leave it out"
)


def decode_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` into an RGB uint8 array [H, W, 3], EXIF orientation applied.

    Raises ValueError with a one-line reason on any failure (missing, unreadable, not an image,
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
                ImageOps.exif_transpose(im, in_place=True)  # no copy when nothing to rotate
            return _to_rgb(im)
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


def _rows_to_rgb(im, via: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB from a PIL image, converted (to ``via``, then its first three
    channels) and copied in row strips: one array of the result's size beside PIL's own
    image, never a whole-image intermediate (large images stay within bounded memory)."""
    w, h = im.size
    if w == 0 or h == 0:
        raise ValueError("image has zero width or height")
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, _STRIP_PIXELS // w)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        part = im.crop((0, y0, w, y1))
        if part.mode != via:
            part = part.convert(via)
        out[y0:y1] = np.asarray(part)[:, :, :3]
    return out


def _to_rgb(im) -> np.ndarray:
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
        return _rows_to_rgb(im, "RGBA")
    else:
        return _rows_to_rgb(im, "RGB")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ValueError("image has zero width or height")
    return np.array(out, dtype=np.uint8, order="C", copy=True)


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
