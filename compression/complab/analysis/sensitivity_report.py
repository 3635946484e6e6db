"""The one checked reader of a sensitivity report (what `complab analyze` writes): a report is untrusted.

A report reaches the solver, the suggestions, the predicted accuracy and the pages from a file a user passes
(`sweep --sensitivity`), from a run folder, or from the engine's cache. Each of them indexed it as the
analysis writes it, so a crafted or damaged one raised KeyError, IndexError or "cannot convert float NaN to
integer", and a NaN base accuracy was solved silently into nonsense plans (issue 24). `check_report` is the
schema, checked once where a report enters: types, finite numbers, ranges (accuracies from 0 to 1,
sparsities from 0 below 1, cluster counts from 2 to 256, as the analysis' own config), sizes, and lists
consistent with the curves they name. It returns a normalized copy: grid keys in the canonical spelling the
solver looks them up by (`"0.5"`, `"16"`), so `"5e-1"` and `"0.50"` cannot name one point twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from complab import intervals
from complab.errors import CompressionLabError

MAX_REPORT_BYTES = 64 << 20  # a report of 10,000 layers x 30 points is ~5 MB
MAX_LAYERS = 100_000
MAX_POINTS = 1000  # grid points of one kind in one layer
MAX_NAME_CHARS = 1000
MAX_CLUSTERS = 256  # the analysis' and ClusterStep's bound
KINDS = ("sparsity", "clusters")  # the curves every report has
OPTIONAL_KINDS = ("bits",)  # ...and those newer reports add (integer widths, analysis/grid.py): absent in older ones
ALL_KINDS = KINDS + OPTIONAL_KINDS
MIN_BITS, MAX_BITS = 2, 8  # the int step's widths
ROW_KEYS = ("params", "kind", "sparsity", "clusters", "bits", "measured", "loss_increase")  # what the analyses write
# A noise floor above this (fraction) hides the drops a plan budgets (the plan page's budgets of 1 to a few points):
# the report's noise message then warns even when its largest drops are resolved
NOISE_WARN_FLOOR = 0.02
MAX_VAL_IMAGES = 10**9


class SensitivityReportError(CompressionLabError):
    """A sensitivity report is damaged, crafted or not a report: names the key and the fix."""


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bad(source: str, where: str, value: Any, expected: str) -> SensitivityReportError:
    return SensitivityReportError(f"{source}: {where} is {_shown(value)}, not {expected}: the report is damaged or "
                                  "was not written by `complab analyze`; run the analysis again")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _accuracy(source: str, where: str, value: Any) -> float:
    if not _number(value) or not 0.0 <= value <= 1.0:
        raise _bad(source, where, value, "a finite number from 0 to 1")
    return float(value)


def _grid_key(source: str, where: str, kind: str, key: Any) -> str:
    """The canonical spelling of a grid point's key (str(float) for sparsity, str(int) for clusters)."""
    text = key if isinstance(key, str) else None
    if text is None and _number(key):  # a `measured` list may hold numbers
        text = str(key)
    if text is None or len(text) > 40:
        raise _bad(source, where, key, f"a {kind} grid point")
    try:
        if kind == "sparsity":
            value = float(text)
            if not (math.isfinite(value) and 0.0 <= value < 1.0):
                raise ValueError
            return str(value)
        count = int(text)
        low, high = (MIN_BITS, MAX_BITS) if kind == "bits" else (2, MAX_CLUSTERS)
        if not low <= count <= high:
            raise ValueError
        return str(count)
    except ValueError:
        expected = ("a sparsity from 0 below 1" if kind == "sparsity" else f"a cluster count from 2 to {MAX_CLUSTERS}"
                    if kind == "clusters" else f"an integer width from {MIN_BITS} to {MAX_BITS} bits")
        raise _bad(source, where, key, expected) from None


