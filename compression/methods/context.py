"""What every step handler receives: the data, progress and cancellation hooks, and shared settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from compression.data import DataBundle
from compression.errors import CompressionLabError
from compression.methods.finetune import TrainConfig, cross_entropy_loss, train


class Cancelled(CompressionLabError):
    """The run was cancelled by the user; nothing was written."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


@dataclass
class StepContext:
    data: DataBundle
    layers: list[str]  # prunable layer names, in model order
    seed: int = 0
    batch_size: int = 64
    shift_pixels: int = 0  # augmentation for fine-tuning (the demo digits use 2)
    on_progress: Callable[[str, float, dict], None] | None = None
    on_log: Callable[[str], None] | None = None
    cancel_requested: Callable[[], bool] | None = None
    loss_fn: Callable = cross_entropy_loss
    notes: dict = field(default_factory=dict)
    # Task hooks. A classifier uses the defaults below (cross-entropy fine-tuning on data.train, top-1
    # on a validation subset); a detector sets them to Ultralytics' detection loss and mAP, so every
    # method runs unchanged on both. trainer(model, epochs, lr, seed, stage); scorer(size, seed) -> f(model).
    trainer: Callable[..., None] | None = None
    scorer: Callable[..., Callable[[nn.Module], float]] | None = None
    score_name: str = "accuracy"

    def finetune(self, model: nn.Module, epochs: int, lr: float, seed: int, stage: str) -> None:
        """Fine-tune `model` in place with the task's loss (constraints stay: they are parametrizations)."""
        if epochs <= 0:
            return
        if self.trainer is not None:
            self.trainer(model, epochs=epochs, lr=lr, seed=seed, stage=stage)
        else:
            config = TrainConfig(epochs=epochs, lr=lr, seed=seed, batch_size=self.batch_size,
                                 shift_pixels=self.shift_pixels)
            train(model, self.data.train, config, loss_fn=self.loss_fn,
                  progress=lambda f, loss: self.emit(stage, f, loss=loss), should_stop=self.should_stop)
        self.check_cancelled()

    def make_scorer(self, size: int, seed: int) -> Callable[[nn.Module], float]:
        """A quick quality score on a validation subset (higher is better): top-1, or mAP50-95 for a detector."""
        if self.scorer is not None:
            return self.scorer(size, seed)
        from compression import metrics

        loader = self.data.loader("val", size=size, seed=seed)
        return lambda model: metrics.accuracy(model, loader)

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
