"""Pruning and weight sharing on the demo models: masks hold, shared values stay shared, auto k behaves."""

import pytest
import torch
from complab import metrics
from complab.methods import cluster, prune
from complab.methods.context import Cancelled, StepContext
from complab.plan import ClusterStep, PruneStep
from torch.nn.utils import parametrize


def context(handle, data, **kwargs):
    return StepContext(data=data, layers=list(handle.prunable_layers()), **kwargs)


def test_magnitude_mask_removes_smallest():
    weight = torch.tensor([[0.5, -0.1, 0.3], [-0.9, 0.05, 0.2]])
    mask = prune.magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert prune.magnitude_mask(weight, 0.0).all()


def test_pruned_weights_stay_zero_through_finetuning(lenet300, digits28):
    work = lenet300.clone()
    step = PruneStep(sparsity={"_default": 0.9, "fc3": 0.5}, iterations=2, finetune_epochs=1)
    report = prune.run(work.model, step, context(work, digits28)).report
    assert report["sparsity"]["fc1"] == pytest.approx(0.9, abs=1e-4)
    assert report["sparsity"]["fc3"] == pytest.approx(0.5, abs=1e-2)
    assert not any(parametrize.is_parametrized(m) for m in work.model.modules())
    fc1 = work.model.fc1.weight.detach().clone()
    zeros = fc1 == 0
    # fine-tune again under the same masks: zeros must stay exactly zero, the rest must move
    prune.apply_masks(work.model, {"fc1": (~zeros).float()})
    from complab.methods.finetune import TrainConfig, train

    train(work.model, digits28.train, TrainConfig(epochs=1, lr=1e-3))
    prune.bake(work.model)
    after = work.model.fc1.weight.detach()
    assert torch.all(after[zeros] == 0)
    assert not torch.equal(after[~zeros], fc1[~zeros])
    # the original model (shared, cached) is untouched
    assert int(torch.count_nonzero(lenet300.model.fc1.weight)) == lenet300.model.fc1.weight.numel()


def test_shared_value_gradient_is_sum_over_cluster():
    labels = torch.tensor([[0, 1, 2], [1, 0, 2]])  # 2 = pruned zero (k = 2)
    shared = cluster.SharedValues(labels, torch.tensor([0.5, -0.25]))
    centroids = torch.tensor([0.5, -0.25], requires_grad=True)
    weight = shared(centroids)
    assert weight.tolist() == [[0.5, -0.25, 0.0], [-0.25, 0.5, 0.0]]
    upstream = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (weight * upstream).sum().backward()
    assert centroids.grad.tolist() == [1.0 + 5.0, 2.0 + 4.0]


def test_cluster_keeps_zeros_and_at_most_k_values(lenet300, digits28):
    work = lenet300.clone()
    prune.run(work.model, PruneStep(sparsity={"_default": 0.8}, iterations=1, finetune_epochs=0),
              context(work, digits28))
    zeros_before = {name: (w == 0).clone() for name, w in work.prunable_layers().items()}
    report = cluster.run(work.model, ClusterStep(n_clusters={"_default": 8, "fc3": 4}, finetune_epochs=1),
                         context(work, digits28)).report
    assert report["n_clusters"] == {"fc1": 8, "fc2": 8, "fc3": 4}
    for name, weight in work.prunable_layers().items():
        values = torch.unique(weight[weight != 0])
        assert len(values) <= report["n_clusters"][name]
        assert torch.equal(weight == 0, zeros_before[name])
    assert metrics.accuracy(work.model, digits28.loader("test")) > 0.8


def test_auto_k_reconstruction_tolerance_is_monotonic(lenet300, digits28):
    chosen = []
    for tolerance in (0.05, 0.01, 0.001):
        work = lenet300.clone()
        step = ClusterStep(n_clusters={"fc2": "auto"}, auto_criterion="reconstruction", tolerance=tolerance,
                           finetune_epochs=0)
        chosen.append(cluster.run(work.model, step, context(work, digits28)).report["n_clusters"]["fc2"])
    assert chosen == sorted(chosen) and chosen[0] < chosen[-1]
    assert all(2 <= k <= 256 for k in chosen)


