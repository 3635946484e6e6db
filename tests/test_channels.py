"""Channel pruning (GA, L1, random) with physical removal, distillation, and channel-pruned compact files."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from complab import metrics
from complab.analysis.ga_progress import ga_rows
from complab.errors import PlanError
from complab.methods import channels, distill
from complab.methods.channels import ga, graph
from complab.methods.context import StepContext
from complab.methods.tasks import task_for
from complab.models.channel_replay import build_graph
from complab.models.compact import load_compressed, save_compressed
from complab.models.handle import ModelHandle
from complab.plan import ChannelStep, ClusterStep, DistillStep, Plan, PruneStep
from complab.ui.figures import ga_figure

ROOT = Path(__file__).resolve().parents[1]
VGG_KEEP = {"features.0": 0.5, "features.3": 0.5, "_default": 0.3}


@pytest.fixture(scope="module")
def vgg():
    from complab.models.handle import load_model

    return load_model("demo:vgg_small")


@pytest.fixture(scope="module")
def digits32():
    """The digits at 32x32, cut to 192 training and 64 validation/test images (keeps these tests fast)."""
    from complab.data import load_data
    from torch.utils.data import TensorDataset

    data = load_data("digits", input_size=32)
    for name, size in (("train", 192), ("val", 64), ("test", 64)):
        images, labels = data.split(name)[:size]
        setattr(data, name, TensorDataset(images, labels))
    return data


def small_step(**kwargs):
    base = dict(keep_ratio=VGG_KEEP, population=4, generations=2, survivors=1, elite=1, screen_size=8,
                fitness_size=16, finetune_epochs=0)
    return ChannelStep(**{**base, **kwargs})


def context(handle, data):
    return StepContext(data=data, layers=list(handle.prunable_layers()), task=task_for(handle, data))


def resnet18_handle(size=32):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return ModelHandle(model.eval(), {"kind": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 10}},
                       (3, size, size), 10, "resnet18")


def rgb(data):
    """The digits repeated to 3 channels (torchvision's ResNet-18 reads RGB)."""
    from complab.data import DataBundle
    from torch.utils.data import TensorDataset

    splits = {name: TensorDataset(data.split(name)[:][0].repeat(1, 3, 1, 1), data.split(name)[:][1])
              for name in ("train", "val", "test")}
    return DataBundle("digits-rgb", splits["train"], splits["val"], splits["test"], 10, (3, 32, 32), (0.0,) * 3,
                      (1.0,) * 3)


def test_physical_removal_drops_params_flops_and_file_bytes(vgg, digits32, tmp_path):
    work = vgg.clone()
    report = channels.run(work.model, small_step(selection="l1"), context(work, digits32)).report
    before = metrics.model_summary(vgg.model, vgg.input_shape)
    after = metrics.model_summary(work.model, vgg.input_shape)
    assert after["params"] < before["params"] / 5
    assert after["flops"] < before["flops"] / 3
    assert work.model.features[0].out_channels == 16 and work.model.features[1].num_features == 16
    assert work.model.classifier.in_features == report["layers"]["features.21"]["kept"] == round(0.3 * 256)
    # the dense file shrinks too: smaller tensors, not zeros
    assert save_compressed(work, tmp_path / "c.clab") < save_compressed(vgg, tmp_path / "o.clab") / 5
    assert torch.count_nonzero(work.model.features[0].weight) == work.model.features[0].weight.numel()


def test_l1_keeps_largest_filters(vgg, digits32):
    work = vgg.clone()
    original = vgg.model.features[0].weight.detach().abs().flatten(1).sum(1)
    report = channels.run(work.model, small_step(keep_ratio={"features.0": 0.25}, selection="l1"),
                          context(work, digits32)).report
    kept = report["layers"]["features.0"]["kept_channels"]
    assert sorted(kept) == sorted(torch.argsort(original, descending=True)[:8].tolist())
    assert torch.equal(work.model.features[0].weight, vgg.model.features[0].weight[sorted(kept)])


def test_masked_search_equals_physical_removal(vgg, digits32):
    """The GA scores candidates by zeroing consumer inputs: the same outputs as removing the channels."""
    work = vgg.clone()
    groups = graph.channel_groups(work.model, vgg.input_shape)
    group = graph.group_of(groups, "features.10")
    keep = graph.top_mask(torch.rand(group.channels, generator=torch.Generator().manual_seed(1)), 20)
    x = digits32.test[:8][0]
    with torch.no_grad(), graph.MaskedChannels(group, keep):
        masked = work.model(x)
    dependencies = build_graph(work.model, vgg.input_shape)
    graph.remove_channels(work.model, dependencies, graph.group_of(graph.channel_groups(
        work.model, vgg.input_shape, dependencies), "features.10"), keep)
    with torch.no_grad():
        removed = work.model(x)
    assert work.model.features[10].out_channels == 20
    assert torch.allclose(masked, removed, atol=1e-4)


@pytest.mark.slow  # two GA runs (37 s at load 11); the quick loop keeps the GA-pruned VGG round trip
def test_ga_is_seeded_reproducible_and_respects_keep_ratio(vgg, digits32):
    reports = []
    for _ in range(2):
        work = vgg.clone()
        reports.append(channels.run(work.model, small_step(keep_ratio={"features.10": 0.4, "features.17": 0.25}),
                                    context(work, digits32)).report)
    a, b = reports
    for layer, n in (("features.10", 64), ("features.17", 128)):
        assert a["layers"][layer]["kept_channels"] == b["layers"][layer]["kept_channels"]
        assert len(a["layers"][layer]["kept_channels"]) == a["layers"][layer]["kept"] == round(n * (0.4 if n == 64
                                                                                                  else 0.25))
        gens = a["layers"][layer]["generations"]
        assert len(gens) == 3 and all(g["best_fitness"] >= g["mean_fitness"] for g in gens)
        # the GA starts from the L1 choice and keeps its elite: never worse than L1 on its own fitness
        assert a["layers"][layer]["ga_fitness"] >= a["layers"][layer]["l1_fitness"]
    assert a["order"] == b["order"] and sorted(a["order"]) == ["features.10", "features.17"]


def test_ga_operators_keep_exact_counts():
    generator = torch.Generator().manual_seed(0)
    mask = graph.top_mask(torch.rand(40, generator=generator), 13)
    for _ in range(20):
        mask = ga._mutate(mask, 0.3, generator)
        assert int(mask.sum()) == 13
        assert int(ga._repair(torch.rand(40, generator=generator) < 0.7, 13, generator).sum()) == 13


def test_resnet18_coupled_channels_stay_consistent(digits32, tmp_path):
    handle = resnet18_handle()
    coupled = [g.members for g in graph.channel_groups(handle.model, handle.input_shape) if len(g.members) > 1]
    stage1 = next(g for g in coupled if "layer1.0.conv2" in g)
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stage1)
    assert any({"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"} <= set(g) for g in coupled)
    work = handle.clone()
    # a key on any coupled member decides for its group (layer1.1.conv2 is coupled to conv1 by the skips)
    step = small_step(keep_ratio={"layer1.1.conv2": 0.5, "layer2.0.conv2": 0.5, "layer1.0.conv1": 0.25},
                      selection="random")
    data = rgb(digits32)
    result = channels.run(work.model, step, StepContext(data=data, layers=list(handle.prunable_layers())))
    report = result.report
    model = work.model
    assert model.conv1.out_channels == model.layer1[0].conv2.out_channels == model.layer1[1].conv2.out_channels == 32
    assert model.layer2[0].downsample[0].out_channels == model.layer2[1].conv2.out_channels == 64
    assert model.layer1[0].conv1.out_channels == 16 and model.layer1[0].bn1.num_features == 16
    assert report["layers"]["conv1"]["members"][0] == "conv1"
    x = data.test[:4][0]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10)
    # compact-file round trip: the decoder replays the removal, then loads the smaller tensors
    path = tmp_path / "r18.clab"
    save_compressed(work, path, products=result.products)
    decoded = load_compressed(path)
    with torch.no_grad():
        assert torch.equal(decoded.model(x), out)
    assert metrics.count_params(decoded.model)["params"] == metrics.count_params(model)["params"]


