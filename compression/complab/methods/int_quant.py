"""Uniform integer quantization (the int step): symmetric weight levels on a per-channel (or per-tensor) scale,
GPTQ-style rounding, batch norm folded first, static 8-bit activations and quantization-aware fine-tuning.

A layer of b bits stores integer levels in [-(2**(b-1) - 1), 2**(b-1) - 1] (symmetric: no zero point, so a pruned
zero is level 0 and stays exactly zero) and one float32 scale per output channel; the weight is
`scales[c] * levels`, computed in float32 the same way by the step, the decoder and the ONNX export.

The step (`run`), in this order:
1. batch norm is folded into the quantized convolutions it directly follows, so the levels are the weights that
   run (a runtime folds BN before it quantizes). A classifier keeps its architecture (the decoder rebuilds it):
   conv.weight *= gamma / sqrt(var + eps) per output channel and the batch norm becomes a pure shift (weight 1,
   mean 0, var + eps == 1, bias = beta - gamma * mean / sqrt(var + eps)), frozen (`FoldedBatchNorm2d`: neither
   training mode nor a batch-norm re-estimation of a later fine-tuning can turn it back into a normalisation).
   The conv -> BN pairs come from a torch.fx trace (module order for a model fx cannot trace); the fold is
   checked on calibration images and undone if the outputs moved. A detector is fused as its fold_bn step does
   (Ultralytics' fusion; the file records `fused`), so a detector plan needs no fold_bn step before int.
2. layers are quantized one at a time in model order, each seeing its inputs from the already-quantized model
   (sequential GPTQ): the observer chooses the scales on the weights, then rounding is nearest or GPTQ (Frantar
   et al. 2023: the Hessian H = X^T X of the layer's inputs on calibration images, no labels; columns quantized
   in order of decreasing H diagonal with the error compensated on the not-yet-quantized columns through the
   Cholesky factor of H^-1, dampened by 1% of H's mean diagonal). The levels stay on the fixed per-channel scale
   grid; pruned zeros are masked out of the update and kept at level 0.
3. with activation_bits 8, each quantized Conv/Linear input gets a uint8 range (activation_observer on the same
   calibration images) and an actquant.ActivationQuant hook; the writer records the hooks' table in the meta.
4. finetune_epochs > 0: quantization-aware fine-tuning with fake-quantized weights (straight-through estimator,
   scales fixed at the observer's, pruned zeros masked) and the activation hooks in place, with the plan's KD
   loss when it distils; the final levels are the nearest on those scales.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from complab.methods.context import StepContext, StepResult, weight_ref
from complab.methods.registry import handler
from complab.models import actquant
from complab.models.compact import Products
from complab.models.params import bake
from complab.steps.int_quant import IntStep

# the one formula of the step, the decoder and the export lives on the ground floor (storage may not import methods)
from complab.storage.int_section import IntWeights, dequantize, level_range  # noqa: F401 - this module's names too

OBSERVER_GRID = 100  # the mse observer tries this many clipping ratios of the channel's max |w|


def _rows(weight: torch.Tensor, granularity: str) -> torch.Tensor:
    """The weight as [scales, values per scale] (one row per output channel, or one row)."""
    flat = weight.detach().float()
    return flat.reshape(1, -1) if granularity == "tensor" else flat.reshape(flat.shape[0], -1)


def choose_scales(weight: torch.Tensor, bits: int, granularity: str = "channel", observer: str = "mse",
                  percentile: float = 99.99) -> torch.Tensor:
    """One float32 scale per output channel ([out]) or per tensor ([1]) from the weights' range.

    minmax: max |w| / qmax; percentile: the `percentile`-th percentile of |w| / qmax; mse: the clipping ratio (of
    OBSERVER_GRID in (0, 1]) whose rounded weights are closest to the original in squared error, per row."""
    rows = _rows(weight, granularity)
    qmax = level_range(bits)
    top = rows.abs().amax(dim=1)
    if observer == "percentile" and rows.shape[1] > 1:
        top = torch.quantile(rows.abs(), min(percentile, 100.0) / 100.0, dim=1)
    elif observer == "mse":
        best_error = torch.full_like(top, float("inf"))
        best = top.clone()
        for step in range(OBSERVER_GRID, 0, -1):
            ratio = step / OBSERVER_GRID
            scale = (top * ratio / qmax).clamp_min(torch.finfo(torch.float32).tiny)
            rounded = (rows / scale[:, None]).round().clamp(-qmax, qmax) * scale[:, None]
            error = ((rounded - rows) ** 2).sum(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best = torch.where(better, top * ratio, best)
        top = best
    scales = top / qmax
    # an all-zero row (a pruned-away channel) keeps scale 1: its levels are 0 whatever the scale
    return torch.where(scales > 0, scales, torch.ones_like(scales)).to(torch.float32)


def quantize_levels(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest integer levels (int8, the weight's shape) of `weight` on `scales` (per row of _rows)."""
    qmax = level_range(bits)
    granularity = "tensor" if scales.numel() == 1 and weight.shape[0] != 1 else "channel"
    rows = _rows(weight, granularity)
    levels = (rows / scales.reshape(-1, 1).to(rows.device)).round().clamp(-qmax, qmax)
    return levels.reshape(weight.shape).to(torch.int8)


