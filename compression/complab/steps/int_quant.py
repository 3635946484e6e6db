"""Uniform integer quantization (what NNCF, ONNX Runtime, torchao and AIMET ship): the config, its checks, its
ordering, its Plan-page fields and its estimate hook. The handler is methods/int_quant.py; the file's section is
storage/int_section.py; the runtime export (ONNX QDQ) is complab/deploy.py.

A step of its own rather than a fifth quantizer of the quantize step: its levels live on a grid fixed by a
per-channel scale (no codebook to fine-tune), it has its own calibration (observers, rounding, activation ranges)
and its own export (QuantizeLinear/DequantizeLinear that a runtime runs as integers), and it combines with
pruning (zeros stay level 0), channels, distillation and with k-means sharing on other layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from complab.errors import PlanError
from complab.layermap import (
    DEFAULT_KEY,
    PATTERN_PREFIX,
    LayerField,
    OptionField,
    _integer,
    _number,
    _short,
    resolve,
    step_config,
)

BITS_CHOICES = ("off", 2, 3, 4, 5, 6, 7, 8)
MIN_BITS, MAX_BITS = 2, 8
GRANULARITIES = ("channel", "tensor")  # symmetric per output channel (default) or one scale per tensor
OBSERVERS = ("minmax", "percentile", "mse")  # how each scale's range is chosen from the weights / activations
# nearest: round to the nearest level; gptq: GPTQ-style rounding with calibration images only (Frantar et al. 2023,
# no labels, no fine-tuning); auto: gptq for layers at 4 bits or fewer, nearest above
ROUNDINGS = ("auto", "nearest", "gptq")
ACTIVATION_BITS = (0, 8)  # 0: weights only; 8: static 8-bit activations at each quantized layer's input
AUTO_ROUNDING_BITS = 4  # rounding "auto" uses gptq at this many bits or fewer
ESTIMATE_RATIOS = 40  # the estimate's mse observer tries this many clipping ratios (the step's tries 100)
# per section: bits and flags bytes, then the levels stream's counts and table (analysis/estimate.py's constants)
INT_SECTION_FIXED = 2


def _bits_chosen(bits) -> dict:
    """The Plan page's row after a width is chosen: integers replace the layer's shared values and quantizer (one
    set of levels per layer, check_plan). A new row starts off, so the defaults never ask for both."""
    return {} if bits in (None, "off") else {"k": "off", "q": "none"}


@step_config
@dataclass(frozen=True)
class IntStep:
    """Uniform integer quantization per layer: weights at 2-8 bits (symmetric, per output channel or per tensor),
    optionally 8-bit activations (static, calibrated on training images), rounding by nearest or GPTQ-style, and
    quantization-aware fine-tuning (fake quant, straight-through estimator) when finetune_epochs > 0."""

    type: ClassVar[str] = "int"
    per_layer: ClassVar[tuple[str, ...]] = ("bits", "granularity")
    after: ClassVar[tuple[tuple[str, str], ...]] = (
        ("prune", "pruning after quantization would break the integer levels; move the int step after prune"),
        ("channels", "removing channels changes the layers' shapes, so int must quantize what remains; move the "
                     "channels step first"),
        ("distill", "its fine-tuning would break the integer levels (the int step already fine-tunes with the KD "
                    "loss when the plan distills)"),
        ("fold_bn", "folding scales each output channel's weights, which would break the integer levels"),
    )
    layer_fields: ClassVar[tuple[LayerField, ...]] = (
        LayerField("b", "int bits", "select", "off", choices=BITS_CHOICES, off="off", setting="bits", bulk_step=1,
                   width=1.2, on_change=_bits_chosen,
                   help="uniform integer weights: 2-8 bits, symmetric (off: not integer-quantized; a width replaces "
                        "the layer's clusters or quantizer)"),
        LayerField("bg", "scale per", "select", "channel", choices=GRANULARITIES, wide=True,
                   enabled_when=("b", BITS_CHOICES[1:]),
                   help="channel: one scale per output channel (the default of every runtime); tensor: one scale"),
    )
    option_fields: ClassVar[tuple[OptionField, ...]] = (
        OptionField("activation_bits", "plan_int_activation_bits", "activation bits (0 or 8)", 0, 8, step=8,
                    help="8: static 8-bit activations at each integer layer's input, calibrated on training images, "
                         "as a runtime runs it (ONNX QDQ); 0: weights only"),
        OptionField("calibration_images", "plan_int_calibration", "calibration images", 1, 100_000),
        OptionField("finetune_epochs", "plan_int_epochs", "quantization-aware epochs", 0, 1000),
    )
    bits: dict[str, int] = field(default_factory=dict)  # 2 to 8 bits per weight level
    granularity: dict[str, str] = field(default_factory=dict)  # "channel" (default) or "tensor"
    observer: str = "mse"  # weights' range: minmax, percentile or mse (the scale minimising the rounding error)
    activation_observer: str = "percentile"  # activations' range (8 bits): minmax, percentile or mse
    percentile: float = 99.99  # the percentile observer's upper percentile of |x|
    rounding: str = "auto"  # auto (gptq at <= 4 bits, nearest above), nearest or gptq
    activation_bits: int = 0  # 0 (weights only) or 8 (static activations, what ONNX Runtime's int8 kernels run)
    calibration_images: int = 256  # training images the observers, GPTQ and the activation ranges see (no labels)
    finetune_epochs: int = 0  # quantization-aware fine-tuning epochs (fake quant, straight-through estimator)
    lr: float = 1e-4  # learning rate of the quantization-aware fine-tuning
    seed: int = 0

    def layer_settings(self, layer: str) -> dict | None:
        """{bits, granularity} for a layer, or None when the step leaves it in floating point."""
        bits = resolve(self.bits, layer)
        if bits is None or bits == "off":
            return None
        return {"bits": int(bits), "granularity": resolve(self.granularity, layer) or "channel"}

    def rounding_for(self, bits: int) -> str:
        """nearest or gptq for a layer of `bits` bits (rounding "auto": gptq at AUTO_ROUNDING_BITS or fewer)."""
        if self.rounding == "auto":
            return "gptq" if bits <= AUTO_ROUNDING_BITS else "nearest"
        return self.rounding

    def check(self, where: str) -> None:
        for layer, value in self.bits.items():
            if value == "off":
                continue
            _integer(where, layer, "bits", value, MIN_BITS, MAX_BITS, extra=' or "off"')
        for layer, value in self.granularity.items():
            if value not in GRANULARITIES:
                raise PlanError(f"{where}: layer {_short(layer)}: granularity {_short(value)} is unknown: use channel "
                                "(one scale per output channel) or tensor")
        for name, value, known in (("observer", self.observer, OBSERVERS),
                                   ("activation_observer", self.activation_observer, OBSERVERS),
                                   ("rounding", self.rounding, ROUNDINGS)):
            if value not in known:
                raise PlanError(f"{where}: {name} {_short(value)} is unknown: use one of {', '.join(known)}")
        if self.activation_bits not in ACTIVATION_BITS:
            raise PlanError(f"{where}: activation_bits {_short(self.activation_bits)} is not supported: use 0 "
                            "(weights only) or 8 (static 8-bit activations)")
        _number(where, None, "percentile", self.percentile, 50.0, 100.0)
        _integer(where, None, "calibration_images", self.calibration_images, 1, 100_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)

    def check_plan(self, steps: dict, layers: list[str] | None) -> None:
        """A layer cannot be both integer-quantized and clustered or vector-quantized: one set of levels each."""
        if layers is None:
            layers = sorted({key for step in steps.values() for name in step.per_layer for key in getattr(step, name)
                             if not key.startswith(PATTERN_PREFIX)})
        for layer in layers:
            settings = self.layer_settings(layer)
            if settings is None:
                continue
            where = "the model's default" if layer == DEFAULT_KEY else f"layer {_short(layer)}"
            if "cluster" in steps and resolve(steps["cluster"].n_clusters, layer) not in (None, "off"):
                raise PlanError(f"{where} is both clustered (cluster step) and integer-quantized ({settings['bits']} "
                                "bits): give the layer one of them")
            if "quantize" in steps and steps["quantize"].layer_settings(layer) is not None:
                raise PlanError(f"{where} is both vector-quantized (quantize step) and integer-quantized: give the "
                                "layer one of them")

    @classmethod
    def from_rows(cls, rows: dict[str, dict], options: dict | None = None) -> IntStep | None:
        """The step the Plan page's rows ask for (None when no layer is integer-quantized)."""
        chosen = {layer: row for layer, row in rows.items() if row.get("b", "off") not in (None, "off")}
        if not chosen:
            return None
        return cls(bits={layer: int(row["b"]) for layer, row in chosen.items()},
                   granularity={layer: row.get("bg") or "channel" for layer, row in chosen.items()}, **(options or {}))

    def to_rows(self, layers: list[str]) -> dict[str, dict]:
        rows = {}
        for layer in layers:
            settings = self.layer_settings(layer)
            rows[layer] = {"b": "off" if settings is None else settings["bits"],
                           "bg": "channel" if settings is None else settings["granularity"]}
        return rows

    def encoding(self, layer: str) -> dict:
        """The estimate hook: the layer's bits and granularity (estimate_layer turns them into bytes)."""
        settings = self.layer_settings(layer)
        return {} if settings is None else {"int_bits": settings}

    @staticmethod
    def estimate_layer(stats, sparsity: float, quantizer: dict, shared_parts, make_parts, header: float):
        """Estimated bytes of an integer-quantized layer (analysis/estimate.py's hook; None for other storage).

        The int section (storage/int_section.py) stores 4 bytes per scale and the levels entropy coded: about
        n H(levels) / 8 bytes, H the levels' empirical entropy. The levels are counted on the layer's own weights
        where LayerStats holds a sample of whole rows (magnitude-pruned at `sparsity`, then quantized per row or per
        tensor with an mse observer, as the step's default); otherwise from a Laplacian of the layer's mean |w| at
        the min-max step size. Pruned zeros are level 0 (the file's positions layout costs within a few bytes of
        the dense stream's zero symbols). Memoized per (sparsity, bits, granularity)."""
        if "int_bits" not in quantizer:
            return None
        bits = int(quantizer["int_bits"])
        granularity = quantizer.get("granularity") or "channel"
        key = ("int", float(sparsity), bits, granularity)
        cached = stats.parts_memo.get(key)
        if cached is not None:
            return cached
        qmax = (1 << (bits - 1)) - 1
        n_prune = int(round(float(sparsity) * stats.numel))
        threshold = float(stats.sorted_abs[n_prune - 1]) if n_prune > 0 else -1.0
        rows = getattr(stats, "rows", None)
        if rows is not None and rows.size:
            shares = _level_shares(np.where(np.abs(rows) > threshold, rows, 0.0), qmax, granularity)
        else:
            shares = _laplace_shares(stats.sorted_abs, n_prune, qmax)
        scales = (stats.shape[0] if stats.shape else 1) if granularity == "channel" else 1
        used = int((shares > 0).sum())
        entropy = float(-(shares[shares > 0] * np.log2(shares[shares > 0])).sum())
        levels = stats.numel * entropy / 8 + _STREAM_OVERHEAD + _TABLE_BYTES_PER_SYMBOL * used
        kept = stats.numel - int(round(shares[qmax] * stats.numel))  # level 0: pruned, or rounded to zero
        parts = make_parts(stats.numel, kept, header=header + INT_SECTION_FIXED + _varint_bytes(scales),
                           codebook=4.0 * scales, indices=levels, fixed_indices=stats.numel * bits / 8,
                           encoding="int")
        stats.parts_memo[key] = parts
        return parts


