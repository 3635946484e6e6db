"""Hostile or careless recipes (issue 11): each ends in a one-line PlanError naming the problem and the fix,
quickly; `re:` patterns are matched without backtracking, so none can hang."""

from __future__ import annotations

import json
import random
import re
import time

import pytest
from complab.errors import PlanError
from complab.plan import MAX_NAME_CHARS, MAX_RECIPE_BYTES, Plan, compile_pattern, pattern_matches, resolve

RESNET18_LAYERS = ["conv1", "bn1"] + [f"layer{i}.{j}.{part}" for i in range(1, 5) for j in range(2)
                                      for part in ("conv1", "bn1", "conv2", "bn2")] + [
    f"layer{i}.0.downsample.{k}" for i in range(2, 5) for k in range(2)] + ["fc"]
GOOD = {"schema_version": 1, "name": "p", "steps": [{"type": "prune", "sparsity": {"_default": 0.5}}]}


def one_line_plan_error(call) -> str:
    start = time.perf_counter()
    with pytest.raises(PlanError) as caught:
        call()
    assert time.perf_counter() - start < 2.0
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_the_regex_hang_returns_at_once():
    """re:(.*.*)*X never returned on ResNet-18's layer names with Python's re; the automaton answers in ms."""
    start = time.perf_counter()
    assert resolve({"re:(.*.*)*X": 0.5}, "layer4.1.downsample.0.weight") is None
    message = one_line_plan_error(lambda: Plan.from_dict(
        {**GOOD, "steps": [{"type": "prune", "sparsity": {"re:(.*.*)*X": 0.5}}]}).validate(RESNET18_LAYERS))
    assert "matches no layer" in message
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)*b", "(.*){1,30}y", "(x+x+)+y", ".*.*.*.*.*.*.*.*.*.*z"])
def test_catastrophic_patterns_are_linear(pattern):
    start = time.perf_counter()
    assert not pattern_matches("re:" + pattern, "a" * 40 + "x" * 40)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("key, problem", [
    ("re:(a)\\1", "backreference"), ("re:(?=a)a", "lookahead"), ("re:(?>a)", "atomic"), ("re:a++", "possessive"),
    ("re:[", "not a valid regular expression"), ("re:" + "a" * 500, "characters long"),
    ("re:(?:(?:a{100}){100}){100}", "too complex"),
])
def test_unsupported_or_huge_patterns_are_refused_with_the_fix(key, problem):
    recipe = {**GOOD, "steps": [{"type": "prune", "sparsity": {key: 0.5}}]}
    assert problem in one_line_plan_error(lambda: Plan.from_dict(recipe))


def test_patterns_match_exactly_as_python_re_does():
    """The automaton agrees with re.fullmatch on random patterns (classes, groups, anchors, flags, counts)."""
    atoms = ["a", "b", ".", r"\d", r"\w", r"\W", "[ab]", "[^a]", r"\.", "(a|b)", "(ab|a)", "^", "$", r"\b",
             r"\B", "[0-9_]", "(?:a|)", "(?i:A)", "(?s:.)", r"\s", "[a-c.]"]
    counts = ["", "*", "+", "?", "{2}", "{1,3}", "*?", "{0,2}", "+?"]
    rng = random.Random(7)
    checked = 0
    for _ in range(1500):
        pattern = "".join(rng.choice(atoms) + rng.choice(counts) for _ in range(rng.randint(1, 4)))
        try:
            compiled = re.compile(pattern)
        except re.error:
            continue
        for _ in range(8):
            text = "".join(rng.choice("ab.x1A_ \n") for _ in range(rng.randint(0, 8)))
            assert bool(compiled.fullmatch(text)) == pattern_matches("re:" + pattern, text), (pattern, text)
            checked += 1
    assert checked > 5000
    assert pattern_matches("re:layer[1-4]\\.\\d\\.conv[12]", "layer3.1.conv2")
    assert compile_pattern("re:fc") is compile_pattern("re:fc")  # compiled once


