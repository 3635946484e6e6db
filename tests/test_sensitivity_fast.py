"""Sensitivity: the prefix cache gives the whole-model path's scores; progress, cancel, bad input."""

import pytest
import torch
import torchvision
from complab.analysis import sensitivity
from complab.analysis.sensitivity import ExactScorer, SensitivityConfig, analyze, grid_weight
from complab.data import DataBundle, load_data
from complab.errors import CompressionLabError
from complab.methods.context import Cancelled
from complab.models.handle import ModelHandle
from torch import nn
from torch.utils.data import TensorDataset


def random_data(n_val: int = 32, n_train: int = 64, size: int = 32, classes: int = 10) -> DataBundle:
    generator = torch.Generator().manual_seed(0)

    def split(n):
        return TensorDataset(torch.randn(n, 3, size, size, generator=generator),
                             torch.randint(0, classes, (n,), generator=generator))

    return DataBundle("random", split(n_train), split(n_val), split(n_val), classes, (3, size, size), (0.0,) * 3,
                      (1.0,) * 3)


def torchvision_handle(arch: str) -> ModelHandle:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    return ModelHandle(model, {"kind": "torchvision", "name": arch}, (3, 32, 32), 10, arch)


def assert_same_scores(handle, data, config, every: int = 1, points=(("sparsity", 0.5), ("clusters", 2))):
    fast = ExactScorer(handle, data, config)
    slow = ExactScorer(handle, data, config, prefix_cache=False)
    assert fast.base == slow.base
    compared = 0
    for index, (layer, weight) in enumerate(fast.layers.items()):
        if index % every:
            continue
        for kind, value in points:
            changed = grid_weight(weight.detach().clone(), kind, value)
            # the same operations on the same batches: equal to the last bit, batch norm or not
            assert fast.score(layer, changed) == slow.score(layer, changed), (layer, kind, value)
            compared += 1
    report = fast.cache_report()
    assert report["used"] and report["layers_cached"] == len(fast._layer_paths) and not report["recomputed"]
    assert not slow.cache_report()["used"]
    # the handle's model is never changed, and the clone's weights are back to the original
    for name, weight in fast.layers.items():
        assert torch.equal(weight, dict(handle.model.named_parameters())[f"{name}.weight"])
    return compared


def test_lenet5_fast_path_equals_whole_model(lenet5):
    data = load_data("digits", input_size=28)
    assert assert_same_scores(lenet5, data, SensitivityConfig(val_size=200)) == 8


def test_resnet18_fast_path_equals_whole_model():
    # batch norm: only the ones after the layer are re-estimated, on the cached batch-norm inputs
    assert assert_same_scores(torchvision_handle("resnet18"), random_data(),
                              SensitivityConfig(val_size=32, bn_batches=1), every=4, points=(("sparsity", 0.5),)) == 6


def test_mobilenet_v3_branches_fast_path_equals_whole_model():
    # squeeze-and-excitation branches (a frontier of two values) and batch-norm momentum 0.01
    assert assert_same_scores(torchvision_handle("mobilenet_v3_small"), random_data(),
                              SensitivityConfig(val_size=32, bn_batches=1), every=11, points=(("sparsity", 0.5),)) == 5


def test_suffix_logits_match_the_whole_model():
    """A stronger check than accuracy on random weights: the suffix's logits are the model's, weight changed."""
    handle = torchvision_handle("resnet18")
    scorer = ExactScorer(handle, random_data(), SensitivityConfig(val_size=32, bn_batches=0))
    for layer in ("layer2.0.conv1", "layer3.1.conv2", "fc"):
        plan = scorer._plan_for(layer)
        assert plan.suffix is not None and len(plan.suffix.graph.nodes) < len(scorer._graph.graph.nodes)
        weight = scorer.layers[layer]
        original = weight.detach().clone()
        with torch.no_grad():
            weight.copy_(grid_weight(original, "sparsity", 0.7))
            x = scorer._val[0][0]
            assert torch.equal(plan.suffix(*plan.val_inputs[0]), scorer.model(x))
            weight.copy_(original)


