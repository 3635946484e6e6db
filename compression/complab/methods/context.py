"""What every step handler receives (StepContext: data, the task, progress, cancellation) and returns (StepResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from complab.data import DataBundle
from complab.errors import CompressionLabError
from complab.methods import bn_stats
from complab.methods.task import ClassifierTask, Task
from complab.models.compact import Products


class Cancelled(CompressionLabError):
    """The run was cancelled by the user; nothing was written."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def weight_ref(model: nn.Module, layer: str) -> tuple[nn.Module, str]:
    """(module, attribute) holding a prunable layer's weight.

    A layer is named after its weight parameter less `.weight` (metrics.weight_layers); for a weight not
    called `weight`, such as nn.MultiheadAttention's packed `in_proj_weight` (ViT), the name is
    `<module>.in_proj`, and the weight is the module's `in_proj_weight` attribute.
    """
    module = None
    try:
        module = get_module(model, layer)
    except AttributeError:
        pass
    if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
        return module, "weight"
    parent, _, leaf = layer.rpartition(".")
    owner = get_module(model, parent)
    if not isinstance(getattr(owner, f"{leaf}_weight", None), torch.Tensor):
        raise CompressionLabError(f"layer {layer!r} has no weight ({type(module or owner).__name__}): "
                                  "use a layer name from the model's prunable layers")
    return owner, f"{leaf}_weight"


def layer_weight(model: nn.Module, layer: str) -> torch.Tensor:
    """A prunable layer's weight tensor (see weight_ref)."""
    module, attribute = weight_ref(model, layer)
    return getattr(module, attribute)


@dataclass
class StepResult:
    """What a step handler hands back: its report (for metrics.json) and what it made for the file."""

    report: dict = field(default_factory=dict)
    products: Products = field(default_factory=Products)


@dataclass
class StepContext:
    """What a step handler gets: the data, the layers, the task's behaviour (`task`), the run's seed and its
    progress, log and cancellation callbacks. Only its counter of batch-norm re-estimations changes."""

    data: DataBundle
    layers: list[str]  # prunable layer names, in model order
    # how the model's task fine-tunes, scores, screens and re-estimates batch norm (methods/task.py); None: a
    # classifier on `data` (methods/tasks.task_for(handle, data) makes the right one for a handle)
    task: Task | None = None
    seed: int = 0
    batch_size: int = 64
    shift_pixels: int = 0  # augmentation for fine-tuning (the demo digits use 2)
    on_progress: Callable[[str, float, dict], None] | None = None
    on_log: Callable[[str], None] | None = None
    cancel_requested: Callable[[], bool] | None = None
    # Knowledge distillation (methods/distill.py): the original model, never changed; a plan's distill step makes
    # every fine-tuning distil from it (`task.distil_from`)
    teacher: nn.Module | None = None
    # Batch-norm statistics are re-estimated after every fine-tuning on at most this many training batches
    # (see methods/bn_stats.py; a task may use its own amount, a detector's 256 images)
    bn_batches: int = bn_stats.DEFAULT_MAX_BATCHES
    bn_reestimations: int = 0  # how many times batch-norm statistics were re-estimated (metrics.json)

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = ClassifierTask(self.data, self.batch_size, self.shift_pixels)

    def finetune(self, model: nn.Module, epochs: int, lr: float, seed: int, stage: str,
                 ema: float | None = None) -> None:
        """Fine-tune `model` in place with the task's loss (constraints stay: they are parametrizations), then
        re-estimate its batch-norm statistics.

        Every method calls this right after it changed weights, so the statistics are re-estimated even with
        0 epochs: a batch norm's exponential average (momentum 0.01 in MobileNetV3) would not catch up anyway.
        A task whose `reestimate_after_training` is False keeps its training's statistics when epochs > 0.
        `ema`: the decay of the weight average a detector's fine-tuning keeps (methods/detect_train.ModelEMA; 0 off,
        None the task's default); a classifier's loop keeps none.
        """
        if epochs > 0:
            options = {} if ema is None else {"ema": ema}  # (a Task written before the option need not take it)
            self.task.train(model, epochs=epochs, lr=lr, seed=seed, **options,
                            progress=lambda f, loss: self.emit(stage, f, loss=loss), should_stop=self.should_stop)
            self.check_cancelled()
            if not self.task.reestimate_after_training:
                return  # the statistics the training kept
        self.recalibrate_batch_norm(model, seed, stage)

    def recalibrate_batch_norm(self, model: nn.Module, seed: int, stage: str = "") -> int:
        """Re-estimate `model`'s batch-norm running statistics on training batches; the number of batches used."""
        if not bn_stats.has_batch_norm(model) or self.bn_batches <= 0:
            return 0
        used = self.task.recalibrate(model, seed, self.bn_batches)
        if used is None:
            return 0
        self.bn_reestimations += 1
        self.log(f"{stage + ': ' if stage else ''}batch-norm statistics re-estimated on {used} training batches")
        self.check_cancelled()
        return used

    def make_scorer(self, size: int, seed: int, metric: str | None = None) -> Callable[[nn.Module], float]:
        """A quick quality score on a validation subset (higher is better): top-1, or mAP50-95 for a detector.

        metric "fitness": the channel search's accurate step, top-1 again, a detector's mAP50 (which boxes
        survive; their placement is restored by fine-tuning and is what the final mAP50-95 measures)."""
        return self.task.scorer(size, seed, metric)

    def screen_images(self, size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`size` validation images as one batch, as the model reads them (the channel search's cheap screen)."""
        return self.task.screen(size, seed).to(device)

    def emit(self, stage: str, fraction: float, **values) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, fraction, values)

    def log(self, message: str) -> None:
        if self.on_log is not None:
            self.on_log(message)

    def should_stop(self) -> bool:
        return bool(self.cancel_requested and self.cancel_requested())

    def check_cancelled(self) -> None:
        if self.should_stop():
            raise Cancelled("the run was cancelled")
