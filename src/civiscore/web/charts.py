"""Charts drawn on the server as inline SVG: no JavaScript, no CDN, readable in print.

Each chart has a <title> and <desc> for screen readers, and the page shows the same numbers
as a table beside it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

PALETTE = {
    "AAA": "#1a7f37",
    "AA": "#2da44e",
    "A": "#6cc644",
    "B": "#d4a72c",
    "C": "#e16f24",
    "D": "#cf222e",
}


def _svg(width: int, height: int, title: str, desc: str, body: str) -> Markup:
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'class="chart" aria-labelledby="t d"><title id="t">{escape(title)}</title>'
        f'<desc id="d">{escape(desc)}</desc>{body}</svg>'
    )


def band_scale(bands: Sequence[tuple[str, float | None]], score: float, band: str) -> Markup:
    """The bands from worst to best as a bar, with a marker at the score.

    ``bands`` is best first, as in the rulebook: (name, min).
    """
    ordered = list(reversed(bands))
    lows = [m if m is not None else 0.0 for _, m in ordered]
    lo = min(min(lows[1:], default=0.0) - 150, score - 50)
    hi = max(max(lows) + 100, score + 50)
    width, height, left, right = 640, 90, 10, 630

    def x(v: float) -> float:
        return left + (right - left) * (v - lo) / (hi - lo)

    parts = []
    for i, (name, low) in enumerate(ordered):
        start = lo if low is None or i == 0 else low
        end = hi if i == len(ordered) - 1 else (ordered[i + 1][1] or hi)
        x0, x1 = x(start), x(end)
        parts.append(
            f'<rect x="{x0:.1f}" y="20" width="{max(0.0, x1 - x0):.1f}" height="30" '
            f'fill="{PALETTE.get(name, "#8c959f")}"/>'
            f'<text x="{(x0 + x1) / 2:.1f}" y="40" text-anchor="middle" font-size="13" '
            f'fill="#fff" font-weight="bold">{escape(name)}</text>'
        )
        if low is not None and i > 0:
            parts.append(
                f'<text x="{x0:.1f}" y="66" text-anchor="middle" font-size="11">{low:g}</text>'
            )
    sx = x(score)
    parts.append(
        f'<polygon points="{sx - 7:.1f},6 {sx + 7:.1f},6 {sx:.1f},18" fill="#24292f"/>'
        f'<text x="{sx:.1f}" y="84" text-anchor="middle" font-size="12" font-weight="bold">'
        f"score {score:g}</text>"
    )
    desc = f"Score {score:g}, band {band}. Bands from worst to best: " + ", ".join(
        f"{n} from {m:g}" if m is not None else f"{n} below" for n, m in ordered
    )
    return _svg(width, height, "Band scale", desc, "".join(parts))


def histogram(counts: Sequence[tuple[str, int]], title: str, unit: str = "subjects") -> Markup:
    """Vertical bars with their values, e.g. subjects per band."""
    width, height, top, bottom, left = 640, 260, 20, 220, 50
    peak = max([c for _, c in counts] + [1])
    slot = (width - left - 10) / max(len(counts), 1)
    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}" stroke="#57606a"/>',
        f'<text x="12" y="{(top + bottom) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 12 {(top + bottom) / 2})">{escape(unit)}</text>',
    ]
    for i, (label, count) in enumerate(counts):
        h = (bottom - top) * count / peak
        x0 = left + i * slot + slot * 0.15
        parts.append(
            f'<rect x="{x0:.1f}" y="{bottom - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
            f'fill="{PALETTE.get(label, "#0969da")}">'
            f"<title>{escape(label)}: {count:,}</title></rect>"
            f'<text x="{x0 + slot * 0.35:.1f}" y="{bottom - h - 4:.1f}" text-anchor="middle" '
            f'font-size="11">{count:,}</text>'
            f'<text x="{x0 + slot * 0.35:.1f}" y="{bottom + 16}" text-anchor="middle" '
            f'font-size="12">{escape(label)}</text>'
        )
    desc = "; ".join(f"{label}: {count:,} {unit}" for label, count in counts)
    return _svg(width, height, title, desc, "".join(parts))


def line_chart(
    series: Sequence[tuple[dt.date, float]], title: str, unit: str, baseline: float | None = None
) -> Markup:
    """A step line over time (e.g. a score month by month)."""
    width, height, left, right, top, bottom = 640, 240, 60, 620, 20, 200
    if not series:
        return _svg(width, height, title, "no data", "")
    values = [v for _, v in series] + ([baseline] if baseline is not None else [])
    lo, hi = min(values) - 10, max(values) + 10
    n = len(series)

    def x(i: int) -> float:
        return left + (right - left) * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return bottom - (bottom - top) * (v - lo) / (hi - lo)

    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#57606a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#57606a"/>',
        f'<text x="14" y="{(top + bottom) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2})">{escape(unit)}</text>',
        f'<text x="{left - 6}" y="{y(hi) + 4:.1f}" font-size="11" text-anchor="end">{hi:g}</text>',
        f'<text x="{left - 6}" y="{y(lo) + 4:.1f}" font-size="11" text-anchor="end">{lo:g}</text>',
    ]
    if baseline is not None:
        parts.append(
            f'<line x1="{left}" y1="{y(baseline):.1f}" x2="{right}" y2="{y(baseline):.1f}" '
            f'stroke="#8c959f" stroke-dasharray="4 4"/>'
        )
    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, (_, v) in enumerate(series))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#0969da" stroke-width="2"/>')
    previous = None
    for i, (day, v) in enumerate(series):
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="#0969da">'
            f"<title>{day:%Y-%m}: {v:g}</title></circle>"
        )
        if previous is not None and v != previous:
            # Mark each move with its size; the table below the chart names the records.
            parts.append(
                f'<text x="{x(i):.1f}" y="{y(v) - 8:.1f}" font-size="11" text-anchor="middle" '
                f'font-weight="bold">{v - previous:+g}</text>'
            )
        previous = v
        if i % max(1, n // 6) == 0 or i == n - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{bottom + 16}" font-size="11" text-anchor="middle">'
                f"{day:%Y-%m}</text>"
            )
    desc = "; ".join(f"{day:%Y-%m}: {v:g}" for day, v in series)
    return _svg(width, height, title, desc, "".join(parts))


def hbar(counts: Sequence[tuple[str, int]], title: str, unit: str = "subjects") -> Markup:
    """Horizontal bars with the label on the left: for long labels such as service names."""
    row, left, width = 26, 200, 640
    height = row * max(len(counts), 1) + 10
    peak = max([c for _, c in counts] + [1])
    parts = []
    for i, (label, count) in enumerate(counts):
        y = 5 + i * row
        w = (width - left - 60) * count / peak
        parts.append(
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" font-size="12">'
            f"{escape(label)}</text>"
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="#0969da">'
            f"<title>{escape(label)}: {count:,} {escape(unit)}</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y + 16}" font-size="12">{count:,}</text>'
        )
    desc = "; ".join(f"{label}: {count:,} {unit}" for label, count in counts)
    return _svg(width, height, title, desc, "".join(parts))


SERIES_COLOURS = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bc4c00", "#57606a")


def multi_line(series: dict[str, Sequence[tuple[dt.date, float]]], title: str, unit: str) -> Markup:
    """Several lines over the same dates (e.g. subjects per listing, snapshot by snapshot)."""
    width, height, left, right, top, bottom = 640, 260, 60, 470, 20, 200
    dates = sorted({d for pts in series.values() for d, _ in pts})
    if not dates:
        return _svg(width, height, title, "no data", "")
    peak = max([v for pts in series.values() for _, v in pts] + [1])
    index = {d: i for i, d in enumerate(dates)}

    def x(d: dt.date) -> float:
        return left + (right - left) * (index[d] / max(len(dates) - 1, 1))

    def y(v: float) -> float:
        return bottom - (bottom - top) * v / peak

    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#57606a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#57606a"/>',
        f'<text x="14" y="{(top + bottom) / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + bottom) / 2})">{escape(unit)}</text>',
        f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{peak:g}</text>',
        f'<text x="{left - 6}" y="{bottom + 4}" font-size="11" text-anchor="end">0</text>',
        f'<text x="{left}" y="{bottom + 16}" font-size="11">{dates[0]:%Y-%m-%d}</text>',
        f'<text x="{right}" y="{bottom + 16}" font-size="11" text-anchor="end">'
        f"{dates[-1]:%Y-%m-%d}</text>",
    ]
    for n, (name, pts) in enumerate(sorted(series.items())):
        colour = SERIES_COLOURS[n % len(SERIES_COLOURS)]
        ordered = sorted(pts)
        points = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in ordered)
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for d, v in ordered:
            parts.append(
                f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {d:%Y-%m-%d}: {v:g}</title></circle>"
            )
        parts.append(
            f'<rect x="{right + 14}" y="{top + n * 18}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{right + 30}" y="{top + n * 18 + 10}" font-size="11">{escape(name)}</text>'
        )
    desc = "; ".join(
        f"{name}: " + ", ".join(f"{d:%Y-%m-%d} {v:g}" for d, v in sorted(pts))
        for name, pts in sorted(series.items())
    )
    return _svg(width, height, title, desc, "".join(parts))
