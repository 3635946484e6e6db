"""What changed between two recipes (two runs' plan.json): steps added or removed, and per step the settings that
differ, per layer when the model's layer names are given (the Compare page's recipe diff beside the map of the
experiments, complab/analysis/lineage.py). Recipes are untrusted: validated (Plan.from_dict) and their `re:` keys
matched within a budget before anything resolves them."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from complab.errors import CompressionLabError
from complab.layermap import _MATCH_BUDGET, MAX_MATCH_WORK, check_patterns, resolve
from complab.plan import Plan

MAX_LAYERS = 100_000  # layer names a recipe diff resolves per-layer maps against
MAX_DIFF_ROWS = 2000  # rows of one recipe diff (a ResNet-152's 150 layers x 6 settings fit)



def _plan(value: Any, which: str) -> Plan:
    try:
        return Plan.from_dict(value)
    except CompressionLabError as exc:
        raise CompressionLabError(f"{which} recipe cannot be compared: {exc}") from None


def _layer_names(layers: Any) -> list[str] | None:
    if layers is None:
        return None
    if not isinstance(layers, list | tuple) or len(layers) > MAX_LAYERS:
        raise CompressionLabError(f"layer names for a recipe diff must be a list of at most {MAX_LAYERS:,} names")
    return [name for name in layers if isinstance(name, str) and 0 < len(name) <= 1000]


def setting_text(value: Any) -> str:
    """A recipe value as the diff says it: as the recipe writes it (JSON), "(not set)" for none, at most 60 chars."""
    if value is None:
        return "(not set)"
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _row(step: str, change: str, layer: str | None, setting: str | None, a: Any, b: Any) -> dict:
    if change in ("added", "removed"):
        text = f"step {step} {change}"
    else:
        text = f"{layer + ': ' if layer else ''}{setting} {setting_text(a)} -> {setting_text(b)}"
    return {"step": step, "change": change, "layer": layer, "setting": setting, "a": a, "b": b, "text": text}


def _per_layer(values: Any) -> dict:
    return values if isinstance(values, dict) else {}


def recipe_diff(plan_a: Any, plan_b: Any, layers: list[str] | None = None) -> list[dict]:
    """What changed from recipe `plan_a` to `plan_b` (Plan.to_dict form, e.g. two runs' plan.json), as rows
    {"step", "change": "added"|"removed"|"changed", "layer" (None: a step-wide setting), "setting", "a", "b", "text"}:
    steps added or removed; per step, each per-layer setting that differs and each scalar setting (epochs, lr, ...)
    that differs; the plan's own seed and split. With `layers` (the model's layer names) a per-layer map (keys: an
    exact name, a `re:` pattern, `_default`) is resolved per layer, so a change reads "conv1: sparsity 0.5 -> 0.7";
    without, keys are compared as written. Recipes are validated first (Plan.from_dict, patterns within their
    matching budget): CompressionLabError names the bad one. At most MAX_DIFF_ROWS rows (a last row says the rest)."""
    a, b = _plan(plan_a, "the first"), _plan(plan_b, "the second")
    names = _layer_names(layers)
    budget = _MATCH_BUDGET.set([4 * MAX_MATCH_WORK])  # both recipes' patterns checked, then resolved: ~4 s at most
    try:
        if names is not None:
            for plan, which in ((a, "the first"), (b, "the second")):
                try:
                    check_patterns(plan, names)  # every pattern matched once, within the budget, and remembered
                except CompressionLabError as exc:
                    raise CompressionLabError(f"{which} recipe cannot be compared: {exc}") from None
        try:
            rows = _diff_rows(a, b, names)
        except CompressionLabError as exc:  # the patterns' matching budget ran out while resolving
            raise CompressionLabError(f"the recipes cannot be compared: {exc}") from None
    finally:
        _MATCH_BUDGET.reset(budget)
    if len(rows) > MAX_DIFF_ROWS:
        more = len(rows) - MAX_DIFF_ROWS
        rows = rows[:MAX_DIFF_ROWS] + [{"step": "", "change": "truncated", "layer": None, "setting": None, "a": None,
                                        "b": None, "text": f"... and {more:,}+ more changes not listed"}]
    return rows


def _diff_rows(a: Plan, b: Plan, names: list[str] | None) -> list[dict]:
    """recipe_diff's rows, stopping one past MAX_DIFF_ROWS."""
    rows: list[dict] = []
    for setting in ("seed", "eval_split"):
        if getattr(a, setting) != getattr(b, setting):
            rows.append(_row("plan", "changed", None, setting, getattr(a, setting), getattr(b, setting)))
    steps_a = {step.type: step for step in a.steps}
    steps_b = {step.type: step for step in b.steps}
    types = [s.type for s in a.steps] + [s.type for s in b.steps if s.type not in steps_a]
    for kind in types:
        if kind not in steps_b:
            rows.append(_row(kind, "removed", None, None, None, None))
            continue
        if kind not in steps_a:
            rows.append(_row(kind, "added", None, None, None, None))
            continue
        step_a, step_b = steps_a[kind], steps_b[kind]
        per_layer = set(getattr(step_a, "per_layer", ()))
        for f in fields(step_a):
            value_a, value_b = getattr(step_a, f.name), getattr(step_b, f.name, None)
            if f.name not in per_layer:
                if value_a != value_b:
                    rows.append(_row(kind, "changed", None, f.name, value_a, value_b))
                continue
            map_a, map_b = _per_layer(value_a), _per_layer(value_b)
            keys = names if names is not None else list(map_a) + [k for k in map_b if k not in map_a]
            for key in keys:
                if len(rows) > MAX_DIFF_ROWS:
                    return rows
                at_a, at_b = ((resolve(map_a, key), resolve(map_b, key)) if names is not None
                              else (map_a.get(key), map_b.get(key)))
                if at_a != at_b:
                    rows.append(_row(kind, "changed", key, f.name, at_a, at_b))
    return rows


def layer_names(metrics: Any) -> list[str] | None:
    """The weight layers' names as a run's metrics.json lists its file's tensors ("conv1.weight" -> "conv1"), or
    None when it lists none."""
    rows = metrics.get("layers") if isinstance(metrics, dict) else None
    if not isinstance(rows, list):
        return None
    names = [row["name"][: -len(".weight")] for row in rows[:MAX_LAYERS]
             if isinstance(row, dict) and isinstance(row.get("name"), str) and row["name"].endswith(".weight")
             and len(row["name"]) <= 1000]
    return [name for name in dict.fromkeys(names) if name] or None
