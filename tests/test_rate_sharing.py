"""Rate-aware weight sharing (the cluster step's objective "rate", importance "fisher", joint_prune): the plan's
checks, entropy-constrained k-means against plain k-means, importance weighting, joint pruning, the estimate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from complab.analysis.estimate import estimate, layer_bytes, model_stats, plan_settings
from complab.errors import PlanError
from complab.methods import cluster, prune
from complab.methods.context import StepContext
from complab.methods.ecsq import ecsq_1d, index_entropy_bits
from complab.methods.kmeans1d import kmeans_1d
from complab.plan import ClusterStep, Plan, PruneStep

ROOT = Path(__file__).resolve().parents[1]


def pruned_layer(n: int = 20_000, keep: float = 0.1, seed: int = 0) -> np.ndarray:
    """A pruned layer's kept weights: the largest |w| of Laplace draws (bimodal, a gap around zero)."""
    w = np.random.default_rng(seed).laplace(0.0, 0.05, n)
    return w[np.abs(w) >= np.quantile(np.abs(w), 1 - keep)]


def mse(x, centroids, labels):
    table = np.append(centroids, 0.0)
    return float(np.mean((x - table[labels]) ** 2))


def cluster_plan(**options) -> Plan:
    return Plan.from_dict({"schema_version": 1, "steps": [{"type": "cluster", "n_clusters": 8, **options}]})


@pytest.mark.parametrize(("options", "message"), [
    ({"objective": "entropy"}, "objective 'entropy' is unknown"),
    ({"importance": "hessian"}, "importance 'hessian' is unknown"),
    ({"rate_lambda": 0.01}, "rate_lambda needs objective \"rate\""),
    ({"joint_prune": True}, "joint_prune needs objective \"rate\""),
    ({"objective": "rate", "joint_prune": 1}, "joint_prune 1 must be true or false"),
    ({"objective": "rate", "rate_lambda": -1}, "rate_lambda -1 is out of range"),
    ({"objective": "rate", "rate_lambda": {"fc1": 0.1}, "target_bytes": 1000}, "remove rate_lambda or target_bytes"),
    ({"objective": "rate", "target_bytes": 0}, "target_bytes 0 is out of range"),
    ({"objective": "rate", "n_clusters": "auto"}, "not \"auto\""),
])
def test_plan_rejects_bad_rate_options_by_name(options, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(")):
        cluster_plan(**options)


def test_new_options_are_written_only_when_set():
    for name in ("lenet5", "lenet300"):  # the shipped recipes round-trip with their own keys only
        recipe = json.loads((ROOT / "assets" / "recipes" / f"{name}.json").read_text())
        written = Plan.from_dict(recipe).to_dict()["steps"][-1]
        given = recipe["steps"][-1]
        for key in ("objective", "rate_lambda", "target_bytes", "importance", "joint_prune"):
            assert (key in written) == (key in given)
    plain = cluster_plan().to_dict()["steps"][0]
    assert not {"objective", "rate_lambda", "target_bytes", "importance", "joint_prune"} & set(plain)
    rate = cluster_plan(objective="rate", rate_lambda={"_default": 0.02, "fc1": 0.05}, joint_prune=True)
    again = Plan.from_dict(rate.to_dict())
    assert again.steps[0].rate_lambda == {"_default": 0.02, "fc1": 0.05} and again.steps[0].joint_prune is True


def test_ecsq_lowers_index_entropy_at_no_more_distortion_than_kmeans():
    """Entropy-constrained k-means: fewer index bits than plain k-means with the same bound on values, and a
    better (entropy, distortion) point than plain k-means with any k at that entropy or more."""
    x = pruned_layer()
    s2 = float(np.mean(x * x))
    plain = {k: kmeans_1d(x, k) for k in range(2, 17)}
    c, labels = ecsq_1d(x, 16, rate_lambda=0.02)
    bits, dist = index_entropy_bits(labels, len(c)), mse(x, c, labels)
    assert bits < 0.8 * index_entropy_bits(plain[16][1], 16)
    assert dist < 0.05 * s2  # bounded: a few per cent of the mean square weight
    # every plain k-means that spends no fewer bits... and the one just below: the ECSQ point is below their line
    below = [k for k, (pc, pl) in plain.items() if index_entropy_bits(pl, len(pc)) <= bits]
    assert below, "plain k-means at k=2 spends fewer bits"
    k = max(below)
    assert dist <= mse(x, *plain[k]) * 1.02
    # lambda 0 is plain k-means
    c0, l0 = ecsq_1d(x, 8, rate_lambda=0.0)
    np.testing.assert_allclose(c0, plain[8][0])


def test_larger_lambda_fewer_bits_more_error():
    x = pruned_layer(seed=1)
    points = [ecsq_1d(x, 32, lam) for lam in (0.002, 0.01, 0.05)]
    bits = [index_entropy_bits(lab, len(c)) for c, lab in points]
    dist = [mse(x, c, lab) for c, lab in points]
    assert bits[0] > bits[1] > bits[2] and dist[0] < dist[1] < dist[2]


def test_fisher_importance_pulls_centroids_toward_important_weights():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(1.0, 0.05, 500), rng.normal(1.3, 0.05, 500)])
    importance = np.where(x > 1.15, 50.0, 1.0)  # the upper group matters to the loss
    plain_c, _ = ecsq_1d(x, 1)
    weighted_c, labels = ecsq_1d(x, 1, importance=importance)
    assert abs(plain_c[0] - 1.15) < 0.02
    assert weighted_c[0] > 1.25  # the importance-weighted mean sits near the important weights
    # and with two values the weighted error of the important weights is no worse
    c2, l2 = ecsq_1d(x, 2, importance=importance)
    assert np.sum(importance * (x - c2[l2]) ** 2) <= np.sum(importance * (x - plain_c[0]) ** 2)