def _row(source: str, name: str, row: Any) -> dict:
    where = f"layer {_shown(name)}"
    if not isinstance(row, dict):
        raise _bad(source, where, row, "an object of sparsity and clusters curves")
    unknown = [key for key in row if key not in ROW_KEYS]
    if unknown:  # nothing reads it, so nothing would check it: a NaN there was carried into the solved report
        raise _bad(source, f"{where} key", unknown[0], f"one of {', '.join(ROW_KEYS)}")
    out = dict(row)
    for kind in ALL_KINDS:
        if kind in OPTIONAL_KINDS and kind not in row:
            continue
        points = row.get(kind)
        if not isinstance(points, dict):
            raise _bad(source, f"{where} {kind}", points, "an object of grid point -> accuracy")
        if len(points) > MAX_POINTS:
            raise SensitivityReportError(f"{source}: {where} has {len(points):,} {kind} points, more than "
                                         f"{MAX_POINTS}: the report is damaged; run the analysis again")
        curve = {}
        for key, accuracy in points.items():
            canonical = _grid_key(source, f"{where} {kind} key", kind, key)
            if canonical in curve:
                raise SensitivityReportError(f"{source}: {where} names {kind} point {canonical} twice "
                                             f"({_shown(key)}): the report is damaged; run the analysis again")
            curve[canonical] = _accuracy(source, f"{where} {kind} {_shown(key)}", accuracy)
        out[kind] = curve
    if "params" in row and not (isinstance(row["params"], int) and not isinstance(row["params"], bool)
                                and 0 <= row["params"] <= 10**13):
        raise _bad(source, f"{where} params", row["params"], "a count of weights")
    if "kind" in row and not (isinstance(row["kind"], str) and len(row["kind"]) <= 40):
        raise _bad(source, f"{where} kind", row["kind"], "a layer kind (conv or fc)")
    if "loss_increase" in row and row["loss_increase"] is not None:
        _loss_increase(source, where, row["loss_increase"])
    if "measured" in row and row["measured"] is not None:
        measured = row["measured"]
        if not isinstance(measured, dict) or set(measured) - set(k for k in ALL_KINDS if k in out):
            raise _bad(source, f"{where} measured", measured, "an object of sparsity and clusters lists")
        listed = {}
        for kind, keys in measured.items():
            if not isinstance(keys, list) or len(keys) > len(out[kind]):
                raise _bad(source, f"{where} measured {kind}", keys, f"a list of at most its {len(out[kind])} points")
            canonical = [_grid_key(source, f"{where} measured {kind}", kind, key) for key in keys]
            missing = [key for key in canonical if key not in out[kind]]
            if missing:
                raise SensitivityReportError(f"{source}: {where} lists {kind} point {missing[0]} as measured but "
                                             "has no such point: the report is damaged; run the analysis again")
            listed[kind] = canonical
        out["measured"] = listed
    return out


def _loss_increase(source: str, where: str, value: Any) -> None:
    """Estimate mode records the Fisher loss increase per grid point: {kind: {grid point: finite number}}."""
    if _number(value):
        return
    if not isinstance(value, dict) or set(value) - set(ALL_KINDS):
        raise _bad(source, f"{where} loss_increase", value, "an object of sparsity and clusters loss increases")
    for kind, points in value.items():
        if not isinstance(points, dict) or len(points) > MAX_POINTS:
            raise _bad(source, f"{where} loss_increase {kind}", points, f"an object of at most {MAX_POINTS} points")
        for key, increase in points.items():
            _grid_key(source, f"{where} loss_increase {kind} key", kind, key)
            if not _number(increase):
                raise _bad(source, f"{where} loss_increase {kind} {_shown(key)}", increase, "a finite number")


def _config(source: str, config: Any) -> dict:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _bad(source, "config", config, "an object")
    for key in ("calibration", "batch_norm", "prefix_cache"):  # the pages and merge_reports read into these
        if key in config and not isinstance(config[key], dict):
            raise _bad(source, f"config {key}", config[key], "an object")
    for key in ("mode",):
        if key in config and not isinstance(config[key], str):
            raise _bad(source, f"config {key}", config[key], "a string")
    for outer, inner in (("calibration", "note"), ("batch_norm", "note")):
        value = (config.get(outer) or {}).get(inner)
        if value is not None and not isinstance(value, str):
            raise _bad(source, f"config {outer}.{inner}", value, "a string")
    return config


def _points(fraction: float) -> str:
    return f"{100 * fraction:.2g}" if 100 * fraction < 1 else f"{100 * fraction:.1f}"


def noise_of(base: float, val_images: int | None, layers: dict) -> dict:
    """What a sensitivity report on `val_images` validation images can resolve (report["noise"]):

    val_images; step, one image as a fraction of the score (intervals.resolution); floor, the smallest drop
    distinguishable from zero at the base score (intervals.noise_floor: the Wilson half-width, at least one
    image); resolves, whether the largest drop the report shows is above the floor; message, one line for the
    pages, "" when the subset resolves the drops a plan works with. It warns when the floor is above every drop
    the report shows (nothing it shows is signal) or above NOISE_WARN_FLOOR (the one- to few-point drops a plan
    budgets are within noise). A detector's mAP is treated like a share of images (an approximation: the
    analysis keeps no per-image predictions to bootstrap). {} when the size is unknown."""
    if isinstance(val_images, bool) or not isinstance(val_images, int) or val_images <= 0:
        return {}
    base = float(base)
    step, floor = intervals.resolution(val_images), intervals.noise_floor(base, val_images)
    drops = [base - float(accuracy) for row in layers.values() for kind in ALL_KINDS
             for accuracy in (row.get(kind) or {}).values()]
    largest = max(drops, default=0.0)
    resolves = largest > floor
    message = ""
    if not resolves or floor > NOISE_WARN_FLOOR:
        beyond = (f", more than the largest drop it measured ({_points(max(0.0, largest))} points)"
                  if not resolves else "")
        message = (f"{val_images:,} validation images: one image is {_points(step)} points and drops under "
                   f"{_points(floor)} points are within noise{beyond}; use a larger validation split (--val-size / "
                   "the data's val folder) for a plan you can trust.")
    return {"val_images": val_images, "step": step, "floor": floor, "resolves": resolves, "message": message}


