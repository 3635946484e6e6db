"""Per-layer maps and what every step config is built from: the bounded `re:` matcher, resolve, value checks,
the step registry and the per-layer field declarations the Plan page draws.

A step's per-layer values are a map keyed by an exact layer name, a `re:` pattern (matched in full against
layer names, first match in the map's order wins) or `_default`; a layer no key reaches is left alone by that
step. This module knows no step: each step module (complab/steps/) declares its config here with
@step_config, and complab.plan reads the registry to parse, validate and order a recipe.
"""

from __future__ import annotations

import contextvars
import functools
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from re import _constants as sre  # the parse-tree opcodes of Python's own regex parser
from re import _parser as sre_parse
from typing import Any

from complab.errors import PlanError

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


def check_patterns(plan: Any, layers: list[str] | None = None) -> None:
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


def _number(where: str, layer: str | None, name: str, value: Any, low: float, high: float) -> None:
    at = f"layer {_short(layer)}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {_short(value)} is out of range: use a number from {low} to {high}")


def _integer(where: str, layer: str | None, name: str, value: Any, low: int, high: int, extra: str = "") -> None:
    at = f"layer {_short(layer)}: " if layer is not None else ""
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise PlanError(f"{where}: {at}{name} {_short(value)} is out of range: "
                        f"use an integer from {low} to {high}{extra}")



STEP_TYPES: dict[str, type] = {}  # step type -> its config class; each config registers itself with @step_config


def step_config(cls: type) -> type:
    """Register a step config class under its `type` (complab.plan parses, validates and orders it from there;
    its handler registers itself with methods.registry.handler)."""
    if cls.type in STEP_TYPES:
        raise ValueError(f"step type {cls.type!r} is registered twice")
    STEP_TYPES[cls.type] = cls
    return cls


@dataclass(frozen=True)
class LayerField:
    """One per-layer setting as the Plan page draws it: a column of the layer rows.

    name: the widget's short key (`plan::<model>::<name>::<layer>`); label: the column's title; kind: slider,
    select or number; choices: a select's options; low / high / step: a slider's or number's range; default: a
    new row's value; off: the value that means "this step leaves the layer alone" (a select's choice);
    enabled_when: (other field, values) -> the widget is editable only when that field holds one of them;
    wide: drawn only in the full (not the compact) rows; help: the widget's tooltip; width: its column's width.
    """

    name: str
    label: str
    kind: str
    default: Any
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    fmt: str | None = None
    off: Any = None
    enabled_when: tuple[str, tuple] | None = None
    wide: bool = False
    help: str | None = None
    width: float = 1.0
    setting: str | None = None  # the solver's per-layer setting this field holds ("sparsity", "n_clusters")
    bulk_step: float | None = None  # the group's bulk setter has a widget for it (a number's step)
    on_change: Callable[[Any], dict[str, Any]] | None = None  # value -> the row's other fields it resets


@dataclass(frozen=True)
class OptionField:
    """One of a step's plan-wide settings (not per layer) as the Plan page's settings expander draws it: name is
    the config's field, key the widget's session key, low / high / step / fmt its number input's range (the config's
    own bounds: a loaded recipe's every valid value must fit the widget); its default and type are the config's.
    With `choices` it is a select box (low / high unused)."""

    name: str
    key: str
    label: str
    low: float
    high: float
    step: float | None = None
    fmt: str | None = None
    help: str | None = None
    choices: tuple = ()  # a select box of these values (strings or True/False) instead of a number input
