"""Plan: a compression recipe as plain data (frozen dataclasses), its validation and its JSON form.

A plan is an ordered tuple of steps. Each step is a small config whose per-layer values are a map
keyed by an exact layer name, a `re:` pattern (matched in full against layer names, first match in
the map's order wins) or `_default`; a layer no key reaches is left alone by that step. Every
number a user can set lives here, so a run is reproducible from its plan.json, model and seed.
Shape after torchao's FqnToConfig; nothing here is ever unpickled.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import reprlib
from dataclasses import asdict, dataclass, field, fields
from re import _constants as sre  # the parse-tree opcodes of Python's own regex parser
from re import _parser as sre_parse
from typing import Any, ClassVar

from complab.errors import PlanError

SCHEMA_VERSION = 1
DEFAULT_KEY = "_default"
PATTERN_PREFIX = "re:"

# What a recipe may hold (a recipe is a few KB of settings; these bound what a careless or hostile file costs):
MAX_RECIPE_BYTES = 1 << 20  # the whole JSON text
MAX_NAME_CHARS = 200  # the plan's name (it is copied into every compact file's meta)
MAX_KEY_CHARS = 1000  # a per-layer key (a layer name) and any string setting
MAX_PATTERN_CHARS = 200  # a re: pattern
MAX_PATTERN_STATES = 5000  # states of a pattern's automaton (a{1000}{1000} would need 10**6)
MAX_RECIPE_STATES = 20_000  # states of all the recipe's patterns together (each compiled pattern is kept)
MAX_MATCH_WORK = 1_500_000  # automaton steps matching all the recipe's patterns against the layer names (~1 s)
MAX_DEPTH = 8  # nesting of the recipe's JSON (a recipe needs 4: plan, steps, step, per-layer map)
MAX_ITEMS = 100_000  # keys and list entries in the whole recipe
MAX_SEED = 2**31 - 1


# ----------------------------------------------------------------------------------------------- re: patterns
#
# A `re:` key is Python regular-expression syntax, but it is matched by a Thompson automaton built from
# Python's own parse tree, not by `re`'s backtracking engine: matching costs O(len(layer) x states) for
# every pattern, so `re:(.*.*)*X` (which `re` needs exponential time for, on ResNet-18's layer names it
# never returned) answers at once. Single characters (literals, classes, ., flags) are tested with `re`
# itself, so they mean exactly what they mean in Python. Backreferences, lookarounds, atomic groups and
# possessive quantifiers need backtracking and are refused with a PlanError.

_UNSUPPORTED = {sre.GROUPREF: "a backreference", sre.GROUPREF_EXISTS: "a conditional group",
                sre.ASSERT: "a lookahead/lookbehind", sre.ASSERT_NOT: "a negative lookahead/lookbehind",
                sre.ATOMIC_GROUP: "an atomic group", sre.POSSESSIVE_REPEAT: "a possessive quantifier"}
_CATEGORIES = {sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D", sre.CATEGORY_SPACE: r"\s",
               sre.CATEGORY_NOT_SPACE: r"\S", sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W"}
_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.DOTALL


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlevel = 3


def _short(value: Any) -> str:
    """A repr of value cut to ~60 characters and 3 levels (messages stay one short line whatever a recipe holds)."""
    return _REPR.repr(value)


def _char_source(op, arg) -> str:
    """A one-character regex for a LITERAL / NOT_LITERAL / ANY / IN node of the parse tree."""
    if op == sre.LITERAL:
        return re.escape(chr(arg))
    if op == sre.NOT_LITERAL:
        return "[^" + re.escape(chr(arg)) + "]"
    if op == sre.ANY:
        return "."
    parts = []
    for item_op, item in arg:
        if item_op == sre.NEGATE:
            parts.insert(0, "^")
        elif item_op == sre.LITERAL:
            parts.append(re.escape(chr(item)))
        elif item_op == sre.RANGE:
            parts.append(re.escape(chr(item[0])) + "-" + re.escape(chr(item[1])))
        elif item_op == sre.CATEGORY and item in _CATEGORIES:
            parts.append(_CATEGORIES[item])
        else:
            raise PlanError(f"class item {item_op} is not supported in a layer pattern")
    return "[" + "".join(parts) + "]"


def _pattern_cost(items) -> int:
    """An upper bound on the states (and construction steps) of a parsed pattern's automaton, computed from
    the parse tree before anything is built: repeat counts multiply their body's cost, so a product of nested
    {m,n} counts is bounded even where the body builds no state (`(?:(?:){65535}){65535}` looped 4e9 times)."""
    total = 0
    for op, arg in items:
        if op == sre.SUBPATTERN:
            total += 1 + _pattern_cost(arg[3])
        elif op == sre.BRANCH:
            total += 1 + sum(_pattern_cost(alternative) for alternative in arg[1])
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, body = arg
            copies = low + 1 if high == sre.MAXREPEAT else max(low, high)
            total += 1 + max(copies, 1) * max(_pattern_cost(body), 1)
        elif op == sre.ATOMIC_GROUP:
            total += 1 + _pattern_cost(arg)
        else:
            total += 1
        if total > MAX_PATTERN_STATES:  # stop early: the bound is all that is asked
            return total
    return total


class _OverBudget(Exception):
    """Matching the recipe's patterns took more steps than MAX_MATCH_WORK."""


