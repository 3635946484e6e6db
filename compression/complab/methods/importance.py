"""The diagonal empirical Fisher of a model's layers from per-sample gradients: the sensitivity estimate's
(analysis/fisher.py) and the cluster step's importance "fisher" (methods/cluster.py), one loop for both. It lives
with the methods so that a step can use it without importing the analysis layer above it."""

from __future__ import annotations

import copy
import time

import torch

from complab.errors import CompressionLabError
from complab.methods.context import layer_weight

MIN_GRADIENT_IMAGES = 4  # at least this many samples, whatever the time budget
GRADIENT_IMAGES = 128  # model_fisher's default number of validation images
GRADIENT_SECONDS = 20.0  # model_fisher's default time budget


class _NoClock:
    """A clock that never cancels and reports nowhere (model_fisher runs inside a step, which has its own)."""

    def check(self, force: bool = False) -> None:
        return None

    def report(self, *args) -> None:
        return None


def cancel_hooks(model: torch.nn.Module, clock) -> list:
    """Poll cancel before every top-level block's forward (a ResNet-50 point takes tens of seconds)."""
    modules = [m for m in model.modules() if len(list(m.children())) == 0]
    return [m.register_forward_pre_hook(lambda *_: clock.check()) for m in modules]


def accumulate_fisher(model: torch.nn.Module, layers: dict[str, torch.Tensor], task, samples, microbatch: int,
                      clock, seconds: float = GRADIENT_SECONDS, later_s: float = 0.0):
    """(layer -> diagonal empirical Fisher, layer -> mean gradient, samples used, losses) of `layers` (tensors of
    `model` that require gradients) from the task's per-sample losses on `samples`, for at most `seconds` (and at
    least MIN_GRADIENT_IMAGES samples)."""
    device = next(model.parameters()).device
    fisher = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in layers.items()}
    mean_grad = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in layers.items()}
    hooks = cancel_hooks(model, clock)
    started = time.monotonic()
    used = 0
    losses = []
    try:
        for sample in samples:
            if used >= MIN_GRADIENT_IMAGES and time.monotonic() - started > seconds:
                break
            loss = task.sample_loss(model, sample, device)
            grads = torch.autograd.grad(loss, list(layers.values()), allow_unused=True)
            for (name, _), grad in zip(layers.items(), grads, strict=True):
                if grad is not None:  # a batch mean's square underestimates by the batch size: scale it back
                    fisher[name] += microbatch * grad.detach().float() ** 2
                    mean_grad[name] += grad.detach().float()
            used += 1
            losses.append(float(loss.detach()))
            per_image = (time.monotonic() - started) / used
            left = min(len(samples) - used, max(0, int((seconds - (time.monotonic() - started)) / per_image)))
            clock.report("gradients", "", used, used + left, left * per_image + later_s)
    finally:
        for hook in hooks:
            hook.remove()
    for name in fisher:
        fisher[name] = (fisher[name] / used).cpu()
        mean_grad[name] = (mean_grad[name] / used).cpu()
    return fisher, mean_grad, used, losses


def model_fisher(model: torch.nn.Module, names: list[str], task, images: int = GRADIENT_IMAGES, seed: int = 0,
                 seconds: float = GRADIENT_SECONDS) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of `model`'s layers `names` (a step's model, not a handle: the cluster step's
    importance "fisher") on at most `images` validation images of the task, on a copy of the model."""
    work = copy.deepcopy(model).eval()
    for param in work.parameters():
        param.requires_grad_(False)
    layers = {name: layer_weight(work, name) for name in names}
    for weight in layers.values():
        weight.requires_grad_(True)
    task.prepare_gradients(work)
    samples, microbatch = task.gradient_samples(images, max(images, 1), seed, 1)
    if not len(samples):
        raise CompressionLabError("the validation split is empty: importance fisher needs validation images")
    fisher, _, _, _ = accumulate_fisher(work, layers, task, samples, microbatch, _NoClock(), seconds)
    return fisher
