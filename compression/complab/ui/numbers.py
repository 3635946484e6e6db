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


def ms(value: float) -> str:
    """Milliseconds as a latency is read: "0.44 ms", "12.3 ms", "1,204 ms"."""
    value = float(value)
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 1000 else f"{value:,.0f} ms"


def latency_change(before: float | None, after: float | None) -> str:
    """A latency before and after with the speed-up in words: "12.3 -> 6.40 ms (1.9x faster)"; the one side
    measured alone when the other was not ("6.40 ms"); "" when neither was."""
    if before and after:
        return f"{ms(before).removesuffix(' ms')} -> {ms(after)} ({speed(float(before) / float(after))})"
    return ms(after or before) if (after or before) else ""


HIGHER_IS_BETTER = {"accuracy": True, "map50": True, "map50_95": True, "compression_ratio": True,
                    "speedup": True, "bytes": False, "compressed_bytes": False, "flops": False,
                    "sparse_flops": False, "params": False, "latency_ms": False,
                    "ort_latency_ms": False}


def delta_color(metric: str, delta: float, threshold: float = 0.0) -> str:
    """st.metric's delta_color for a change of `metric`: green means better whatever the sign ("-85%" FLOPs is
    good), "off" (grey) when the change is within `threshold` of zero."""
    if abs(float(delta)) <= threshold:
        return "off"
    return "normal" if HIGHER_IS_BETTER.get(metric, True) else "inverse"


# ---- relative changes, their colour, and the verdict on a score's change --------------------------------------

NO_CHANGE_PERCENT = 0.5  # a relative change that rounds to 0% is "no change"
TONE_COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "same": "#6e7781"}  # green, red, grey (HTML)


def times(ratio: float, digits: int = 1) -> str:
    """A ratio as "39.1x"; "-" when it was not measured (None, zero or not finite)."""
    if ratio is None or not math.isfinite(float(ratio)) or float(ratio) <= 0:
        return "-"
    return f"{float(ratio):,.{digits}f}x"


def signed(n: float) -> str:
    """A signed count with separators, for a step of bytes or parameters: -73493 -> "-73,493", 12 -> "+12"."""
    return f"{round(float(n)):+,}"


def change(before: float, after: float, digits: int = 0) -> str:
    """The relative change from `before` to `after`, signed: 1000 -> 150 reads "-85%"; "no change" when it rounds to
    zero; "-" when `before` is zero or unknown (no base to divide by)."""
    if before is None or after is None or not float(before):
        return "-"
    pct = 100 * (float(after) - float(before)) / abs(float(before))
    if abs(pct) < NO_CHANGE_PERCENT * 10 ** -digits:
        return "no change"
    return f"{pct:+,.{digits}f}%"


def tone(metric: str, delta: float, threshold: float = 0.0) -> str:
    """Whether a change (after - before) of `metric` is "better", "worse" or the "same" (within `threshold`):
    fewer bytes, FLOPs or milliseconds are better, more accuracy is better."""
    delta = float(delta)
    if abs(delta) <= threshold or not math.isfinite(delta):
        return "same"
    return "better" if (delta > 0) == HIGHER_IS_BETTER.get(metric, True) else "worse"


def change_colour(metric: str, before: float, after: float) -> str:
    """The HTML colour of a change of `metric` from `before` to `after`: green better, red worse, grey no change
    ("-85%" FLOPs is green, "-1.4 pts" accuracy red, "no change" grey)."""
    if before is None or after is None:
        return TONE_COLOURS["same"]
    shown = change(before, after)
    return TONE_COLOURS["same" if shown in ("no change", "-") else tone(metric, float(after) - float(before))]


def _pts(fraction: float) -> str:
    """Points without sign, one decimal (two below a tenth of a point, so a real change never reads 0.0)."""
    value = abs(100 * float(fraction))
    return f"{value:.2f}" if value < 0.1 else f"{value:.1f}"


