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
    mode: str = "exact"  # "exact": measure every point; "estimate": Fisher estimate + a few exact points (fisher.py)
    calibration_seconds: float = 90.0  # estimate mode: time for its exact calibration points (analysis/fisher.py)

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


class ExactScorer:
    """Measures the model's validation score with ONE layer's weight replaced (every other layer untouched).

    The one interface both modes use: the exact mode calls `score` at every grid point, the estimate
    mode at a few calibration points. `score(layer, weight)` puts `weight` into the layer, re-estimates
    batch-norm statistics when the model has them (then puts them back), evaluates, and restores the
    original weight. The handle given is never changed (one clone, made here, is reused for every point).
    """

    def __init__(self, handle: ModelHandle, data: DataBundle, config: SensitivityConfig):
        self.work = handle.clone()
        self.model = self.work.model.eval()
        self.config = config
        self.layers = self.work.prunable_layers()  # name -> the clone's weight tensor (changed in place)
        model = self.model
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

        self._evaluate = evaluate
        with torch.no_grad():
            self.base = evaluate()
        self.bn_batches = _bn_batches(handle, model, data, config)
        self._statistics = {key: value.clone() for key, value in model.state_dict().items()
                            if key.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        images = sum(len(batch) for batch in self.bn_batches)
        self.batch_norm = ({"reestimated": True, "images": images, "batches": len(self.bn_batches),
                            "note": f"batch-norm statistics re-estimated at each point on {images} training images "
                                    "(cumulative average), as compression leaves them"}
                           if self.bn_batches else
                           {"reestimated": False, "images": 0, "batches": 0,
                            "note": "original batch-norm statistics (none in the model, or bn_batches 0)"})

    @torch.no_grad()
    def score(self, layer: str, weight: torch.Tensor) -> float:
        """The validation score with `layer`'s weight replaced by `weight` (batch norm re-estimated for it)."""
        target = self.layers[layer]
        original = target.detach().clone()
        if torch.equal(weight, original):
            return self.base
        target.copy_(weight)
        try:
            if self.bn_batches:
                bn_stats.reestimate(self.model, self.bn_batches)
            return self._evaluate()
        finally:
            target.copy_(original)
            if self.bn_batches:
                self.model.load_state_dict(self._statistics, strict=False)


def grid_weight(original: torch.Tensor, kind: str, value, seed: int = 0) -> torch.Tensor:
    """A layer's weight at one grid point: kind "sparsity" (magnitude pruning) or "clusters" (k-means sharing)."""
    if kind == "sparsity":
        return original * magnitude_mask(original, float(value))
    return quantized(original, int(value), "linear", seed)


def analyze(handle: ModelHandle, data: DataBundle, config: SensitivityConfig = SensitivityConfig(), *,
            on_progress: Callable[[str, float, dict], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None) -> SensitivityReport:
    """Measure every layer alone at every grid point (the model given is not changed).

    With config.mode "estimate" most points are estimated instead (analysis/fisher.py)."""
    if config.mode == "estimate":
        from compression.analysis.fisher import analyze_estimate

        return analyze_estimate(handle, data, config, on_progress=on_progress, cancel_requested=cancel_requested)
    scorer = ExactScorer(handle, data, config)
    report = SensitivityReport(scorer.base, {}, {**asdict(config), "base_accuracy": scorer.base,
                                                 "batch_norm": scorer.batch_norm})
    total_points = len(scorer.layers) * (len(config.sparsities) + len(config.n_clusters))
    done = 0
    for name, weight in scorer.layers.items():
        original = weight.detach().clone()
        row = {"params": weight.numel(), "kind": "conv" if weight.dim() > 2 else "fc", "sparsity": {}, "clusters": {}}
        for kind, grid in (("sparsity", config.sparsities), ("clusters", config.n_clusters)):
            for value in grid:
                row[kind][str(value)] = scorer.score(name, grid_weight(original, kind, value, config.seed))
                done += 1
                if on_progress:
                    on_progress("sensitivity", done / total_points, {"layer": name})
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
