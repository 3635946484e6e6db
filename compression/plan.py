"""Plan: a compression recipe as plain data (frozen dataclasses), its validation and its JSON form.

A plan is an ordered tuple of steps. Each step is a small config whose per-layer values are a map
keyed by an exact layer name, a `re:` pattern (matched in full against layer names, first match in
the map's order wins) or `_default`; a layer no key reaches is left alone by that step. Every
number a user can set lives here, so a run is reproducible from its plan.json, model and seed.
Shape after torchao's FqnToConfig; nothing here is ever unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from compression.errors import PlanError

SCHEMA_VERSION = 1
DEFAULT_KEY = "_default"
PATTERN_PREFIX = "re:"


def resolve(values: dict[str, Any], layer: str) -> Any:
    """The value a per-layer map gives `layer`: exact name, then the first matching re: pattern, then _default."""
    if layer in values:
        return values[layer]
    for key, value in values.items():
        if key.startswith(PATTERN_PREFIX) and re.fullmatch(key[len(PATTERN_PREFIX):], layer):
            return value
    return values.get(DEFAULT_KEY)


def resolve_all(values: dict[str, Any], layers: list[str]) -> dict[str, Any]:
    """Layer -> value for every layer the map reaches (layers it does not reach are left out)."""
    out = {}
    for layer in layers:
        value = resolve(values, layer)
        if value is not None:
            out[layer] = value
    return out


@dataclass(frozen=True)
class PruneStep:
    """Magnitude pruning (Han et al. 2015): per layer, the smallest |w| are set to zero and stay zero."""

    type: ClassVar[str] = "prune"
    per_layer: ClassVar[tuple[str, ...]] = ("sparsity",)
    sparsity: dict[str, float] = field(default_factory=dict)  # fraction of weights removed, 0 to 0.999
    iterations: int = 3  # prune-then-fine-tune rounds; sparsity rises to its target over them
    finetune_epochs: int = 4  # epochs of masked fine-tuning after each round
    lr: float = 5e-4  # fine-tuning learning rate (Adam)
    seed: int = 0

    def check(self, where: str) -> None:
        for layer, value in self.sparsity.items():
            _number(where, layer, "sparsity", value, 0.0, 0.999)
        _integer(where, None, "iterations", self.iterations, 1, 100)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)


@dataclass(frozen=True)
class ClusterStep:
    """k-means weight sharing per layer (Deep Compression), k fixed or "auto" (seed 1's dynamic choice)."""

    type: ClassVar[str] = "cluster"
    per_layer: ClassVar[tuple[str, ...]] = ("n_clusters",)
    n_clusters: dict[str, int | str] = field(default_factory=dict)  # 2 to 256 shared values, or "auto"
    init: str = "linear"  # centroid initialisation; Han et al. found linear best (large weights matter)
    auto_criterion: str = "accuracy"  # "accuracy": drop on a validation subset; "reconstruction": rel. SSE
    tolerance: float = 0.005  # auto: largest accuracy drop (fraction) or relative SSE a layer may cost
    auto_val_size: int = 512  # validation images used by the auto search
    finetune_epochs: int = 4  # epochs fine-tuning the shared values (gradients summed per cluster)
    lr: float = 2e-4  # learning rate for the shared values
    seed: int = 0

    def check(self, where: str) -> None:
        for layer, value in self.n_clusters.items():
            if value == "auto":
                continue
            _integer(where, layer, "n_clusters", value, 2, 256, extra=' or "auto"')
        if self.init not in ("linear", "quantile", "random"):
            raise PlanError(f"{where}: init {self.init!r} is unknown: use linear, quantile or random")
        if self.auto_criterion not in ("accuracy", "reconstruction"):
            raise PlanError(f"{where}: auto_criterion {self.auto_criterion!r} is unknown: "
                            "use accuracy or reconstruction")
        _number(where, None, "tolerance", self.tolerance, 0.0, 1.0)
        _integer(where, None, "auto_val_size", self.auto_val_size, 1, 10_000_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)


STEP_TYPES: dict[str, type] = {cls.type: cls for cls in (PruneStep, ClusterStep)}


@dataclass(frozen=True)
class Plan:
    """An ordered tuple of steps plus a name and the evaluation settings."""

    steps: tuple = ()
    name: str = "plan"
    seed: int = 0  # global seed; each step's own seed is added to it
    eval_split: str = "test"  # split the before/after accuracy is measured on

    def validate(self, layers: list[str] | None = None) -> Plan:
        """Raise PlanError naming the step, the layer and the bad value; return self when valid."""
        if not self.steps:
            raise PlanError("the plan has no steps: add at least one (prune, cluster)")
        if self.eval_split not in ("val", "test"):
            raise PlanError(f"eval_split {self.eval_split!r} is unknown: use val or test")
        seen = set()
        for index, step in enumerate(self.steps, 1):
            where = f"step {index} ({step.type})"
            if step.type in seen:
                raise PlanError(f"{where}: a plan may hold each step type once; merge the two {step.type} steps")
            seen.add(step.type)
            step.check(where)
            for name in step.per_layer:
                values = getattr(step, name)
                for key in values:
                    if key.startswith(PATTERN_PREFIX):
                        try:
                            pattern = re.compile(key[len(PATTERN_PREFIX):])
                        except re.error as exc:
                            raise PlanError(
                                f"{where}: {name} key {key!r} is not a valid regular expression ({exc})") from None
                        if layers is not None and not any(pattern.fullmatch(layer) for layer in layers):
                            raise PlanError(f"{where}: {name} pattern {key!r} matches no layer of this model; "
                                            f"layers are {', '.join(layers[:8])}")
                    elif key != DEFAULT_KEY and layers is not None and key not in layers:
                        raise PlanError(f"{where}: layer {key!r} in {name} is not a layer of this model; "
                                        f"layers are {', '.join(layers[:8])}")
        order = [step.type for step in self.steps]
        if "prune" in order and "cluster" in order and order.index("cluster") < order.index("prune"):
            raise PlanError("prune must come before cluster: "
                            "pruning after weight sharing would break the shared values")
        return self

    def to_dict(self) -> dict:
        steps = []
        for step in self.steps:
            steps.append({"type": step.type, **asdict(step)})
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "seed": self.seed,
                "eval_split": self.eval_split, "steps": steps}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise PlanError("a recipe must be a JSON object with 'schema_version' and 'steps'")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(f"recipe schema_version {version!r} is not supported: this Compression Lab reads "
                            f"version {SCHEMA_VERSION}; re-save the recipe from this version")
        unknown = set(data) - {"schema_version", "name", "seed", "eval_split", "steps"}
        if unknown:
            raise PlanError(f"recipe has unknown keys {sorted(unknown)}: remove them")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list):
            raise PlanError("recipe 'steps' must be a list of step objects")
        steps = []
        for index, raw in enumerate(raw_steps, 1):
            if not isinstance(raw, dict) or raw.get("type") not in STEP_TYPES:
                kind = raw.get("type") if isinstance(raw, dict) else raw
                raise PlanError(f"step {index}: type {kind!r} is unknown: use one of {', '.join(STEP_TYPES)}")
            cls_ = STEP_TYPES[raw["type"]]
            allowed = {f.name for f in fields(cls_)}
            extra = set(raw) - allowed - {"type"}
            if extra:
                raise PlanError(f"step {index} ({raw['type']}): unknown settings {sorted(extra)}; "
                                f"known: {', '.join(sorted(allowed))}")
            kwargs = {k: v for k, v in raw.items() if k != "type"}
            for name in cls_.per_layer:
                if name in kwargs and not isinstance(kwargs[name], dict):
                    kwargs[name] = {DEFAULT_KEY: kwargs[name]}
            steps.append(cls_(**kwargs))
        plan = cls(steps=tuple(steps), name=str(data.get("name", "plan")), seed=_as_int(data.get("seed", 0), "seed"),
                   eval_split=str(data.get("eval_split", "test")))
        return plan.validate()

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"recipe is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        return cls.from_dict(data)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"recipe {name} must be an integer, got {value!r}")
    return value


def _number(where: str, layer: str | None, name: str, value: Any, low: float, high: float) -> None:
    at = f"layer {layer!r}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {value!r} is out of range: use a number from {low} to {high}")


def _integer(where: str, layer: str | None, name: str, value: Any, low: int, high: int, extra: str = "") -> None:
    at = f"layer {layer!r}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {value!r} is out of range: use an integer from {low} to {high}{extra}")