def test_deep_nesting_is_a_plan_error():
    """100,000 levels of nesting (a RecursionError traceback in the CLI and on the Plan page before)."""
    deep = "[" * 100_000 + "]" * 100_000
    assert "too deeply" in one_line_plan_error(lambda: Plan.from_json(deep))
    nested: object = 0.5
    for _ in range(50):
        nested = {"_default": nested}
    recipe = {**GOOD, "steps": [{"type": "prune", "sparsity": nested}]}
    assert "levels deep" in one_line_plan_error(lambda: Plan.from_dict(recipe))
    assert "levels deep" in one_line_plan_error(lambda: Plan.from_json(json.dumps(recipe)))


def test_non_utf8_recipes(tmp_path):
    data = b'{"schema_version": 1, "name": "\xff\xfe", "steps": []}'
    assert "UTF-8" in one_line_plan_error(lambda: Plan.from_json(data))
    (tmp_path / "r.json").write_bytes(data)
    assert "UTF-8" in one_line_plan_error(lambda: Plan.from_file(tmp_path / "r.json"))
    (tmp_path / "ok.json").write_bytes(json.dumps(GOOD).encode())
    assert Plan.from_file(tmp_path / "ok.json").name == "p"
    assert "does not exist" in one_line_plan_error(lambda: Plan.from_file(tmp_path / "missing.json"))
    assert "not a file" in one_line_plan_error(lambda: Plan.from_file(tmp_path))


def test_huge_names_strings_and_files(tmp_path):
    """A 150 MB recipe name used to be copied into a 157 MB "compressed" file."""
    huge = json.dumps({**GOOD, "name": "n" * (MAX_RECIPE_BYTES + 1)})
    assert "more than" in one_line_plan_error(lambda: Plan.from_json(huge))
    (tmp_path / "big.json").write_text(huge)
    assert "right file" in one_line_plan_error(lambda: Plan.from_file(tmp_path / "big.json"))
    long_name = {**GOOD, "name": "n" * 150_000_000}  # the engine hands dicts straight to from_dict
    assert "characters" in one_line_plan_error(lambda: Plan.from_dict(long_name))
    assert "characters" in one_line_plan_error(lambda: Plan(steps=Plan.from_dict(GOOD).steps,
                                                            name="n" * (MAX_NAME_CHARS + 1)).validate())
    long_key = {**GOOD, "steps": [{"type": "prune", "sparsity": {"x" * 5000: 0.5}}]}
    assert "characters long" in one_line_plan_error(lambda: Plan.from_dict(long_key))
    many = {**GOOD, "steps": [{"type": "prune", "sparsity": {f"l{i}": 0.5 for i in range(200_000)}}]}
    assert "more than" in one_line_plan_error(lambda: Plan.from_dict(many))


@pytest.mark.parametrize("recipe", [
    {**GOOD, "name": ["x"]}, {**GOOD, "name": None}, {**GOOD, "eval_split": 3}, {**GOOD, "seed": 10**30},
    {**GOOD, "seed": -1}, {**GOOD, "seed": 1.5}, {**GOOD, "steps": [{"type": []}]}, {**GOOD, "steps": [{"type": {}}]},
    {**GOOD, "steps": [None]}, {**GOOD, "steps": {"type": "prune"}},
    {**GOOD, "steps": [{"type": "prune", "sparsity": {"_default": "x"}, "seed": 2**40}]},
    {**GOOD, "steps": [{"type": "prune", "sparsity": [0.5]}]},
    {**GOOD, "steps": [{"type": "prune", "sparsity": 0.5, "seed": "0"}]},
    {**GOOD, "steps": [{"type": "cluster", "n_clusters": 8, "init": ["linear"]}]},
    {**GOOD, "steps": [{"type": "quantize", "quantizer": {"re:[": "kmeans"}}]},
    {**GOOD, "steps": [{"type": "quantize", "quantizer": {"_default": ["pq"]}}]},
    {**GOOD, "steps": [{"type": "channels", "keep_ratio": 0.5, "population": "16"}]},
    {**GOOD, "steps": [{"type": "distill", "temperature": float("nan")}]},
])
def test_wrong_types_and_values_are_plan_errors(recipe):
    one_line_plan_error(lambda: Plan.from_dict(recipe))
    one_line_plan_error(lambda: Plan.from_json(json.dumps(recipe)))


@pytest.mark.parametrize("text", ['{"seed": ' + "9" * 5000 + "}", "NaN", "", "\ufeff{}", "[]", '"x"', "1e999"])
def test_odd_json_texts_are_plan_errors(text):
    one_line_plan_error(lambda: Plan.from_json(text))