@pytest.mark.slow  # the whole RegNetY-400MF pruned and decoded: the longest test of the baseline (300 s at load 11)
def test_grouped_convolutions_are_left_alone_and_regnet_y_prunes_and_decodes(digits32, tmp_path):
    """RegNetY's grouped 3x3 convolutions can only lose whole groups: the groups feeding them are skipped (before,
    removing single channels there crashed Torch-Pruning on the next layer); the rest prunes and decodes."""
    torch.manual_seed(0)
    model = torchvision.models.regnet_y_400mf(num_classes=10).eval()
    handle = ModelHandle(model, {"kind": "torchvision", "arch": "regnet_y_400mf", "kwargs": {"num_classes": 10}},
                         (3, 32, 32), 10, "regnet_y_400mf")
    groups = graph.channel_groups(handle.model, handle.input_shape)
    names = {g.name for g in groups}
    assert "trunk_output.block1.block1-0.f.a.0" not in names  # it feeds the grouped f.b.0
    assert "trunk_output.block1.block1-0.f.se.fc1" in names and "stem.0" in names
    work = handle.clone()
    data = rgb(digits32)
    result = channels.run(work.model, small_step(keep_ratio={"_default": 0.75}, selection="l1"),
                          StepContext(data=data, layers=list(handle.prunable_layers())))
    assert len(result.report["layers"]) == len(groups)
    assert metrics.count_params(work.model)["params"] < metrics.count_params(handle.model)["params"]
    path = tmp_path / "regnety.clab"
    save_compressed(work, path, products=result.products)
    x = data.test[:4][0]
    with torch.no_grad():
        assert torch.equal(load_compressed(path).model(x), work.model.eval()(x))