_STREAM_OVERHEAD = 6  # analysis/estimate.py's STREAM_OVERHEAD (a coded stream's counts, table header, ANS tail)
_TABLE_BYTES_PER_SYMBOL = 0.12  # ...and TABLE_BYTES_PER_SYMBOL


def _varint_bytes(value: int) -> int:
    return max(1, math.ceil(max(1, int(value)).bit_length() / 7))


def _level_shares(rows: np.ndarray, qmax: int, granularity: str) -> np.ndarray:
    """Each level's share (index level + qmax) of the rows quantized with an mse-chosen scale per row (or one)."""
    matrix = rows.reshape(1, -1) if granularity == "tensor" else rows.reshape(rows.shape[0], -1)
    matrix = matrix.astype(np.float64)
    top = np.abs(matrix).max(axis=1)
    best, best_error = top.copy(), np.full(top.shape, np.inf)
    for step in range(ESTIMATE_RATIOS, 0, -1):
        clip = top * step / ESTIMATE_RATIOS
        scale = np.where(clip > 0, clip / qmax, 1.0)[:, None]
        error = ((np.clip(np.round(matrix / scale), -qmax, qmax) * scale - matrix) ** 2).sum(axis=1)
        better = error < best_error
        best_error, best = np.where(better, error, best_error), np.where(better, clip, best)
    scale = np.where(best > 0, best / qmax, 1.0)[:, None]
    levels = np.clip(np.round(matrix / scale), -qmax, qmax).astype(np.int64) + qmax
    counts = np.bincount(levels.ravel(), minlength=2 * qmax + 1).astype(np.float64)
    return counts / counts.sum()


def _laplace_shares(sorted_abs: np.ndarray, n_prune: int, qmax: int) -> np.ndarray:
    """Level shares of a Laplacian of the kept weights' mean |w| at the min-max step size, plus the pruned zeros."""
    kept = sorted_abs[n_prune:].astype(np.float64)
    shares = np.zeros(2 * qmax + 1)
    if kept.size == 0 or kept[-1] <= 0:
        shares[qmax] = 1.0
        return shares
    b, step = max(kept.mean(), 1e-12), kept[-1] / qmax
    edges = (np.arange(qmax + 1) + 0.5) * step  # |level| = k covers [(k - 1/2) step, (k + 1/2) step)
    below = 1.0 - np.exp(-edges / b)  # P(|w| < edge)
    magnitude = np.diff(np.concatenate(([0.0], below)))
    magnitude[-1] += 1.0 - below[-1]  # the clipped tail lands on the top level
    shares[qmax] = magnitude[0]
    shares[qmax + 1:] = magnitude[1:] / 2
    shares[:qmax] = magnitude[1:][::-1] / 2
    density = kept.size / (kept.size + n_prune)
    shares *= density
    shares[qmax] += 1.0 - density
    return shares
