"""Vector quantization of weights (Gong, Liu, Yang, Bourdev 2014, arXiv 1412.6115), per layer.

The paper compresses a dense layer's W (m x n, 32-bit floats) by:
- binarization: the sign of each weight, one bit (rate 32). The scale is our reading: a bare +-1 would
  change the layer's output magnitude, so the layer keeps one float alpha = mean |w|, the scale that
  minimises ||W - alpha sign(W)||^2; the codes are sign(w) (w >= 0 -> +alpha);
- scalar k-means: k shared values, log2 k bits per weight (the exact 1-D k-means of kmeans1d.py,
  which the kmeans_speed benchmark shows faster than sklearn and at the optimum);
- product quantization: W split into segments of s columns, k-means (k codewords of length s) on the
  rows of each segment, log2 k bits per row and segment (batched PyTorch k-means, which
  benchmarks/pq_speed.py measured faster than faiss's ProductQuantizer at the same error);
- residual quantization: t stages of k codewords of full row length, each stage quantizing what the
  earlier ones left (faiss's ResidualQuantizer, beam-searched codes).

Beyond the paper, a convolution's weight (out, in, kh, kw) is quantized as its (out, in*kh*kw)
matrix: the im2col matrix the convolution multiplies patches by, so the layer is a linear map of
the same shape the paper analyses; a segment of s = kh*kw columns is then exactly one input
channel's spatial kernel. `axis` "in" (the paper's) makes the vectors the rows (one output unit's
fan-in); "out" the columns (one input's fan-out), which pays when the layer has fewer outputs than
inputs: PQ's codebooks cost 32 k n bits and the codes m n log2(k) / s, so more, shorter vectors win.

After quantization the codebooks are fine-tuned with the codes fixed (the weight is a
parametrization of the codebook, so autograd sums each codeword's gradient over the weights that
use it, as Deep Compression does for shared values), through ctx.finetune so it runs on any task.
The baked weight is built by storage.vq_section.reconstruct, the decoder's own function, so the
file decodes to exactly the in-memory model; the structures (weight tensor name -> Quantized) go
back in the step's result and compress hands them to the compact-file writer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from complab.errors import PlanError
from complab.methods.context import StepContext, StepResult, get_module, weight_ref
from complab.methods.kmeans1d import kmeans_1d
from complab.methods.registry import handler
from complab.models.compact import Products
from complab.models.params import bake
from complab.steps.quantize import QuantizeStep, check_layer
from complab.storage.vq_section import Quantized, formula_bits, matrix_dims, reconstruct

# its own random stream (data order) for fine-tuning the codebooks: offset past the prune step's rounds
# (seed + 1, 2, ...) and the cluster step's SHARED_VALUE_FINETUNE_SEED (1000), so no two fine-tunings
# of one plan replay the same batches
CODEBOOK_FINETUNE_SEED = 2000


def _vectors(weight: np.ndarray, axis: str) -> np.ndarray:
    """The weight's matrix view (vectors as rows), float32 contiguous."""
    matrix = weight.reshape(weight.shape[0], -1)
    return np.ascontiguousarray(matrix if axis == "in" else matrix.T, dtype=np.float32)


