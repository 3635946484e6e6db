"""Sensitivity analysis: how much accuracy each prunable layer loses, alone, to pruning and to weight sharing.

For every layer, with all other layers untouched: accuracy on a validation subset at each sparsity
of a grid (magnitude pruning, no fine-tuning) and at each cluster count of a grid (k-means weight
sharing of the layer's weights, no fine-tuning). The report is plain JSON; the plan page turns it
into suggestions and the target solver (compression/analysis/solver.py) works over it.

A model with batch norm is measured at each point (where the weights changed) with its batch-norm
statistics re-estimated on a few training batches (a cumulative average, methods/bn_stats.py), as
every compression step leaves them: with the original statistics, a pruned MobileNetV3 layer looks
far more sensitive than it is after compression. The report's config says so (`batch_norm`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from compression.data import DataBundle
from compression.methods import bn_stats
from compression.methods.cluster import quantized
from compression.methods.prune import magnitude_mask
from compression.models.handle import ModelHandle

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DEFAULT_CLUSTERS = (2, 4, 8, 16, 32, 64, 128, 256)
# A detector has ~60 layers and each point is an mAP evaluation: a coarser grid on fewer images
DETECTOR_CONFIG = {"sparsities": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95], "n_clusters": [4, 8, 16, 32, 64],
                   "val_size": 64, "seed": 0, "bn_batches": 2}
BN_BATCH_SIZE = 64  # images per batch-norm re-estimation batch (a detector's: DETECTOR_BN_BATCH_SIZE)
DETECTOR_BN_BATCH_SIZE = 16


@dataclass(frozen=True)
class SensitivityConfig:
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES  # pruning levels tried per layer
    n_clusters: tuple[int, ...] = DEFAULT_CLUSTERS  # weight-sharing cluster counts tried per layer
    val_size: int = 512  # validation images used (the whole split when larger)
    seed: int = 0
    bn_batches: int = 4  # training batches re-estimating batch-norm statistics at each point (0 = keep the original)

    def key(self, model_ref: str, data_ref: str, weights_digest: str) -> str:
        """Cache key: the same model, data and settings give the same report."""
        text = json.dumps({"model": model_ref, "data": data_ref, "weights": weights_digest, **asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def weights_digest(handle: ModelHandle) -> str:
    digest = hashlib.sha256()
    for name, tensor in handle.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@dataclass
class SensitivityReport:
    base_accuracy: float
    layers: dict[str, dict] = field(default_factory=dict)  # layer -> {params, sparsity: {s: acc}, clusters: {k: acc}}
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def analyze(handle: ModelHandle, data: DataBundle, config: SensitivityConfig = SensitivityConfig(), *,
            on_progress: Callable[[str, float, dict], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None) -> SensitivityReport:
    """Measure every layer alone at every grid point (the model given is not changed)."""
    work = handle.clone()
    model = work.model.eval()
    if handle.task == "detect":  # mAP50 on validation images held in memory
        from compression.models.detection_metric import FastMap

        fast_map = FastMap(data, handle.imgsz, config.val_size, config.seed)

        def evaluate() -> float:
            return fast_map(model)["map50"]
    else:
        loader = data.loader("val", size=config.val_size, seed=config.seed)
        # evaluate on tensors held in memory: the grid runs hundreds of evaluations
        batches = [(x.to(next(model.parameters()).device), y) for x, y in loader]

        def evaluate() -> float:
            correct = total = 0
            for x, y in batches:
                correct += int((model(x).argmax(1).cpu() == y).sum())
                total += len(y)
            return correct / max(1, total)

    base = evaluate()
    bn_batches = _bn_batches(handle, model, data, config)
    statistics = {key: value.clone() for key, value in model.state_dict().items()
                  if key.endswith(("running_mean", "running_var", "num_batches_tracked"))}

    def evaluate_changed(weight: torch.Tensor, original: torch.Tensor) -> float:
        """The score with the changed weight, batch-norm statistics re-estimated for it (then put back)."""
        if not bn_batches or torch.equal(weight, original):
            return evaluate()
        bn_stats.reestimate(model, bn_batches)
        try:
            return evaluate()
        finally:
            model.load_state_dict(statistics, strict=False)

    images = sum(len(batch) for batch in bn_batches)
    batch_norm = ({"reestimated": True, "images": images, "batches": len(bn_batches),
                   "note": f"batch-norm statistics re-estimated at each point on {images} training images "
                           "(cumulative average), as compression leaves them"}
                  if bn_batches else {"reestimated": False, "images": 0, "batches": 0,
                                      "note": "original batch-norm statistics (none in the model, or bn_batches 0)"})
    report = SensitivityReport(base, {}, {**asdict(config), "base_accuracy": base, "batch_norm": batch_norm})
    layers = work.prunable_layers()
    total_points = len(layers) * (len(config.sparsities) + len(config.n_clusters))
    done = 0
    for name, weight in layers.items():
        original = weight.detach().clone()
        row = {"params": weight.numel(), "kind": "conv" if weight.dim() > 2 else "fc", "sparsity": {}, "clusters": {}}
        for sparsity in config.sparsities:
            weight.copy_(original * magnitude_mask(original, sparsity))
            row["sparsity"][str(sparsity)] = evaluate_changed(weight, original)
            done += 1
            if on_progress:
                on_progress("sensitivity", done / total_points, {"layer": name})
        for k in config.n_clusters:
            weight.copy_(quantized(original, k, "linear", config.seed))
            row["clusters"][str(k)] = evaluate_changed(weight, original)
            done += 1
            if on_progress:
                on_progress("sensitivity", done / total_points, {"layer": name})
        weight.copy_(original)
        report.layers[name] = row
        if cancel_requested and cancel_requested():
            from compression.methods.context import Cancelled

            raise Cancelled("the sensitivity analysis was cancelled")
    return report


def _bn_batches(handle: ModelHandle, model: torch.nn.Module, data, config: SensitivityConfig) -> list[torch.Tensor]:
    """The training batches (held in memory, on the model's device) that re-estimate batch norm at each point."""
    if config.bn_batches <= 0 or not bn_stats.has_batch_norm(model):
        return []
    device = next(model.parameters()).device
    if handle.task == "detect":
        from compression.methods.detect_train import detector_batches

        batches = detector_batches(data, handle.imgsz, config.bn_batches * DETECTOR_BN_BATCH_SIZE, config.seed,
                                   DETECTOR_BN_BATCH_SIZE)
    else:
        batches = list(bn_stats.training_images(data.train, BN_BATCH_SIZE, config.bn_batches, config.seed))
    return [batch.to(device) for batch in batches if len(batch) >= 2]
