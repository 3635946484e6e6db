"""A sensitivity analysis' settings, its report and its grid points: what the exact mode (sensitivity.py) and the
estimate mode (fisher.py) share.

The report's axes, per layer (each {grid point: score}, the layer alone changed, no fine-tuning):
- "sparsity": magnitude pruning at each sparsity of `sparsities`;
- "clusters": k-means weight sharing at each count of `n_clusters`;
- "bits": uniform integer quantization (the int step) at each width of `bits`: symmetric, one scale per output
  channel chosen by the mse observer, nearest rounding (methods/int_quant.quantize_weight, then dequantize: the
  weights the int step bakes at that width before any GPTQ rounding or quantization-aware fine-tuning).
  Reports written before the axis existed have no "bits" key: every reader treats the axis as not measured.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from complab.analysis.sensitivity_report import noise_of
from complab.methods.cluster import quantized
from complab.methods.int_quant import dequantize, quantize_weight
from complab.methods.prune import magnitude_mask

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DEFAULT_CLUSTERS = (2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_BITS = (8, 6, 4, 3, 2)  # integer widths tried per layer (the int step's 2-8 bits)
AXES = ("sparsity", "clusters", "bits")  # a report's curves per layer ("bits" absent from older reports)
BN_BATCH_SIZE = 64  # images per batch-norm re-estimation batch (a detector's task sets its own)

@dataclass(frozen=True)
class SensitivityConfig:
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES  # pruning levels tried per layer
    n_clusters: tuple[int, ...] = DEFAULT_CLUSTERS  # weight-sharing cluster counts tried per layer
    bits: tuple[int, ...] = DEFAULT_BITS  # integer widths tried per layer (empty: no bits axis)
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


@dataclass
class SensitivityReport:
    base_accuracy: float
    # layer -> {params, sparsity: {s: acc}, clusters: {k: acc}, bits: {b: acc}}
    layers: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    # what the validation subset can resolve (sensitivity_report.noise_of); set when the analysis finishes
    noise: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def finish(self) -> SensitivityReport:
        """Set `noise` from the base score, the validation images measured (config val_images) and the curves."""
        self.noise = noise_of(self.base_accuracy, self.config.get("val_images"), self.layers)
        return self


def grid_weight(original: torch.Tensor, kind: str, value, seed: int = 0) -> torch.Tensor:
    """A layer's weight at one grid point: kind "sparsity" (magnitude pruning), "clusters" (k-means sharing) or
    "bits" (uniform integers, per output channel, mse observer, nearest rounding)."""
    if kind == "sparsity":
        return original * magnitude_mask(original, float(value))
    if kind == "bits":
        levels, scales = quantize_weight(original, int(value), "channel", "mse")
        return dequantize(levels, scales).to(original.device, original.dtype).reshape(original.shape)
    return quantized(original, int(value), "linear", seed)