# steps left to the validation in progress (Plan.validate sets it; methods resolving a validated plan do not)
_MATCH_BUDGET: contextvars.ContextVar[list | None] = contextvars.ContextVar("plan_match_budget", default=None)


class _Automaton:
    """The Thompson automaton of a parsed pattern: states are ("char", test, next), ("split", a, b),
    ("at", code, multiline, ascii, next) and ("match",); `matches` simulates it on all states at once."""

    def __init__(self, pattern: str) -> None:
        parsed = sre_parse.parse(pattern)
        self.cost = _pattern_cost(list(parsed))
        if self.cost > MAX_PATTERN_STATES:
            raise OverflowError
        self.states: list[tuple] = [("match",)]
        self.tests: list[re.Pattern] = []
        self.start = self._sequence(list(parsed), 0, parsed.state.flags)

    def _add(self, state: tuple) -> int:
        if len(self.states) >= MAX_PATTERN_STATES:
            raise OverflowError
        self.states.append(state)
        return len(self.states) - 1

    def _sequence(self, items: list, follow: int, flags: int) -> int:
        for op, arg in reversed(items):
            follow = self._item(op, arg, follow, flags)
        return follow

    def _item(self, op, arg, follow: int, flags: int) -> int:
        if op in _UNSUPPORTED:
            raise PlanError(f"uses {_UNSUPPORTED[op]}")
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            self.tests.append(re.compile(_char_source(op, arg), flags & _CHAR_FLAGS))
            return self._add(("char", len(self.tests) - 1, follow))
        if op == sre.AT:
            return self._add(("at", arg, bool(flags & re.MULTILINE), bool(flags & re.ASCII), follow))
        if op == sre.SUBPATTERN:
            _, add_flags, del_flags, body = arg
            return self._sequence(list(body), follow, (flags | add_flags) & ~del_flags)
        if op == sre.BRANCH:
            alternatives = arg[1]
            start = self._sequence(list(alternatives[-1]), follow, flags)
            for alternative in reversed(alternatives[:-1]):
                start = self._add(("split", self._sequence(list(alternative), follow, flags), start))
            return start
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):  # greedy and lazy match the same strings in full
            low, high, body = arg
            body = list(body)
            if high == sre.MAXREPEAT:
                loop = self._add(("split", None, follow))
                self.states[loop] = ("split", self._sequence(body, loop, flags), follow)
                start = loop
            else:
                start = follow
                for _ in range(high - low):
                    start = self._add(("split", self._sequence(body, start, flags), follow))
            for _ in range(low):
                start = self._sequence(body, start, flags)
            return start
        raise PlanError(f"uses {op}, which layer patterns do not support")

    @staticmethod
    def _word(char: str, ascii_only: bool) -> bool:
        return char.isascii() and (char.isalnum() or char == "_") if ascii_only else (char.isalnum() or char == "_")

    def _at(self, code, multiline: bool, ascii_only: bool, text: str, pos: int) -> bool:
        if code in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
            return pos == 0 or (code == sre.AT_BEGINNING and multiline and text[pos - 1] == "\n")
        if code == sre.AT_END_STRING:
            return pos == len(text)
        if code == sre.AT_END:
            return (pos == len(text) or (pos == len(text) - 1 and text[pos] == "\n")
                    or (multiline and text[pos] == "\n"))
        if code == sre.AT_NON_BOUNDARY and not text:  # Python's \B never matches an empty string
            return False
        before = pos > 0 and self._word(text[pos - 1], ascii_only)
        after = pos < len(text) and self._word(text[pos], ascii_only)
        return (before != after) == (code == sre.AT_BOUNDARY)

    def _closure(self, starts: list[int], text: str, pos: int, counter: list | None = None) -> set[int]:
        """The char and match states reachable from `starts` without reading a character."""
        seen: set[int] = set()
        out: set[int] = set()
        stack = list(starts)
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            state = self.states[index]
            if state[0] == "split":
                stack.extend((state[1], state[2]))
            elif state[0] == "at":
                if self._at(state[1], state[2], state[3], text, pos):
                    stack.append(state[4])
            else:
                out.add(index)
        if counter is not None:
            counter[0] += len(seen)
            if counter[1] is not None and counter[0] > counter[1]:
                raise _OverBudget
        return out

    def matches(self, text: str, counter: list | None = None) -> bool:
        """Whether the pattern matches `text` in full; counter [steps, limit or None] counts the states visited
        (_OverBudget past the limit)."""
        current = self._closure([self.start], text, 0, counter)
        for pos, char in enumerate(text):
            moved = [state[2] for state in (self.states[i] for i in current)
                     if state[0] == "char" and self.tests[state[1]].fullmatch(char)]
            if not moved:
                return False
            current = self._closure(moved, text, pos + 1, counter)
        return 0 in current


