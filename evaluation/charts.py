"""The evaluation figures, drawn with Pillow (no plotting library needed): line charts such as the
cumulative error distribution (CED), and colour maps for error heat-maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct line colours (Okabe-Ito, readable by colour-blind readers).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233), (0, 0, 0))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, count: int = 5) -> np.ndarray:
    """About ``count`` round tick values in [lo, hi]."""
    raw = (hi - lo) / count
    step = 10 ** np.floor(np.log10(raw))
    step *= min((m for m in (1, 2, 2.5, 5, 10) if m * step >= raw), default=10)
    return np.arange(np.ceil(lo / step) * step, hi + step * 1e-6, step)


def line_chart(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float],
    y_range: tuple[float, float] = (0.0, 1.0),
    markers: Sequence[float] = (),
    size: tuple[int, int] = (900, 600),
) -> np.ndarray:
    """A line chart as uint8 (H, W, 3) RGB: one line per ``(label, x, y)`` (float arrays, drawn as step
    lines where x repeats), dashed vertical ``markers`` at given x, a legend, axes with round ticks."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(18), _font(14)
    left, right, top, bottom = 80, width - 20, 50, height - 60
    (x0, x1), (y0, y1) = x_range, y_range

    def to_px(x: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        px = left + (np.clip(x, x0, x1) - x0) / (x1 - x0) * (right - left)
        py = bottom - (np.clip(y, y0, y1) - y0) / (y1 - y0) * (bottom - top)
        return list(zip(px.tolist(), py.tolist(), strict=True))

    for tick in _ticks(x0, x1):
        ((px, _),) = to_px(np.array([tick]), np.array([y0]))
        draw.line([(px, top), (px, bottom)], fill=(225, 225, 225))
        draw.text((px, bottom + 6), f"{tick:g}", fill="black", font=small, anchor="mt")
    for tick in _ticks(y0, y1):
        ((_, py),) = to_px(np.array([x0]), np.array([tick]))
        draw.line([(left, py), (right, py)], fill=(225, 225, 225))
        draw.text((left - 6, py), f"{tick:g}", fill="black", font=small, anchor="rm")
    for marker in markers:
        ((px, _),) = to_px(np.array([marker]), np.array([y0]))
        for y in range(top, bottom, 12):
            draw.line([(px, y), (px, min(y + 6, bottom))], fill=(120, 120, 120), width=1)
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, (_, xs, ys) in enumerate(series):
        draw.line(to_px(np.asarray(xs, np.float64), np.asarray(ys, np.float64)), fill=PALETTE[i % 7], width=3)
    if series:  # the legend, on white over the lines
        draw.rectangle([right - 210, top + 1, right - 1, top + 24 * len(series)], fill="white", outline="grey")
    for i, (label, _, _) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        ly = top + 12 + 24 * i
        draw.line([(right - 200, ly), (right - 170, ly)], fill=colour, width=3)
        draw.text((right - 162, ly), label, fill="black", font=small, anchor="lm")
    draw.text((width / 2, 24), title, fill="black", font=font, anchor="mm")
    draw.text(((left + right) / 2, height - 18), x_label, fill="black", font=font, anchor="mm")
    y_title = Image.new("RGB", (bottom - top, 28), "white")
    ImageDraw.Draw(y_title).text(((bottom - top) / 2, 14), y_label, fill="black", font=font, anchor="mm")
    image.paste(y_title.rotate(90, expand=True), (8, top))
    return np.asarray(image)


def cumulative_distribution(errors: np.ndarray, x_max: float, samples: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative error distribution of ``errors`` (failures given as inf count as never reached):
    x float64 (samples,) in [0, x_max], y the fraction of errors <= x."""
    errors = np.sort(np.asarray(errors, np.float64))
    x = np.linspace(0.0, x_max, samples)
    return x, np.searchsorted(errors, x, side="right") / max(len(errors), 1)


def colour_map(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """float (...) values -> uint8 (..., 3) RGB on a blue-cyan-yellow-red ramp over [lo, hi]."""
    stops = np.array([[49, 54, 149], [69, 117, 180], [116, 173, 209], [254, 224, 144], [244, 109, 67], [165, 0, 38]])
    t = np.clip((np.asarray(values, np.float64) - lo) / max(hi - lo, 1e-12), 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return np.round(stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def colour_bar(height: int, lo: float, hi: float, unit: str, width: int = 110) -> np.ndarray:
    """A vertical colour bar for :func:`colour_map` with labelled ticks, uint8 (height, width, 3)."""
    image = Image.new("RGB", (width, height), "white")
    ramp = colour_map(np.linspace(hi, lo, height - 40)[:, None].repeat(24, 1), lo, hi)
    image.paste(Image.fromarray(ramp), (10, 20))
    draw = ImageDraw.Draw(image)
    small = _font(14)
    for tick in _ticks(lo, hi):
        y = 20 + (hi - tick) / max(hi - lo, 1e-12) * (height - 41)
        draw.line([(34, y), (40, y)], fill="black")
        draw.text((44, y), f"{tick:g}", fill="black", font=small, anchor="lm")
    draw.text((10, height - 10), unit, fill="black", font=small, anchor="lm")
    return np.asarray(image)


def bar_chart(
    bars: Sequence[tuple[str, float, float]], title: str, x_label: str, size: tuple[int, int] = (900, 0)
) -> np.ndarray:
    """Horizontal bars as uint8 (H, W, 3) RGB: one per ``(label, value, whisker)``, the bar to ``value``
    with a tick at ``whisker`` (e.g. median and 90th percentile), the value written beside it."""
    width = size[0]
    height = size[1] or 110 + 40 * len(bars)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(18), _font(14)
    left, right, top = 170, width - 90, 50
    bottom = height - 50
    top_value = max([w for _, _, w in bars] + [v for _, v, _ in bars] + [1e-9])
    x_max = float(_ticks(0.0, top_value * 1.05)[-1]) if top_value > 0 else 1.0
    x_max = max(x_max, top_value * 1.05)

    def px(value: float) -> float:
        return left + value / x_max * (right - left)

    for tick in _ticks(0.0, x_max):
        draw.line([(px(tick), top), (px(tick), bottom)], fill=(225, 225, 225))
        draw.text((px(tick), bottom + 6), f"{tick:g}", fill="black", font=small, anchor="mt")
    for i, (label, value, whisker) in enumerate(bars):
        y = top + 20 + 40 * i
        draw.rectangle([left, y - 12, px(value), y + 12], fill=PALETTE[i % len(PALETTE)])
        draw.line([(px(whisker), y - 16), (px(whisker), y + 16)], fill="black", width=2)
        draw.line([(px(value), y), (px(whisker), y)], fill="black", width=1)
        draw.text((left - 8, y), label, fill="black", font=small, anchor="rm")
        draw.text((max(px(value), px(whisker)) + 6, y), f"{value:.1f}", fill="black", font=small, anchor="lm")
    draw.line([(left, top), (left, bottom)], fill="black")
    draw.text((width / 2, 24), title, fill="black", font=font, anchor="mm")
    draw.text(((left + right) / 2, height - 16), x_label, fill="black", font=font, anchor="mm")
    return np.asarray(image)
