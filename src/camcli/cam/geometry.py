"""How an original image became the network input: :class:`Geometry` (SPEC section 1).

Anisotropic resize (the default) or resize + centre crop; :mod:`camcli.cam.upsample` inverts
it to map CAMs back onto the original image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Geometry"]


@dataclass(frozen=True)
class Geometry:
    """How an original ``height x width`` image was turned into the ``size x size`` input.

    Coordinates of the properties are in pixels, rows (y) first; ranges are half-open
    ``[start, stop)``.

    Attributes:
        height: original image height H (>= 1).
        width: original image width W (>= 1).
        size: the network input side S (>= 1), 224 by default.
        mode: ``"resize"`` (default): anisotropic resize of the whole image to ``S x S`` (the
            official pipeline's and wsolevaluation's, SPEC section 1). ``"center_crop"``: resize
            the shorter side to ``short_side`` keeping the aspect ratio (longer side
            ``int(short_side * long / short)``, as torchvision ``Resize(int)``), then centre
            crop ``S x S`` exactly as ``torchvision.transforms.functional.center_crop`` does
            (``top = int(round((h_r - S) / 2.0))``; zero padding when the crop is larger).
        short_side: the ``center_crop`` resize target; defaults to ``round(S * 256 / 224)``
            (256 for 224, the ImageNet recipe). Unused by ``resize``.

    Raises:
        ValueError: a size that is not positive, or an unknown mode.
    """

    height: int
    width: int
    size: int = 224
    mode: Literal["resize", "center_crop"] = "resize"
    short_side: int | None = None

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image size must be positive, got {self.height}x{self.width}")
        if self.size < 1:
            raise ValueError(f"network input size must be positive, got {self.size}")
        if self.mode not in ("resize", "center_crop"):
            raise ValueError(f"unknown geometry mode {self.mode!r}; use 'resize' or 'center_crop'")
        if self.mode == "center_crop":
            if self.short_side is None:
                object.__setattr__(self, "short_side", round(self.size * 256 / 224))
            elif self.short_side < 1:
                raise ValueError(f"short_side must be positive, got {self.short_side}")

    def to_dict(self) -> dict:
        """``{"height", "width", "size", "mode", "short_side"}`` (``short_side`` None for
        ``resize``): what a map file stores to rebuild this geometry (:meth:`from_dict`)."""
        return {
            "height": self.height,
            "width": self.width,
            "size": self.size,
            "mode": self.mode,
            "short_side": self.short_side if self.mode == "center_crop" else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        """The geometry :meth:`to_dict` described.

        Raises:
            ValueError: a missing or bad field (the message names it).
        """
        try:
            short = d.get("short_side")
            return cls(
                height=int(d["height"]),
                width=int(d["width"]),
                size=int(d["size"]),
                mode=str(d["mode"]),  # type: ignore[arg-type]
                short_side=None if short is None else int(short),
            )
        except KeyError as exc:
            raise ValueError(f"geometry without {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad geometry ({exc})") from None

    @property
    def resized_hw(self) -> tuple[int, int]:
        """(h_r, w_r): the image size after the resize step (``(size, size)`` for ``resize``)."""
        if self.mode == "resize":
            return self.size, self.size
        r = int(self.short_side)  # type: ignore[arg-type]
        h, w = self.height, self.width
        if w <= h:
            return int(r * h / w), r
        return r, int(r * w / h)

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(top, left) of the crop in the resized image; negative where the crop was padded."""
        if self.mode == "resize":
            return 0, 0
        h_r, w_r = self.resized_hw
        s = self.size

        def _offset(n: int) -> int:
            if s > n:  # torchvision pads (s - n) // 2 before, then crops at 0
                return -((s - n) // 2)
            return round((n - s) / 2.0)

        return _offset(h_r), _offset(w_r)

    @property
    def crop_region(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the crop's extent in ORIGINAL pixels, rounded to the pixel grid.

        May reach outside ``[0, height) x [0, width)`` when the crop was zero padded. For
        ``resize`` it is the whole image ``(0, height, 0, width)``.
        """
        if self.mode == "resize":
            return 0, self.height, 0, self.width
        h_r, w_r = self.resized_hw
        top, left = self.crop_offset
        sy, sx = self.height / h_r, self.width / w_r
        y0, y1 = round(top * sy), round((top + self.size) * sy)
        x0, x1 = round(left * sx), round((left + self.size) * sx)
        return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)