@functools.lru_cache(maxsize=512)
def compile_pattern(key: str) -> _Automaton:
    """The automaton of a `re:` key; PlanError naming what is wrong and how to fix it."""
    pattern = key[len(PATTERN_PREFIX):]
    if len(pattern) > MAX_PATTERN_CHARS:
        raise PlanError(f"layer pattern {_short(key)} is {len(pattern)} characters long, more than "
                        f"{MAX_PATTERN_CHARS}: shorten it, or list the layers by name")
    try:
        return _Automaton(pattern)
    except re.error as exc:
        raise PlanError(f"layer pattern {_short(key)} is not a valid regular expression ({exc}): "
                        "fix its syntax") from None
    except (OverflowError, RecursionError):
        raise PlanError(f"layer pattern {_short(key)} is too complex (more than {MAX_PATTERN_STATES} automaton "
                        "states, e.g. from large nested {m,n} counts): write it with * or + instead") from None
    except PlanError as exc:
        raise PlanError(f"layer pattern {_short(key)} {exc}, which layer patterns do not support (they are "
                        "matched without backtracking): use plain alternatives, classes and quantifiers") from None


_MATCHED: dict[tuple[str, str], tuple[bool, int]] = {}  # (key, layer) -> (matches, steps it took)
_MATCHED_MAX = 65536


def _over_budget(key: str) -> PlanError:
    return PlanError(f"layer pattern {_short(key)} with the recipe's other patterns takes more than "
                     f"{MAX_MATCH_WORK:,} automaton steps to match against the layer names: use fewer or simpler "
                     "patterns (no large {m,n} counts or long runs of .* and .?)")


def pattern_matches(key: str, layer: str) -> bool:
    """Whether a `re:` key matches a layer name in full, in time linear in the name (never hangs).

    Inside Plan.validate the steps count against MAX_MATCH_WORK, a remembered answer as much as a computed
    one (a recipe is refused or accepted alike however often it is tried): a PlanError names the key."""
    budget = _MATCH_BUDGET.get()
    known = _MATCHED.get((key, layer))
    if known is None:
        counter = [0, None if budget is None else budget[0]]
        try:
            found = compile_pattern(key).matches(layer, counter)
        except _OverBudget:
            raise _over_budget(key) from None
        known = (found, counter[0])
        if len(_MATCHED) >= _MATCHED_MAX:
            _MATCHED.clear()
        _MATCHED[(key, layer)] = known
    if budget is not None:
        budget[0] -= known[1]
        if budget[0] < 0:
            raise _over_budget(key)
    return known[0]