def _nearest(x: torch.Tensor, codebook: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """Per segment j, the index of the codeword of codebook[j] nearest to each x[j] row: (M, N, s), (M, k, s)."""
    segments, n, _ = x.shape
    k = codebook.shape[1]
    out = torch.empty(segments, n, dtype=torch.long)
    step = max(1, chunk // max(1, n * k))
    norms = (codebook ** 2).sum(-1)  # (M, k)
    for start in range(0, segments, step):
        xs, cs = x[start:start + step], codebook[start:start + step]
        distance = norms[start:start + step, None, :] - 2 * torch.bmm(xs, cs.transpose(1, 2))
        out[start:start + step] = distance.argmin(-1)
    return out


def product_quantize(matrix: np.ndarray, segment_length: int, n_codewords: int, iterations: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook (segments, k, s) float32, codes (vectors, segments)): k-means on every segment at once.

    PyTorch, not faiss: benchmarks/pq_speed.py measured this 1.2-2.0x faster than faiss's
    ProductQuantizer on a 4096 x 4096 matrix (s = 4, k = 256, 25 iterations) at the same error (faiss
    trains the segments one after another; here one batched matrix product serves all of them).
    On small matrices faiss is the faster one (3.8x at 512 x 256), where both take under a second.
    Lloyd's algorithm from k distinct random vectors per segment (seeded), `iterations` steps; an
    empty cluster keeps its codeword; the codes are the nearest codewords of the final codebook.
    """
    vectors, dim = matrix.shape
    segments = -(-dim // segment_length)
    padded = np.zeros((vectors, segments * segment_length), dtype=np.float32)
    padded[:, :dim] = matrix
    xs = torch.from_numpy(padded).view(vectors, segments, segment_length).transpose(0, 1).contiguous()
    generator = torch.Generator().manual_seed(seed)
    starts = torch.stack([torch.randperm(vectors, generator=generator)[:n_codewords] for _ in range(segments)])
    codebook = xs[torch.arange(segments)[:, None], starts].clone()  # (M, k, s)
    ones = torch.ones(segments, vectors)
    for _ in range(iterations):
        codes = _nearest(xs, codebook)
        sums = torch.zeros_like(codebook).scatter_add_(1, codes[..., None].expand(-1, -1, segment_length), xs)
        counts = torch.zeros(segments, n_codewords).scatter_add_(1, codes, ones)
        filled = counts > 0
        codebook[filled] = sums[filled] / counts[filled][:, None]
    codes = _nearest(xs, codebook)
    return codebook.numpy(), np.ascontiguousarray(codes.T.numpy())


def residual_quantize(matrix: np.ndarray, stages: int, n_codewords: int, iterations: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook (t, k, dim) float32, codes (vectors, t)) by faiss's ResidualQuantizer (beam search)."""
    import faiss

    vectors, dim = matrix.shape
    nbits = int(np.log2(n_codewords))
    rq = faiss.ResidualQuantizer(dim, stages, nbits)
    rq.cp.niter = iterations
    rq.cp.seed = seed
    rq.cp.min_points_per_centroid = 1
    rq.train_type = faiss.ResidualQuantizer.Train_default  # (progressive-dim needs a PCA: rows >= dim)
    rq.verbose = False
    rq.train(matrix)
    codebook = faiss.vector_to_array(rq.codebooks).reshape(stages, n_codewords, dim).astype(np.float32)
    packed = rq.compute_codes(matrix)  # code_size bytes per vector, stage codes of nbits each, LSB first
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :stages * nbits].reshape(vectors, stages, nbits)
    codes = (bits.astype(np.int64) << np.arange(nbits, dtype=np.int64)).sum(-1)
    return codebook, codes


def quantize_weight(weight: torch.Tensor, settings: dict, iterations: int = 25, seed: int = 0) -> Quantized:
    """The quantizer's codebook and codes for one weight (settings: QuantizeStep.layer_settings)."""
    w = weight.detach().cpu().to(torch.float32).numpy()
    shape = tuple(w.shape)
    method, k = settings["quantizer"], int(settings["n_codewords"])
    if method == "binary":
        scale = np.float32(np.abs(w).mean(dtype=np.float64))
        return Quantized("binary", shape, 2, np.array([scale], dtype=np.float32), (w >= 0).astype(np.int64).ravel())
    if method == "kmeans":
        flat = w.ravel()
        nonzero = flat != 0
        zero_code = not nonzero.all()  # pruned zeros stay exact zeros (code k), not clustered
        codes = np.full(flat.size, k, dtype=np.int64)
        codebook = np.zeros(k, dtype=np.float32)
        if nonzero.any():
            centroids, labels = kmeans_1d(flat[nonzero], k, init="linear", seed=seed)
            codebook[:centroids.size] = centroids.astype(np.float32)
            if centroids.size < k:  # fewer distinct values than k: pad with copies of the last value
                codebook[centroids.size:] = codebook[centroids.size - 1]
            codes[nonzero] = labels
        return Quantized("kmeans", shape, k, codebook, codes, zero_code=zero_code)
    axis = settings["axis"]
    matrix = _vectors(w, axis)
    if method == "pq":
        s = int(settings["segment_length"])
        codebook, codes = product_quantize(matrix, s, k, iterations, seed)
        return Quantized("pq", shape, k, codebook, codes, segment_length=s, axis=axis)
    if method == "rq":
        t = int(settings["stages"])
        codebook, codes = residual_quantize(matrix, t, k, iterations, seed)
        return Quantized("rq", shape, k, codebook, codes, stages=t, axis=axis)
    raise PlanError(f"quantizer {method!r} is unknown: use binary, kmeans, pq or rq")


class CodebookWeight(nn.Module):
    """Parametrization codebook -> weight with the codes fixed (buffers); the same composition as reconstruct."""

    def __init__(self, q: Quantized, device: torch.device) -> None:
        super().__init__()
        self.method, self.shape, self.axis, self.zero_code = q.method, q.shape, q.axis, q.zero_code
        self.register_buffer("codes", torch.as_tensor(np.asarray(q.codes), dtype=torch.long, device=device))
        self.register_buffer("initial", torch.as_tensor(q.codebook, dtype=torch.float32, device=device).clone())

    def forward(self, codebook: torch.Tensor) -> torch.Tensor:
        if self.method == "binary":
            return torch.where(self.codes.view(self.shape) == 1, codebook[0], -codebook[0])
        if self.method == "kmeans":
            table = torch.cat([codebook, codebook.new_zeros(1)]) if self.zero_code else codebook
            return table[self.codes].view(self.shape)
        vectors, dim = matrix_dims(self.shape, self.axis)
        if self.method == "pq":
            segments = codebook.shape[0]
            picked = codebook[torch.arange(segments, device=codebook.device)[None, :], self.codes]  # (N, M, s)
            matrix = picked.reshape(vectors, -1)[:, :dim]
        else:
            matrix = codebook[0][self.codes[:, 0]]
            for stage in range(1, codebook.shape[0]):
                matrix = matrix + codebook[stage][self.codes[:, stage]]
        if self.axis == "out":
            matrix = matrix.T
        return matrix.reshape(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self.initial.clone()


def relative_error(weight: np.ndarray, quantized: np.ndarray) -> float:
    """sum((w - q)^2) / sum(w^2): the reconstruction error the paper's quantizers minimise."""
    energy = float((weight.astype(np.float64) ** 2).sum()) or 1.0
    return float(((weight.astype(np.float64) - quantized) ** 2).sum()) / energy


@handler(QuantizeStep)
def run(model: nn.Module, step: QuantizeStep, ctx: StepContext) -> StepResult:
    """Quantize every layer the step reaches, fine-tune the codebooks, bake; the structures go in the result."""
    chosen = {layer: settings for layer in ctx.layers if (settings := step.layer_settings(layer)) is not None}
    packed = [layer for layer in chosen if weight_ref(model, layer)[1] != "weight"]
    if packed:  # the compact file's vq sections are keyed by `<layer>.weight`
        ctx.log(f"quantize: {', '.join(packed)} left as they are (attention in_proj weights are not vector-quantized; "
                "prune or cluster them)")
        chosen = {layer: settings for layer, settings in chosen.items() if layer not in packed}
    if not chosen:
        ctx.log("quantize: no layer has a quantizer; nothing to do")
        return StepResult()
    for layer, settings in chosen.items():  # every layer checked before any work starts
        weight = get_module(model, layer).weight
        if weight.dtype != torch.float32:
            raise PlanError(f"layer {layer!r} holds {weight.dtype} weights: vector quantization stores float32 "
                            "codebooks; convert the model to float32 first")
        check_layer(layer, tuple(weight.shape), settings)
    bake(model)
    structures: dict[str, Quantized] = {}
    report: dict[str, dict] = {}
    for index, (layer, settings) in enumerate(chosen.items()):
        ctx.emit("quantize", index / len(chosen), layer=layer)
        module = get_module(model, layer)
        q = quantize_weight(module.weight, settings, step.kmeans_iterations, ctx.seed + step.seed)
        original = module.weight.detach().cpu().numpy()
        structures[layer] = q
        report[layer] = {**q.layout(), "error_before_finetune": relative_error(original, reconstruct(q))}
        parametrize.register_parametrization(module, "weight", CodebookWeight(q, module.weight.device), unsafe=True)
        ctx.check_cancelled()
    ctx.finetune(model, step.finetune_epochs, step.lr, ctx.seed + step.seed + CODEBOOK_FINETUNE_SEED,
                 "fine-tune codebooks")
    stored: dict[str, Quantized] = {}  # weight tensor name -> codebooks + codes, for the file
    for layer, q in structures.items():
        module = get_module(model, layer)
        trained = module.parametrizations.weight.original.detach().cpu().to(torch.float32).numpy()
        q.codebook = (trained + np.float32(0.0)).astype(np.float32)  # no -0.0 codewords (the file stores +0.0)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(reconstruct(q)))  # the decoder's own function: bit-exact
        stored[f"{layer}.weight"] = q
        bits = formula_bits(q.method, q.shape, q.n_codewords, q.segment_length, q.stages, q.axis, q.zero_code)
        report[layer].update({"formula_bits": bits, "formula_ratio": 32 * int(np.prod(q.shape)) / bits})
    ctx.log("quantize: " + ", ".join(f"{layer}={row['method']}(k={row['n_codewords']}) "
                                     f"{row['formula_ratio']:.1f}x" for layer, row in report.items()))
    return StepResult({"layers": report}, Products(vq_structures=stored))
