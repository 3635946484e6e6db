"""Targets -> plans: one global target (a ratio, a FLOPs reduction, an accuracy budget) solved into a Plan.

The Plan page's "Apply" and its "Sweep", and the CLI's `sweep` verb, all go through here:

    axis, values = parse_targets("ratio:10,20,40")
    member = target_plan(stats, report, "ratio", 20.0, name="my-plan", prune_options={...})
    member.plan, member.settings, member.solved (the solver's result), member.label ("ratio:20")

A target is solved by the hull-walking solver (solver.py) over a sensitivity report; the per-layer settings
become prune, cluster and int steps (plan_from_settings). Two axes are integer widths: "bits:3" is mixed
precision at 3 bits on average (the solver picks each layer's width, integers only, for the estimated bytes of
every layer at 3 bits), "uniform:3" every layer at 3 bits (no solver: the baseline mixed precision beats).
Step order is never decided here: the builders hand
their steps to complab.plan.ordered(), which follows the one ordering table Plan.validate checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from complab.analysis.estimate import ModelStats, estimate, int_quantizer
from complab.analysis.solver import DEFAULT_AXES, bits_drop, grids_from_report, solve, uniform_bits_bytes
from complab.errors import CompressionLabError
from complab.plan import ClusterStep, Plan, PruneStep, QuantizeStep, ordered
from complab.steps.int_quant import IntStep

# axis -> (what it means, the smallest value, the largest value); ratios and FLOPs reductions are "x" factors,
# the accuracy budget is in points of the model's score
AXES = {"ratio": ("compression ratio (x)", 1.0, 10_000.0),
        "flops": ("FLOPs reduction (x)", 1.0, 10_000.0),
        "accuracy": ("accuracy budget (points)", 0.0, 100.0),
        "bits": ("average integer width (bits: mixed precision at uniform b-bit's bytes)", 2.0, 8.0),
        "uniform": ("integer width of every layer (bits)", 2.0, 8.0)}
BITS_AXES = ("bits", "uniform")  # their smallest value is allowed (2 bits); "uniform" takes whole bits
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

    @property
    def quantizers(self) -> dict[str, dict]:
        """{layer: the int estimate's settings} for the layers the plan stores as integers (predict's argument)."""
        return {layer: int_quantizer(bits) for layer, bits in (self.solved.get("bits") or {}).items()}


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
        too_low = value < low if axis in ("accuracy", *BITS_AXES) else value <= low
        if axis == "uniform" and math.isfinite(value) and value != int(value):
            raise CompressionLabError(f"uniform target {part[:20]} is not a whole number of bits: use 2 to 8")
        if not math.isfinite(value) or too_low or value > high:
            bound = (f"from {low:g} to {high:g}" if axis in ("accuracy", *BITS_AXES)
                     else f"above {low:g} and at most {high:g}")
            raise CompressionLabError(f"{axis} target {part[:20]} is out of range: a {meaning} must be {bound}")
        if value not in out:
            out.append(value)
    return axis, out


def average_bits_bytes(stats: ModelStats, bits: float, layers=None) -> float:
    """The size target of `bits` bits on average: uniform b-bit's estimated bytes (between two whole widths, the
    straight line between theirs)."""
    low, high = math.floor(bits), math.ceil(bits)
    low_bytes = uniform_bits_bytes(stats, low, layers)
    if high == low:
        return float(low_bytes)
    return low_bytes + (bits - low) * (uniform_bits_bytes(stats, high, layers) - low_bytes)


def uniform_solution(stats: ModelStats, report: dict, bits: int) -> dict:
    """Every layer of the report at `bits` integers (no pruning): the solver's result's shape."""
    grids = grids_from_report(report)
    names = [name for name in grids if name in stats.layers]
    chosen = dict.fromkeys(names, int(bits))
    settings = {name: (0.0, None) for name in names}
    drops = [bits_drop(grids[name], bits) for name in names]
    result = estimate(stats, settings, {name: int_quantizer(b) for name, b in chosen.items()})
    return {"settings": settings, "bits": chosen, "predicted_drop": sum(d for d in drops if d is not None),
            "met": True, **{k: v for k, v in result.items() if k != "per_layer_bytes"}}


def solve_target(stats: ModelStats, report: dict, axis: str, value: float, axes=DEFAULT_AXES,
                 rate: dict | None = None) -> dict:
    """The solver's result for one target: settings {layer: (sparsity, n_clusters)}, bits {layer: width} of the
    layers stored as integers, predicted_drop, met, ratio... `axes`: what the solver may change (solver.solve);
    `rate`: the cluster step's rate-aware options (shared layers priced as entropy-constrained sharing)."""
    grids = grids_from_report(report)
    if axis in BITS_AXES and not any(grid.bits for grid in grids.values()):
        raise CompressionLabError(f"the sensitivity report has no bits curves, so a {axis} target cannot be solved: "
                                  "run the sensitivity analysis again (it measures integer widths now)")
    if axis == "ratio":
        return solve(stats, grids, "compressed_bytes", stats.fp32_bytes / value, axes=axes, rate=rate)
    if axis == "flops":
        return solve(stats, grids, "sparse_flops", stats.flops / value, axes=axes)
    if axis == "accuracy":
        return solve(stats, grids, "accuracy_drop", value / 100, axes=axes, rate=rate)
    if axis == "bits":  # mixed precision: integers only, at the bytes of every layer at `value` bits
        layers = [name for name in grids if name in stats.layers]
        return solve(stats, grids, "compressed_bytes", average_bits_bytes(stats, value, layers), axes=("bits",))
    if axis == "uniform":
        return uniform_solution(stats, report, int(value))
    raise CompressionLabError(f"unknown target axis {axis!r}: use one of {', '.join(AXES)}")