def report_noise(report: dict) -> dict:
    """report["noise"], or for a report written before it existed the same fields computed from its config's
    val_images (or val_size: an older report's subset may have been smaller than asked); {} when neither is known.
    Every reader of a report's noise goes through here (old reports have no "noise")."""
    noise = report.get("noise")
    if isinstance(noise, dict) and noise:
        return noise
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    count = config.get("val_images")
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        count = config.get("val_size")
    return noise_of(report["base_accuracy"], count if isinstance(count, int) else None, report.get("layers") or {})


def _noise(source: str, noise: Any) -> dict:
    """The report's noise (noise_of): types and ranges checked, the message bounded (pages show it)."""
    if not isinstance(noise, dict):
        raise _bad(source, "noise", noise, "an object of val_images, step, floor, resolves and message")
    if not noise:
        return {}
    count = noise.get("val_images")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_VAL_IMAGES:
        raise _bad(source, "noise val_images", count, "a count of images")
    for key in ("step", "floor"):
        if not _number(noise.get(key)) or not 0.0 <= noise[key] <= 1.0:
            raise _bad(source, f"noise {key}", noise.get(key), "a finite number from 0 to 1")
    if not isinstance(noise.get("resolves"), bool):
        raise _bad(source, "noise resolves", noise.get("resolves"), "true or false")
    message = noise.get("message")
    if not isinstance(message, str) or len(message) > 1000:
        raise _bad(source, "noise message", message, "a line of text")
    return {"val_images": count, "step": float(noise["step"]), "floor": float(noise["floor"]),
            "resolves": noise["resolves"], "message": message}


def check_report(report: Any, source: str = "the sensitivity report") -> dict:
    """A sensitivity report checked against its schema and normalized (see the module docstring), or a
    SensitivityReportError naming the key: the one gate for the CLI, the solver and the pages."""
    if not isinstance(report, dict):
        raise SensitivityReportError(f"{source} is a JSON {type(report).__name__}, not a report object (as "
                                     "`complab analyze` writes): pass the .json it wrote")
    if "base_accuracy" not in report or "layers" not in report:
        missing = "base_accuracy" if "base_accuracy" not in report else "layers"
        raise SensitivityReportError(f"{source} has no {missing}: it is not a sensitivity report (as "
                                     "`complab analyze` writes); pass the .json it wrote")
    base = _accuracy(source, "base_accuracy", report["base_accuracy"])
    layers = report["layers"]
    if not isinstance(layers, dict) or not layers:
        raise _bad(source, "layers", layers, "an object of layer -> curves holding at least one layer")
    if len(layers) > MAX_LAYERS:
        raise SensitivityReportError(f"{source} has {len(layers):,} layers, more than {MAX_LAYERS:,}: it is not a "
                                     "report of one model")
    rows = {}
    for name, row in layers.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise _bad(source, "a layer name", name, f"a name of 1 to {MAX_NAME_CHARS} characters")
        rows[name] = _row(source, name, row)
    out = {**report, "base_accuracy": base, "layers": rows, "config": _config(source, report.get("config"))}
    if "noise" in report:  # (older reports have none: report_noise computes it)
        out["noise"] = _noise(source, report["noise"])
    return out


def parse_report(data: bytes | str, source: str = "the sensitivity report") -> dict:
    """check_report of a report's JSON text (bounded in size and depth; SensitivityReportError otherwise)."""
    if len(data) > MAX_REPORT_BYTES:
        raise SensitivityReportError(f"{source} is {len(data):,} bytes, more than {MAX_REPORT_BYTES:,}: it is not "
                                     "a sensitivity report; pass the .json `complab analyze` wrote")
    try:
        report = json.loads(data)
    except RecursionError:
        raise SensitivityReportError(f"{source} nests its JSON too deeply: it is not a sensitivity report") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise SensitivityReportError(f"{source} is not JSON ({str(exc).splitlines()[0][:80]}): pass the .json "
                                     "`complab analyze` wrote") from None
    return check_report(report, source)


def read_report(path: str | Path) -> dict:
    """A sensitivity report file, size-checked before reading, parsed and checked (SensitivityReportError)."""
    path = Path(path)
    source = f"sensitivity report {str(path)[:200]}"
    try:
        if not path.is_file():
            raise SensitivityReportError(f"{source} does not exist or is not a file: check the path")
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise SensitivityReportError(f"{source} is {path.stat().st_size:,} bytes, more than "
                                         f"{MAX_REPORT_BYTES:,}: pass the .json `complab analyze` wrote")
        data = path.read_bytes()
    except OSError as exc:
        raise SensitivityReportError(f"cannot read {source} ({exc.strerror}): check the path and permissions") from None
    return parse_report(data, source)