def test_joint_prune_zeroes_only_cheap_weights():
    x = pruned_layer(keep=0.5, seed=3)  # the smallest kept weights are near zero
    total = 10 * x.size  # density 0.05: a kept position costs log2(19) = 4.2 bits
    c, labels = ecsq_1d(x, 8, rate_lambda=0.05, joint_prune=True, total=total)
    zero = labels == len(c)
    assert 0 < zero.sum() < x.size // 2
    assert np.abs(x[zero]).max() <= np.abs(x[~zero]).min() + 1e-12  # the smallest magnitudes go first
    c0, labels0 = ecsq_1d(x, 8, rate_lambda=0.0, joint_prune=True, total=total)
    assert not (labels0 == len(c0)).any()  # no bits to save: nothing goes to zero
    more = ecsq_1d(x, 8, rate_lambda=0.15, joint_prune=True, total=total)
    assert (more[1] == len(more[0])).sum() > zero.sum()
    # an important weight stays even when it is small
    importance = np.ones_like(x)
    smallest = int(np.argmin(np.abs(x)))
    importance[smallest] = 1e4
    ci, li = ecsq_1d(x, 8, rate_lambda=0.05, importance=importance, joint_prune=True, total=total)
    assert li[smallest] != len(ci)


def context(handle, data):
    return StepContext(data=data, layers=list(handle.prunable_layers()))


def test_rate_step_with_joint_prune_keeps_its_zeros_through_finetuning(lenet300, digits28):
    work = lenet300.clone()
    prune.run(work.model, PruneStep(sparsity={"_default": 0.9}, iterations=1, finetune_epochs=0),
              context(work, digits28))
    zeros_before = {name: (w == 0).clone() for name, w in work.prunable_layers().items()}
    step = ClusterStep(n_clusters={"_default": 16}, objective="rate", rate_lambda={"_default": 0.03},
                       joint_prune=True, importance="fisher", finetune_epochs=1)
    report = cluster.run(work.model, step, context(work, digits28)).report
    assert report["objective"] == "rate" and report["joint_pruned"]
    for name, weight in work.prunable_layers().items():
        zeros = weight == 0
        assert torch.all(zeros[zeros_before[name]])  # pruned weights stay pruned
        assert int(zeros.sum()) - int(zeros_before[name].sum()) == report["joint_pruned"].get(name, 0)
        assert len(torch.unique(weight[~zeros])) == report["n_clusters"][name] <= 16


def test_estimate_reflects_rate_options(lenet300):
    stats = model_stats(lenet300)
    fc1 = stats.layers["fc1"]
    plain = layer_bytes(fc1, 0.95, 16)
    rate = layer_bytes(fc1, 0.95, 16, (0.02, False))
    assert rate < 0.85 * plain
    # joint pruning where the kept weights reach down to near zero (half pruned): it prunes more, so fewer bytes
    assert layer_bytes(fc1, 0.5, 16, (0.2, True)) < 0.95 * layer_bytes(fc1, 0.5, 16, (0.2, False))
    plan = Plan(steps=(ClusterStep(n_clusters={"_default": 16}, objective="rate", target_bytes=20_000),))
    settings, _, options = plan_settings(plan.steps, list(stats.layers))
    settings = {name: (0.9, 16) for name in settings}
    free = estimate(stats, settings, bias_clusters=0)
    aimed = estimate(stats, settings, rate=options["rate"])
    weight_bytes = sum(aimed["per_layer_bytes"].values())
    assert weight_bytes <= 20_000 < sum(free["per_layer_bytes"].values())
    assert weight_bytes > 0.95 * 20_000  # the bisection lands close below the target
