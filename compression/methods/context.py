"""What every step handler receives: the data, progress and cancellation hooks, and shared settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from compression.data import DataBundle
from compression.errors import CompressionLabError
from compression.methods.finetune import cross_entropy_loss


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
