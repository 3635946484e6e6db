"""A step is one place: its config, checks, ordering, Plan-page fields and estimate hook in complab/steps/<step>.py,
its handler in methods/ (registered with @handler). A step module the package did not know before reaches recipe
parsing, ordering, the page's rows and the estimate without a line elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from complab.analysis.estimate import plan_settings
from complab.errors import PlanError
from complab.layermap import STEP_TYPES, LayerField, OptionField, resolve, step_config
from complab.plan import ORDER_RULES, ClusterStep, Plan, PruneStep, QuantizeStep, order_rules, ordered

# the ordering table as plan.py spelled it out before the steps declared it (earlier, later)
OLD_ORDER = {("prune", "cluster"), ("channels", "prune"), ("channels", "cluster"), ("distill", "cluster"),
             ("prune", "fold_bn"), ("channels", "fold_bn"), ("fold_bn", "cluster"), ("fold_bn", "quantize"),
             ("prune", "quantize"), ("channels", "quantize"), ("distill", "quantize"),
             # issue 27's int step: after everything that changes the weights
             ("prune", "int"), ("channels", "int"), ("distill", "int"), ("fold_bn", "int"),
             ("cluster", "int"), ("quantize", "int")}


def test_every_step_is_declared_in_its_own_module_and_has_a_handler():
    from complab.methods.registry import handler_for

    assert set(STEP_TYPES) == {"prune", "cluster", "quantize", "channels", "distill", "fold_bn", "int"}
    for step_type, config in STEP_TYPES.items():
        assert config.__module__.startswith("complab.steps."), (step_type, config.__module__)
        assert callable(handler_for(step_type))  # its torch side, registered by the method file


def test_the_ordering_rules_are_the_steps_declarations_and_the_same_as_before():
    assert {(earlier, later) for earlier, later, _ in ORDER_RULES} == OLD_ORDER
    assert ORDER_RULES == order_rules()
    with pytest.raises(PlanError, match="fold_bn must come after prune"):
        Plan(steps=(STEP_TYPES["fold_bn"](), PruneStep(sparsity={"a": 0.5}))).validate()
    with pytest.raises(PlanError, match="prune must come before quantize"):
        Plan(steps=(QuantizeStep(quantizer={"a": "kmeans"}), PruneStep(sparsity={"a": 0.5}))).validate()
    steps = ordered([ClusterStep(n_clusters={"a": 8}), STEP_TYPES["fold_bn"](), PruneStep(sparsity={"a": 0.5}),
                     STEP_TYPES["channels"](keep_ratio={"a": 0.5})])
    assert [step.type for step in steps] == ["channels", "prune", "fold_bn", "cluster"]


def test_page_rows_round_trip_through_each_step():
    """to_rows (loading a recipe into the page) then from_rows (the page building its plan) gives each layer the
    values the step gave it."""
    layers = ["conv1", "fc1", "fc2", "fc3"]
    plan = Plan(steps=(PruneStep(sparsity={"re:fc1|conv.*": 0.9, "conv1": 0.25}),
                       QuantizeStep(quantizer={"fc2": "pq", "fc3": "rq"}, n_codewords={"fc2": 64},
                                    segment_length={"fc2": 8}, stages={"fc3": 3}, axis={"fc3": "out"}))).validate()
    prune, quantize = plan.steps
    rebuilt = PruneStep.from_rows(prune.to_rows(layers))
    assert rebuilt.sparsity == {"conv1": 0.25, "fc1": 0.9}  # an exact name wins over a pattern
    rebuilt = QuantizeStep.from_rows(quantize.to_rows(layers))
    used = {"pq": ("n_codewords", "segment_length", "axis"), "rq": ("n_codewords", "stages", "axis")}  # "s / t"

    def what_runs(step):
        return {layer: q and {"quantizer": q["quantizer"], **{name: q[name] for name in used[q["quantizer"]]}}
                for layer in layers for q in [step.layer_settings(layer)]}

    assert what_runs(rebuilt) == what_runs(quantize) == {
        "conv1": None, "fc1": None, "fc2": {"quantizer": "pq", "n_codewords": 64, "segment_length": 8, "axis": "in"},
        "fc3": {"quantizer": "rq", "n_codewords": 256, "stages": 3, "axis": "out"}}
    cluster = ClusterStep(n_clusters={"fc1": "auto", "_default": 16})
    assert ClusterStep.from_rows(cluster.to_rows(layers)).n_clusters == {"conv1": 16, "fc1": "auto", "fc2": 16,
                                                                         "fc3": 16}
    assert PruneStep.from_rows({layer: {"sp": 0.0} for layer in layers}) is None  # no layer pruned: no step


def test_the_estimate_reads_each_steps_hook():
    layers = ["conv1", "fc1", "fc2"]
    plan = Plan(steps=(PruneStep(sparsity={"_default": 0.5, "fc2": 0.0}),
                       ClusterStep(n_clusters={"conv1": "auto", "fc1": 16}, bias_clusters=8),
                       QuantizeStep(quantizer={"fc2": "binary"}))).validate()
    settings, quantizers, options = plan_settings(plan.steps, layers)
    assert settings == {"conv1": (0.5, "auto"), "fc1": (0.5, 16), "fc2": (0.0, None)}
    assert list(quantizers) == ["fc2"] and quantizers["fc2"]["quantizer"] == "binary"
    assert options == {"bias_clusters": 8}


@pytest.fixture
def toy_step():
    """A step module the package never had, declared as a new method's module would declare it."""
    before = dict(STEP_TYPES)

    @step_config
    @dataclass(frozen=True)
    class RoundStep:
        type: ClassVar[str] = "round_toy"
        per_layer: ClassVar[tuple[str, ...]] = ("bits",)
        after: ClassVar[tuple[tuple[str, str], ...]] = (("prune", "it rounds the weights pruning leaves"),)
        layer_fields: ClassVar[tuple[LayerField, ...]] = (
            LayerField("rb", "bits", "select", "off", choices=("off", 4, 8), off="off"),)
        option_fields: ClassVar[tuple[OptionField, ...]] = (OptionField("epochs", "plan_toy_epochs", "epochs", 0, 9),)
        bits: dict[str, int] = field(default_factory=dict)
        epochs: int = 1

        def check(self, where: str) -> None:
            for layer, value in self.bits.items():
                if value not in (4, 8):
                    raise PlanError(f"{where}: layer {layer}: bits {value} is unknown: use 4 or 8")

        @classmethod
        def from_rows(cls, rows, options=None):
            bits = {layer: row["rb"] for layer, row in rows.items() if row["rb"] != "off"}
            return cls(bits=bits, **(options or {})) if bits else None

        def to_rows(self, layers):
            return {layer: {"rb": resolve(self.bits, layer) or "off"} for layer in layers}

        def encoding(self, layer):
            return {"n_clusters": 2 ** resolve(self.bits, layer)} if resolve(self.bits, layer) else {}

    yield RoundStep
    STEP_TYPES.clear()
    STEP_TYPES.update(before)


