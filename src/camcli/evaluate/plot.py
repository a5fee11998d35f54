"""The BoxAcc-against-tau plot of an ``eval --maps`` result, drawn with PIL (no matplotlib).

Pure drawing: a result dict in, an image (or PNG bytes) out; the caller writes the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from camcli.errors import CamcliError

__all__ = ["boxacc_plot", "boxacc_png"]

_COLORS = {"v1": (0, 0, 0), "0.3": (31, 119, 180), "0.5": (214, 39, 40), "0.7": (44, 160, 44)}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def boxacc_plot(result: dict, size: tuple[int, int] = (900, 560)):
    """A picture of BoxAcc (%) against tau: V1 (largest box, IoU 0.5) and V2 per IoU, with
    each curve's best tau marked.

    Args:
        result: an ``eval --maps`` result (``taus``, ``boxacc`` curves; ``maxboxacc_v1``,
            ``maxboxacc_v2`` and ``best_tau`` when present).
        size: ``(width, height)`` in pixels.

    Returns:
        A PIL RGB image.

    Raises:
        CamcliError: the result has no BoxAcc curves (no image was scored on a map).
    """
    from PIL import Image, ImageDraw

    if not result.get("taus") or not result.get("boxacc"):
        raise CamcliError("--plot: no BoxAcc curves to draw (no image was scored on a map)")
    w, h = size
    left, right, top, bottom = 80, 250, 50, 70
    frame = _Frame(left, top, w - left - right, h - top - bottom)
    img = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(img)
    f_small, f_mid = _font(13), _font(16)
    _draw_axes(img, dr, frame, h, f_small, f_mid)
    _draw_title(dr, frame, result, f_mid)
    _draw_curves(dr, frame, list(result["taus"]), _curves(result), f_small)
    if "best_tau" in result:
        _draw_best_tau(dr, frame, result["best_tau"], f_small)
    return img


@dataclass(frozen=True)
class _Frame:
    """The plot area: its top-left corner and size in pixels; tau 0..1 across, 100..0 % down."""

    left: int
    top: int
    pw: int
    ph: int
    x_lo: float = 0.0
    x_hi: float = 1.0

    def px(self, t: float, v: float) -> tuple[float, float]:
        """The pixel of tau ``t`` and BoxAcc fraction ``v``."""
        return (
            self.left + (t - self.x_lo) / (self.x_hi - self.x_lo) * self.pw,
            self.top + (1.0 - v) * self.ph,
        )


def _curves(result: dict) -> list[tuple[str, str, list]]:
    """``(key, legend label, BoxAcc per tau)``: V1, then V2 per IoU threshold."""
    curves = [("v1", "V1: largest box, IoU 0.5", result["boxacc"]["v1"])]
    for d, c in result["boxacc"]["v2"].items():
        curves.append((d, f"V2: all boxes, IoU {d}", c))
    return curves


def _draw_axes(img, dr, frame: _Frame, h: int, f_small, f_mid) -> None:
    """Grid, tick labels, the frame and both axis titles (the BoxAcc one rotated)."""
    from PIL import Image, ImageDraw

    left, top, pw, ph = frame.left, frame.top, frame.pw, frame.ph
    for k in range(11):
        gx, gy = left + k * pw / 10, top + k * ph / 10
        dr.line([(gx, top), (gx, top + ph)], fill=(225, 225, 225))
        dr.line([(left, gy), (left + pw, gy)], fill=(225, 225, 225))
        dr.text((gx, top + ph + 8), f"{k / 10:.1f}", fill="black", font=f_small, anchor="mt")
        dr.text((left - 8, gy), f"{100 - 10 * k}", fill="black", font=f_small, anchor="rm")
    dr.rectangle([left, top, left + pw, top + ph], outline="black")
    dr.text((left + pw / 2, h - 22), "tau (map threshold)", fill="black", font=f_mid, anchor="mm")
    ylab = Image.new("RGB", (200, 24), "white")
    ImageDraw.Draw(ylab).text((100, 12), "BoxAcc (%)", fill="black", font=f_mid, anchor="mm")
    img.paste(ylab.rotate(90, expand=True), (12, top + ph // 2 - 100))


def _draw_title(dr, frame: _Frame, result: dict, f_mid) -> None:
    """The title with MaxBoxAccV1 (and V2 when present)."""
    title = f"BoxAcc vs tau: MaxBoxAccV1 {100 * result.get('maxboxacc_v1', 0):.2f} %"
    if "maxboxacc_v2" in result:
        title += f", MaxBoxAccV2 {100 * result['maxboxacc_v2']:.2f} %"
    dr.text((frame.left + frame.pw / 2, 22), title, fill="black", font=f_mid, anchor="mm")


def _draw_curves(dr, frame: _Frame, taus: list, curves: list, f_small) -> None:
    """Each curve with its best point circled, and its legend entry with its best BoxAcc."""
    for n, (key, label, ys) in enumerate(curves):
        color = _COLORS.get(key, (120, 120, 120))
        pts = [frame.px(t, v) for t, v in zip(taus, ys)]
        if len(pts) > 1:
            dr.line(pts, fill=color, width=3 if key == "v1" else 2)
        if ys:
            b = max(range(len(ys)), key=lambda i: (ys[i], -i))
            bx, by = pts[b]
            dr.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline=color, width=2)
        ly = frame.top + 10 + 26 * n
        lx = frame.left + frame.pw
        dr.line([(lx + 15, ly), (lx + 45, ly)], fill=color, width=3)
        best = f" ({100 * max(ys):.1f} %)" if ys else ""
        dr.text((lx + 52, ly), label + best, fill="black", font=f_small, anchor="lm")


def _draw_best_tau(dr, frame: _Frame, best_tau: float, f_small) -> None:
    """A dashed vertical line at the best tau, labelled."""
    top, ph = frame.top, frame.ph
    bx, _ = frame.px(best_tau, 0)
    for y in range(top, top + ph, 8):
        dr.line([(bx, y), (bx, min(y + 4, top + ph))], fill=(90, 90, 90))
    dr.text(
        (bx + 4, top + 4),
        f"best tau {best_tau:g}",
        fill=(90, 90, 90),
        font=f_small,
        anchor="la",
    )


def boxacc_png(result: dict) -> bytes:
    """:func:`boxacc_plot` of ``result`` at its default size, encoded as PNG.

    Raises:
        CamcliError: as :func:`boxacc_plot`.
    """
    buf = io.BytesIO()
    boxacc_plot(result).save(buf, format="PNG")
    return buf.getvalue()