def verdict(before: float, n_before: int | None, after: float, n_after: int | None, split: str = "test",
            unknown: str = "test-set size not recorded, so its noise is unknown") -> str:
    """One sentence on a score's change from `before` to `after` (fractions) measured on n_before and n_after images
    of the `split`: "within noise (±1.1 pts on 1,000 test images)" when the 95% interval of the difference
    (intervals.difference) holds zero, else "costs 1.4 points (95% CI 0.3-2.5 pts, ...)" or "gains 0.8 points
    (...)". Without the split's size (an old run) the change is said with `unknown` in brackets."""
    from complab.intervals import difference

    drop = float(before) - float(after)
    said = ("no change" if abs(100 * drop) < NO_CHANGE_PTS else
            f"costs {_pts(drop)} points" if drop > 0 else f"gains {_pts(drop)} points")
    if not n_before or not n_after:
        return f"{said} ({unknown})"
    images = (f"{count(n_after)} {split} images" if int(n_before) == int(n_after)
              else f"{count(n_before)} and {count(n_after)} {split} images")
    low, high = difference(before, int(n_before), after, int(n_after))
    if low <= 0 <= high:
        return f"within noise (±{_pts((high - low) / 2)} pts on {images})"
    return f"{said} (95% CI {_pts(low)}-{_pts(high)} pts on {images})" if drop > 0 else \
        f"{said} (95% CI {_pts(-high)}-{_pts(-low)} pts on {images})"


# ---- a detector's mAP and its 95% bootstrap interval (models/detector.map_intervals) ----------------------------


def map_score(value: float, span: list[float] | None = None, n: int | None = None) -> str:
    """An mAP with its bootstrap interval when the run recorded one: "0.812 (95% CI 0.770-0.850, bootstrap over 40
    images)"; the number alone without it."""
    text = f"{float(value):.3f}"
    if not span:
        return text
    over = f", bootstrap over {count(n)} images" if n else ", bootstrap over the images"
    return f"{text} (95% CI {float(span[0]):.3f}-{float(span[1]):.3f}{over})"


def map_help(measured: dict, key: str = "map50") -> str | None:
    """A metric box's help for a detector's mAP (`key` "map50" or "map50_95" of a measured dict or a run's side):
    the number with its recorded 95% bootstrap interval; None when none was recorded (an older run)."""
    from complab.intervals import recorded

    span = recorded(measured.get(f"{key}_interval"))
    value = measured.get(key)
    if span is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return map_score(value, list(span), measured.get("images"))


def map_verdict(before: float, span_before: list[float], after: float, span_after: list[float],
                n: int | None, split: str = "validation") -> str:
    """One phrase on an mAP's change from the two 95% bootstrap intervals, shaped as `verdict`'s: "within noise
    (the 95% intervals 0.90-0.95 and 0.88-0.94 overlap, 40 validation images)" when they overlap, else "costs 4.1
    points (...)" / "gains ...". Overlap is a conservative test: two 95% intervals can overlap a little while the
    difference is still real, so a change said to be beyond noise is one, and a small real one may read as noise."""
    where = f"{count(n)} {split} images" if n else f"the {split} images"
    spans = (f"{float(span_before[0]):.3f}-{float(span_before[1]):.3f} and "
             f"{float(span_after[0]):.3f}-{float(span_after[1]):.3f}")
    drop = float(before) - float(after)
    if max(span_before[0], span_after[0]) <= min(span_before[1], span_after[1]):
        said = "no change" if abs(100 * drop) < NO_CHANGE_PTS else "within noise"
        return f"{said} (the 95% bootstrap intervals {spans} overlap, {where})"
    said = f"costs {_pts(drop)} points" if drop > 0 else f"gains {_pts(drop)} points"
    return f"{said} (the 95% bootstrap intervals {spans} do not overlap, {where})"


# ---- intervals given as [low, high] (a behaviour diff's agreement, flips and per-class changes) -----------------


def percent_span(low: float, high: float, digits: int = 1) -> str:
    """A 95% interval of a fraction already computed: (0.962, 0.987) -> "96.2-98.7%"."""
    return f"{100 * float(low):.{digits}f}-{100 * float(high):.{digits}f}%"


def points_span(low: float, high: float, digits: int = 1) -> str:
    """A 95% interval of a change of score (fractions), signed: (-0.021, 0.004) -> "-2.1 to +0.4 pts"."""
    return f"{100 * float(low):+.{digits}f} to {100 * float(high):+.{digits}f} pts"
