"""Vector quantization (Gong et al. 2014): the config, its checks (per layer and against the plan's other steps),
its ordering, its Plan-page fields and its estimate hook (the "vq" section's bytes). The handler is
methods/vq.py; the file's section is storage/vq_section.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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

QUANTIZERS = ("none", "binary", "kmeans", "pq", "rq")
DEFAULT_CODEWORDS = {"binary": 2, "kmeans": 16, "pq": 256, "rq": 256}  # k when n_codewords does not reach a layer
DEFAULT_SEGMENT_LENGTH = 4  # PQ sub-vector length s when segment_length does not reach a layer
DEFAULT_STAGES = 2  # RQ stages t when stages does not reach a layer
CODEWORD_CHOICES = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NO_ZEROS = ("binary", "pq", "rq")  # quantizers whose codewords cannot keep pruning's zeros (kmeans keeps them)


def _quantizer_chosen(method: str) -> dict[str, Any]:
    """The Plan page's row after a quantizer is chosen: it replaces clustering on its layer, and binary/pq/rq
    codewords cannot keep pruned zeros."""
    updates: dict[str, Any] = {}
    if method != "none":
        updates["k"] = "off"
        updates["b"] = "off"  # the int step's width: one set of levels per layer
    if method in NO_ZEROS:
        updates["sp"] = 0.0
    return updates


def check_layer(layer: str, shape: tuple[int, ...], settings: dict) -> None:
    """Raise PlanError when a quantizer's parameters do not fit the layer's shape (names the fix)."""
    from complab.storage.vq_section import matrix_dims

    method, k = settings["quantizer"], settings["n_codewords"]
    if method in ("pq", "rq"):
        vectors, dim = matrix_dims(tuple(shape), settings["axis"])
        if k > vectors:
            other = "out" if settings["axis"] == "in" else "in"
            raise PlanError(f"layer {layer!r}: {method} with {k} codewords needs at least {k} vectors, the layer has "
                            f"{vectors} along axis {settings['axis']!r} (shape {list(shape)}): use n_codewords <= "
                            f"{1 << (vectors.bit_length() - 1)}, axis {other!r}, or kmeans")
        if method == "pq" and settings["segment_length"] > dim:
            raise PlanError(f"layer {layer!r}: pq segment_length {settings['segment_length']} is longer than its "
                            f"vectors ({dim}): use segment_length <= {dim}")


@step_config
@dataclass(frozen=True)
class QuantizeStep:
    """Vector quantization (Gong et al. 2014) per layer: binarization, scalar k-means, product or residual.

    Codebooks are fine-tuned afterwards (codes fixed), then stored as codebooks + codes ("vq" sections).
    Applies to linear layers as in the paper and to convolutions through their (out, in*kh*kw) matrix.
    """

    type: ClassVar[str] = "quantize"
    per_layer: ClassVar[tuple[str, ...]] = ("quantizer", "n_codewords", "segment_length", "stages", "axis")
    after: ClassVar[tuple[tuple[str, str], ...]] = (
        ("fold_bn", "folding scales each output channel's weights, which would no longer match the quantizer's "
                    "codes"),
        ("prune", "it changes the weights, which would no longer match the quantizer's codes; move the quantize "
                  "step after prune"),
        ("channels", "it changes the weights, which would no longer match the quantizer's codes; move the quantize "
                     "step after channels"),
        ("distill", "it changes the weights, which would no longer match the quantizer's codes; move the quantize "
                    "step after distill"),
    )
    layer_fields: ClassVar[tuple[LayerField, ...]] = (
        LayerField("q", "quantizer", "select", "none", choices=QUANTIZERS, off="none", wide=True, bulk_step=1,
                   on_change=_quantizer_chosen, width=1.5,
                   help="Gong et al.: binary (sign x scale), kmeans (scalar), pq (product: segments of s values), "
                        "rq (residual: t stages)"),
        LayerField("qk", "k", "select", DEFAULT_CODEWORDS["kmeans"], choices=CODEWORD_CHOICES, wide=True,
                   enabled_when=("q", ("kmeans", "pq", "rq")), width=1.1),
        LayerField("qs", "s / t", "number", DEFAULT_SEGMENT_LENGTH, low=1, high=64, wide=True,
                   enabled_when=("q", ("pq", "rq")), help="pq: segment length s; rq: stages t"),
        LayerField("qa", "axis", "select", "in", choices=("in", "out"), wide=True, enabled_when=("q", ("pq", "rq")),
                   help="in: vectors are rows of W (one output's inputs, the paper's); out: columns"),
    )
    option_fields: ClassVar[tuple[OptionField, ...]] = (
        OptionField("finetune_epochs", "plan_codebook_epochs", "codebook epochs (quantizers)", 0, 1000),)
    quantizer: dict[str, str] = field(default_factory=dict)  # "binary", "kmeans", "pq", "rq" or "none"
    n_codewords: dict[str, int] = field(default_factory=dict)  # k: kmeans 2-256; pq/rq a power of two 2-4096
    segment_length: dict[str, int] = field(default_factory=dict)  # pq: sub-vector length s, 1-64 (default 4)
    stages: dict[str, int] = field(default_factory=dict)  # rq: t stages of k codewords, 1-16 (default 2)
    axis: dict[str, str] = field(default_factory=dict)  # pq/rq vectors: "in" rows of W (paper) or "out" columns
    kmeans_iterations: int = 25  # pq/rq: k-means iterations per codebook (faiss's default)
    finetune_epochs: int = 4  # epochs fine-tuning the codebooks (codes fixed; gradients summed per codeword)
    lr: float = 1e-3  # learning rate for the codebooks (1e-4 left PQ on LeNet-300 a point lower: vq_table.py)
    seed: int = 0

    def layer_settings(self, layer: str) -> dict | None:
        """{quantizer, n_codewords, segment_length, stages, axis} for a layer, or None when not quantized."""
        method = resolve(self.quantizer, layer)
        if method in (None, "none"):
            return None
        k = resolve(self.n_codewords, layer)
        return {"quantizer": method, "n_codewords": 2 if method == "binary" else DEFAULT_CODEWORDS[method] if k is None
                else k, "segment_length": resolve(self.segment_length, layer) or DEFAULT_SEGMENT_LENGTH,
                "stages": resolve(self.stages, layer) or DEFAULT_STAGES, "axis": resolve(self.axis, layer) or "in"}

    def check(self, where: str) -> None:
        for layer, value in self.quantizer.items():
            if value not in QUANTIZERS:
                raise PlanError(f"{where}: layer {_short(layer)}: quantizer {_short(value)} is unknown: use one of "
                                f"{', '.join(QUANTIZERS)}")
        for layer, value in self.n_codewords.items():
            _integer(where, layer, "n_codewords", value, 2, 4096)
        for layer, value in self.segment_length.items():
            _integer(where, layer, "segment_length", value, 1, 64)
        for layer, value in self.stages.items():
            _integer(where, layer, "stages", value, 1, 16)
        for layer, value in self.axis.items():
            if value not in ("in", "out"):
                raise PlanError(f"{where}: layer {_short(layer)}: axis {_short(value)} is unknown: use in "
                                "(sub-vectors along each output unit's inputs, the paper's) or out")
        names = set(self.quantizer) | set(self.n_codewords)
        self.check_layers(where, sorted(names))
        _integer(where, None, "kmeans_iterations", self.kmeans_iterations, 1, 1000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)

    def check_layers(self, where: str, layers: list[str]) -> None:
        """Per-layer combinations: kmeans k at most 256; pq/rq k a power of two (log2 k bits per code)."""
        for layer in layers:
            settings = self.layer_settings(layer)
            if settings is None:
                continue
            k, method = settings["n_codewords"], settings["quantizer"]
            if method == "kmeans" and k > 256:
                raise PlanError(f"{where}: layer {_short(layer)}: kmeans n_codewords {k} is out of range: use 2 to 256 "
                                "(or pq for more codewords)")
            if method in ("pq", "rq") and k & (k - 1):
                raise PlanError(f"{where}: layer {_short(layer)}: {method} n_codewords {k} is not a power of two: "
                                f"use {1 << (k.bit_length() - 1)} or {1 << k.bit_length()} (codes are log2 k bits)")

    def check_plan(self, steps: dict[str, Any], layers: list[str] | None) -> None:
        """Where quantization does not combine with the plan's other steps on a layer: a clustered layer cannot
        also be quantized; binary/pq/rq codewords cannot keep pruning's zeros (kmeans keeps them as an extra
        exact-zero code, so prune + kmeans is fine). That nothing may change the weights after it is `after`."""
        if layers is None:  # without the model's layers, check the names the maps spell out
            layers = sorted({key for step in steps.values() for name in step.per_layer for key in getattr(step, name)
                             if not key.startswith(PATTERN_PREFIX)})
        for layer in layers:
            settings = self.layer_settings(layer)
            if settings is None:
                continue
            method = settings["quantizer"]
            where = "the model's default" if layer == DEFAULT_KEY else f"layer {_short(layer)}"
            if "cluster" in steps and resolve(steps["cluster"].n_clusters, layer) is not None:
                raise PlanError(f"{where} is both clustered (cluster step) and quantized ({method}): they contradict "
                                "each other; give the layer one of them (quantizer 'kmeans' is the paper's clustering)")
            sparsity = resolve(steps["prune"].sparsity, layer) if "prune" in steps else None
            if sparsity and method in NO_ZEROS:
                raise PlanError(f"{where} is pruned (sparsity {sparsity}) and quantized with {method}, whose codewords "
                                "would overwrite the pruned zeros: use quantizer 'kmeans' on pruned layers (it keeps "
                                "the zeros exact), or do not prune this layer")

    def check_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Each quantized layer's settings against its weight's shape (check_layer), before anything runs."""
        for layer, shape in shapes.items():
            settings = self.layer_settings(layer)
            if settings is not None:
                check_layer(layer, tuple(shape), settings)

    @classmethod
    def from_rows(cls, rows: dict[str, dict], options: dict | None = None) -> QuantizeStep | None:
        """The step the Plan page's rows ask for (None when no layer is quantized); "s / t" is pq's segment
        length and rq's stage count."""
        chosen = {layer: row for layer, row in rows.items() if row.get("q", "none") != "none"}
        if not chosen:
            return None
        return cls(quantizer={layer: row["q"] for layer, row in chosen.items()},
                   n_codewords={layer: 2 if row["q"] == "binary" else int(row["qk"]) for layer, row in chosen.items()},
                   segment_length={layer: int(row["qs"]) for layer, row in chosen.items()},
                   stages={layer: int(row["qs"]) for layer, row in chosen.items()},
                   axis={layer: row["qa"] for layer, row in chosen.items()}, **(options or {}))

    def to_rows(self, layers: list[str]) -> dict[str, dict]:
        rows = {}
        for layer in layers:
            q = self.layer_settings(layer) or {}
            method = q.get("quantizer", "none")
            rows[layer] = {"q": method, "qk": int(q.get("n_codewords") or DEFAULT_CODEWORDS["kmeans"]),
                           "qs": int((q.get("stages") if method == "rq" else q.get("segment_length"))
                                     or (DEFAULT_STAGES if method == "rq" else DEFAULT_SEGMENT_LENGTH)),
                           "qa": q.get("axis") or "in"}
        return rows

    def encoding(self, layer: str) -> dict:
        """The estimate hook: the layer's quantizer settings (estimate_layer turns them into bytes)."""
        settings = self.layer_settings(layer)
        return {} if settings is None else {"quantizer": settings}

    @staticmethod
    def estimate_layer(stats, sparsity: float, quantizer: dict, shared_parts, make_parts, header: float):
        """Estimated bytes of a vector-quantized layer as the estimate's LayerParts (analysis/estimate.py hands
        in `shared_parts(stats, sparsity, k)`, the clustered-layer estimate, and the LayerParts class).

        binary, pq and rq: the paper's formula (codes log2 k bits, 32-bit codebooks; their codes are close to
        uniform, so the file bit-packs them) plus the section header; kmeans: its indices are entropy coded like
        a clustered layer's, so the cluster estimate (pruned zeros included) applies."""
        from complab.storage.vq_section import code_bits, sizes

        if "quantizer" not in quantizer:  # another step's storage (the int step's integer levels)
            return None
        method, k = quantizer["quantizer"], int(quantizer["n_codewords"])
        if method == "kmeans":
            return shared_parts(stats, sparsity, k)
        floats, codes, alphabet = sizes(method, stats.shape or (stats.numel,), k,
                                        int(quantizer.get("segment_length") or 0), int(quantizer.get("stages") or 1),
                                        quantizer.get("axis") or "in")
        # formula_bits = codes * code_bits + 32 * floats: the codes and the codebooks as two parts
        return make_parts(stats.numel, stats.numel, header=header, codebook=floats * 4,
                          codes=codes * code_bits(alphabet) / 8, encoding="vq")
