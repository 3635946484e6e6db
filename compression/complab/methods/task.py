"""A task's behaviour on its data, as one object (`Task`): how it fine-tunes, scores, screens, re-estimates batch
norm and distils, and what the sensitivity analyses measure it with. `ClassifierTask` is the classifier's;
methods/detect_train.DetectorTask the detector's; methods/tasks.task_for picks a handle's.

Every method and analysis asks its `Task` instead of testing which task it runs: a step handler gets it in its
StepContext (`ctx.task`), the analyses from task_for. A task object keeps only what its training has become
(a distillation teacher); nothing else changes it after it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from complab import metrics
from complab.data import DataBundle
from complab.errors import PlanError
from complab.methods import bn_stats
from complab.methods.finetune import LossFn, TrainConfig, cross_entropy_loss, make_kd_loss, train
from complab.models.handle import CLASSIFY
from complab.models.protocol import TaskKind

Progress = Callable[[float, float], None]  # (fraction done, last loss)


@runtime_checkable
class Task(Protocol):
    """How one task trains, scores and re-estimates batch norm on one dataset (a step's `ctx.task`)."""

    kind: TaskKind
    input_shape: tuple[int, ...] | None  # the model's input (C, H, W)
    score_name: str  # what `scorer(size, seed)` measures ("accuracy"; a detector: "mAP50-95")
    fitness_name: str  # what `scorer(size, seed, "fitness")` measures: the channel search's accurate step
    # False: after real training (epochs > 0) keep the running statistics the training itself kept
    reestimate_after_training: bool
    # True: the channel step re-estimates batch norm on a few training images after each group it removes,
    # before fine-tuning (False: the task's own re-estimation in fine-tuning is the only one)
    statistics_between_groups: bool
    # True: its score runs the whole model on validation images it holds itself (a detector's mAP): the exact
    # analysis neither traces the model nor holds the images as tensors (`whole_model_score`)
    scores_whole_model: bool
    gradient_loss_name: str  # the loss the estimate mode differentiates ("cross-entropy")

    @property
    def distilling(self) -> bool:
        """Whether fine-tuning distils from a teacher (`distil_from` was called)."""

    def train(self, model: nn.Module, *, epochs: int, lr: float, seed: int, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, ema: float | None = None) -> None:
        """Fine-tune `model` in place with the task's loss (constraints stay: they are parametrizations); `ema`: the
        decay of a weight average copied back at the end (None: the task's default; a task may keep none)."""

    def recalibrate(self, model: nn.Module, seed: int, max_batches: int) -> int | None:
        """Re-estimate `model`'s batch-norm statistics on training images; batches used (None: no data to use)."""

    def scorer(self, size: int, seed: int, metric: str | None = None) -> Callable[[nn.Module], float]:
        """score(model) on a seeded validation subset of `size` (higher is better); metric "fitness": see above."""

    def screen(self, size: int, seed: int) -> torch.Tensor:
        """`size` validation images as one batch, as the model reads them (the channel search's cheap screen)."""

    def distil_from(self, teacher: nn.Module, temperature: float, alpha: float, features: float = 0.0,
                    feature_temperature: float = 1.0) -> None:
        """Every later fine-tuning distils from `teacher` (a plan's distill step); `features`: the weight of a
        feature-map distillation term where the task has one (a detector's neck: methods/detect_distill.py)."""

    def prepare_channel_pruning(self, model: nn.Module) -> tuple[list[str], tuple[nn.Module, ...]]:
        """Make `model` prunable by the dependency graph, in place: (modules replaced, the file records them;
        modules whose outputs must stay whole)."""

    def statistics_batches(self, batches: int, seed: int, batch_size: int) -> list[torch.Tensor]:
        """Up to `batches` batches of training images as the model reads them (the analyses' batch-norm data)."""

    def whole_model_score(self, size: int, seed: int) -> tuple[Callable[[nn.Module], float], int]:
        """(score(model), validation images used) for a task that `scores_whole_model`."""

    def validation_images(self, size: int, seed: int) -> int:
        """How many validation images a subset of `size` holds."""

    def example_batch(self, size: int, seed: int) -> torch.Tensor:
        """A few validation images (or images of the model's input size) to time a forward pass on."""

    def gradient_samples(self, images: int, size: int, seed: int, microbatch: int) -> tuple[Sequence, int]:
        """(samples, images per sample): at most `images` validation images, `microbatch` to a sample where the
        task can batch them, for `sample_loss` (the estimate mode's per-sample gradients)."""

    def prepare_gradients(self, model: nn.Module) -> None:
        """Set up `model` (a working copy) so `sample_loss` can run on it."""

    def sample_loss(self, model: nn.Module, sample, device: torch.device) -> torch.Tensor:
        """The task's loss on one sample (a scalar)."""


class ClassifierTask:
    """A classifier on a DataBundle: cross-entropy fine-tuning on data.train, top-1 on validation subsets."""

    kind = CLASSIFY
    score_name = "accuracy"
    fitness_name = "top-1"
    reestimate_after_training = True
    statistics_between_groups = True
    scores_whole_model = False
    gradient_loss_name = "cross-entropy"

    def __init__(self, data: DataBundle | None, batch_size: int = 64, shift_pixels: int = 0) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shift_pixels = shift_pixels  # augmentation for fine-tuning (the demo digits use 2)
        self.input_shape = tuple(data.input_shape) if data is not None else None
        self.loss_fn: LossFn = cross_entropy_loss

    @property
    def distilling(self) -> bool:
        return self.loss_fn is not cross_entropy_loss

    def train(self, model: nn.Module, *, epochs: int, lr: float, seed: int, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, ema: float | None = None) -> None:
        """(`ema` is a detector's setting: the classifier's loop keeps no weight average.)"""
        config = TrainConfig(epochs=epochs, lr=lr, seed=seed, batch_size=self.batch_size,
                             shift_pixels=self.shift_pixels)
        train(model, self.data.train, config, loss_fn=self.loss_fn, progress=progress, should_stop=should_stop)

    def recalibrate(self, model: nn.Module, seed: int, max_batches: int) -> int | None:
        train_set = self.data.train if self.data is not None else None
        if train_set is None or not hasattr(train_set, "__getitem__"):
            return None
        return bn_stats.reestimate_on(model, train_set, self.batch_size, max_batches, seed)

    def scorer(self, size: int, seed: int, metric: str | None = None) -> Callable[[nn.Module], float]:
        loader = self.data.loader("val", size=size, seed=seed)
        return lambda model: metrics.accuracy(model, loader)

    def screen(self, size: int, seed: int) -> torch.Tensor:
        screen = self.data.subset("val", size, seed)
        return torch.stack([screen[i][0] for i in range(len(screen))])

    def distil_from(self, teacher: nn.Module, temperature: float, alpha: float, features: float = 0.0,
                    feature_temperature: float = 1.0) -> None:
        if features > 0:
            raise PlanError("distill: features (channel-wise distillation of a detector's neck) has no classifier "
                            "counterpart here: set it to 0 for a classifier")
        self.loss_fn = make_kd_loss(teacher, temperature, alpha)

    @classmethod
    def for_handle(cls, handle, data: DataBundle | None, batch_size: int = 64, shift_pixels: int = 0) -> ClassifierTask:
        return cls(data, batch_size, shift_pixels)

    @staticmethod
    def prepare_channel_pruning(model: nn.Module) -> tuple[list[str], tuple[nn.Module, ...]]:
        return [], ()  # the graph follows a classifier as it is; its outputs are its classes (never grouped)

    def statistics_batches(self, batches: int, seed: int, batch_size: int) -> list[torch.Tensor]:
        return list(bn_stats.training_images(self.data.train, batch_size, batches, seed))

    def whole_model_score(self, size: int, seed: int) -> tuple[Callable[[nn.Module], float], int]:
        raise NotImplementedError("a classifier's score runs on validation tensors the analysis holds itself")

    def validation_images(self, size: int, seed: int) -> int:
        return min(size, len(self.data.val))

    def example_batch(self, size: int, seed: int) -> torch.Tensor:
        return next(iter(self.data.loader("val", batch_size=8, size=size, seed=seed)))[0]

    def gradient_samples(self, images: int, size: int, seed: int, microbatch: int) -> tuple[Sequence, int]:
        samples = _OneImageBatches(self.data, size, seed, images)
        if microbatch <= 1:
            return samples, 1
        groups = [[samples[j] for j in range(i, min(i + microbatch, len(samples)))]
                  for i in range(0, len(samples), microbatch)]
        return [(torch.cat([x for x, _ in group]), torch.cat([y for _, y in group])) for group in groups], microbatch

    def prepare_gradients(self, model: nn.Module) -> None:
        return None  # cross-entropy needs nothing on the model

    def sample_loss(self, model: nn.Module, sample, device: torch.device) -> torch.Tensor:
        x, y = sample
        return F.cross_entropy(model(x.to(device)), y.to(device))


class _OneImageBatches:
    """The validation subset's first `images` images as one-image batches, decoded when used (a gradient
    budget may stop after a few: an ImageFolder at 224 px need not decode them all first)."""

    def __init__(self, data: DataBundle, size: int, seed: int, images: int):
        self.subset = data.subset("val", size, seed)
        self.count = min(images, len(self.subset))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        x, y = self.subset[index]
        return x.unsqueeze(0), torch.as_tensor(y).view(1)