def test_base_is_the_model_as_given_and_batch_norm_scope_is_reported():
    from complab.models.handle import load_model

    handle = load_model("demo:vgg_small")
    data = load_data("digits", input_size=32)
    config = SensitivityConfig(sparsities=(0.0, 0.5), n_clusters=(), val_size=64, bn_batches=1)
    report = analyze(handle, data, config)
    with torch.no_grad():  # the model as given, with its own statistics, on the same 64 images
        correct = sum(int((handle.model.eval()(x).argmax(1) == y).sum()) for x, y in data.loader("val", size=64))
    assert report.base_accuracy == correct / 64
    assert all(row["sparsity"]["0.0"] == report.base_accuracy for row in report.layers.values())
    bn = report.config["batch_norm"]
    assert bn["reestimated"] and bn["scope"] == "downstream" and isinstance(bn["base_reestimated"], float)
    assert report.config["prefix_cache"]["used"] and report.config["val_images"] == 64


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x.relu()
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_falls_back_to_the_whole_model():
    handle = ModelHandle(Branchy().eval(), {}, (3, 32, 32), 10, "branchy")
    report = analyze(handle, random_data(), SensitivityConfig(sparsities=(0.5,), n_clusters=(2,), val_size=32))
    cache = report.config["prefix_cache"]
    assert cache["used"] is False and "could not be traced" in cache["reason"]
    assert set(report.layers) == {"conv", "fc"}


def test_frontier_over_the_budget_recomputes_with_the_same_scores(lenet5, monkeypatch):
    data = load_data("digits", input_size=28)
    config = SensitivityConfig(sparsities=(0.5, 0.9), n_clusters=(2,), val_size=100)
    cached = analyze(lenet5, data, config)
    monkeypatch.setattr(sensitivity, "PREFIX_CACHE_MAX_BYTES", 1000)  # smaller than any layer's inputs
    recomputed = analyze(lenet5, data, config)
    assert recomputed.layers == cached.layers
    cache = recomputed.config["prefix_cache"]
    assert not cache["used"] and set(cache["recomputed"]) == set(cached.layers)
    assert "budget" in cache["recomputed"]["conv1"] and cache["budget_bytes"] == 1000


def test_progress_after_every_point_and_cancel_within_one_point(lenet5):
    data = load_data("digits", input_size=28)
    config = SensitivityConfig(sparsities=(0.3, 0.6), n_clusters=(4,), bits=(), val_size=64)
    seen = []
    analyze(lenet5, data, config, on_progress=lambda stage, fraction, values: seen.append((stage, fraction, values)))
    assert len(seen) == 4 * 3 and seen[-1][1] == 1.0
    stage, _, values = seen[4]
    assert stage == "sensitivity" and set(values) == {"layer", "point", "done", "total", "eta_s"}
    assert values["layer"] == "conv2" and values["point"] == "sparsity 0.6" and values["done"] == 5
    assert values["total"] == 12 and values["eta_s"] >= 0
    calls = []
    with pytest.raises(Cancelled):
        analyze(lenet5, data, config, on_progress=lambda *a: calls.append(a), cancel_requested=lambda: len(calls) >= 2)
    assert len(calls) == 2  # stopped after the second point, inside the first layer