def quantize_weight(weight: torch.Tensor, bits: int, granularity: str = "channel", observer: str = "mse",
                    percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels int8 in the weight's shape, scales float32 [out] or [1]): nearest rounding on the observer's scale."""
    scales = choose_scales(weight, bits, granularity, observer, percentile)
    return quantize_levels(weight, scales, bits), scales


# ------------------------------------------------------------------------------------------- the int step

GPTQ_DAMP = 0.01  # dampening of H: this share of its mean diagonal (Frantar et al.'s default)
GPTQ_BLOCK = 128  # columns updated lazily per block (Frantar et al.'s; the result is the same for any block)
CALIBRATION_BATCH = 16  # images per calibration forward pass (a detector's statistics batches are 16 too)
ACTIVATION_SAMPLES = 1 << 16  # per calibration batch, this many input values (at most) feed the range observer
FOLD_TOLERANCE = 1e-4  # a fold whose outputs move more than this (relative, on calibration images) is undone
# gptq with 8-bit activations: the layer's input range is calibrated first and its H measured on the quantized
# inputs (True), or both on one pass of the unquantized inputs (False); measured on the demo VGG, see tests
ACTIVATIONS_FIRST = True
QAT_SEED = 3000  # its own random stream for the quantization-aware epochs (prune: +1.., cluster 1000, vq 2000)


class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A batch norm folded into the convolution before it: a pure per-channel shift (weight 1, mean 0, var + eps
    == 1) that stays in eval mode and keeps its statistics, so a later fine-tuning neither normalises with batch
    statistics nor re-estimates them (which would undo the fold). Its state dict is a BatchNorm2d's, so the
    decoder's plain BatchNorm2d computes the same."""

    def train(self, mode: bool = True) -> FoldedBatchNorm2d:
        return super().train(False)

    def reset_running_stats(self) -> None:
        return None  # bn_stats.reestimate resets, then averages eval-mode passes: the folded statistics stay


class _Stop(Exception):
    """Raised by a capture hook once the layer's input is seen: the rest of the forward pass is not needed."""


class LayerInputs:
    """What a layer's inputs over the calibration images give: H = sum x x^T of the GPTQ columns (float64), the
    input's min and max and a seeded sample of its values (the activation observer's)."""

    def __init__(self, module: nn.Module, hessian: bool, values: bool, seed: int = 0) -> None:
        self.module, self.hessian, self.values = module, hessian, values
        self.H: torch.Tensor | None = None
        self.rows = 0
        self.low, self.high = math.inf, -math.inf
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if self.values:
            flat = x.flatten().float().cpu()
            self.low, self.high = min(self.low, float(flat.min())), max(self.high, float(flat.max()))
            if flat.numel() > ACTIVATION_SAMPLES:
                flat = flat[torch.randint(flat.numel(), (ACTIVATION_SAMPLES,), generator=self.generator)]
            self.samples.append(flat)
        if self.hessian:
            columns = gptq_columns(self.module, x)
            gram = (columns.T @ columns).double()
            self.H = gram if self.H is None else self.H + gram
            self.rows += columns.shape[0]
        raise _Stop


def gptq_able(module: nn.Module, attribute: str) -> bool:
    """Whether GPTQ can see this layer's inputs as columns of its weight matrix: a Linear, or a Conv2d of one group
    with zero padding (im2col); other layers round to nearest."""
    if attribute != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def gptq_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of its weight matrix's columns: [rows, in] (Linear) or the im2col patches
    [images * positions, in * kh * kw] of a convolution (F.unfold's order is the weight's (in, kh, kw))."""
    x = x.float()
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module.padding, str):  # "same" / "valid": the explicit padding the conv applies
        pad = [0, 0] if module.padding == "valid" else [d * (k - 1) // 2 for d, k in
                                                       zip(module.dilation, module.kernel_size, strict=True)]
    else:
        pad = list(module.padding)
    patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@torch.no_grad()
def layer_inputs(model: nn.Module, module: nn.Module, batches: list[torch.Tensor], *, hessian: bool,
                 values: bool, seed: int = 0) -> LayerInputs:
    """Run the calibration batches through `model` up to `module` (stopping there) and gather its inputs."""
    seen = LayerInputs(module, hessian, values, seed)
    handle = module.register_forward_pre_hook(seen)  # after any activation hook: it sees the quantized input
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for images in batches:
            try:
                model(images.to(device))
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


def gptq_levels(weight: torch.Tensor, H: torch.Tensor, scales: torch.Tensor, bits: int,
                keep: torch.Tensor | None = None, damp: float = GPTQ_DAMP, block: int = GPTQ_BLOCK,
                act_order: bool = True) -> torch.Tensor:
    """GPTQ's rounding of `weight` (any shape, rows = output channels) on a fixed scale grid: int8 levels.

    Columns (of the [out, cols] matrix) are quantized in order (of decreasing H diagonal with act_order), each
    column's error divided by the Cholesky factor's diagonal and subtracted from the not-yet-quantized columns in
    proportion to the upper Cholesky factor of H^-1, as in Frantar et al. 2023 (their Algorithm 1, lazy blocks).
    Positions where `keep` is False (pruned zeros) get level 0 whatever the updates moved them to, and that move
    is compensated like any rounding error (SparseGPT's handling of a fixed mask, Frantar & Alistarh 2023):
    dropping the updates there instead left the kept weights' compensation wrong, worse than nearest on
    correlated inputs (tests/test_int_quant.py)."""
    qmax = level_range(bits)
    shape = weight.shape
    W = weight.detach().reshape(shape[0], -1).double().clone()
    rows, cols = W.shape
    keep_mask = (torch.ones_like(W, dtype=torch.bool) if keep is None else keep.reshape(rows, cols).bool())
    W = W * keep_mask
    H = H.double().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(cols)
    W, keep_mask, H = W[:, perm], keep_mask[:, perm], H[perm][:, perm]
    s = scales.double().reshape(-1, 1).expand(rows, 1)
    mean_diag = float(torch.diagonal(H).mean())
    for attempt in range(6):  # an ill-conditioned H (few images, dead inputs) gets more dampening
        damped = H + (damp * 10 ** attempt) * mean_diag * torch.eye(cols, dtype=H.dtype)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            Hinv, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                break
    else:
        return quantize_levels(weight * keep_mask[:, torch.argsort(perm)].reshape(shape), scales, bits)
    Q = torch.zeros_like(W)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        W1 = W[:, start:end].clone()
        K1 = keep_mask[:, start:end]
        E1 = torch.zeros_like(W1)
        H1 = Hinv[start:end, start:end]
        for i in range(end - start):
            w = W1[:, i]
            q = torch.clamp(torch.round(w / s[:, 0]), -qmax, qmax) * K1[:, i]
            Q[:, start + i] = q
            error = (w - q * s[:, 0]) / H1[i, i]
            W1[:, i:] -= error[:, None] * H1[i, i:][None, :]
            E1[:, i] = error
        W[:, end:] -= E1 @ Hinv[start:end, end:]
    levels = Q[:, torch.argsort(perm)]
    return levels.reshape(shape).to(torch.int8)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, H: torch.Tensor) -> float:
    """The layer's output error on its calibration inputs relative to its output: tr(D H D^T) / tr(W H W^T),
    D = quantized - weight (H = sum x x^T, undamped)."""
    W = weight.detach().reshape(weight.shape[0], -1).double()
    D = quantized.detach().reshape(W.shape).double() - W
    H = H.double()
    total = float(((W @ H) * W).sum())
    return float(((D @ H) * D).sum()) / total if total > 0 else 0.0


def activation_range(seen: LayerInputs, observer: str, percentile: float) -> tuple[float, float]:
    """The (low, high) a uint8 activation quantizer covers: minmax the whole range; percentile the sample's
    (100 - p)th and p-th percentiles; mse the clipping of [min, max] (OBSERVER_GRID ratios of each side's
    reach) whose fake-quantized sample is closest in squared error."""
    low, high = min(seen.low, 0.0), max(seen.high, 0.0)
    if observer == "minmax" or not seen.samples:
        return low, high
    sample = torch.cat(seen.samples)
    if observer == "percentile":
        q = torch.quantile(sample, torch.tensor([1.0 - percentile / 100.0, percentile / 100.0]))
        return min(float(q[0]), 0.0), max(float(q[1]), 0.0)
    best, best_error = (low, high), math.inf
    for step in range(OBSERVER_GRID, 0, -1):
        ratio = step / OBSERVER_GRID
        scale, zero_point = actquant.qparams(low * ratio, high * ratio)
        fake = torch.fake_quantize_per_tensor_affine(sample, scale, zero_point, actquant.QMIN, actquant.QMAX)
        error = float(((fake - sample) ** 2).sum())
        if error < best_error:
            best, best_error = (low * ratio, high * ratio), error
    return best


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@torch.no_grad()
def conv_bn_pairs(model: nn.Module, convs: set[str]) -> list[tuple[str, str]]:
    """(conv, batch norm) module names where the batch norm directly follows one of `convs` and reads nothing
    else, from a torch.fx trace; for a model fx cannot trace, a Conv2d and the BatchNorm2d right after it in module
    order (the caller checks the fold on images and undoes it if it was not the graph's pair)."""
    modules = dict(model.named_modules())

    def foldable(conv_name: str, bn_name: str) -> bool:
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and conv_name in convs
                and bn.num_features == conv.out_channels and bn.affine and bn.track_running_stats
                and bn.running_mean is not None)

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any model fx cannot trace (data-dependent control flow): module order
        names = list(modules)
        return [(a, b) for a, b in zip(names, names[1:], strict=False) if foldable(a, b)]
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if (source.op == "call_module" and len(source.users) == 1 and calls.get(source.target) == 1
                and calls.get(node.target) == 1 and len(node.args) == 1 and foldable(source.target, node.target)):
            pairs.append((source.target, node.target))
    return pairs


def _identity_variance(eps: float) -> torch.Tensor:
    """The float32 running variance v with v + eps == 1 exactly (so the folded batch norm divides by 1)."""
    one = torch.tensor(1.0, dtype=torch.float32)
    eps32 = torch.tensor(eps, dtype=torch.float32)
    variance = one - eps32
    for _ in range(4):
        total = variance + eps32
        if total == one:
            break
        variance = torch.nextafter(variance, -one if total > one else 2 * one)
    return variance


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` into `conv`'s weight (and bias), leaving `bn` a frozen per-channel shift (FoldedBatchNorm2d)."""
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    factor = bn.weight.double() / std
    conv.weight.copy_((conv.weight.double() * factor.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
    shift = bn.bias.double() - factor * bn.running_mean.double()
    if conv.bias is not None:
        conv.bias.copy_((conv.bias.double() * factor).to(conv.bias.dtype))
    bn.bias.copy_(shift.to(bn.bias.dtype))
    bn.weight.fill_(1.0)
    bn.running_mean.zero_()
    bn.running_var.fill_(float(_identity_variance(bn.eps)))
    bn.__class__ = FoldedBatchNorm2d
    bn.eval()


@torch.no_grad()
def fold_batch_norms(model: nn.Module, convs: set[str], check: torch.Tensor | None = None) -> int:
    """Fold every batch norm that directly follows one of `convs` (conv_bn_pairs); the number folded. With `check`
    images, a fold that moves the model's outputs more than FOLD_TOLERANCE (relative) is undone (0)."""
    pairs = conv_bn_pairs(model, convs)
    if not pairs:
        return 0
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    before = _outputs(model, check) if check is not None else None
    for conv_name, bn_name in pairs:
        fold_into_conv(model.get_submodule(conv_name), model.get_submodule(bn_name))
    if before is not None:
        after = _outputs(model, check)
        if any(_relative(a, b) > FOLD_TOLERANCE for a, b in zip(after, before, strict=True)):
            model.load_state_dict(saved)
            for _, bn_name in pairs:
                model.get_submodule(bn_name).__class__ = nn.BatchNorm2d
            return 0
    return len(pairs)


def _outputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The model's output tensors on `images` (a detector returns a tuple of them)."""
    model.eval()
    out = model(images)
    stack = [out]
    tensors = []
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            tensors.append(item.detach().float())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return tensors


class FakeQuant(nn.Module):
    """weight -> scales * levels with a straight-through estimator: the rounding passes gradients through, the
    clamp to [-qmax, qmax] does not; pruned positions (keep 0) stay exactly zero and take no gradient."""

    def __init__(self, scales: torch.Tensor, bits: int, keep: torch.Tensor, weight_dim: int) -> None:
        super().__init__()
        shape = (-1,) + (1,) * (weight_dim - 1) if scales.numel() > 1 else (1,) * weight_dim
        self.register_buffer("scales", scales.reshape(shape).clone())
        self.register_buffer("keep", keep.clone())
        self.qmax = level_range(bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scaled = torch.clamp(weight / self.scales, -self.qmax, self.qmax)
        rounded = scaled + (torch.round(scaled) - scaled).detach()
        return rounded * self.scales * self.keep


def _tensor_name(layer: str, attribute: str) -> str:
    """The state-dict name of a layer's weight (`<layer>.weight`, or an attention block's `<module>.in_proj_weight`)."""
    return f"{layer}.{attribute}" if attribute == "weight" else f"{layer.rpartition('.')[0]}.{attribute}".lstrip(".")


def calibration_batches(ctx: StepContext, count: int, seed: int) -> list[torch.Tensor]:
    """`count` training images as the model reads them (no labels), in batches of CALIBRATION_BATCH."""
    batches = ctx.task.statistics_batches(math.ceil(count / CALIBRATION_BATCH), seed, CALIBRATION_BATCH)
    out, left = [], count
    for images in batches:
        if left <= 0:
            break
        out.append(images[:left])
        left -= len(out[-1])
    return out


@handler(IntStep)
def run(model: nn.Module, step: IntStep, ctx: StepContext) -> StepResult:
    """Fold batch norm, quantize each chosen layer's weights (observer + nearest or GPTQ rounding) in model order on
    the already-quantized model, calibrate 8-bit activations, fine-tune quantization-aware if asked; the levels and
    scales go to the file (Products.int_weights), the activation hooks stay on the model (the writer records them)."""
    started = time.time()
    chosen = {layer: settings for layer in ctx.layers if (settings := step.layer_settings(layer)) is not None}
    if not chosen:
        ctx.log("int: no layer has bits; nothing to do")
        return StepResult()
    bake(model)
    model.eval()
    products = Products()
    seed = ctx.seed + step.seed
    batches = calibration_batches(ctx, step.calibration_images, seed)
    images_used = sum(len(images) for images in batches)
    refs = {layer: weight_ref(model, layer) for layer in chosen}
    folded = 0
    if ctx.task.kind.folds_batch_norm:  # a detector: Ultralytics' own fusion, as its fold_bn step does
        from complab.models.detector import fuse

        folded = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        if folded:
            fuse(model)
            products.folded_bn = True
            refs = {layer: weight_ref(model, layer) for layer in chosen}
    else:
        convs = {layer for layer, (_, attribute) in refs.items() if attribute == "weight"}
        folded = fold_batch_norms(model, convs, batches[0][:8] if batches else None)
    if folded:
        ctx.log(f"int: {folded} batch norms folded into their convolutions")
    keep = {layer: getattr(module, attribute).detach() != 0 for layer, (module, attribute) in refs.items()}
    table: dict[str, tuple[float, int]] = {}
    layers_report: dict[str, dict] = {}
    scales_of: dict[str, torch.Tensor] = {}
    for index, (layer, settings) in enumerate(chosen.items()):
        ctx.emit("integer quantization", index / len(chosen), layer=layer)
        layer_started = time.time()
        module, attribute = refs[layer]
        weight = getattr(module, attribute)
        bits, granularity = settings["bits"], settings["granularity"]
        rounding = step.rounding_for(bits)
        if rounding == "gptq" and not (gptq_able(module, attribute) and batches):
            rounding = "nearest"  # (a grouped/depthwise convolution, an attention block's packed weight)
        quantize_input = (step.activation_bits == 8 and attribute == "weight" and batches
                          and isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d))
        hessian = gptq_able(module, attribute) and bool(batches)  # GPTQ's H, or the report's output error
        seen = None
        if quantize_input and (rounding != "gptq" or not ACTIVATIONS_FIRST):
            seen = layer_inputs(model, module, batches, hessian=hessian, values=True, seed=seed)
        elif quantize_input:  # activations first: GPTQ then sees the 8-bit inputs the layer will get
            seen = layer_inputs(model, module, batches, hessian=False, values=True, seed=seed)
            table[layer] = actquant.qparams(*activation_range(seen, step.activation_observer, step.percentile))
            actquant.install(model, table)
            seen = layer_inputs(model, module, batches, hessian=True, values=False, seed=seed)
        elif hessian:
            seen = layer_inputs(model, module, batches, hessian=True, values=False, seed=seed)
        if quantize_input and layer not in table:
            table[layer] = actquant.qparams(*activation_range(seen, step.activation_observer, step.percentile))
            actquant.install(model, table)
        scales = choose_scales(weight, bits, granularity, step.observer, step.percentile)
        original = weight.detach().clone()
        if rounding == "gptq":
            levels = gptq_levels(original, seen.H, scales, bits, keep[layer])
        else:
            levels = quantize_levels(original, scales, bits) * keep[layer].to(torch.int8)
        quantized = dequantize(levels, scales)
        with torch.no_grad():
            weight.copy_(quantized.to(weight.dtype))
        scales_of[layer] = scales
        row = {"bits": bits, "granularity": granularity, "rounding": rounding, "observer": step.observer,
               "weight_error": round(_relative(quantized, original) ** 2, 8)}
        if seen is not None and seen.H is not None:
            row["output_error"] = round(output_error(original, quantized, seen.H), 8)
        if layer in table:
            row["activation"] = [round(table[layer][0], 8), table[layer][1]]
        row["seconds"] = round(time.time() - layer_started, 3)
        layers_report[layer] = row
        ctx.check_cancelled()
    if step.finetune_epochs > 0:
        _quantization_aware(model, step, ctx, refs, scales_of, keep, chosen)
    int_weights = {}
    for layer, settings in chosen.items():
        module, attribute = refs[layer]
        weight = getattr(module, attribute)
        levels = quantize_levels(weight, scales_of[layer], settings["bits"]) * keep[layer].to(torch.int8)
        with torch.no_grad():
            weight.copy_(dequantize(levels, scales_of[layer]).to(weight.dtype))
        int_weights[_tensor_name(layer, attribute)] = IntWeights(levels.cpu(), scales_of[layer].cpu(),
                                                                 settings["bits"])
    products.int_weights = int_weights
    model.eval()
    ctx.log("int: " + ", ".join(f"{layer}={row['bits']}b {row['rounding']}" for layer, row in layers_report.items())
            + (f"; 8-bit activations at {len(table)} layers" if table else ""))
    report = {"layers": layers_report, "activation_bits": step.activation_bits if table else 0,
              "activation_observer": step.activation_observer if table else None,
              "calibration_images": images_used, "folded_bn": folded, "finetune_epochs": step.finetune_epochs,
              "scales": "fixed (observer's)" if step.finetune_epochs > 0 else None,
              "seconds": round(time.time() - started, 2)}
    return StepResult(report, products)


def _quantization_aware(model: nn.Module, step: IntStep, ctx: StepContext, refs: dict, scales_of: dict,
                        keep: dict, chosen: dict) -> None:
    """Fine-tune with fake-quantized weights (FakeQuant parametrizations, scales fixed) and the activation hooks
    installed; leaves the latent weights in place (the caller takes the nearest levels on the same scales)."""
    for layer, settings in chosen.items():
        module, attribute = refs[layer]
        weight = getattr(module, attribute)
        parametrize.register_parametrization(
            module, attribute, FakeQuant(scales_of[layer], settings["bits"], keep[layer].to(weight.dtype),
                                         weight.dim()))
    try:
        ctx.finetune(model, step.finetune_epochs, step.lr, ctx.seed + step.seed + QAT_SEED,
                     "quantization-aware fine-tuning")
    finally:
        for layer in chosen:
            module, attribute = refs[layer]
            if parametrize.is_parametrized(module, attribute):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