def test_auto_k_accuracy_criterion_bounds_layer_drop(lenet300, digits28):
    work = lenet300.clone()
    step = ClusterStep(n_clusters={"fc1": "auto"}, tolerance=0.0, finetune_epochs=0, auto_val_size=200)
    k = cluster.run(work.model, step, context(work, digits28)).report["n_clusters"]["fc1"]
    loader = digits28.loader("val", size=200)
    assert metrics.accuracy(work.model, loader) >= metrics.accuracy(lenet300.model, loader)
    if k > 2:  # one step below the choice must have cost accuracy
        smaller = lenet300.clone()
        with torch.no_grad():
            smaller.model.fc1.weight.copy_(cluster.quantized(smaller.model.fc1.weight, k - 1, "linear", 0))
        assert metrics.accuracy(smaller.model, loader) < metrics.accuracy(lenet300.model, loader)


def test_cancel_stops_a_step(lenet300, digits28):
    work = lenet300.clone()
    ctx = context(work, digits28, cancel_requested=lambda: True)
    with pytest.raises(Cancelled):
        prune.run(work.model, PruneStep(sparsity={"_default": 0.5}, iterations=2, finetune_epochs=3), ctx)


def test_attention_in_proj_weight_is_pruned_and_shared():
    """nn.MultiheadAttention (ViT) keeps its input projection in `in_proj_weight`: layer `attn.in_proj` reaches it."""
    from complab.data import DataBundle
    from torch import nn
    from torch.utils.data import TensorDataset

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    model = Block()
    layers = list(metrics.weight_layers(model))
    assert "attn.in_proj" in layers
    split = TensorDataset(torch.randn(32, 4, 8), torch.randint(0, 3, (32,)))
    ctx = StepContext(data=DataBundle("random", split, split, split, 3, (4, 8), (0.0,), (1.0,)), layers=layers)
    prune.run(model, PruneStep(sparsity={"_default": 0.5}, iterations=1, finetune_epochs=1), ctx)
    weight = model.attn.in_proj_weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    cluster.run(model, ClusterStep(n_clusters={"_default": 4}, finetune_epochs=1), ctx)
    assert len(torch.unique(model.attn.in_proj_weight[model.attn.in_proj_weight != 0])) <= 4
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_bias_clusters_share_each_clustered_layers_bias(lenet300, digits28, tmp_path):
    """bias_clusters: each clustered layer's bias holds at most k values after fine-tuning, the file stores it as a
    shared section (numel >= 64) and shrinks, and the plan page's estimate follows the real bytes."""
    from complab.analysis.estimate import estimate, model_stats
    from complab.pipeline import compress
    from complab.plan import Plan

    work = lenet300.clone()
    step = ClusterStep(n_clusters={"fc1": 8, "fc2": 8}, bias_clusters=16, finetune_epochs=1)
    report = cluster.run(work.model, step, context(work, digits28)).report
    assert report["bias_clusters"] == {"fc1": 16, "fc2": 16}  # fc3 is not clustered
    for layer in ("fc1", "fc2"):
        assert len(torch.unique(getattr(work.model, layer).bias)) <= 16
    assert len(torch.unique(work.model.fc3.bias)) == 10
    assert not any(parametrize.is_parametrized(m) for m in work.model.modules())
    assert metrics.accuracy(work.model, digits28.loader("test")) > 0.9

    sizes, predicted = {}, {}
    stats = model_stats(lenet300)
    for k in (0, 16):
        plan = Plan(steps=(ClusterStep(n_clusters={"_default": 8}, bias_clusters=k, finetune_epochs=0),))
        result = compress(lenet300, plan, digits28, tmp_path / str(k), latency=False)
        sizes[k] = result.metrics["after"]["compressed_bytes"]
        rows = {row["name"]: row for row in result.metrics["layers"]}
        assert rows["fc1.bias"]["encoding"] == ("shared" if k else "raw")
        predicted[k] = estimate(stats, {layer: (0.0, 8) for layer in stats.layers}, bias_clusters=k)
    saved = sizes[0] - sizes[16]
    assert saved > 1000  # 400 fp32 biases (1.6 KB) -> 4-bit indices
    assert predicted[0]["compressed_bytes"] - predicted[16]["compressed_bytes"] == pytest.approx(saved, rel=0.15)
