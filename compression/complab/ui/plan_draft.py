"""The Plan page's draft: its target and per-layer settings, kept in the data folder so that a page change or a
browser reload (a new Streamlit session) finds them again.

One small JSON file per model + data and the sensitivity report the settings were made from
(`<home>/drafts/plan-<hash>.json`, written atomically). A draft is read back as untrusted input: bounded in size,
parsed by runfolder's checked JSON reader, its schema checked, every value checked against the widget that will
show it (a slider's range, a select's choices), layers the model lacks and fields no step declares dropped. A
draft that cannot be used is ignored with a one-line note; nothing here raises on a bad file. No Streamlit here:
ui/plan_page.py draws and calls these.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

from complab import runfolder
from complab.paths import write_bytes_atomic

SCHEMA = 1
FOLDER = "drafts"
MAX_BYTES = 2 << 20  # a ResNet-152's ~150 layers x 6 fields is ~30 KB
KEEP = 64  # drafts kept in the folder: the oldest beyond this are removed when one is written

# the global target: kind -> (lowest, highest, default, step of the typed value)
TARGETS: dict[str, tuple[float, float, float, float]] = {
    "ratio": (2.0, 100.0, 40.0, 1.0),  # compression ratio (x)
    "flops": (1.0, 20.0, 3.0, 0.5),  # FLOPs reduction (x)
    "accuracy": (0.0, 10.0, 1.0, 0.1),  # accuracy budget in points
    "bits": (2.0, 8.0, 4.0, 0.5),  # average integer width: mixed precision at uniform b-bit's bytes
}


def report_id(report: dict | None) -> str:
    """A short content hash of the sensitivity report the settings were made from ("none" without one): a new
    analysis starts from its own suggestion, not from a draft made on the old one."""
    if report is None:
        return "none"
    return hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()[:16]


def draft_path(home: Path, spec_key: str, report: str) -> Path:
    """The draft's file for this model + data (`spec_key`, ui.state.spec_key) and report id."""
    digest = hashlib.sha256(f"{spec_key}\n{report}".encode()).hexdigest()[:20]
    return Path(home) / FOLDER / f"plan-{digest}.json"


def make_draft(spec_key: str, report: str, target: dict, rows: dict[str, dict], options: dict[str, Any]) -> dict:
    """The draft as written: the target {kind, value}, {layer: {field: value}}, {option key: value}."""
    return {"schema": SCHEMA, "spec": spec_key, "report": report, "target": dict(target),
            "rows": {layer: dict(values) for layer, values in rows.items()}, "options": dict(options)}


def dumps(draft: dict) -> str:
    return json.dumps(draft, sort_keys=True)


def write_draft(path: Path, draft: dict) -> None:
    """Write the draft atomically (with the time it was saved); OutputError (paths) on a full or read-only folder.
    The oldest drafts beyond KEEP are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps({**draft, "saved": time.time()}, sort_keys=True))
    try:
        drafts = sorted(path.parent.glob("plan-*.json"), key=lambda p: p.stat().st_mtime)
        for old in drafts[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError:  # another session removed one first: nothing to do
        pass


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def field_value(field, value: Any) -> Any:
    """`value` as the widget of `field` (ui/plan_rows: a step's LayerField) would hold it, or None when that widget
    cannot show it: a slider's or number's range, a select's choices (a whole number between the smallest and
    largest whole-number choice too: a recipe's n_clusters 3 is valid)."""
    if field.kind in ("slider", "number"):
        number = _number(value)
        if number is None or not field.low <= number <= field.high:
            return None
        if field.kind == "number":
            return int(number) if number.is_integer() else None
        return number
    if isinstance(value, bool):
        return None
    choices = list(field.choices)
    if value in choices and (isinstance(value, str) or type(value) is int):
        return value
    whole = [c for c in choices if type(c) is int]
    if type(value) is int and whole and min(whole) <= value <= max(whole):
        return value
    return None


def check_target(target: Any) -> dict | None:
    """{kind, value} when it is a target the page offers, its value in that kind's range; else None."""
    if not isinstance(target, dict) or not isinstance(target.get("kind"), str) or target["kind"] not in TARGETS:
        return None
    low, high, _, _ = TARGETS[target["kind"]]
    value = _number(target.get("value"))
    if value is None or not low <= value <= high:
        return None
    return {"kind": target["kind"], "value": value}


def parse_draft(value: Any, spec_key: str, report: str, layers: list[str], fields: list,
                options: list) -> tuple[dict | None, str | None]:
    """(draft, None) with only what the page can show, or (None, why) for a draft that cannot be used.

    `fields`: the steps' LayerFields (name, kind, choices, low, high); `options`: their OptionFields (key, low,
    high). Layers not in `layers`, unknown fields and values a widget cannot show are dropped one by one; a
    draft of another model or report, of another schema or of the wrong shape is refused whole."""
    if not isinstance(value, dict):
        return None, "it is not a JSON object"
    if value.get("schema") != SCHEMA:
        return None, f"its schema {str(value.get('schema'))[:20]!r} is not {SCHEMA}"
    if value.get("spec") != spec_key or value.get("report") != report:
        return None, "it was made for another model, data or sensitivity analysis"
    rows_in, options_in = value.get("rows", {}), value.get("options", {})
    if not isinstance(rows_in, dict) or not isinstance(options_in, dict):
        return None, "its rows or options are not JSON objects"
    by_name = {f.name: f for f in fields}
    known = set(layers)
    rows: dict[str, dict] = {}
    dropped = 0
    for layer, values in rows_in.items():
        if layer not in known or not isinstance(values, dict):
            dropped += 1
            continue
        for name, item in values.items():
            checked = field_value(by_name[name], item) if name in by_name else None
            if checked is None:
                dropped += 1
                continue
            rows.setdefault(layer, {})[name] = checked
    by_key = {f.key: f for f in options}
    kept_options: dict[str, Any] = {}
    for key, item in options_in.items():
        f = by_key.get(key)
        if f is not None and f.choices:  # a select box's value (a string or true/false) as the widget holds it
            if any(item == choice and type(item) is type(choice) for choice in f.choices):
                kept_options[key] = item
            else:
                dropped += 1
            continue
        number = _number(item)
        if f is None or number is None or not f.low <= number <= f.high:
            dropped += 1
            continue
        kept_options[key] = number
    target = check_target(value.get("target"))
    if value.get("target") is not None and target is None:
        dropped += 1
    return {"target": target, "rows": rows, "options": kept_options, "dropped": dropped,
            "saved": _number(value.get("saved"))}, None


def read_draft(path: Path, spec_key: str, report: str, layers: list[str], fields: list,
               options: list) -> tuple[dict | None, str | None]:
    """(draft, None); (None, None) when there is none; (None, note) for one that cannot be used (the note names the
    file and why: the page says it and starts from the suggestion)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None, None
    value, problem = runfolder.read_json(path, path.name, MAX_BYTES)
    if problem is not None:
        return None, f"Your saved plan draft was ignored ({problem}); the page starts from the suggestion."
    draft, why = parse_draft(value, spec_key, report, layers, fields, options)
    if draft is None:
        return None, f"Your saved plan draft {path.name} was ignored ({why}); the page starts from the suggestion."
    return draft, None
