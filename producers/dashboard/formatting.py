"""Small formatting helpers the templates use (as ``fmt.<name>``)."""

from __future__ import annotations

import time


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def moment(at: float | None) -> str:
    """A UTC time of day (with the date when it is not today)."""
    if not at:
        return "—"
    today = time.strftime("%Y-%m-%d", time.gmtime())
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    clock = time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"
    return clock if day == today else f"{day} {clock}"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def short(text: str | None, chars: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def bars(values: list[int], width: int = 240, height: int = 48) -> list[dict[str, float]]:
    """Rectangles of a small bar chart (an SVG drawn by the template), tallest bar at full height."""
    top = max(values, default=0) or 1
    step = width / max(len(values), 1)
    return [
        {
            "x": index * step + 1,
            "w": max(step - 2, 1),
            "h": value / top * height,
            "y": height - value / top * height,
            "v": value,
        }
        for index, value in enumerate(values)
    ]


def percent(part: int, whole: int) -> float:
    return 0.0 if whole <= 0 else min(100.0, 100.0 * part / whole)
