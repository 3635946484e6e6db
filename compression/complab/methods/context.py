"""What every step handler receives (StepContext: data, task hooks, progress, cancellation) and returns (StepResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from complab.data import DataBundle
from complab.errors import CompressionLabError
from complab.methods import bn_stats
from complab.methods.finetune import TrainConfig, cross_entropy_loss, train
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
    data: DataBundle
    layers: list[str]  # prunable layer names, in model order
    task: str = "classify"  # the handle's task ("classify" or "detect"); use_task sets it with the hooks
    # the model's input (C, H, W) when the data does not say it: a detector's (3, imgsz, imgsz), set by use_task
    input_shape: tuple[int, ...] | None = None
    seed: int = 0
    batch_size: int = 64
    shift_pixels: int = 0  # augmentation for fine-tuning (the demo digits use 2)
    on_progress: Callable[[str, float, dict], None] | None = None
    on_log: Callable[[str], None] | None = None
    cancel_requested: Callable[[], bool] | None = None
    loss_fn: Callable = cross_entropy_loss
    # Knowledge distillation (methods/distill.py): the original model, never changed, and whether every
    # fine-tuning already distils from it. A task with its own training loop (a detector) sets
    # `enable_distillation(teacher, temperature, alpha)` to make its trainer distil.
    teacher: nn.Module | None = None
    distilling: bool = False
    enable_distillation: Callable[[nn.Module, float, float], None] | None = None
    bn_reestimations: int = 0  # how many times batch-norm statistics were re-estimated (metrics.json)
    # Task hooks. A classifier uses the defaults below (cross-entropy fine-tuning on data.train, top-1
    # on a validation subset); a detector sets them to Ultralytics' detection loss and mAP, so every
    # method runs unchanged on both. trainer(model, epochs, lr, seed, stage); scorer(size, seed, metric) -> f(model),
    # metric None for the task's own score or "fitness" for the channel search's accurate step (a detector: mAP50);
    # screener(size, seed) -> a batch of validation images as the model reads them (the search's cheap screen).
    trainer: Callable[..., None] | None = None
    scorer: Callable[..., Callable[[nn.Module], float]] | None = None
    screener: Callable[[int, int], torch.Tensor] | None = None
    score_name: str = "accuracy"
    fitness_name: str = "top-1"  # what make_scorer(..., "fitness") measures (a detector: mAP50)
    # Batch-norm statistics are re-estimated after every fine-tuning on at most this many training batches
    # (see methods/bn_stats.py). A detector sets `bn_recalibrator(model, seed) -> batches used` to its own data.
    bn_batches: int = bn_stats.DEFAULT_MAX_BATCHES
    bn_recalibrator: Callable[[nn.Module, int], int] | None = None
    # False: after real training (epochs > 0) keep the running statistics the training itself kept, re-estimate
    # only after a change with no training. A detector sets it: re-estimating the demo YOLO's statistics on 256
    # letterboxed training images, its weights unchanged, took mAP50-95 from 0.936 to 0.885 (its weights are
    # tuned to the statistics of Ultralytics' augmented training); after 2 epochs of fine-tuning the model kept
    # 0.914 without it and 0.871 with it.
    reestimate_after_training: bool = True

    def use_task(self, handle) -> None:
        """Set the task hooks for `handle`: a detector trains, scores and re-estimates batch norm its own way."""
        self.task = handle.task
        if handle.task == "detect":
            from complab.methods.detect_train import detection_hooks

            self.input_shape = tuple(handle.input_shape)

            detection_hooks(self.data, handle.imgsz, self)

    def finetune(self, model: nn.Module, epochs: int, lr: float, seed: int, stage: str) -> None:
        """Fine-tune `model` in place with the task's loss (constraints stay: they are parametrizations), then
        re-estimate its batch-norm statistics.

        Every method calls this right after it changed weights, so the statistics are re-estimated even with
        0 epochs: a batch norm's exponential average (momentum 0.01 in MobileNetV3) would not catch up anyway.
        A task that sets `reestimate_after_training` False keeps its training's statistics when epochs > 0.
        """
        if epochs > 0:
            if self.trainer is not None:
                self.trainer(model, epochs=epochs, lr=lr, seed=seed, stage=stage)
            else:
                config = TrainConfig(epochs=epochs, lr=lr, seed=seed, batch_size=self.batch_size,
                                     shift_pixels=self.shift_pixels)
                train(model, self.data.train, config, loss_fn=self.loss_fn,
                      progress=lambda f, loss: self.emit(stage, f, loss=loss), should_stop=self.should_stop)
            self.check_cancelled()
            if not self.reestimate_after_training:
                return  # the statistics the training kept
        self.recalibrate_batch_norm(model, seed, stage)

    def recalibrate_batch_norm(self, model: nn.Module, seed: int, stage: str = "") -> int:
        """Re-estimate `model`'s batch-norm running statistics on training batches; the number of batches used."""
        if not bn_stats.has_batch_norm(model) or self.bn_batches <= 0:
            return 0
        if self.bn_recalibrator is not None:
            used = self.bn_recalibrator(model, seed)
        elif self.data is not None and self.data.train is not None and hasattr(self.data.train, "__getitem__"):
            used = bn_stats.reestimate_on(model, self.data.train, self.batch_size, self.bn_batches, seed)
        else:
            return 0
        self.bn_reestimations += 1
        self.log(f"{stage + ': ' if stage else ''}batch-norm statistics re-estimated on {used} training batches")
        self.check_cancelled()
        return used

    def make_scorer(self, size: int, seed: int, metric: str | None = None) -> Callable[[nn.Module], float]:
        """A quick quality score on a validation subset (higher is better): top-1, or mAP50-95 for a detector.

        metric "fitness": the channel search's accurate step, top-1 again, a detector's mAP50 (which boxes
        survive; their placement is restored by fine-tuning and is what the final mAP50-95 measures)."""
        if self.scorer is not None:
            return self.scorer(size, seed, metric)
        from complab import metrics

        loader = self.data.loader("val", size=size, seed=seed)
        return lambda model: metrics.accuracy(model, loader)

    def screen_images(self, size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """`size` validation images as one batch, as the model reads them (the channel search's cheap screen)."""
        if self.screener is not None:
            return self.screener(size, seed).to(device)
        screen = self.data.subset("val", size, seed)
        return torch.stack([screen[i][0] for i in range(len(screen))]).to(device)

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