def check_patterns(plan: Plan, layers: list[str] | None = None) -> None:
    """The recipe's `re:` keys within their budgets, before any step reads them (PlanError naming the key).

    Each pattern compiles within MAX_PATTERN_STATES and all of them within MAX_RECIPE_STATES; with the
    model's layer names, every pattern is matched against every name (filling pattern_matches' cache, so
    resolving the plan later costs no more than this) within the validation's MAX_MATCH_WORK steps."""
    keys: dict[str, str] = {}
    for index, step in enumerate(plan.steps, 1):
        for name in getattr(step, "per_layer", ()):
            values = getattr(step, name, None)
            if isinstance(values, dict):
                for key in values:
                    if isinstance(key, str) and key.startswith(PATTERN_PREFIX):
                        keys.setdefault(key, f"step {index} ({step.type}): {name}")
    total = 0
    for key, where in keys.items():
        try:
            total += compile_pattern(key).cost
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None
        if total > MAX_RECIPE_STATES:
            raise PlanError(f"{where}: layer pattern {_short(key)} brings the recipe's patterns to more than "
                            f"{MAX_RECIPE_STATES:,} automaton states: use fewer or simpler patterns")
    for key, where in keys.items():
        if layers is not None:
            try:
                hits = [layer for layer in layers if pattern_matches(key, layer)]
            except PlanError as exc:
                raise PlanError(f"{where}: {exc}") from None
            if not hits:
                raise PlanError(f"{where} pattern {_short(key)} matches no layer of this model; "
                                f"layers are {', '.join(layers[:8])}")


STEP_TYPES: dict[str, type] = {}  # step type -> its config class; each config registers itself with @step_config


def step_config(cls: type) -> type:
    """Register a step config class under its `type` (its handler registers in its method file)."""
    if cls.type in STEP_TYPES:
        raise ValueError(f"step type {cls.type!r} is registered twice")
    STEP_TYPES[cls.type] = cls
    return cls


# Where step types may go relative to each other: (earlier, later, why). When a plan holds both step types,
# `earlier` must come first. Plan.validate checks these and the plan page orders the steps it builds with
# ordered(); nothing else states an ordering.
ORDER_RULES: tuple[tuple[str, str, str], ...] = (
    ("prune", "cluster", "pruning after weight sharing would break the shared values"),
    ("channels", "prune", "removing channels changes the layers' shapes, so prune must work on what remains; "
                          "move the channels step first"),
    ("channels", "cluster", "removing channels changes the layers' shapes, so cluster must work on what remains; "
                            "move the channels step first"),
    ("distill", "cluster", "its fine-tuning would break the shared values (the cluster step already fine-tunes "
                           "with the KD loss when the plan distills)"),
    ("prune", "fold_bn", "fine-tuning without batch norm recovers far less, so prune (and its fine-tuning) runs "
                         "first; move fold_bn later"),
    ("channels", "fold_bn", "fine-tuning without batch norm recovers far less, so channels (and its fine-tuning) "
                            "runs first; move fold_bn later"),
    ("fold_bn", "cluster", "folding scales each output channel's weights, which would break the shared values"),
    ("fold_bn", "quantize", "folding scales each output channel's weights, which would no longer match the "
                            "quantizer's codes"),
    ("prune", "quantize", "it changes the weights, which would no longer match the quantizer's codes; move the "
                          "quantize step after prune"),
    ("channels", "quantize", "it changes the weights, which would no longer match the quantizer's codes; move the "
                             "quantize step after channels"),
    ("distill", "quantize", "it changes the weights, which would no longer match the quantizer's codes; move the "
                            "quantize step after distill"),
)


def order_error(order: list[str]) -> str | None:
    """The message of the first ORDER_RULES rule that `order` (step types in plan order) breaks, else None."""
    for earlier, later, why in ORDER_RULES:
        if earlier in order and later in order and order.index(later) < order.index(earlier):
            if later == "fold_bn":  # said from the step that moves
                return f"fold_bn must come after {earlier}: {why}"
            return f"{earlier} must come before {later}: {why}"
    return None


def ordered(steps) -> tuple:
    """The steps in an order every ORDER_RULES rule accepts, otherwise as given (a stable topological sort)."""
    remaining = list(steps)
    out = []
    while remaining:
        types = {step.type for step in remaining}
        for step in remaining:
            if not any(later == step.type and earlier in types for earlier, later, _ in ORDER_RULES):
                out.append(step)
                remaining.remove(step)
                break
        else:  # a cycle cannot happen with the table above; keep the rest as given
            out.extend(remaining)
            break
    return tuple(out)


