"""The BoxAcc-against-tau plot of an ``eval --maps`` result, drawn with PIL (no matplotlib).

Pure drawing: a result dict in, an image (or PNG bytes) out; the caller writes the file.
"""

from __future__ import annotations

import io

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
    taus = list(result["taus"])
    curves = [("v1", "V1: largest box, IoU 0.5", result["boxacc"]["v1"])]
    for d, c in result["boxacc"]["v2"].items():
        curves.append((d, f"V2: all boxes, IoU {d}", c))
    w, h = size
    left, right, top, bottom = 80, 250, 50, 70
    pw, ph = w - left - right, h - top - bottom
    img = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(img)
    f_small, f_mid = _font(13), _font(16)
    x_lo, x_hi = 0.0, 1.0

    def px(t: float, v: float) -> tuple[float, float]:
        return left + (t - x_lo) / (x_hi - x_lo) * pw, top + (1.0 - v) * ph

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
    title = f"BoxAcc vs tau: MaxBoxAccV1 {100 * result.get('maxboxacc_v1', 0):.2f} %"
    if "maxboxacc_v2" in result:
        title += f", MaxBoxAccV2 {100 * result['maxboxacc_v2']:.2f} %"
    dr.text((left + pw / 2, 22), title, fill="black", font=f_mid, anchor="mm")
    for n, (key, label, ys) in enumerate(curves):
        color = _COLORS.get(key, (120, 120, 120))
        pts = [px(t, v) for t, v in zip(taus, ys)]
        if len(pts) > 1:
            dr.line(pts, fill=color, width=3 if key == "v1" else 2)
        if ys:
            b = max(range(len(ys)), key=lambda i: (ys[i], -i))
            bx, by = pts[b]
            dr.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline=color, width=2)
        ly = top + 10 + 26 * n
        dr.line([(left + pw + 15, ly), (left + pw + 45, ly)], fill=color, width=3)
        best = f" ({100 * max(ys):.1f} %)" if ys else ""
        dr.text((left + pw + 52, ly), label + best, fill="black", font=f_small, anchor="lm")
    if "best_tau" in result:
        bx, _ = px(result["best_tau"], 0)
        for y in range(top, top + ph, 8):
            dr.line([(bx, y), (bx, min(y + 4, top + ph))], fill=(90, 90, 90))
        dr.text(
            (bx + 4, top + 4),
            f"best tau {result['best_tau']:g}",
            fill=(90, 90, 90),
            font=f_small,
            anchor="la",
        )
    return img


def boxacc_png(result: dict) -> bytes:
    """:func:`boxacc_plot` of ``result`` at its default size, encoded as PNG.

    Raises:
        CamcliError: as :func:`boxacc_plot`.
    """
    buf = io.BytesIO()
    boxacc_plot(result).save(buf, format="PNG")
    return buf.getvalue()
