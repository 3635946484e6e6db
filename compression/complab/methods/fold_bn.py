"""Fold batch norm into the convolutions of a YOLO detector (a plan's `fold_bn` step), exactly.

Ultralytics' own inference-time fusion (`DetectionModel.fuse`): each Conv's batch norm becomes a
per-channel scale on its weight and a bias, so pruned zeros stay zero and outputs are unchanged up
to float rounding. The compact file records `fused` and the decoder fuses the rebuilt model before
loading. Classifiers are refused: their batch norms sit in arbitrary places in the graph.
"""

from __future__ import annotations

from torch import nn

from complab.errors import PlanError
from complab.methods.context import StepContext, StepResult
from complab.methods.registry import handler
from complab.models.compact import Products
from complab.models.params import bake
from complab.steps.fold_bn import FoldBNStep


@handler(FoldBNStep)
def run(model: nn.Module, step: FoldBNStep, ctx: StepContext) -> StepResult:
    if not ctx.task.kind.folds_batch_norm:
        raise PlanError("fold_bn: folding batch norm is implemented for YOLO detectors; remove the step for this "
                        "model")
    from complab.models.detector import fuse

    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bake(model)  # plain weights (a pruned model's masks are already baked)
    fuse(model)
    ctx.log(f"fold_bn: {count} batch norms folded into their convolutions")
    return StepResult({"folded": count}, Products(folded_bn=True))