def resolve(values: dict[str, Any], layer: str) -> Any:
    """The value a per-layer map gives `layer`: exact name, then the first matching re: pattern, then _default."""
    if layer in values:
        return values[layer]
    for key, value in values.items():
        if key.startswith(PATTERN_PREFIX) and pattern_matches(key, layer):
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


@step_config
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


@step_config
@dataclass(frozen=True)
class ClusterStep:
    """k-means weight sharing per layer (Deep Compression), k fixed or "auto" (the dynamical-clustering
    paper's dynamic choice, arXiv 1910.02747)."""

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
    # shared values for each clustered layer's bias, 2 to 256 (0: biases stay fp32). At 160x a LeNet-5 file
    # is ~11 KB and its 580 fp32 biases are 2.2 KB of it; shared (and fine-tuned with the weights) at 16
    # values they cost 0.6 KB. The file shares a bias of at least 64 values; shorter ones stay raw.
    bias_clusters: int = 0

    def check(self, where: str) -> None:
        for layer, value in self.n_clusters.items():
            if value == "auto":
                continue
            _integer(where, layer, "n_clusters", value, 2, 256, extra=' or "auto"')
        if self.bias_clusters != 0:
            _integer(where, None, "bias_clusters", self.bias_clusters, 2, 256, extra=" or 0 (biases stay fp32)")
        if self.init not in ("linear", "quantile", "random"):
            raise PlanError(f"{where}: init {_short(self.init)} is unknown: use linear, quantile or random")
        if self.auto_criterion not in ("accuracy", "reconstruction"):
            raise PlanError(f"{where}: auto_criterion {_short(self.auto_criterion)} is unknown: "
                            "use accuracy or reconstruction")
        _number(where, None, "tolerance", self.tolerance, 0.0, 1.0)
        _integer(where, None, "auto_val_size", self.auto_val_size, 1, 10_000_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)


