"""Kept channels rounded to a multiple of 8 or 16 (the channels step's round_to): count rule, step, live estimate."""

import json

import pytest
import torch
from complab.analysis.channel_estimate import channel_factors, channel_layout
from complab.errors import PlanError
from complab.methods import channels
from complab.methods.channels.graph import keep_count
from complab.methods.context import StepContext
from complab.methods.tasks import task_for
from complab.plan import ChannelStep, Plan


@pytest.fixture(scope="module")
def vgg():
    from complab.models.handle import load_model

    return load_model("demo:vgg_small")  # widths 32, 32, 64, 64, 128, 128, 256


@pytest.fixture(scope="module")
def digits32():
    from complab.data import load_data
    from torch.utils.data import TensorDataset

    data = load_data("digits", input_size=32)
    for name, size in (("train", 64), ("val", 32), ("test", 32)):
        images, labels = data.split(name)[:size]
        setattr(data, name, TensorDataset(images, labels))
    return data


def context(handle, data):
    return StepContext(data=data, layers=list(handle.prunable_layers()), task=task_for(handle, data))


# ResNet-18's widths at keep 0.3: 19, 38, 77, 154 unrounded
@pytest.mark.parametrize(("channels", "ratio", "round_to", "expected"), [
    (64, 0.3, 8, 16), (128, 0.3, 8, 40), (256, 0.3, 8, 80), (512, 0.3, 8, 152), (512, 0.3, 16, 160),
    (64, 0.5, 8, 32),  # already a multiple: unchanged
    (64, 0.01, 8, 8),  # never 0: at least one multiple
    (30, 0.9, 16, 30),  # never above the width (27 would round to 32)
    (8, 0.5, 8, 4), (6, 0.5, 16, 3),  # a group no wider than round_to is not rounded
    (100, 0.3, 1, 30),  # off
])
def test_keep_count_rounds_to_the_nearest_multiple(channels, ratio, round_to, expected):
    assert keep_count(channels, ratio, round_to) == expected


def test_keep_count_rule_over_every_width():
    for width in range(1, 300):
        for ratio in (0.01, 0.1, 0.27, 0.33, 0.5, 0.61, 0.75, 0.9, 0.99, 1.0):
            plain = keep_count(width, ratio)
            assert keep_count(width, ratio, 1) == plain == max(1, min(width, round(ratio * width)))
            for round_to in (8, 16):
                kept = keep_count(width, ratio, round_to)
                assert 1 <= kept <= width
                if width <= round_to or plain == width:
                    assert kept == plain
                elif kept != width:  # clipped to the width, or the nearest multiple (at least one multiple)
                    assert kept % round_to == 0
                    assert abs(kept - plain) <= round_to // 2 or (plain < round_to and kept == round_to)


def test_round_to_is_checked_and_old_recipes_default_to_off():
    old = {"schema_version": 1, "name": "old", "steps": [{"type": "channels", "keep_ratio": {"_default": 0.5}}]}
    plan = Plan.from_json(json.dumps(old))
    assert plan.steps[0].round_to == 1
    for bad in (3, 0, True, "8", 8.5):
        with pytest.raises(PlanError, match="round_to"):
            ChannelStep(keep_ratio={"_default": 0.5}, round_to=bad).check("step 1")
    ChannelStep(keep_ratio={"_default": 0.5}, round_to=16).check("step 1")


def test_l1_step_rounds_and_adds_back_the_next_largest_filters(vgg, digits32):
    keep = {"features.0": 0.3, "features.7": 0.3, "_default": 1.0}  # 32 -> 10 -> 8; 64 -> 19 -> 16
    plain, rounded = vgg.clone(), vgg.clone()
    step = ChannelStep(keep_ratio=keep, selection="l1", finetune_epochs=0, fitness_size=8, recalibrate_size=8)
    a = channels.run(plain.model, step, context(plain, digits32)).report
    b = channels.run(rounded.model, ChannelStep(**{**step.__dict__, "round_to": 8}), context(rounded, digits32)).report
    assert b["round_to"] == 8
    for layer, (unrounded, kept) in {"features.0": (10, 8), "features.7": (19, 16)}.items():
        assert a["layers"][layer]["kept"] == unrounded and b["layers"][layer]["kept"] == kept
        assert b["layers"][layer]["kept_unrounded"] == unrounded
        norms = vgg.model.get_submodule(layer).weight.detach().abs().flatten(1).sum(1)
        assert sorted(b["layers"][layer]["kept_channels"]) == sorted(
            torch.argsort(norms, descending=True)[:kept].tolist())  # the largest filters, by the same L1 criterion
        assert set(b["layers"][layer]["kept_channels"]) <= set(a["layers"][layer]["kept_channels"])
        assert rounded.model.get_submodule(layer).out_channels == kept
    # the live estimate with the same round_to predicts the pruned model's weights exactly; without it, it does not
    layout = channel_layout(vgg.model, vgg.input_shape)
    layers = list(vgg.prunable_layers())
    actual = sum(w.numel() for w in rounded.prunable_layers().values())
    for round_to, equal in ((8, True), (1, False)):
        factors = channel_factors(layout, keep, layers, round_to)
        predicted = sum(w.numel() * factors[name] for name, w in vgg.prunable_layers().items())
        assert (round(predicted) == actual) is equal
    assert layout.kept("features.7", 0.3, 8) == 16 and layout.kept("features.7", 0.3) == 19


def test_plan_page_round_to_moves_the_live_estimate(tmp_path, monkeypatch):
    """The Plan page's "round kept channels" select: 60 of 256 channels kept, rounded to 8 keeps 64 (a bigger file)."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.session_state["active"] = {"model": "demo:vgg_small", "weights": None, "data": "digits", "input_size": None,
                                  "mean": None, "std": None}
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    key = next(s.key for s in at.slider if s.key.endswith("::keep::features.21"))
    at.slider(key=key).set_value(60).run()

    def estimated() -> int:
        return int({m.label: m.value for m in at.metric}["Estimated file"].split()[0].replace(",", ""))

    plain = estimated()
    select = next(s for s in at.selectbox if s.key and s.key.endswith("::round_to"))
    assert select.value == 1  # off unless asked for
    select.set_value(8).run()
    assert not at.exception and not [e.value for e in at.error if "channel" in e.value or "round" in e.value]
    assert estimated() > plain  # 64 channels kept instead of 60: the next layer's inputs too
    select.set_value(1).run()
    assert estimated() == plain
