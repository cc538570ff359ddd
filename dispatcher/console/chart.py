"""Deliveries per minute by status, the last hour, as inline SVG drawn on the server.

No JavaScript and no chart library: one stacked bar per minute, a ``<title>``
on each bar for the exact numbers (browsers show it on hover).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from markupsafe import Markup, escape

MINUTES = 60
STATUSES = ("done", "pending", "dead")  # bottom to top; colours come from the stylesheet

WIDTH, HEIGHT = 720, 160
LEFT, BOTTOM, TOP = 36, 22, 8  # room for the axis labels
BAR_GAP = 2


def per_minute_grid(
    rows: Iterable[tuple[int, str, int]], now: float
) -> tuple[list[int], dict[str, list[int]]]:
    """The last hour's minutes (oldest first) and, per status, the count in each."""
    last = int(now // 60) * 60
    minutes = [last - 60 * (MINUTES - 1 - i) for i in range(MINUTES)]
    position = {minute: i for i, minute in enumerate(minutes)}
    counts = {status: [0] * MINUTES for status in STATUSES}
    for minute, status, count in rows:
        i = position.get(int(minute))
        if i is not None and status in counts:
            counts[status][i] += count
    return minutes, counts


def deliveries_chart(rows: Iterable[tuple[int, str, int]], now: float) -> Markup:
    minutes, counts = per_minute_grid(rows, now)
    totals = [sum(counts[status][i] for status in STATUSES) for i in range(MINUTES)]
    peak = max(totals) or 1
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / MINUTES
    bar_w = max(step - BAR_GAP, 1.0)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="Deliveries per minute by status, last hour ({sum(totals)} in all)">',
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}"/>',
        f'<text class="label" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{peak}</text>',
        f'<text class="label" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    for i, minute in enumerate(minutes):
        if not totals[i]:
            continue
        x = LEFT + i * step + BAR_GAP / 2
        y = TOP + plot_h
        tip = ", ".join(f"{counts[s][i]} {s}" for s in STATUSES if counts[s][i])
        parts.append(f"<g><title>{escape(_clock(minute))}: {escape(tip)}</title>")
        for status in STATUSES:
            count = counts[status][i]
            if not count:
                continue
            h = count / peak * plot_h
            y -= h
            parts.append(
                f'<rect class="bar {status}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}"/>'
            )
        parts.append("</g>")
    for i, text in ((0, "-60 min"), (MINUTES // 2, "-30 min"), (MINUTES - 1, "now")):
        x = LEFT + i * step + step / 2
        anchor = "start" if i == 0 else "end" if i == MINUTES - 1 else "middle"
        parts.append(
            f'<text class="label" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{text}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def status_totals(rows: Iterable[tuple[int, str, int]], now: float) -> dict[str, int]:
    _, counts = per_minute_grid(rows, now)
    return {status: sum(counts[status]) for status in STATUSES}


def _clock(minute: int) -> str:
    return datetime.fromtimestamp(minute, UTC).strftime("%H:%M UTC")