@step_config
@dataclass(frozen=True)
class ChannelStep:
    """Channel pruning (Hu et al. 2018): per convolution, keep a fraction of output channels, removed for real.

    Layers are pruned least sensitive first; the kept channels are chosen by a genetic algorithm with the
    paper's two-step fitness, or by the L1-norm (Li et al. 2017) or random baselines.
    """

    type: ClassVar[str] = "channels"
    per_layer: ClassVar[tuple[str, ...]] = ("keep_ratio",)
    keep_ratio: dict[str, float] = field(default_factory=dict)  # fraction of output channels kept, 0.01 to 1
    selection: str = "ga"  # "ga" (genetic algorithm), "l1" (largest filter L1 norms) or "random"
    population: int = 16  # GA: candidate keep masks per generation
    generations: int = 8  # GA: generations after the initial population
    crossover: float = 0.8  # GA: probability that a child mixes two parents (uniform crossover)
    mutation: float = 0.05  # GA: per kept channel, probability of swapping it for a dropped one
    elite: int = 2  # GA: best masks copied unchanged into the next generation
    survivors: int = 4  # GA: candidates per generation the accurate fitness scores (0 = all: no screening)
    screen_size: int = 64  # images for the cheap fitness (reconstruction error of the next layers)
    fitness_size: int = 256  # validation images for the accurate fitness (top-1; mAP50 for a detector)
    recalibrate_size: int = 256  # training images whose batch statistics re-estimate BatchNorm after each layer
    finetune_epochs: int = 1  # fine-tuning epochs after each layer (KD loss when the plan distills)
    final_epochs: int = 0  # fine-tuning epochs after the last layer
    lr: float = 1e-3  # fine-tuning learning rate (Adam)
    seed: int = 0

    def check(self, where: str) -> None:
        for layer, value in self.keep_ratio.items():
            _number(where, layer, "keep_ratio", value, 0.01, 1.0)
        if self.selection not in ("ga", "l1", "random"):
            raise PlanError(f"{where}: selection {_short(self.selection)} is unknown: use ga, l1 or random")
        _integer(where, None, "population", self.population, 2, 1000)
        _integer(where, None, "generations", self.generations, 0, 1000)
        _number(where, None, "crossover", self.crossover, 0.0, 1.0)
        _number(where, None, "mutation", self.mutation, 0.0, 1.0)
        _integer(where, None, "elite", self.elite, 0, self.population - 1)
        _integer(where, None, "survivors", self.survivors, 0, self.population)
        _integer(where, None, "screen_size", self.screen_size, 1, 100_000)
        _integer(where, None, "fitness_size", self.fitness_size, 1, 10_000_000)
        _integer(where, None, "recalibrate_size", self.recalibrate_size, 0, 10_000_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _integer(where, None, "final_epochs", self.final_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)


@step_config
@dataclass(frozen=True)
class DistillStep:
    """Knowledge distillation (Hinton et al. 2015): the original model teaches the compressed one.

    With a distill step in the plan, every fine-tuning of the plan (each step's own) uses the KD loss;
    the step itself then fine-tunes `epochs` more where it stands, keeping pruned weights at zero.
    """

    type: ClassVar[str] = "distill"
    per_layer: ClassVar[tuple[str, ...]] = ()
    temperature: float = 4.0  # softens both models' logits; the KD term is scaled by T^2
    alpha: float = 0.7  # weight of the KD term; 1 - alpha weighs the hard-label cross-entropy
    epochs: int = 4  # fine-tuning epochs of this step (0: only switch the other steps' loss to KD)
    lr: float = 5e-4  # learning rate (Adam)
    seed: int = 0

    def check(self, where: str) -> None:
        _number(where, None, "temperature", self.temperature, 0.1, 100.0)
        _number(where, None, "alpha", self.alpha, 0.0, 1.0)
        _integer(where, None, "epochs", self.epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)


QUANTIZERS = ("none", "binary", "kmeans", "pq", "rq")
DEFAULT_CODEWORDS = {"binary": 2, "kmeans": 16, "pq": 256, "rq": 256}  # k when n_codewords does not reach a layer
DEFAULT_SEGMENT_LENGTH = 4  # PQ sub-vector length s when segment_length does not reach a layer
DEFAULT_STAGES = 2  # RQ stages t when stages does not reach a layer


@step_config
@dataclass(frozen=True)
class QuantizeStep:
    """Vector quantization (Gong et al. 2014) per layer: binarization, scalar k-means, product or residual.

    Codebooks are fine-tuned afterwards (codes fixed), then stored as codebooks + codes ("vq" sections).
    Applies to linear layers as in the paper and to convolutions through their (out, in*kh*kw) matrix.
    """

    type: ClassVar[str] = "quantize"
    per_layer: ClassVar[tuple[str, ...]] = ("quantizer", "n_codewords", "segment_length", "stages", "axis")
    quantizer: dict[str, str] = field(default_factory=dict)  # "binary", "kmeans", "pq", "rq" or "none"
    n_codewords: dict[str, int] = field(default_factory=dict)  # k: kmeans 2-256; pq/rq a power of two 2-4096
    segment_length: dict[str, int] = field(default_factory=dict)  # pq: sub-vector length s, 1-64 (default 4)
    stages: dict[str, int] = field(default_factory=dict)  # rq: t stages of k codewords, 1-16 (default 2)
    axis: dict[str, str] = field(default_factory=dict)  # pq/rq vectors: "in" rows of W (paper) or "out" columns
    kmeans_iterations: int = 25  # pq/rq: k-means iterations per codebook (faiss's default)
    finetune_epochs: int = 4  # epochs fine-tuning the codebooks (codes fixed; gradients summed per codeword)
    lr: float = 1e-3  # learning rate for the codebooks (1e-4 left PQ on LeNet-300 a point lower: vq_table.py)
    seed: int = 0

    def layer_settings(self, layer: str) -> dict | None:
        """{quantizer, n_codewords, segment_length, stages, axis} for a layer, or None when not quantized."""
        method = resolve(self.quantizer, layer)
        if method in (None, "none"):
            return None
        k = resolve(self.n_codewords, layer)
        return {"quantizer": method, "n_codewords": 2 if method == "binary" else DEFAULT_CODEWORDS[method] if k is None
                else k, "segment_length": resolve(self.segment_length, layer) or DEFAULT_SEGMENT_LENGTH,
                "stages": resolve(self.stages, layer) or DEFAULT_STAGES, "axis": resolve(self.axis, layer) or "in"}

    def check(self, where: str) -> None:
        for layer, value in self.quantizer.items():
            if value not in QUANTIZERS:
                raise PlanError(f"{where}: layer {_short(layer)}: quantizer {_short(value)} is unknown: use one of "
                                f"{', '.join(QUANTIZERS)}")
        for layer, value in self.n_codewords.items():
            _integer(where, layer, "n_codewords", value, 2, 4096)
        for layer, value in self.segment_length.items():
            _integer(where, layer, "segment_length", value, 1, 64)
        for layer, value in self.stages.items():
            _integer(where, layer, "stages", value, 1, 16)
        for layer, value in self.axis.items():
            if value not in ("in", "out"):
                raise PlanError(f"{where}: layer {_short(layer)}: axis {_short(value)} is unknown: use in "
                                "(sub-vectors along each output unit's inputs, the paper's) or out")
        names = set(self.quantizer) | set(self.n_codewords)
        self.check_layers(where, sorted(names))
        _integer(where, None, "kmeans_iterations", self.kmeans_iterations, 1, 1000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)

    def check_layers(self, where: str, layers: list[str]) -> None:
        """Per-layer combinations: kmeans k at most 256; pq/rq k a power of two (log2 k bits per code)."""
        for layer in layers:
            settings = self.layer_settings(layer)
            if settings is None:
                continue
            k, method = settings["n_codewords"], settings["quantizer"]
            if method == "kmeans" and k > 256:
                raise PlanError(f"{where}: layer {_short(layer)}: kmeans n_codewords {k} is out of range: use 2 to 256 "
                                "(or pq for more codewords)")
            if method in ("pq", "rq") and k & (k - 1):
                raise PlanError(f"{where}: layer {_short(layer)}: {method} n_codewords {k} is not a power of two: "
                                f"use {1 << (k.bit_length() - 1)} or {1 << k.bit_length()} (codes are log2 k bits)")


@step_config
@dataclass(frozen=True)
class FoldBNStep:
    """Fold each batch norm into its convolution (detectors: Ultralytics' inference-time fusion), exactly.

    The file then stores one bias per convolution instead of five batch-norm vectors, and the weights
    shared afterwards are the ones inference uses. Fine-tuning after folding recovers far less than
    with batch norm, so it goes after prune and channels (the cluster step's shared-value fine-tuning
    after it works: measured on the demo detector, same mAP, 16% smaller file).
    """

    type: ClassVar[str] = "fold_bn"
    per_layer: ClassVar[tuple[str, ...]] = ()

    def check(self, where: str) -> None:
        return None


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
        _check_quantize(self, order, layers)
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


def _number(where: str, layer: str | None, name: str, value: Any, low: float, high: float) -> None:
    at = f"layer {_short(layer)}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {_short(value)} is out of range: use a number from {low} to {high}")


