"""JPEG overlays encoded straight from YCbCr planes: the CPU path of ``cam``'s overlay files.

A JPEG encoder turns an RGB overlay into YCbCr (JFIF, BT.601 full range), averages the two
chroma planes over 2 x 2 blocks (4:2:0) and only then transforms and codes them. The blend of
:func:`camcli.cam.render.overlay` is linear, so it can be made in that colour space instead:

- once per image: the image's Y plane and its 2 x 2-averaged Cb, Cr planes, each scaled by
  ``1 - alpha``;
- per map: ``alpha x`` the colormap's Y looked up on the map's levels at full size, its Cb and
  Cr looked up on the levels averaged over 2 x 2 blocks, three saturating adds, and the
  encoder's DCT and entropy coding (simplejpeg, libjpeg-turbo, GIL released).

No RGB overlay, colour conversion or chroma downsampling is made per map: about 0.4 ms less
per 500 x 375 overlay than rendering RGB and encoding it with OpenCV (about 1.3 ms), measured
on the 2-core CI machine.

Agreement with ``encode_image(overlay_cv2(...))``: before the DCT the Y plane is within 2
levels of the RGB overlay's Y (ours rounds the two scaled terms separately, the reference
rounds the RGB blend and its conversion); Cb and Cr are within 3 where the 2 x 2 neighbours
of a level share a colour, and otherwise differ by the colormap's step
between neighbouring levels (the table is read at the block's mean level instead of being
averaged after the reading). Both files go through the same quantisation (same libjpeg-turbo,
same quality, same tables). Decoded, on a 500 x 375 photo with a CAM upsampled from 7 x 7,
the file is 1.11 levels (mean absolute, over RGB) from the exact overlay against 0.96 for
OpenCV's file of the RGB overlay; on tiny images of noisy maps the two files differ by about
1.5 levels.
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = ["LOW_MEMORY_PIXELS", "JpegOverlays", "half_planes"]

_STRIP_PIXELS = 1 << 22
"""Rows converted to YCbCr at once hold at most this many pixels (huge images)."""

LOW_MEMORY_PIXELS = 1 << 25
"""Images of this many pixels or more (33.6 M, e.g. 5800 x 5800) do not keep their YCbCr
planes between maps (:class:`JpegOverlays`)."""


def half_planes(plane: np.ndarray) -> np.ndarray:
    """The mean of each 2 x 2 block, as a JPEG encoder's 4:2:0 downsampling.

    Args:
        plane: uint8 ``[H, W]`` or ``[H, W, C]`` numpy array.

    Returns:
        uint8 ``[ceil(H/2), ceil(W/2)(, C)]``: each value the rounded mean of its block; on an
        odd size the last row / column is repeated, as libjpeg pads.
    """
    import cv2

    h, w = plane.shape[:2]
    if h % 2 or w % 2:
        plane = cv2.copyMakeBorder(plane, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    # bilinear at exactly half the size samples between the 2 x 2 pixels: their mean
    return cv2.resize(plane, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_LINEAR)


def _mcu_buffer(h: int, w: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """An uninitialised uint8 array padded to multiples of ``m`` and its ``[h, w]`` view: the
    raw-data encoder reads whole MCUs (16 x 16 luma, 8 x 8 chroma at 4:2:0) and, on a plane
    of any other size, reads past its end (the file then changes from run to run)."""
    buf = np.empty((-(-h // m) * m, -(-w // m) * m), dtype=np.uint8)
    return buf, buf[:h, :w]


def _fill_padding(buf: np.ndarray, h: int, w: int) -> None:
    """Repeat the last column and row of ``buf[:h, :w]`` into its padding, as libjpeg pads."""
    if buf.shape[1] > w:
        buf[:h, w:] = buf[:h, w - 1 : w]
    if buf.shape[0] > h:
        buf[h:] = buf[h - 1 : h]


@cache
def _tables(colormap: str, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``alpha x`` the colormap's (Y, Cb, Cr), rounded: three uint8 [256] lookup tables."""
    import cv2

    from camcli.cam.render import colormap_lut

    rgb = np.ascontiguousarray(colormap_lut(colormap).numpy()).reshape(256, 1, 3)
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb).reshape(256, 3).astype(np.float32)
    y, cr, cb = (np.rint(alpha * ycc[:, c]).astype(np.uint8) for c in (0, 1, 2))
    return y, cb, cr