def test_model_without_layers_is_refused():
    class Slice(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    handle = ModelHandle(Slice(), {}, (3, 32, 32), 10, "no-weights")
    with pytest.raises(CompressionLabError, match="no convolution or linear"):
        analyze(handle, random_data(), SensitivityConfig(val_size=32))


def test_tiny_validation_split_is_refused_and_a_small_one_recorded(lenet5):
    digits = load_data("digits", input_size=28)

    def with_val(n):
        images, labels = digits.val.tensors
        return DataBundle("digits", digits.train, TensorDataset(images[:n], labels[:n]), digits.test, 10,
                          (1, 28, 28), digits.mean, digits.std)

    with pytest.raises(CompressionLabError, match="has 6 images.*at least 10"):
        analyze(lenet5, with_val(6), SensitivityConfig(val_size=512))
    report = analyze(lenet5, with_val(30), SensitivityConfig(sparsities=(0.5,), n_clusters=(2,)))  # val_size 512
    assert report.config["val_images"] == 30 and report.config["val_size"] == 512


def test_model_too_large_for_the_memory_left_is_refused(lenet5, monkeypatch):
    data = load_data("digits", input_size=28)
    monkeypatch.setattr(sensitivity, "_available_bytes", lambda device: 100_000)  # 100 kB "free"
    with pytest.raises(CompressionLabError, match=r"needs about .* but only 0 MB of memory is free"):
        analyze(lenet5, data, SensitivityConfig(val_size=64))
    monkeypatch.setattr(sensitivity, "_available_bytes", lambda device: 2_000_000)  # weights fit, images do not
    with pytest.raises(CompressionLabError, match="activations of a batch"):
        analyze(lenet5, data, SensitivityConfig(val_size=512))


def test_engine_refuses_an_analysis_of_torchscript_before_it_queues(tmp_path):
    """A layerless model can only come from TorchScript, which is code (needs trust) and for evaluation only: the
    job is refused at submit, nothing queued; analyze() refuses a layerless model itself
    (test_cli_analyze.test_model_without_layers_exits_2)."""
    from complab import engine

    class Slice(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    path = tmp_path / "slice.pt"
    torch.jit.script(Slice()).save(str(path))
    job = {"kind": "sensitivity", "model": f"torchscript:{path}", "data": "digits", "input_size": 28,
           "config": {"val_size": 32}}
    with pytest.raises(CompressionLabError, match="pass --trust"):
        engine.submit(job, root=tmp_path)
    with pytest.raises(CompressionLabError, match="evaluation only"):
        engine.submit({**job, "trust": True}, root=tmp_path)
    assert engine.list_runs(root=tmp_path) == []


@pytest.mark.slow
def test_engine_cancel_stops_the_analysis_within_seconds(tmp_path):
    import time

    from complab import engine

    run_id = engine.submit({"kind": "sensitivity", "model": "demo:vgg_small", "data": "digits",
                            "config": {"val_size": 256}}, root=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not [e for e in engine.events(run_id, root=tmp_path)
                                          if e["stage"] == "sensitivity"]:
        time.sleep(0.2)
    events = [e for e in engine.events(run_id, root=tmp_path) if e["stage"] == "sensitivity"]
    assert events and {"layer", "point", "done", "total", "eta_s"} <= set(events[-1]["values"])
    asked = time.time()
    engine.cancel(run_id, root=tmp_path)
    row = engine.wait(run_id, 60, root=tmp_path)
    assert row["state"] == "cancelled" and time.time() - asked < 15


def test_an_analysis_split_by_layer_merges_into_the_single_run_report():
    from complab.analysis.sensitivity import SensitivityConfig, analyze, layer_groups, merge_reports
    from complab.data import load_data
    from complab.models.handle import load_model

    handle, data = load_model("demo:lenet5"), load_data("digits")
    config = SensitivityConfig(sparsities=(0.0, 0.8), n_clusters=(4,), val_size=64, bn_batches=0)
    whole = analyze(handle, data, config).to_dict()
    names = list(whole["layers"])
    groups = layer_groups(names, 3)
    assert [name for group in groups for name in group] == names and len(groups) == min(3, len(names))
    parts = [analyze(handle, data, config, layers=group).to_dict() for group in reversed(groups)]
    merged = merge_reports(parts, names)
    assert list(merged["layers"]) == names
    assert {n: (r["sparsity"], r["clusters"]) for n, r in merged["layers"].items()} == \
        {n: (r["sparsity"], r["clusters"]) for n, r in whole["layers"].items()}
    assert merged["base_accuracy"] == whole["base_accuracy"] and merged["config"]["parts"] == 3
    with pytest.raises(CompressionLabError, match="two parts"):
        merge_reports([parts[0], parts[0]])
    with pytest.raises(CompressionLabError, match="no layer"):
        analyze(handle, data, config, layers=["nope"])


def test_layer_groups_put_fewer_of_the_dearer_early_layers_in_a_group():
    from complab.analysis.sensitivity import layer_groups

    names = [f"l{i}" for i in range(20)]
    groups = layer_groups(names, 4)
    assert len(groups) == 4 and [n for g in groups for n in g] == names
    assert len(groups[0]) < len(groups[-1])
    assert layer_groups(names[:2], 5) == [["l0"], ["l1"]]
