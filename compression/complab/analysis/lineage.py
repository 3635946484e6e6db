"""The map of the experiments: where each compression run came from, as a graph with a layout, and what changed
between two runs' recipes (recipe_diff, complab/analysis/recipe_diff.py); the Compare page's "Map of the
experiments" (complab/ui/lineage.py) draws both.

A run comes from (its parent, one per run, the first of these that applies):

    rerun / recipe   its job's "origin" ({"kind", "run"}: engine.rerun, or a plan started from a run's recipe)
    lesson           the Lesson's share run repeats the prune run's pruning: prune -> share
    sweep            a member of a sweep (engine.list_sweeps) hangs under its sweep's node
    same-recipe      no origin, but the same steps as an earlier run of the model: drawn dashed to the first one
    original         none of these: it starts from the model itself (one "original model" root per model)

Everything read here is untrusted (a job.json may name any id, itself, or a cycle; any value may have any type):
an origin counts only when it names a run listed in the store, of the same model, created before the run (so no
chain can loop: a parent is always strictly earlier in (created, id) order), and generations stop at MAX_DEPTH.
The layout is computed here and is deterministic: x is the generation (0: the original, 1: its first runs, ...),
y the branch (a tidy tree: each leaf its own row in time order, a parent centred on its children; models stacked).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from complab.analysis.recipe_diff import (  # noqa: F401 - the map's recipe diff, re-exported with its bounds
    MAX_DIFF_ROWS,
    MAX_LAYERS,
    layer_names,
    recipe_diff,
    setting_text,
)
from complab.runfolder import RUN_ID, STATES, check_origin

MAX_RUNS = 2000  # runs drawn (the newest): a plotly scatter stays responsive well beyond, a person's map does not
MAX_DEPTH = 64  # generations laid out; a longer chain of re-runs is drawn in the last column
MAX_TEXT = 200  # characters kept of a model's or a plan's name
MAX_STEPS_JSON = 1 << 20  # a plan's steps compared for "same recipe" only up to this many characters of JSON
EDGE_KINDS = ("original", "sweep", "rerun", "recipe", "lesson", "same-recipe")
LESSON_PREFIX = "lesson:"


@dataclass
class Graph:
    """Nodes (runs, sweeps, one original model per model) with their layout, and parent -> child edges.

    node: {"id", "kind": "run"|"sweep"|"original", "model", "label", "run" (a run's id, else None), "plan", "state",
           "accuracy" (fraction or None: a detector's mAP50), "bytes" (compressed, or the original's fp32), "created",
           "generation", "x", "y", "parent" (node id or None), "edge" (the kind of the edge from its parent, or None);
           a run's also "damaged" and "task"}
    edge: {"source", "target", "kind"} with kind in EDGE_KINDS."""

    nodes: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    note: str = ""  # said under the map (runs left out)

    def node(self, node_id: str) -> dict | None:
        return next((n for n in self.nodes if n["id"] == node_id), None)

    def runs(self) -> list[str]:
        return [n["run"] for n in self.nodes if n["kind"] == "run"]

    def parent_run(self, run_id: str) -> str | None:
        """The run to compare `run_id` with by default: its nearest ancestor that is a run; for a sweep member, the
        member before it in the sweep; else None (it starts from the original)."""
        by_id = {n["id"]: n for n in self.nodes}
        node = by_id.get(_run_node(run_id))
        if node is None:
            return None
        parent = by_id.get(node["parent"]) if node["parent"] else None
        if parent is not None and parent["kind"] == "run":
            return parent["run"]
        if parent is not None and parent["kind"] == "sweep":
            siblings = [n for n in self.nodes if n["parent"] == parent["id"]]
            before = [n for n in siblings if (n["created"], n["id"]) < (node["created"], node["id"])]
            return max(before, key=lambda n: (n["created"], n["id"]))["run"] if before else None
        return None


def _run_node(run_id: str) -> str:
    return f"run:{run_id}"


def _text(value: Any, default: str = "") -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else default


def _fraction(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) if 0 <= value <= 1 else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _steps_key(plan: Any) -> str | None:
    """The plan's steps as canonical JSON (what "same recipe" compares; its name is not part of it), or None."""
    if not isinstance(plan, dict) or not isinstance(plan.get("steps"), list) or not plan["steps"]:
        return None
    try:
        text = json.dumps({"steps": plan["steps"], "seed": plan.get("seed", 0),
                           "eval_split": plan.get("eval_split", "test")}, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return text if len(text) <= MAX_STEPS_JSON else None


def _run_facts(run: Any) -> dict | None:
    """What the map needs of one listed run (engine.list_runs' row), every value checked; None for a row without a
    usable id."""
    if not isinstance(run, dict) or not isinstance(run.get("id"), str) or not RUN_ID.fullmatch(run["id"]):
        return None
    job = run.get("job") if isinstance(run.get("job"), dict) else {}
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) and not run.get("damaged") else {}
    after = metrics.get("after") if isinstance(metrics.get("after"), dict) else {}
    before = metrics.get("before") if isinstance(metrics.get("before"), dict) else {}
    plan = job.get("plan") if isinstance(job.get("plan"), dict) else {}
    created = run.get("created")
    created = float(created) if isinstance(created, int | float) and not isinstance(created, bool) \
        and math.isfinite(created) else 0.0
    sweep = job.get("sweep") if isinstance(job.get("sweep"), dict) else {}
    return {"id": run["id"], "model": _text(job.get("model"), _text(run.get("model"), "?")) or "?",
            "plan": _text(plan.get("name")) or _text(metrics.get("plan_name")),
            "steps_key": _steps_key(plan), "origin": check_origin(job.get("origin")),
            "sweep": sweep["id"][:MAX_TEXT] if isinstance(sweep.get("id"), str) and sweep["id"] else None,
            "state": run["state"] if run.get("state") in STATES else "unknown",
            "accuracy": _fraction(after.get("accuracy")), "bytes": _count(after.get("compressed_bytes")),
            "accuracy_before": _fraction(before.get("accuracy")), "fp32_bytes": _count(before.get("fp32_bytes")),
            "created": created, "damaged": bool(run.get("damaged")),
            "task": metrics["task"] if metrics.get("task") in ("classify", "detect") else "classify"}


def _sweep_members(sweeps: Any) -> tuple[dict[str, str], dict[str, str]]:
    """({run id: sweep id} for the members a sweep made (reused ones excluded), {sweep id: label})."""
    member_of: dict[str, str] = {}
    labels: dict[str, str] = {}
    for sweep in sweeps if isinstance(sweeps, list) else []:
        if not isinstance(sweep, dict) or not isinstance(sweep.get("id"), str) or not sweep["id"]:
            continue
        sweep_id = sweep["id"][:MAX_TEXT]
        labels.setdefault(sweep_id, _text(sweep.get("label"), sweep_id) or sweep_id)
        for member in sweep.get("members") if isinstance(sweep.get("members"), list) else []:
            if isinstance(member, dict) and isinstance(member.get("run"), str) and not member.get("reused"):
                member_of.setdefault(member["run"], sweep_id)
    return member_of, labels


def _lesson_role(plan_name: str) -> str | None:
    if not plan_name.startswith(LESSON_PREFIX):
        return None
    return "share" if "share" in plan_name else "prune"


def experiment_graph(runs: Any, sweeps: Any = None) -> Graph:
    """The map of `runs` (engine.list_runs rows; compression runs) and `sweeps` (engine.list_sweeps): one tree per
    model under its "original model" node, each run under its parent (module docstring), laid out."""
    facts: dict[str, dict] = {}
    for run in runs if isinstance(runs, list) else []:
        fact = _run_facts(run)
        if fact is not None and fact["id"] not in facts:
            facts[fact["id"]] = fact
    order = sorted(facts.values(), key=lambda f: (f["created"], f["id"]))
    note = ""
    if len(order) > MAX_RUNS:
        note = f"The {MAX_RUNS:,} newest of {len(order):,} runs are drawn."
        order = order[-MAX_RUNS:]
        facts = {f["id"]: f for f in order}
    rank = {f["id"]: i for i, f in enumerate(order)}  # a parent's rank is always below its child's: no cycles
    member_of, sweep_labels = _sweep_members(sweeps)

    nodes: dict[str, dict] = {}
    edges: list[dict] = []

    def add(node_id: str, kind: str, model: str, label: str, parent: str | None, edge: str | None, **extra) -> dict:
        node = {"id": node_id, "kind": kind, "model": model, "label": label, "run": None, "plan": "", "state": "",
                "accuracy": None, "bytes": None, "created": 0.0, "generation": 0, "x": 0.0, "y": 0.0,
                "parent": parent, "edge": edge, **extra}
        if parent is not None:
            node["generation"] = min(MAX_DEPTH, nodes[parent]["generation"] + 1)
            edges.append({"source": parent, "target": node_id, "kind": edge})
        nodes[node_id] = node
        return node

    def root(model: str) -> str:
        node_id = f"original:{model}"
        if node_id not in nodes:
            add(node_id, "original", model, "original model", None, None)
        return node_id

    first_with_steps: dict[tuple[str, str], str] = {}
    last_lesson_prune: dict[str, str] = {}
    for fact in order:
        model = fact["model"]
        origin = root(model)
        if fact["accuracy_before"] is not None:  # the original's figures: as the newest run measured them
            nodes[origin]["accuracy"] = fact["accuracy_before"]
        if fact["fp32_bytes"] is not None:
            nodes[origin]["bytes"] = fact["fp32_bytes"]
        parent, edge = origin, "original"
        link = fact["origin"]
        linked = facts.get(link["run"]) if link else None
        role = _lesson_role(fact["plan"])
        if linked is not None and linked["model"] == model and rank[linked["id"]] < rank[fact["id"]]:
            parent, edge = _run_node(linked["id"]), link["kind"]
        elif role == "share" and model in last_lesson_prune:
            parent, edge = _run_node(last_lesson_prune[model]), "lesson"
        elif role == "prune":
            edge = "lesson"
        elif (sweep_id := member_of.get(fact["id"]) or fact["sweep"]) is not None:  # the listing's, else the tag's
            sweep_node = f"sweep:{model}:{sweep_id}"
            if sweep_node not in nodes:
                add(sweep_node, "sweep", model, sweep_labels.get(sweep_id, f"sweep {sweep_id[-4:]}"), origin, "sweep",
                    created=fact["created"])
            parent, edge = sweep_node, "sweep"
        elif fact["steps_key"] is not None and (model, fact["steps_key"]) in first_with_steps:
            parent, edge = _run_node(first_with_steps[(model, fact["steps_key"])]), "same-recipe"
        if fact["steps_key"] is not None:
            first_with_steps.setdefault((model, fact["steps_key"]), fact["id"])
        if role == "prune":
            last_lesson_prune[model] = fact["id"]
        add(_run_node(fact["id"]), "run", model, fact["plan"] or fact["id"], parent, edge, run=fact["id"],
            plan=fact["plan"], state=fact["state"], accuracy=fact["accuracy"], bytes=fact["bytes"],
            created=fact["created"], damaged=fact["damaged"], task=fact["task"])
    _layout(nodes)
    return Graph(nodes=list(nodes.values()), edges=edges, note=note)


def _layout(nodes: dict[str, dict]) -> None:
    """x = generation; y = a tidy tree's row: leaves one per row in time order, a parent centred on its children,
    each model's tree below the previous one (one empty row between). Iterative: a chain of any length is fine."""
    children: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for node_id, node in nodes.items():
        if node["parent"] is not None:
            children[node["parent"]].append(node_id)
    for kids in children.values():
        kids.sort(key=lambda k: (nodes[k]["created"], k))
    next_row = 0.0
    for root_id in sorted(n for n in nodes if nodes[n]["parent"] is None):
        stack = [(root_id, False)]
        while stack:  # post-order: a node is placed after all its children
            node_id, done = stack.pop()
            kids = children[node_id]
            if not done and kids:
                stack.append((node_id, True))
                stack.extend((kid, False) for kid in reversed(kids))
                continue
            if kids:
                nodes[node_id]["y"] = (nodes[kids[0]]["y"] + nodes[kids[-1]]["y"]) / 2
            else:
                nodes[node_id]["y"] = next_row
                next_row += 1
        next_row += 1  # a gap before the next model's tree
    for node in nodes.values():
        node["x"] = float(node["generation"])
        node["y"] = -node["y"]  # the first row at the top