class JpegOverlays:
    """JPEG overlays of one image's maps (module doc), the image's planes prepared once.

    On an image of :data:`LOW_MEMORY_PIXELS` or more the image's planes are not kept: each map
    converts the image again, in row strips, into the overlay's own planes (the same bytes;
    about 250 MB less at 13000 x 13000, one colour conversion more per map).

    Args:
        image_rgb: uint8 ``[H, W, 3]`` numpy array, RGB, C-contiguous (kept, not copied).
        colormap: one of :data:`camcli.cam.render.COLORMAPS`.
        alpha: the weight of the heat map, in [0, 1].
        quality: JPEG quality (libjpeg's scale, as :func:`camcli.data.codec.encode_image`).
        low_memory: force (True) or refuse (False) the strip mode; None: by size.

    Raises:
        ValueError: an unknown colormap.
    """

    def __init__(
        self,
        image_rgb: np.ndarray,
        colormap: str,
        alpha: float,
        quality: int = 90,
        *,
        low_memory: bool | None = None,
    ):
        self.quality = int(quality)
        self.tables = _tables(colormap, float(alpha))
        self._rgb = image_rgb
        self._keep = 1.0 - float(alpha)
        h, w = image_rgb.shape[:2]
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        self._rows = max(2, (_STRIP_PIXELS // max(1, w)) & ~1)  # even: 2 x 2 blocks stay whole
        if low_memory is None:
            low_memory = h * w >= LOW_MEMORY_PIXELS
        self.low_memory = bool(low_memory)
        self.y = self.cb = self.cr = None
        if not self.low_memory:  # the image's planes, scaled by 1 - alpha, once
            self.y = np.empty((h, w), dtype=np.uint8)
            self.cb = np.empty((h2, w2), dtype=np.uint8)
            self.cr = np.empty_like(self.cb)
            for y0, y1 in self._strips():
                c0, c1 = y0 // 2, (y1 + 1) // 2
                self.y[y0:y1], self.cb[c0:c1], self.cr[c0:c1] = self._image_planes(y0, y1)
        # the planes of each overlay, reused from class to class (no allocation per class)
        self._y = _mcu_buffer(h, w, 16)
        self._cb = _mcu_buffer(h2, w2, 8)
        self._cr = _mcu_buffer(h2, w2, 8)

    def _strips(self):
        """(y0, y1) row ranges, an even number of rows each (a huge image is never converted
        whole)."""
        h = self._rgb.shape[0]
        for y0 in range(0, h, self._rows):
            yield y0, min(h, y0 + self._rows)

    def _image_planes(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``y0..y1-1`` of the image as (Y, Cb, Cr) uint8 planes, chroma 2 x 2-averaged,
        each ``round((1 - alpha) x)``."""
        import cv2

        y, cr, cb = cv2.split(cv2.cvtColor(self._rgb[y0:y1], cv2.COLOR_RGB2YCrCb))
        cb, cr = half_planes(cb), half_planes(cr)
        for plane in (y, cb, cr):
            cv2.convertScaleAbs(plane, dst=plane, alpha=self._keep)
        return y, cb, cr

    def _blend(self, levels, image_planes, out_planes) -> None:
        """``out = image + alpha x colormap(levels)`` per plane, saturating (uint8)."""
        import cv2

        ty, tcb, tcr = self.tables
        (iy, icb, icr), (y, cb, cr) = image_planes, out_planes
        cv2.LUT(levels, ty, dst=y)
        cv2.add(iy, y, dst=y)
        half = half_planes(levels)
        cv2.add(icb, cv2.LUT(half, tcb), dst=cb)
        cv2.add(icr, cv2.LUT(half, tcr), dst=cr)

    def planes(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The overlay of one map as JPEG's (Y, Cb, Cr) planes.

        Args:
            levels: uint8 ``[H, W]`` map levels (:func:`camcli.cam.render.levels_cv2`).

        Returns:
            uint8 Y ``[H, W]``, Cb and Cr ``[ceil(H/2), ceil(W/2)]``: views of buffers this
            object reuses for the next map (copy them to keep them), padded to whole MCUs
            with the last row and column repeated.
        """
        (ybuf, y), (cbbuf, cb), (crbuf, cr) = self._y, self._cb, self._cr
        if self.low_memory:
            for y0, y1 in self._strips():
                c0, c1 = y0 // 2, (y1 + 1) // 2
                out = (y[y0:y1], cb[c0:c1], cr[c0:c1])
                self._blend(levels[y0:y1], self._image_planes(y0, y1), out)
        else:
            self._blend(levels, (self.y, self.cb, self.cr), (y, cb, cr))
        for buf, plane in ((ybuf, y), (cbbuf, cb), (crbuf, cr)):
            _fill_padding(buf, *plane.shape)
        return y, cb, cr

    def encode(self, levels: np.ndarray) -> bytes:
        """The overlay of one map, JPEG-encoded (baseline, 4:2:0, ``quality``).

        Args:
            levels: uint8 ``[H, W]`` map levels.

        Returns:
            The JPEG file's bytes.
        """
        import simplejpeg

        return simplejpeg.encode_jpeg_yuv_planes(*self.planes(levels), quality=self.quality)
