"""Plan: a compression recipe as plain data (frozen dataclasses), its validation and its JSON form.

A plan is an ordered tuple of steps. Each step is a small config (one module per step in complab/steps/, which
registers it) whose per-layer values are a map keyed by an exact layer name, a `re:` pattern (matched in full
against layer names, first match in the map's order wins) or `_default` (complab/layermap.py); a layer no key
reaches is left alone by that step. Every number a user can set lives in the configs, so a run is reproducible
from its plan.json, model and seed. Shape after torchao's FqnToConfig; nothing here is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

import complab.steps  # noqa: F401 - every step module registers its config in STEP_TYPES
from complab.errors import PlanError
from complab.layermap import (  # noqa: F401 - re-exported: the recipe's names, as before the steps moved out
    _MATCH_BUDGET,
    DEFAULT_KEY,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_KEY_CHARS,
    MAX_MATCH_WORK,
    MAX_NAME_CHARS,
    MAX_PATTERN_CHARS,
    MAX_PATTERN_STATES,
    MAX_RECIPE_BYTES,
    MAX_RECIPE_STATES,
    MAX_SEED,
    PATTERN_PREFIX,
    STEP_TYPES,
    LayerField,
    _integer,
    _number,
    _short,
    check_patterns,
    compile_pattern,
    pattern_matches,
    resolve,
    resolve_all,
    step_config,
)
from complab.steps.channels import ChannelStep  # noqa: F401
from complab.steps.cluster import ClusterStep  # noqa: F401
from complab.steps.distill import DistillStep  # noqa: F401
from complab.steps.fold_bn import FoldBNStep  # noqa: F401
from complab.steps.prune import PruneStep  # noqa: F401
from complab.steps.quantize import (  # noqa: F401
    DEFAULT_CODEWORDS,
    DEFAULT_SEGMENT_LENGTH,
    DEFAULT_STAGES,
    QUANTIZERS,
    QuantizeStep,
)

SCHEMA_VERSION = 1


def order_rules() -> tuple[tuple[str, str, str], ...]:
    """(earlier, later, why) for every ordering constraint the registered steps declare (each step's `after`):
    when a plan holds both step types, `earlier` must come first. Plan.validate checks these and the plan page
    orders the steps it builds with ordered(); nothing else states an ordering."""
    return tuple((earlier, cls.type, why) for cls in STEP_TYPES.values() for earlier, why in cls.after)


ORDER_RULES = order_rules()  # the steps registered at import (a step module imported later: call order_rules())


def order_error(order: list[str]) -> str | None:
    """The message of the first ordering rule that `order` (step types in plan order) breaks, else None."""
    for earlier, later, why in order_rules():
        if earlier in order and later in order and order.index(later) < order.index(earlier):
            if getattr(STEP_TYPES[later], "said_from_here", False):  # said from the step that moves
                return f"{later} must come after {earlier}: {why}"
            return f"{earlier} must come before {later}: {why}"
    return None


def ordered(steps) -> tuple:
    """The steps in an order every ordering rule accepts, otherwise as given (a stable topological sort)."""
    rules = order_rules()
    remaining = list(steps)
    out = []
    while remaining:
        types = {step.type for step in remaining}
        for step in remaining:
            if not any(later == step.type and earlier in types for earlier, later, _ in rules):
                out.append(step)
                remaining.remove(step)
                break
        else:  # a cycle cannot happen with the steps' rules; keep the rest as given
            out.extend(remaining)
            break
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    """An ordered tuple of steps plus a name and the evaluation settings."""

    steps: tuple = ()
    name: str = "plan"
    seed: int = 0  # global seed; each step's own seed is added to it
    eval_split: str = "test"  # split the before/after accuracy is measured on

    def validate(self, layers: list[str] | None = None) -> Plan:
        """Raise PlanError naming the step, the layer and the bad value; return self when valid."""
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME_CHARS:
            size = f"{len(self.name)} characters" if isinstance(self.name, str) else type(self.name).__name__
            raise PlanError(f"the plan's name is {size}: use a string of at most {MAX_NAME_CHARS} characters "
                            "(it is copied into every compressed file)")
        if not isinstance(self.steps, tuple | list) or not self.steps:
            raise PlanError(f"the plan has no steps: add at least one ({', '.join(STEP_TYPES)})")
        if self.eval_split not in ("val", "test"):
            raise PlanError(f"eval_split {_short(self.eval_split)} is unknown: use val or test")
        _integer("the plan", None, "seed", self.seed, 0, MAX_SEED)
        budget = _MATCH_BUDGET.set([MAX_MATCH_WORK])
        try:
            return self._validate(layers)
        finally:
            _MATCH_BUDGET.reset(budget)

    def _validate(self, layers: list[str] | None) -> Plan:
        for index, step in enumerate(self.steps, 1):
            _check_per_layer_keys(f"step {index} ({getattr(step, 'type', '?')})", step)
        check_patterns(self, layers)  # before any step resolves a layer through them
        seen = set()
        for index, step in enumerate(self.steps, 1):
            where = f"step {index} ({step.type})"
            if step.type in seen:
                raise PlanError(f"{where}: a plan may hold each step type once; merge the two {step.type} steps")
            seen.add(step.type)
            _check_per_layer_keys(where, step)
            step.check(where)
            if hasattr(step, "seed"):
                _integer(where, None, "seed", step.seed, 0, MAX_SEED)
            if layers is not None and hasattr(step, "check_layers"):
                step.check_layers(where, layers)
            for name in step.per_layer:
                values = getattr(step, name)
                for key in values:  # re: keys: check_patterns
                    if not key.startswith(PATTERN_PREFIX) and key != DEFAULT_KEY and layers is not None \
                            and key not in layers:
                        raise PlanError(f"{where}: layer {_short(key)} in {name} is not a layer of this model; "
                                        f"layers are {', '.join(layers[:8])}")
        order = [step.type for step in self.steps]
        broken = order_error(order)
        if broken:
            raise PlanError(broken)
        steps = {step.type: step for step in self.steps}
        for step in self.steps:  # checks against the plan's other steps (quantize: not on a clustered layer)
            if hasattr(step, "check_plan"):
                step.check_plan(steps, layers)
        return self

    def to_dict(self) -> dict:
        steps = []
        for step in self.steps:
            # options added after recipes shipped and runs were keyed are written only when set: a recipe that does
            # not use them keeps its bytes (the lesson's shipped plan.json) and its runs' content keys
            quiet = {f.name: f.default if f.default is not MISSING else f.default_factory()
                     for f in fields(step) if f.name in getattr(step, "quiet_defaults", ())}
            steps.append({"type": step.type, **{key: value for key, value in asdict(step).items()
                                                if key not in quiet or value != quiet[key]}})
        return {"schema_version": SCHEMA_VERSION, "name": self.name, "seed": self.seed,
                "eval_split": self.eval_split, "steps": steps}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise PlanError("a recipe must be a JSON object with 'schema_version' and 'steps'")
        _check_structure(data)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(f"recipe schema_version {_short(version)} is not supported: this Compression Lab reads "
                            f"version {SCHEMA_VERSION}; re-save the recipe from this version")
        unknown = set(data) - {"schema_version", "name", "seed", "eval_split", "steps"}
        if unknown:
            raise PlanError(f"recipe has unknown keys {_short(sorted(unknown))}: remove them")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list):
            raise PlanError("recipe 'steps' must be a list of step objects")
        for key, kind in (("name", "a string"), ("eval_split", "val or test")):
            if key in data and not isinstance(data[key], str):
                raise PlanError(f"recipe {key} {_short(data[key])} is not a string: use {kind}")
        steps = []
        for index, raw in enumerate(raw_steps, 1):
            kind = raw.get("type") if isinstance(raw, dict) else raw
            if not isinstance(kind, str) or kind not in STEP_TYPES:
                raise PlanError(f"step {index}: type {_short(kind)} is unknown: use one of {', '.join(STEP_TYPES)}")
            cls_ = STEP_TYPES[raw["type"]]
            allowed = {f.name for f in fields(cls_)}
            extra = set(raw) - allowed - {"type"}
            if extra:
                raise PlanError(f"step {index} ({raw['type']}): unknown settings {_short(sorted(extra))}; "
                                f"known: {', '.join(sorted(allowed))}")
            kwargs = {k: v for k, v in raw.items() if k != "type"}
            for name in cls_.per_layer:
                if name in kwargs and not isinstance(kwargs[name], dict):
                    kwargs[name] = {DEFAULT_KEY: kwargs[name]}
            steps.append(cls_(**kwargs))
        plan = cls(steps=tuple(steps), name=data.get("name", "plan"), seed=_as_int(data.get("seed", 0), "seed"),
                   eval_split=data.get("eval_split", "test"))
        return plan.validate()

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> Plan:
        """A plan from a recipe's JSON text (or its bytes, which must be UTF-8); PlanError for anything wrong."""
        if len(text) > MAX_RECIPE_BYTES:
            raise PlanError(f"recipe is {len(text):,} bytes, more than {MAX_RECIPE_BYTES:,}: a recipe is a few KB of "
                            "settings; check that this is the right file")
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("utf-8-sig")  # a byte-order mark (Windows editors) is fine
            except UnicodeDecodeError as exc:
                raise PlanError(f"recipe is not UTF-8 text (byte {exc.start} is {text[exc.start]:#04x}): "
                                "save it as UTF-8 JSON") from None
        if not isinstance(text, str):
            raise PlanError(f"a recipe is JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text.removeprefix("\ufeff"))
        except json.JSONDecodeError as exc:
            raise PlanError(f"recipe is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except RecursionError:
            raise PlanError(f"recipe nests its JSON too deeply: a recipe needs {MAX_DEPTH} levels at most; "
                            "check that this is the right file") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise PlanError(f"recipe is not valid JSON ({str(exc)[:80]})") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Any) -> Plan:
        """A plan from a recipe file: size checked before reading, then from_json (PlanError for anything wrong)."""
        from pathlib import Path

        path = Path(path)
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise PlanError(f"recipe {path} is not a file: pass a recipe .json file")
            if size > MAX_RECIPE_BYTES:
                raise PlanError(f"recipe {path} is {size:,} bytes, more than {MAX_RECIPE_BYTES:,}: a recipe is a few "
                                "KB of settings; check that this is the right file")
            data = path.read_bytes()
        except FileNotFoundError:
            raise PlanError(f"recipe {path} does not exist: check the path") from None
        except OSError as exc:
            raise PlanError(f"cannot read recipe {path} ({exc.strerror}): check the path and permissions") from None
        return cls.from_json(data)


def validate_recipe(text: str | bytes | bytearray, layers: list[str] | None = None) -> Plan:
    """A recipe's text parsed and validated against the model's layer names, with every bound a recipe has: its
    size and shape (from_json), its values, and its `re:` keys' automata and matching (check_patterns). The one
    entry point the CLI, the Plan page's "Load recipe" and the fuzz campaign use; PlanError otherwise."""
    return Plan.from_json(text).validate(layers)


def _check_structure(data: Any) -> None:
    """Bound a recipe's shape before anything reads it: depth, item count, string and key lengths."""
    items = 0
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PlanError(f"recipe nests more than {MAX_DEPTH} levels deep: a recipe is a plan object holding a "
                            "list of step objects and their per-layer maps; check that this is the right file")
        if isinstance(value, str):
            if len(value) > MAX_KEY_CHARS:
                raise PlanError(f"recipe holds a string of {len(value):,} characters ({_short(value)}), more than "
                                f"{MAX_KEY_CHARS}: shorten it")
            continue
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise PlanError(f"recipe key {_short(key)} is not a string: JSON object keys are strings")
                if len(key) > MAX_KEY_CHARS:
                    raise PlanError(f"recipe key {_short(key)} is {len(key):,} characters long, more than "
                                    f"{MAX_KEY_CHARS}: use the layer's name or a short re: pattern")
            children = list(value.values())
        elif isinstance(value, list | tuple):
            children = list(value)
        else:
            continue
        items += len(children)
        if items > MAX_ITEMS:
            raise PlanError(f"recipe holds more than {MAX_ITEMS:,} settings: use re: patterns or _default instead "
                            "of listing every layer")
        stack.extend((child, depth + 1) for child in children)


def _check_per_layer_keys(where: str, step: Any) -> None:
    """Per-layer maps must be objects keyed by strings (a layer name, a re: pattern or _default)."""
    for name in step.per_layer:
        values = getattr(step, name)
        if not isinstance(values, dict):
            raise PlanError(f"{where}: {name} must be a number or an object of layer -> value, "
                            f"got {_short(values)}")
        for key in values:
            if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
                raise PlanError(f"{where}: {name} key {_short(key)} is not a layer name, a re: pattern or "
                                f"{DEFAULT_KEY}: use a string of at most {MAX_KEY_CHARS} characters")


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"recipe {name} must be an integer, got {_short(value)}")
    return value


