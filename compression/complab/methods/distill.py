"""Knowledge distillation (Hinton et al. 2015): the original model teaches the compressed one while it fine-tunes.

The loss mixes the hard-label cross-entropy with the KL divergence between the teacher's and the
student's logits softened by a temperature T (scaled by T^2 so its gradients keep their size as T
changes): loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).
Hu et al. (2018) fine-tune each channel-pruned layer this way. A plan with a distill step uses this
loss for every fine-tuning in the plan (the pipeline calls `use_teacher` before the first step), so
it works after any method; the step itself then fine-tunes `epochs` more where it stands, with the
weights that are exactly zero kept at zero (a pruned model stays pruned).
"""

from __future__ import annotations

from torch import nn

from complab.errors import PlanError
from complab.methods.context import StepContext, StepResult
from complab.methods.finetune import kd_loss, make_kd_loss  # noqa: F401 - the loss (in finetune.py), named here too
from complab.methods.prune import apply_masks
from complab.methods.registry import handler
from complab.metrics import weight_layers
from complab.models.params import bake
from complab.plan import DistillStep

# its own random stream (data order) for the distillation epochs, apart from the plan's base seed that
# other steps draw from; the value is arbitrary but fixed (changing it changes every distilled result)
DISTILL_FINETUNE_SEED = 7


def use_teacher(ctx: StepContext, step: DistillStep, teacher: nn.Module) -> None:
    """Make every later fine-tuning in `ctx` distil from `teacher` (the original model): the task's training
    loop distils its own way (a classifier: the loss above; a detector: methods/detect_train.py)."""
    ctx.task.distil_from(teacher, step.temperature, step.alpha, step.features, step.feature_temperature)


@handler(DistillStep)
def run(model: nn.Module, step: DistillStep, ctx: StepContext) -> StepResult:
    """Fine-tune `model` with the KD loss for `step.epochs`, keeping zero weights at zero."""
    if ctx.teacher is None:
        raise PlanError("distill: no teacher model was given: run the plan through complab.pipeline.compress")
    if not ctx.task.distilling:
        use_teacher(ctx, step, ctx.teacher)
    if step.epochs <= 0:
        return StepResult({"temperature": step.temperature, "alpha": step.alpha, "epochs": 0})

    masks = {}
    for layer, param in weight_layers(model).items():  # keep a pruned model pruned through the extra epochs
        if bool((param == 0).any()):
            masks[layer] = (param != 0).to(param.dtype).detach()
    apply_masks(model, masks)
    try:
        ctx.finetune(model, step.epochs, step.lr, ctx.seed + step.seed + DISTILL_FINETUNE_SEED, "distill")
    finally:
        bake(model)
    return StepResult({"temperature": step.temperature, "alpha": step.alpha, "epochs": step.epochs,
                       "masked_layers": len(masks)})
