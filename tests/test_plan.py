"""Plan validation, per-layer resolution and the JSON recipe round trip."""

import json

import pytest
from complab.errors import PlanError
from complab.plan import ClusterStep, Plan, PruneStep, resolve, resolve_all

LAYERS = ["fc1", "fc2", "fc3"]


def make_plan(**prune_kwargs) -> Plan:
    return Plan(steps=(PruneStep(**{"sparsity": {"_default": 0.9, "fc3": 0.5}, **prune_kwargs}),
                       ClusterStep(n_clusters={"re:fc[12]": "auto", "fc3": 16})), name="p", seed=3)


def test_resolve_exact_pattern_default():
    values = {"fc1": 0.1, "re:fc[23]": 0.2, "_default": 0.3}
    assert resolve(values, "fc1") == 0.1
    assert resolve(values, "fc2") == 0.2
    assert resolve(values, "conv1") == 0.3
    assert resolve_all({"re:fc.": 1}, ["fc1", "conv1"]) == {"fc1": 1}


def test_json_round_trip():
    plan = make_plan()
    text = plan.to_json()
    assert json.loads(text)["schema_version"] == 1
    again = Plan.from_json(text)
    assert again == plan
    assert again.to_json() == text


def test_scalar_per_layer_value_means_default():
    plan = Plan.from_dict({"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.8}]})
    assert plan.steps[0].sparsity == {"_default": 0.8}


@pytest.mark.parametrize("bad, message", [
    ({"type": "prune", "sparsity": {"fc1": 1.5}}, "step 1 (prune): layer 'fc1': sparsity 1.5 is out of range"),
    ({"type": "cluster", "n_clusters": {"fc2": 300}}, "step 1 (cluster): layer 'fc2': n_clusters 300 is out of range"),
    ({"type": "cluster", "n_clusters": {"fc2": 1}}, "n_clusters 1 is out of range"),
    ({"type": "cluster", "n_clusters": {"_default": "many"}}, "n_clusters 'many' is out of range"),
    ({"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 0}, "iterations 0 is out of range"),
    ({"type": "prune", "speed": 3}, "unknown settings ['speed']"),
    ({"type": "quantise"}, "type 'quantise' is unknown"),
    ({"type": "prune", "sparsity": {"re:fc[": 0.5}}, "is not a valid regular expression"),
    ({"type": "cluster", "n_clusters": 8, "bias_clusters": 1}, "bias_clusters 1 is out of range: use an integer "
                                                               "from 2 to 256 or 0 (biases stay fp32)"),
    ({"type": "cluster", "n_clusters": 8, "bias_clusters": 257}, "bias_clusters 257 is out of range"),
    ({"type": "cluster", "n_clusters": 8, "bias_clusters": "16"}, "bias_clusters '16' is out of range"),
])
def test_validation_names_step_layer_value(bad, message):
    with pytest.raises(PlanError, match=None) as info:
        Plan.from_dict({"schema_version": 1, "steps": [bad]})
    assert message in str(info.value)


def test_validation_against_model_layers():
    plan = Plan(steps=(PruneStep(sparsity={"fc9": 0.5}),))
    with pytest.raises(PlanError, match="layer 'fc9' in sparsity is not a layer of this model"):
        plan.validate(LAYERS)
    with pytest.raises(PlanError, match="matches no layer"):
        Plan(steps=(PruneStep(sparsity={"re:conv.*": 0.5}),)).validate(LAYERS)
    make_plan().validate(LAYERS)


def test_impossible_plans_rejected():
    with pytest.raises(PlanError, match="no steps"):
        Plan(steps=()).validate()
    with pytest.raises(PlanError, match="prune must come before cluster"):
        Plan(steps=(ClusterStep(n_clusters={"_default": 8}), PruneStep(sparsity={"_default": 0.5}))).validate()
    with pytest.raises(PlanError, match="schema_version"):
        Plan.from_dict({"schema_version": 99, "steps": []})
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_json("{nope")


def test_with_fold_bn_goes_after_pruning_and_before_sharing():
    from complab.ui.plan_form import plan_from_settings, with_fold_bn

    plan = with_fold_bn(plan_from_settings({"a": (0.5, 16), "b": (0.0, 8)}, "p"))
    assert [step.type for step in plan.steps] == ["prune", "fold_bn", "cluster"]
    assert with_fold_bn(plan) is plan
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("name, layers", [("lenet300", ["fc1", "fc2", "fc3"]),
                                          ("lenet5", ["conv1", "conv2", "fc1", "fc2"])])
def test_shipped_lenet_recipes_fit_their_models_and_share_biases(name, layers):
    """The records recipes (benchmarks/deep_compression_table.py) validate against their demo model's layers and
    round-trip; they share the biases (bias_clusters), which at 110-160x is a fifth of the file otherwise."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "assets" / "recipes" / f"{name}.json").read_text()
    plan = Plan.from_json(text).validate(layers)
    assert Plan.from_json(plan.to_json()) == plan
    cluster = next(step for step in plan.steps if step.type == "cluster")
    assert cluster.bias_clusters >= 2
    assert Plan.from_dict({**plan.to_dict(), "seed": 2}).seed == 2  # the benchmark runs each seed this way


def test_options_added_later_are_written_only_when_set():
    """A recipe that does not use an option added after recipes shipped (prune/channels `ema`, distill `features`)
    serializes as before (same bytes, same content keys); one that sets it keeps it through a round trip."""
    plain = Plan.from_dict({"schema_version": 1, "steps": [{"type": "prune", "sparsity": {"_default": 0.5}},
                                                           {"type": "distill"}]})
    written = plain.to_dict()
    assert "ema" not in written["steps"][0] and "features" not in written["steps"][1]
    assert "lr" in written["steps"][0]  # the older options are written as always
    tuned = Plan.from_dict({"schema_version": 1, "steps": [{"type": "prune", "sparsity": {"_default": 0.5},
                                                            "ema": 0.998}, {"type": "distill", "features": 2.0}]})
    again = Plan.from_json(tuned.to_json())
    assert again.steps[0].ema == 0.998 and again.steps[1].features == 2.0
