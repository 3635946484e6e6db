"""Supervised training and fine-tuning loops shared by the demo trainer and every compression method.

Methods that constrain weights (pruning masks, shared cluster values) pass hooks: `grad_hook` edits
gradients before the optimizer step and `after_step` restores the constraint after it, so pruned
weights stay exactly zero and shared values stay shared through fine-tuning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from complab.devices import device_for


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1  # passes over the training split
    lr: float = 1e-3  # Adam learning rate; fine-tuning after compression uses a smaller one
    weight_decay: float = 0.0  # L2 on weights (Adam's coupled form)
    batch_size: int = 64
    shift_pixels: int = 0  # random translation augmentation (pad + random crop), 0 = off
    seed: int = 0
    cosine: bool = True  # cosine learning-rate decay over all steps


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy whose parameters take no gradient (a teacher for distillation)."""
    teacher = copy.deepcopy(model).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `pixels` in x and y (zero-padding in normalised space: edge value)."""
    if pixels <= 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    out = torch.empty_like(images)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       logits: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def train(
    model: nn.Module,
    train_set,
    config: TrainConfig,
    *,
    loss_fn: LossFn = cross_entropy_loss,
    grad_hook: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
    progress: Callable[[float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """Train `model` in place on a Dataset; return the mean loss per epoch.

    `progress(fraction_done, last_loss)` is called once per batch; `should_stop()` lets a job cancel.
    """
    if config.epochs <= 0:
        return []
    device = device_for(model)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = max(1, config.epochs * len(loader))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps) if config.cosine else None)
    losses = []
    step = 0
    model.train()
    for _ in range(config.epochs):
        running, count = 0.0, 0
        for images, labels in loader:
            images = random_shift(images, config.shift_pixels, generator).to(device)
            labels = labels.to(device)
            logits = model(images)
            loss = loss_fn(model, images, labels, logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_hook is not None:
                grad_hook()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if after_step is not None:
                after_step()
            running += float(loss.detach()) * len(labels)
            count += len(labels)
            step += 1
            if progress is not None:
                progress(step / total_steps, float(loss.detach()))
            if should_stop is not None and should_stop():
                model.eval()
                return losses
        losses.append(running / max(1, count))
    model.eval()
    return losses


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy with the labels."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature ** 2 * soft + (1.0 - alpha) * hard


def make_kd_loss(teacher: nn.Module, temperature: float, alpha: float) -> LossFn:
    """A loss_fn for finetune.train: the frozen teacher's logits on the same (augmented) images."""
    teacher = frozen_copy(teacher)

    def loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        device = images.device
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        with torch.no_grad():
            teacher_logits = teacher(images)
        return kd_loss(logits, teacher_logits, labels, temperature, alpha)

    return loss_fn
