"""Large numbers a person can read at a glance: 8,174,317,568 FLOPs -> "8.17 G" (the exact value goes in a help)."""

from __future__ import annotations

UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human(n: float, unit: str = "", exact_below: float = 1e6) -> str:
    """`n` with a k/M/G/T prefix and three significant digits ("8.17 GFLOPs" with unit="FLOPs"); numbers under
    `exact_below` stay exact with thousands separators ("431,080"), since six digits fit any metric box."""
    sign = "-" if n < 0 else ""
    size = abs(float(n))
    if size < exact_below:
        text = f"{size:,.0f}" if float(size).is_integer() or size >= 100 else f"{size:.3g}"
        return f"{sign}{text} {unit}".rstrip()
    for index, (scale, prefix) in enumerate(UNITS):
        if size >= scale:
            value = size / scale
            if float(f"{value:.3g}") >= 1000 and index > 0:  # 999,999 rounds to 1000 k: say 1 M
                scale, prefix = UNITS[index - 1]
                value = size / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
            return f"{sign}{text} {prefix}{unit}"
    return f"{sign}{size:.3g} {unit}".rstrip()  # exact_below under 1000 and a number under 1000


def duration(seconds: float) -> str:
    """A time left as a clock reads: 3725 -> "1:02:05", 114 -> "1:54", 7 -> "0:07"."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