def _integer(where: str, layer: str | None, name: str, value: Any, low: int, high: int, extra: str = "") -> None:
    at = f"layer {_short(layer)}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {_short(value)} is out of range: "
                        f"use an integer from {low} to {high}{extra}")


def _check_quantize(plan: Plan, order: list[str], layers: list[str] | None) -> None:
    """Where quantization does not combine with other steps on a layer: a clustered layer cannot also be
    quantized; binary/pq/rq codewords cannot keep pruning's zeros (kmeans keeps them as an extra exact-zero
    code, so prune + kmeans is fine). That nothing may change the weights after it is in ORDER_RULES."""
    if "quantize" not in order:  # (its place in the plan: ORDER_RULES)
        return
    steps = {step.type: step for step in plan.steps}
    quantize = steps["quantize"]
    if layers is None:  # without the model's layers, check the names the maps spell out
        layers = sorted({key for step in plan.steps for name in step.per_layer for key in getattr(step, name)
                         if not key.startswith(PATTERN_PREFIX)})
    for layer in layers:
        settings = quantize.layer_settings(layer)
        if settings is None:
            continue
        method = settings["quantizer"]
        where = "the model's default" if layer == DEFAULT_KEY else f"layer {_short(layer)}"
        if "cluster" in steps and resolve(steps["cluster"].n_clusters, layer) is not None:
            raise PlanError(f"{where} is both clustered (cluster step) and quantized ({method}): they contradict "
                            "each other; give the layer one of them (quantizer 'kmeans' is the paper's clustering)")
        sparsity = resolve(steps["prune"].sparsity, layer) if "prune" in steps else None
        if sparsity and method in ("binary", "pq", "rq"):
            raise PlanError(f"{where} is pruned (sparsity {sparsity}) and quantized with {method}, whose codewords "
                            "would overwrite the pruned zeros: use quantizer 'kmeans' on pruned layers (it keeps "
                            "the zeros exact), or do not prune this layer")
