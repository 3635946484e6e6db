"""Targets -> plans: one global target (a ratio, a FLOPs reduction, an accuracy budget) solved into a Plan.

The Plan page's "Apply" and its "Sweep", and the CLI's `sweep` verb, all go through here:

    axis, values = parse_targets("ratio:10,20,40")
    member = target_plan(stats, report, "ratio", 20.0, name="my-plan", prune_options={...})
    member.plan, member.settings, member.solved (the solver's result), member.label ("ratio:20")

A target is solved by the hull-walking solver (solver.py) over a sensitivity report; the per-layer settings
become prune and cluster steps (plan_from_settings). Step order is never decided here: the builders hand
their steps to complab.plan.ordered(), which follows the one ordering table Plan.validate checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from complab.analysis.estimate import ModelStats
from complab.analysis.solver import grids_from_report, solve
from complab.errors import CompressionLabError
from complab.plan import ClusterStep, Plan, PruneStep, QuantizeStep, ordered

# axis -> (what it means, the smallest value, the largest value); ratios and FLOPs reductions are "x" factors,
# the accuracy budget is in points of the model's score
AXES = {"ratio": ("compression ratio (x)", 1.0, 10_000.0),
        "flops": ("FLOPs reduction (x)", 1.0, 10_000.0),
        "accuracy": ("accuracy budget (points)", 0.0, 100.0)}
MAX_TARGETS = 50  # members of one sweep: a typo like ratio:1,2,...,500 should not queue hours of runs


@dataclass
class TargetPlan:
    """One solved target: its label ("ratio:20"), the Plan, the per-layer settings and the solver's result."""

    label: str
    axis: str
    value: float
    plan: Plan
    settings: dict
    solved: dict


def _value_text(value: float) -> str:
    return f"{value:g}"


def parse_targets(text: str) -> tuple[str, list[float]]:
    """"ratio:10,20,40" -> ("ratio", [10.0, 20.0, 40.0]); a CompressionLabError naming the bad part otherwise.

    Ratios and FLOPs reductions must be above 1 (x), accuracy budgets from 0 to 100 points; at most MAX_TARGETS
    values; repeated values are kept once (a sweep runs each plan once)."""
    example = "e.g. ratio:10,20,40,80 or accuracy:0.5,1,2"
    axis, sep, values = str(text).strip().partition(":")
    axis = axis.strip().lower()
    if not sep or axis not in AXES:
        raise CompressionLabError(f"targets {str(text)[:60]!r} must be AXIS:V1,V2,... with AXIS one of "
                                  f"{', '.join(AXES)} ({example})")
    parts = [part.strip() for part in values.split(",") if part.strip()]
    if not parts:
        raise CompressionLabError(f"targets {str(text)[:60]!r} list no values ({example})")
    if len(parts) > MAX_TARGETS:
        raise CompressionLabError(f"{len(parts)} targets: a sweep takes at most {MAX_TARGETS}; split it in two")
    meaning, low, high = AXES[axis]
    out: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise CompressionLabError(f"target {part[:20]!r} is not a number ({example})") from None
        too_low = value < low if axis == "accuracy" else value <= low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"from {low:g} to {high:g}" if axis == "accuracy" else f"above {low:g} and at most {high:g}"
            raise CompressionLabError(f"{axis} target {part[:20]} is out of range: a {meaning} must be {bound}")
        if value not in out:
            out.append(value)
    return axis, out


def solve_target(stats: ModelStats, report: dict, axis: str, value: float) -> dict:
    """The solver's result for one target: settings {layer: (sparsity, n_clusters)}, predicted_drop, met, ratio..."""
    grids = grids_from_report(report)
    if axis == "ratio":
        return solve(stats, grids, "compressed_bytes", stats.fp32_bytes / value)
    if axis == "flops":
        return solve(stats, grids, "sparse_flops", stats.flops / value)
    if axis == "accuracy":
        return solve(stats, grids, "accuracy_drop", value / 100)
    raise CompressionLabError(f"unknown target axis {axis!r}: use one of {', '.join(AXES)}")


def target_plan(stats: ModelStats, report: dict, axis: str, value: float, name: str = "plan",
                prune_options: dict | None = None, cluster_options: dict | None = None,
                seed: int = 0, eval_split: str = "test") -> TargetPlan:
    """Solve one target and build its Plan (named `name`-`axis`-`value`) with the given fine-tuning options."""
    solved = solve_target(stats, report, axis, value)
    label = f"{axis}:{_value_text(value)}"
    plan = plan_from_settings(solved["settings"], f"{name}-{axis}-{_value_text(value)}", prune_options,
                              cluster_options)
    if (seed, eval_split) != (0, "test"):
        plan = Plan(steps=plan.steps, name=plan.name, seed=seed, eval_split=eval_split).validate()
    return TargetPlan(label, axis, value, plan, solved["settings"], solved)


def step_options(plan: Plan) -> tuple[dict, dict]:
    """(prune options, cluster options): a recipe's fine-tuning settings (rounds, epochs, learning rates,
    tolerance...) without its per-layer values, so a sweep can run the solver's plans with them."""
    out = []
    for step_type, per_layer in (("prune", "sparsity"), ("cluster", "n_clusters")):
        step = next((s for s in plan.steps if s.type == step_type), None)
        out.append({} if step is None else
                    {f.name: getattr(step, f.name) for f in fields(step) if f.name not in (per_layer, "type")})
    return out[0], out[1]


def plan_from_settings(settings: dict[str, tuple[float, int | str | None]], name: str = "plan",
                       prune_options: dict | None = None, cluster_options: dict | None = None,
                       quantizers: dict[str, dict | None] | None = None, quantize_options: dict | None = None) -> Plan:
    """settings: {layer: (sparsity, n_clusters or "auto" or None)} -> a validated Plan (steps in ORDER_RULES order)."""
    sparsity = {layer: round(float(s), 4) for layer, (s, _) in settings.items() if s > 0}
    clusters = {layer: k for layer, (_, k) in settings.items() if k not in (None, "off")}
    steps = []
    if sparsity:
        steps.append(PruneStep(sparsity=sparsity, **(prune_options or {})))
    if clusters:
        steps.append(ClusterStep(n_clusters=clusters, **(cluster_options or {})))
    quantize = quantize_step(quantizers or {}, quantize_options)
    if quantize is not None:  # vector quantization (Gong et al.) on its own layers
        steps.append(quantize)
    return Plan(steps=ordered(steps), name=name).validate(list(settings))


def quantize_step(quantizers: dict[str, dict | None], options: dict | None = None) -> QuantizeStep | None:
    """{layer: {quantizer, n_codewords, segment_length, stages, axis} or None} -> a QuantizeStep (None if empty)."""
    chosen = {layer: q for layer, q in quantizers.items() if q and q.get("quantizer", "none") != "none"}
    if not chosen:
        return None
    maps = {name: {layer: q[name] for layer, q in chosen.items() if q.get(name) is not None}
            for name in ("quantizer", "n_codewords", "segment_length", "stages", "axis")}
    return QuantizeStep(**maps, **(options or {}))