def test_a_new_step_module_reaches_the_recipe_the_ordering_the_rows_and_the_estimate(toy_step):
    from complab.ui.plan_page import option_fields
    from complab.ui.plan_rows import step_fields

    recipe = {"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.5}, {"type": "round_toy", "bits": 8}]}
    plan = Plan.from_dict(recipe)
    assert isinstance(plan.steps[1], toy_step) and plan.steps[1].bits == {"_default": 8}
    assert Plan.from_json(plan.to_json()) == plan  # its JSON round-trips like every step's
    with pytest.raises(PlanError, match="bits 3 is unknown"):
        Plan.from_dict({"schema_version": 1, "steps": [{"type": "round_toy", "bits": 3}]})
    with pytest.raises(PlanError, match="prune must come before round_toy: it rounds"):
        Plan.from_dict({"schema_version": 1, "steps": recipe["steps"][::-1]})
    names = [f.name for _, f in step_fields()]  # the page's columns, the steps in plan order
    assert "rb" in names and names.index("sp") < names.index("rb")
    assert ("round_toy", "plan_toy_epochs") in {(config.type, f.key) for config, f in option_fields()}
    assert plan_settings(plan.steps, ["fc1"])[0] == {"fc1": (0.5, 256)}


def test_the_settings_widgets_take_every_value_a_recipe_may_hold():
    """A loaded recipe sets the settings expander's widgets: each widget's range is its config's own bounds, so a
    valid recipe never holds a value the widget would refuse (a number input above its max stops the page)."""
    from complab.steps.cluster import ClusterStep
    from complab.ui.plan_page import option_fields

    assert len(option_fields()) == 15  # issue 27: the int step's activation bits, calibration images, QAT epochs;
    # issue 29: the prune step's weight-average decay; issue 30: the cluster step's objective, lambda, byte target,
    # importance and joint pruning

    def made(config, name, value):
        base = {"objective": "rate"} if config is ClusterStep else {}  # the rate options need objective rate
        if isinstance(getattr(config, name, None), property):  # a page value the config holds its own way
            return config.from_rows({"fc1": {"k": 8}}, {**base, name: value})
        return config(**{**base, name: value})

    for config, f in option_fields():
        default = getattr(config(), f.name)
        if f.choices:  # a select box: every choice is valid, and a value of another kind is not
            for value in f.choices:
                made(config, f.name, value).check("step")
            with pytest.raises(PlanError, match=f.name):
                made(config, f.name, 1 if isinstance(default, bool) else "bogus").check("step")
            continue
        for value in (f.low, f.high):
            made(config, f.name, type(default)(value)).check("step")  # the widget's ends are valid settings
        beyond = f.high + (f.step or 1)
        named = {"lambda_all": "rate_lambda", "target_bytes_or_0": "target_bytes"}.get(f.name, f.name)
        with pytest.raises(PlanError, match=named):  # and nothing valid lies beyond them
            made(config, f.name, type(default)(beyond)).check("step")