def test_compact_round_trip_of_ga_pruned_vgg_gives_identical_outputs(vgg, digits32, tmp_path):
    work = vgg.clone()
    events = []
    ctx = context(work, digits32)
    ctx.on_progress = lambda stage, fraction, values: events.append({"stage": stage, "progress": fraction,
                                                                     "values": values})
    result = channels.run(work.model, small_step(keep_ratio={"features.3": 0.5, "features.21": 0.3}), ctx)
    # the GA's best and mean fitness per generation reach the run's events (the Runs page plots them)
    rows = ga_rows(events)
    assert sorted(set(rows["layer"])) == ["features.21", "features.3"] and len(rows) == 6
    assert (rows["best_fitness"] >= rows["mean_fitness"]).all()
    assert len(ga_figure(rows).data) == 4
    path = tmp_path / "vgg.clab"
    save_compressed(work, path, {"plan": "x"}, result.products)
    decoded = load_compressed(path)
    x = digits32.test[:16][0]
    with torch.no_grad():
        assert torch.equal(decoded.model(x), work.model(x))
    assert decoded.model.features[3].out_channels == 16
    # the decoded handle carries the record, so re-saving it (or compressing it again) keeps it
    assert decoded.channel_history == result.products.channel_history
    save_compressed(decoded, tmp_path / "again.clab")
    again = load_compressed(tmp_path / "again.clab")
    assert again.file_meta["channel_pruning"] == result.products.channel_history
    with torch.no_grad():
        assert torch.equal(again.model(x), work.model(x))