def target_plan(stats: ModelStats, report: dict, axis: str, value: float, name: str = "plan",
                prune_options: dict | None = None, cluster_options: dict | None = None,
                seed: int = 0, eval_split: str = "test", int_options: dict | None = None,
                axes=DEFAULT_AXES) -> TargetPlan:
    """Solve one target and build its Plan (named `name`-`axis`-`value`) with the given fine-tuning options
    (`axes`: what the solver may change, solver.solve's)."""
    solved = solve_target(stats, report, axis, value, axes)
    label = f"{axis}:{_value_text(value)}"
    plan = plan_from_settings(solved["settings"], f"{name}-{axis}-{_value_text(value)}", prune_options,
                              cluster_options, bits=solved.get("bits"), int_options=int_options)
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
                       quantizers: dict[str, dict | None] | None = None, quantize_options: dict | None = None,
                       bits: dict[str, int] | None = None, int_options: dict | None = None) -> Plan:
    """settings: {layer: (sparsity, n_clusters or "auto" or None)} -> a validated Plan (steps in ORDER_RULES order);
    `bits` {layer: width}: those layers as integers (an int step with `int_options`)."""
    sparsity = {layer: round(float(s), 4) for layer, (s, _) in settings.items() if s > 0}
    clusters = {layer: k for layer, (_, k) in settings.items() if k not in (None, "off")}
    steps = []
    if sparsity:
        steps.append(PruneStep(sparsity=sparsity, **(prune_options or {})))
    if clusters:
        steps.append(ClusterStep(n_clusters=clusters, **ClusterStep.config_options(cluster_options)))
    quantize = quantize_step(quantizers or {}, quantize_options)
    if quantize is not None:  # vector quantization (Gong et al.) on its own layers
        steps.append(quantize)
    if bits:  # uniform integers (the int step) on their own layers
        steps.append(IntStep(bits={layer: int(b) for layer, b in bits.items()}, **(int_options or {})))
    return Plan(steps=ordered(steps), name=name).validate(list(settings))


def quantize_step(quantizers: dict[str, dict | None], options: dict | None = None) -> QuantizeStep | None:
    """{layer: {quantizer, n_codewords, segment_length, stages, axis} or None} -> a QuantizeStep (None if empty)."""
    chosen = {layer: q for layer, q in quantizers.items() if q and q.get("quantizer", "none") != "none"}
    if not chosen:
        return None
    maps = {name: {layer: q[name] for layer, q in chosen.items() if q.get(name) is not None}
            for name in ("quantizer", "n_codewords", "segment_length", "stages", "axis")}
    return QuantizeStep(**maps, **(options or {}))
