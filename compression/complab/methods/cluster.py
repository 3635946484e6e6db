"""k-means weight sharing per layer (Deep Compression), with the dynamical-clustering paper's per-layer k.

Each layer's non-zero weights are clustered in one dimension into k shared values (pruned weights
stay exactly zero and are not clustered). The shared values are then fine-tuned: the weight is a
parametrization `weight = table[labels]` of the k centroids, so autograd sums the gradients of all
weights in a cluster into that cluster's value, exactly Deep Compression's centroid update.

k = "auto" is our reading of the dynamical-clustering paper ("Deep Neural Network Compression for Image
Classification and Object Detection", arXiv 1910.02747), whose exact rule is not in the sources:
per layer, the smallest k between 2 and 256 (doubling, then bisection) whose effect stays within
the plan's tolerance: by default the accuracy drop on a validation subset, measured with the layers
before it (in model order) already shared at their chosen k, so that the drops of the layers do not
add up unseen and the whole model before fine-tuning stays within the tolerance of the original;
or the layer's relative reconstruction error sum((w - q)^2) / sum(w^2) (fast option).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from complab.layermap import resolve, resolve_all
from complab.methods.context import StepContext, StepResult, layer_weight, weight_ref
from complab.methods.ecsq import LAMBDA_RANGE, LAMBDA_STEPS, coded_bytes_estimate, ecsq_1d
from complab.methods.importance import model_fisher
from complab.methods.kmeans1d import kmeans_1d
from complab.methods.registry import handler
from complab.models.params import bake
from complab.steps.cluster import ClusterStep

MAX_CLUSTERS = 256
# its own random stream (data order) for fine-tuning the shared values: offset past the prune step's
# rounds (seed + 1, 2, ...) so the two fine-tunings of one plan never replay the same batches
SHARED_VALUE_FINETUNE_SEED = 1000
FISHER_IMAGES = 256  # validation images whose per-sample gradients weight the distortion (importance "fisher")


class SharedValues(nn.Module):
    """centroids [k] -> weight: each position takes its cluster's value; label k means a pruned zero."""

    def __init__(self, labels: torch.Tensor, centroids: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("labels", labels)
        self.register_buffer("initial", centroids.clone())

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([centroids, centroids.new_zeros(1)])
        return table[self.labels]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.initial.clone()


def cluster_weight(weight: torch.Tensor, n_clusters: int, init: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(centroids [k'] float, labels same shape as weight with k' marking zeros) for a layer's non-zero weights."""
    flat = weight.detach().flatten().cpu().double().numpy()
    nonzero = flat != 0
    labels = np.full(flat.shape, -1, dtype=np.int64)
    if not nonzero.any():
        return torch.zeros(0, dtype=weight.dtype), torch.zeros_like(weight, dtype=torch.long)
    centroids, nz_labels = kmeans_1d(flat[nonzero], n_clusters, init=init, seed=seed)
    labels[nonzero] = nz_labels
    labels[~nonzero] = len(centroids)
    return (torch.from_numpy(centroids).to(weight.dtype),
            torch.from_numpy(labels).view(weight.shape).to(weight.device))


def rate_cluster(weight: torch.Tensor, n_clusters: int, rate_lambda: float, importance: torch.Tensor | None,
                 joint_prune: bool, init: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cluster_weight's (centroids, labels) by entropy-constrained (importance-weighted) k-means (methods/ecsq.py);
    with joint_prune the zero level may take non-zero weights (label k' marks every zero, as in cluster_weight)."""
    flat = weight.detach().flatten().cpu().double().numpy()
    nonzero = flat != 0
    if not nonzero.any():
        return torch.zeros(0, dtype=weight.dtype), torch.zeros_like(weight, dtype=torch.long)
    imp = None if importance is None else importance.detach().flatten().cpu().double().numpy()[nonzero]
    centroids, nz_labels = ecsq_1d(flat[nonzero], n_clusters, rate_lambda, imp, joint_prune, total=flat.size,
                                   init=init, seed=seed)
    labels = np.full(flat.shape, len(centroids), dtype=np.int64)
    labels[nonzero] = nz_labels
    return (torch.from_numpy(centroids).to(weight.dtype),
            torch.from_numpy(labels).view(weight.shape).to(weight.device))


def choose_lambda(weights: dict[str, torch.Tensor], chosen: dict[str, int], importance: dict, step: ClusterStep,
                  ctx: StepContext) -> float:
    """target_bytes: the lambda (one for every layer) whose estimated coded weight bytes (order-0 index entropy,
    n * H2(density) positions, fp32 codebook: methods/ecsq.coded_bytes_estimate) come closest to the target from
    below, by bisection on log lambda (the bytes fall as lambda grows)."""

    def coded(lam: float) -> float:
        total = 0.0
        for layer, weight in weights.items():
            centroids, labels = rate_cluster(weight, chosen[layer], lam, importance.get(layer), step.joint_prune,
                                             step.init, step.seed)
            total += coded_bytes_estimate(labels.flatten().numpy(), len(centroids), labels.numel())
        return total

    low, high = np.log(LAMBDA_RANGE[0]), np.log(LAMBDA_RANGE[1])
    if coded(float(np.exp(low))) <= step.target_bytes:
        return float(np.exp(low))
    for index in range(LAMBDA_STEPS):
        ctx.emit("choose lambda", index / LAMBDA_STEPS)
        mid = (low + high) / 2
        low, high = (low, mid) if coded(float(np.exp(mid))) <= step.target_bytes else (mid, high)
        ctx.check_cancelled()
    return float(np.exp(high))


def quantized(weight: torch.Tensor, n_clusters: int, init: str, seed: int) -> torch.Tensor:
    centroids, labels = cluster_weight(weight, n_clusters, init, seed)
    table = torch.cat([centroids.to(weight.device), weight.new_zeros(1)])
    return table[labels]


@torch.no_grad()
def choose_n_clusters(model: nn.Module, layer: str, step: ClusterStep, ctx: StepContext,
                      evaluate, base_accuracy: float) -> int:
    """Smallest k in [2, 256] whose effect on this layer alone stays within the tolerance."""
    weight = layer_weight(model, layer)
    original = weight.detach().clone()
    energy = float((original.double() ** 2).sum()) or 1.0
    results: dict[int, bool] = {}

    def within(k: int) -> bool:
        if k not in results:
            q = quantized(original, k, step.init, step.seed)
            if step.auto_criterion == "reconstruction":
                results[k] = float(((original.double() - q.double()) ** 2).sum()) / energy <= step.tolerance
            else:
                weight.copy_(q)
                results[k] = base_accuracy - evaluate() <= step.tolerance
                weight.copy_(original)
        return results[k]

    k = 2
    while k < MAX_CLUSTERS and not within(k):
        k *= 2
    k = min(k, MAX_CLUSTERS)
    if k == 2 or k == MAX_CLUSTERS and not within(k):
        return k
    low, high = k // 2, k  # low fails, high passes
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if within(mid) else (mid, high)
    return high


@handler(ClusterStep)
def run(model: nn.Module, step: ClusterStep, ctx: StepContext) -> StepResult:
    """Choose k per layer, cluster every layer, fine-tune the shared values, bake them into the weights."""
    requested = resolve_all(step.n_clusters, ctx.layers)
    if not requested:
        ctx.log("cluster: no layer has n_clusters; nothing to do")
        return StepResult()
    chosen: dict[str, int] = {}
    auto_layers = [layer for layer, k in requested.items() if k == "auto"]
    originals: dict[str, torch.Tensor] = {}
    if auto_layers:
        score = ctx.make_scorer(step.auto_val_size, ctx.seed)

        def evaluate() -> float:
            return score(model)

        base = evaluate() if step.auto_criterion == "accuracy" else 1.0
        for index, layer in enumerate(auto_layers):
            ctx.emit("choose clusters", index / len(auto_layers), layer=layer)
            chosen[layer] = choose_n_clusters(model, layer, step, ctx, evaluate, base)
            with torch.no_grad():  # later layers are judged with this one already shared
                weight = layer_weight(model, layer)
                originals.setdefault(layer, weight.detach().clone())
                weight.copy_(quantized(weight, chosen[layer], step.init, step.seed))
            ctx.check_cancelled()
        with torch.no_grad():
            for layer, original in originals.items():
                layer_weight(model, layer).copy_(original)
        model.eval()
    chosen.update({layer: int(k) for layer, k in requested.items() if k != "auto"})
    ctx.log("cluster: k " + ", ".join(f"{layer}={chosen[layer]}" for layer in requested))
    bake(model)
    rate_aware = step.objective == "rate" or step.importance != "none"
    importance: dict[str, torch.Tensor] = {}
    if step.importance == "fisher":
        ctx.emit("fisher", 0.0)
        importance = model_fisher(model, list(requested), ctx.task, FISHER_IMAGES, ctx.seed + step.seed)
    lambdas = {layer: float(resolve(step.rate_lambda, layer) or 0.0) for layer in requested}
    if step.objective == "rate" and step.target_bytes is not None:
        lam = choose_lambda({layer: layer_weight(model, layer).detach().cpu() for layer in requested}, chosen,
                            importance, step, ctx)
        lambdas = dict.fromkeys(requested, lam)
        ctx.log(f"cluster: lambda {lam:.4g} for about {step.target_bytes:,} coded weight bytes")
    pruned = {}
    for layer in requested:
        module, attribute = weight_ref(model, layer)
        weight = getattr(module, attribute)
        if rate_aware:
            centroids, labels = rate_cluster(weight, chosen[layer], lambdas[layer], importance.get(layer),
                                             step.joint_prune and step.objective == "rate", step.init, step.seed)
            zeros = int((labels == len(centroids)).sum()) - int((weight == 0).sum())
            if zeros:
                pruned[layer] = zeros
            chosen[layer] = len(centroids)
        else:
            centroids, labels = cluster_weight(weight, chosen[layer], step.init, step.seed)
        parametrize.register_parametrization(module, attribute, SharedValues(labels, centroids), unsafe=True)
    if rate_aware:
        ctx.log("cluster: shared values used " + ", ".join(f"{layer}={chosen[layer]}" for layer in requested))
    if pruned:
        ctx.log("cluster: joint pruning zeroed " + ", ".join(f"{layer}={n}" for layer, n in pruned.items()))
    bias_clusters = share_biases(model, list(requested), step) if step.bias_clusters else {}
    ctx.finetune(model, step.finetune_epochs, step.lr, ctx.seed + step.seed + SHARED_VALUE_FINETUNE_SEED,
                 "fine-tune shared values")
    bake(model)
    report = {"n_clusters": {layer: chosen[layer] for layer in requested}}
    if rate_aware:
        report["objective"] = step.objective
        if step.objective == "rate":
            report["rate_lambda"] = lambdas
        if pruned:
            report["joint_pruned"] = pruned
    if bias_clusters:
        ctx.log("cluster: bias k " + ", ".join(f"{layer}={k}" for layer, k in bias_clusters.items()))
        report["bias_clusters"] = bias_clusters
    return StepResult(report)


def share_biases(model: nn.Module, layers: list[str], step: ClusterStep) -> dict[str, int]:
    """Cluster each layer's bias into at most `step.bias_clusters` shared values, fine-tuned with the weights.

    Ours, not the paper's (Deep Compression leaves biases alone: beside AlexNet's weights they are nothing; beside
    a LeNet-5 pruned to 1% they are a fifth of the file). A bias of k values or fewer is left as it is."""
    shared = {}
    for layer in layers:
        module, attribute = weight_ref(model, layer)
        bias = getattr(module, "bias", None) if attribute == "weight" else None
        if not isinstance(bias, torch.Tensor) or bias.numel() <= step.bias_clusters:
            continue
        k = step.bias_clusters
        centroids, labels = cluster_weight(bias, k, step.init, step.seed)
        parametrize.register_parametrization(module, "bias", SharedValues(labels, centroids), unsafe=True)
        shared[layer] = len(centroids)
    return shared