def test_distillation_loss():
    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 1])
    assert distill.kd_loss(student, student, labels, 4.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distill.kd_loss(student, student * 0, labels, 4.0, 0.0).item() == pytest.approx(
        F.cross_entropy(student, labels).item())
    teacher = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    t = 2.0
    expected = t ** 2 * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    assert distill.kd_loss(student, teacher, labels, t, 1.0).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow  # pruning + distillation epochs (47 s at load 11)
def test_distill_after_prune_keeps_zeros_and_plan_uses_kd(vgg, digits32, tmp_path):
    from complab.pipeline import compress

    plan = Plan(steps=(small_step(keep_ratio={"features.21": 0.5}, selection="l1"),
                       PruneStep(sparsity={"features.17": 0.8}, iterations=1, finetune_epochs=0),
                       DistillStep(epochs=1),
                       ClusterStep(n_clusters={"features.21": 16}, finetune_epochs=0)))
    result = compress(vgg, plan, digits32, tmp_path, latency=False)
    weight = result.handle.model.features[17].weight
    assert weight.shape[0] == 128 and weight.shape[1] == 128
    assert 1 - float(torch.count_nonzero(weight)) / weight.numel() == pytest.approx(0.8, abs=0.01)
    # structured and unstructured compose: the channel-pruned layer is then clustered, all in one file
    assert result.handle.model.features[21].weight.shape == (128, 128, 3, 3)
    assert len(torch.unique(result.handle.model.features[21].weight)) <= 16
    assert result.handle.model.features[21].out_channels == 128
    assert result.metrics["after"]["params"] < result.metrics["before"]["params"]
    assert result.metrics["steps"]["distill"]["masked_layers"] >= 1


def test_plan_validation_messages():
    with pytest.raises(PlanError, match="channels must come before prune"):
        Plan(steps=(PruneStep(sparsity={"_default": 0.5}), ChannelStep(keep_ratio={"_default": 0.5}))).validate()
    with pytest.raises(PlanError, match="channels must come before cluster"):
        Plan(steps=(ClusterStep(n_clusters={"_default": 8}), ChannelStep(keep_ratio={"_default": 0.5}))).validate()
    with pytest.raises(PlanError, match="distill must come before cluster"):
        Plan(steps=(ClusterStep(n_clusters={"_default": 8}), DistillStep())).validate()
    with pytest.raises(PlanError, match="selection 'best' is unknown"):
        Plan(steps=(ChannelStep(keep_ratio={"_default": 0.5}, selection="best"),)).validate()
    with pytest.raises(PlanError, match="keep_ratio 0.0 is out of range"):
        Plan(steps=(ChannelStep(keep_ratio={"features.0": 0.0}),)).validate()
    with pytest.raises(PlanError, match="layer 'nope' in keep_ratio"):
        Plan(steps=(ChannelStep(keep_ratio={"nope": 0.5}),)).validate(["features.0"])
    plan = Plan(steps=(ChannelStep(keep_ratio={"_default": 0.5}, selection="random"), PruneStep(sparsity={"a": 0.5}),
                       DistillStep(temperature=3.0)))
    recipe = Plan.from_json((ROOT / "assets" / "recipes" / "vgg_small_channels.json").read_text())
    assert [s.type for s in recipe.steps] == ["channels", "distill"]
    recipe = Plan.from_json((ROOT / "assets" / "recipes" / "vgg_small_channels_prune_cluster.json").read_text())
    assert [s.type for s in recipe.steps] == ["channels", "prune", "distill", "cluster"]
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.steps[0].selection == "random" and again.steps[2].temperature == 3.0


@pytest.mark.slow  # 52 s at load 11; the quick loop keeps physical removal
def test_live_estimate_factors_match_the_pruned_model(vgg, digits32):
    from complab.analysis.channel_estimate import channel_factors, channel_layout

    layout = channel_layout(vgg.model, vgg.input_shape)
    assert list(layout.groups) == ["features.0", "features.3", "features.7", "features.10", "features.14",
                                   "features.17", "features.21"]
    assert layout.in_group["classifier"] == "features.21" and "features.0" not in layout.in_group
    layers = list(vgg.prunable_layers())
    factors = channel_factors(layout, VGG_KEEP, layers)
    predicted = sum(w.numel() * factors[name] for name, w in vgg.prunable_layers().items())
    work = vgg.clone()
    channels.run(work.model, small_step(selection="l1"), context(work, digits32))
    assert round(predicted) == sum(w.numel() for w in work.prunable_layers().values())


def test_masking_through_flatten_equals_removal(lenet5):
    """LeNet-5's conv2 feeds fc1 through a flatten: each channel is 16 inputs of fc1, masked and removed alike."""
    work = lenet5.clone()
    group = graph.group_of(graph.channel_groups(work.model, lenet5.input_shape), "conv2")
    keep = graph.top_mask(graph.l1_scores(group), 20)
    x = torch.randn(4, *lenet5.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), graph.MaskedChannels(group, keep):
        masked = work.model(x)
    dependencies = build_graph(work.model, lenet5.input_shape)
    graph.remove_channels(work.model, dependencies, graph.group_of(graph.channel_groups(
        work.model, lenet5.input_shape, dependencies), "conv2"), keep)
    assert work.model.fc1.in_features == 20 * 16
    with torch.no_grad():
        assert torch.allclose(work.model(x), masked, atol=1e-4)
