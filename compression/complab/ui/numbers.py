"""The one number formatter of the app and the report: large numbers ("8.17 G"), counts with separators, scores
with their 95% interval, changes in points ("no change" near zero), speed ratios in words, and which way a change
is good (green means better). The exact value of a shortened number goes in a help."""

from __future__ import annotations

import math

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


# ---- the one formatter of scores, changes and ratios: every page and the HTML report use these -------------------

NO_CHANGE_PTS = 0.05  # a change that rounds to 0.0 points is "no change", never "-0.00 pts"
SPEED_NOISE = 0.05  # a latency ratio within 5% of 1 is "same speed" (repeated CPU timings move that much)


def count(n: float) -> str:
    """An exact count with thousands separators: 4816896 -> "4,816,896"."""
    return f"{round(float(n)):,}"


def percent(fraction: float, digits: int = 1) -> str:
    """A fraction as a percentage: 0.475 -> "47.5%"."""
    return f"{100 * float(fraction):.{digits}f}%"


def interval(fraction: float, n: int | None, digits: int = 1) -> str:
    """The 95% interval of an accuracy measured on n images ("33.0-62.6%"); "" when n is unknown."""
    from complab.intervals import wilson

    if not n:
        return ""
    low, high = wilson(fraction, int(n))
    return f"{100 * low:.{digits}f}-{100 * high:.{digits}f}%"


def score(fraction: float, n: int | None = None, digits: int = 1) -> str:
    """An accuracy with its 95% interval when the split size is known: "47.5% (95% CI 33.0-62.6%, 40 images)"."""
    text = percent(fraction, digits)
    return f"{text} (95% CI {interval(fraction, n, digits)}, {count(n)} images)" if n else text


def points(delta_fraction: float, digits: int = 1) -> str:
    """A change of score in points, signed: +1.4 pts, -0.3 pts; "no change" when it rounds to zero."""
    pts = 100 * float(delta_fraction)
    if abs(pts) < NO_CHANGE_PTS * 10 ** (1 - digits):
        return "no change"
    return f"{pts:+.{digits}f} pts"


def speed(ratio: float, noise: float = SPEED_NOISE) -> str:
    """A latency ratio (original / compressed) in words: "1.4x faster", "1.3x slower", "same speed"."""
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio <= 0:
        return "not measured"
    if abs(ratio - 1.0) <= noise:
        return "same speed"
    return f"{ratio:.1f}x faster" if ratio > 1 else f"{1 / ratio:.1f}x slower"


HIGHER_IS_BETTER = {"accuracy": True, "map50": True, "map50_95": True, "compression_ratio": True,
                    "speedup": True, "bytes": False, "compressed_bytes": False, "flops": False,
                    "sparse_flops": False, "params": False, "latency_ms": False}


def delta_color(metric: str, delta: float, threshold: float = 0.0) -> str:
    """st.metric's delta_color for a change of `metric`: green means better whatever the sign ("-85%" FLOPs is
    good), "off" (grey) when the change is within `threshold` of zero."""
    if abs(float(delta)) <= threshold:
        return "off"
    return "normal" if HIGHER_IS_BETTER.get(metric, True) else "inverse"
