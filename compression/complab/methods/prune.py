"""Magnitude pruning (Han et al. 2015) with masks kept through fine-tuning, pruned and re-trained iteratively.

Per layer, the weights of smallest magnitude are set to zero. A fixed fraction per layer (the plan's
`sparsity`) is the same as Han et al.'s threshold "quality factor x the layer's weight std" with the
factor chosen to hit that fraction. The mask is a parametrization (weight = original * mask), so
the pruned weights receive no gradient and stay exactly zero while the rest are fine-tuned.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from complab.layermap import resolve_all
from complab.methods.context import StepContext, StepResult, layer_weight, weight_ref
from complab.methods.registry import handler
from complab.models.params import bake
from complab.steps.prune import PruneStep


class Mask(nn.Module):
    """weight -> weight * mask (the mask is a buffer, not trained)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask (weight's dtype) that zeroes the round(sparsity * n) smallest |w| (ties broken by position).

    The threshold is the k-th smallest magnitude (a selection, linear time: a stable sort of VGG's 38M-weight
    fc6 took 5x longer); weights equal to it are pruned in position order, as a stable sort would."""
    n_prune = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight)
    if n_prune <= 0:
        return mask
    magnitude = weight.detach().abs().flatten()
    if magnitude.dtype in (torch.float16, torch.bfloat16):
        magnitude = magnitude.float()  # exact; kthvalue has no half-precision CPU kernel
    threshold = torch.kthvalue(magnitude, min(n_prune, magnitude.numel())).values
    below = magnitude < threshold
    tied = torch.nonzero(magnitude == threshold).flatten()
    flat = mask.view(-1)
    flat[below] = 0
    flat[tied[: n_prune - int(below.sum())]] = 0
    return mask


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Register a Mask parametrization on each layer's weight (replacing an earlier one)."""
    for layer, mask in masks.items():
        module, attribute = weight_ref(model, layer)
        if parametrize.is_parametrized(module, attribute):
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
        parametrize.register_parametrization(module, attribute, Mask(mask))


@handler(PruneStep)
def run(model: nn.Module, step: PruneStep, ctx: StepContext) -> StepResult:
    """Prune to each layer's target in `step.iterations` rounds, fine-tuning with masks after each."""
    targets = resolve_all(step.sparsity, ctx.layers)
    targets = {layer: float(s) for layer, s in targets.items() if s > 0}
    if not targets:
        ctx.log("prune: no layer has a sparsity above 0; nothing to do")
        return StepResult()
    for round_index in range(1, step.iterations + 1):
        # Sparsity ramps up geometrically in the kept fraction: each round removes the same share of
        # what is left, which Han et al.'s iterative schedule approximates.
        fraction = round_index / step.iterations
        masks = {}
        for layer, target in targets.items():
            weight = layer_weight(model, layer)
            current = 1.0 - (1.0 - target) ** fraction
            masks[layer] = magnitude_mask(weight, current)
        bake(model)
        apply_masks(model, masks)
        stage = f"prune round {round_index}/{step.iterations}"
        ctx.emit(stage, 0.0)
        ctx.finetune(model, step.finetune_epochs, step.lr, ctx.seed + step.seed + round_index, stage, ema=step.ema)
        ctx.check_cancelled()
    bake(model)
    achieved = {}
    for layer in targets:
        weight = layer_weight(model, layer)
        achieved[layer] = 1.0 - float(torch.count_nonzero(weight)) / weight.numel()
    ctx.log("prune: sparsity " + ", ".join(f"{k}={v:.3f}" for k, v in achieved.items()))
    return StepResult({"sparsity": achieved})
