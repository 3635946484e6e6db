"""The plan page's form <-> Plan: build a Plan from per-layer settings and read them back from a Plan; the page's
layer groups and filter. (The per-layer widgets themselves are the steps' declared fields: ui/plan_rows.py.)

Step order is never decided here: every builder hands its steps to complab.plan.ordered(), which
follows the one ordering table (ORDER_RULES) that Plan.validate checks.
"""

from __future__ import annotations

from complab.analysis.estimate import plan_settings

# the settings -> Plan builders live with the target solver (compression/complab/analysis/targets.py): the CLI's sweep
# uses them too; they are re-exported here for the page
from complab.analysis.targets import plan_from_settings, quantize_step  # noqa: F401
from complab.plan import FoldBNStep, Plan, ordered


def settings_from_plan(plan: Plan, layers: list[str]) -> dict[str, tuple[float, int | str | None]]:
    """The per-layer (sparsity, n_clusters) a plan asks for (its steps' estimate hooks); layers it does not reach
    get (0, None)."""
    return plan_settings(plan.steps, layers)[0]


def quantizers_from_plan(plan: Plan, layers: list[str]) -> dict[str, dict | None]:
    """The per-layer quantizer settings a plan asks for (None where it quantizes nothing)."""
    chosen = plan_settings(plan.steps, layers)[1]
    return {layer: chosen.get(layer) for layer in layers}


def with_fold_bn(plan: Plan) -> Plan:
    """The plan with a fold_bn step where ORDER_RULES put it (after prune / channels, before any sharing)."""
    if any(step.type == "fold_bn" for step in plan.steps):
        return plan
    return Plan(steps=ordered((*plan.steps, FoldBNStep())), name=plan.name, seed=plan.seed,
                eval_split=plan.eval_split).validate()


ONE_GROUP_UP_TO = 12  # layers: a model this small shows one group ("all layers")
SPLIT_GROUP_OVER = 24  # layers: one top-level module this big (MobileNet's "features") splits by its children


def layer_groups(layers: list[str]) -> dict[str, list[str]]:
    """{group: its layers in model order}, from the module names alone (any torchvision model): the first dotted
    component (`layer2.1.conv2` -> `layer2`, ResNet's stages); a top-level module holding more than
    SPLIT_GROUP_OVER layers is split by its children (`features.3.block.0.0` -> `features.3`); a model of at
    most ONE_GROUP_UP_TO layers is one group, "all layers"."""
    if len(layers) <= ONE_GROUP_UP_TO:
        return {"all layers": list(layers)} if layers else {}
    top: dict[str, list[str]] = {}
    for layer in layers:
        top.setdefault(layer.split(".")[0], []).append(layer)
    groups: dict[str, list[str]] = {}
    for name, members in top.items():
        if len(members) <= SPLIT_GROUP_OVER:
            groups[name] = members
            continue
        children: dict[str, list[str]] = {}
        for layer in members:
            children.setdefault(".".join(layer.split(".")[:2]), []).append(layer)
        groups.update(_merge_small(children))
    return groups


MIN_SPLIT_GROUP = 4  # layers: neighbouring small children (YOLO's model.0, model.1, ...) share a group


def _merge_small(children: dict[str, list[str]]) -> dict[str, list[str]]:
    """Consecutive children joined until each group holds MIN_SPLIT_GROUP layers: `model.0-2` for model.0 to
    model.2 (a last short run joins the group before it)."""
    runs: list[list[str]] = []
    for child in children:
        if runs and sum(len(children[c]) for c in runs[-1]) < MIN_SPLIT_GROUP:
            runs[-1].append(child)
        else:
            runs.append([child])
    if len(runs) > 1 and sum(len(children[c]) for c in runs[-1]) < MIN_SPLIT_GROUP:
        runs[-2].extend(runs.pop())
    return {(run[0] if len(run) == 1 else f"{run[0]}-{run[-1].split('.')[-1]}"):
            [layer for child in run for layer in children[child]] for run in runs}


def filter_layers(layers: list[str], pattern: str = "", min_params: int = 0,
                  numel: dict[str, int] | None = None) -> tuple[list[str], str | None]:
    """(the layers whose name matches `pattern` (a case-insensitive regular expression, searched anywhere in
    the name) and that hold more than `min_params` weights, a problem with the pattern or None). A pattern
    that is not a valid expression is matched as plain text, and the problem says so."""
    import re

    problem = None
    try:
        regex = re.compile(pattern or "", re.IGNORECASE)
    except re.error as exc:
        regex = re.compile(re.escape(pattern), re.IGNORECASE)
        problem = f"'{pattern}' is not a regular expression ({exc}): matched as plain text"
    kept = [layer for layer in layers if regex.search(layer)
            and (numel is None or min_params <= 0 or numel.get(layer, 0) > min_params)]
    return kept, problem
