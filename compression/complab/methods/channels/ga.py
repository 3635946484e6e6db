"""The genetic search over a group's keep masks and the paper's two-step approximate fitness (Hu et al. 2018).

A population of 0/1 keep masks with exactly `keep` ones (seeded with the L1 choice plus Bernoulli samples),
uniform crossover, swap mutation, tournament selection and elitism. Fitness is two-step: a cheap screen
of every candidate (the relative reconstruction error of the consumer layers' outputs), then the task
score on a validation subset for the screen's best `survivors` only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from complab.methods.channels.graph import ChannelGroup, MaskedChannels, input_scale
from complab.steps.channels import ChannelStep


class Fitness:
    """The paper's two-step fitness: a cheap reconstruction-error screen and the accurate task score."""

    def __init__(self, model: nn.Module, group: ChannelGroup, screen_images: torch.Tensor,
                 scorer: Callable[[nn.Module], float]) -> None:
        self.model, self.group, self.scorer = model, group, scorer
        self.inputs, self.outputs = {}, {}
        hooks = [m.register_forward_hook(self._store(i)) for i, (m, _) in enumerate(group.consumers)]
        try:
            with torch.no_grad():
                model.eval()
                model(screen_images)
        finally:
            for h in hooks:
                h.remove()
        self.screens = self.scores = 0

    def _store(self, i: int) -> Callable:
        def hook(module, args, output):
            self.inputs[i], self.outputs[i] = args[0].detach(), output.detach()
        return hook

    @torch.no_grad()
    def cheap(self, keep: torch.Tensor) -> float:
        """Relative squared error of the consumer layers' outputs with the dropped channels zeroed (lower=better)."""
        self.screens += 1
        error = norm = 0.0
        for i, (module, roots) in enumerate(self.group.consumers):
            x = self.inputs[i]
            scale = input_scale(keep, roots).to(x.device, x.dtype)
            shape = [1] * x.dim()
            shape[1 if x.dim() > 2 else -1] = -1
            y = module(x * scale.view(shape))
            error += float(((y - self.outputs[i]) ** 2).sum())
            norm += float((self.outputs[i] ** 2).sum())
        return error / max(norm, 1e-12)

    def accurate(self, keep: torch.Tensor) -> float:
        """The task score (top-1 on the fitness subset) with the dropped channels zeroed (higher=better)."""
        self.scores += 1
        with MaskedChannels(self.group, keep):
            return float(self.scorer(self.model))


def _repair(mask: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Add or drop random channels until exactly `keep` are kept."""
    mask = mask.clone()
    ones = int(mask.sum())
    if ones > keep:
        on = torch.nonzero(mask).flatten()
        mask[on[torch.randperm(len(on), generator=generator)[:ones - keep]]] = False
    elif ones < keep:
        off = torch.nonzero(~mask).flatten()
        mask[off[torch.randperm(len(off), generator=generator)[:keep - ones]]] = True
    return mask


def genetic_search(fitness: Fitness, channels: int, keep: int, step: ChannelStep, generator: torch.Generator,
                   seed_masks: list[torch.Tensor], report: Callable[[int, float, float], None] | None = None,
                   ) -> tuple[torch.Tensor, list[dict]]:
    """Search keep masks with exactly `keep` ones; returns the best mask and per-generation fitness rows."""
    population = [m.clone() for m in seed_masks][: step.population]
    while len(population) < step.population:  # Bernoulli at the keep ratio, repaired to the exact count
        sample = torch.rand(channels, generator=generator) < keep / channels
        population.append(_repair(sample, keep, generator))
    survivors = step.population if step.survivors == 0 else min(step.survivors, step.population)
    history: list[dict] = []
    best_mask, best_key = population[0], None
    cache: dict[bytes, tuple[float, float]] = {}
    for generation in range(step.generations + 1):
        errors = []
        for mask in population:
            key = bytes(mask.numpy())
            errors.append(cache[key][1] if key in cache else fitness.cheap(mask) if survivors < step.population
                          else 0.0)
        ranked = sorted(range(len(population)), key=lambda i: errors[i])
        # the accurate step for the screen's best `survivors` new candidates (and, in the first generation,
        # the seeds); candidates scored before keep their score at no cost
        chosen = [i for i in ranked if bytes(population[i].numpy()) not in cache][:survivors]
        if generation == 0:
            chosen += [i for i in range(len(seed_masks)) if i not in chosen]
        keys = {}
        for i in ranked:
            key = bytes(population[i].numpy())
            if key not in cache and i in chosen:
                cache[key] = (fitness.accurate(population[i]), errors[i])
            if key in cache:
                keys[i] = (cache[key][0], -errors[i])
        ranked = sorted(keys, key=lambda i: keys[i], reverse=True) + [i for i in ranked if i not in keys]
        scores = [keys[i][0] for i in keys]
        top = keys[ranked[0]]
        if best_key is None or top > best_key:
            best_key, best_mask = top, population[ranked[0]].clone()
        row = {"generation": generation, "best_fitness": max(scores), "mean_fitness": sum(scores) / len(scores),
               "best_error": min(errors), "mean_error": sum(errors) / len(errors)}
        history.append(row)
        if report is not None:
            report(generation, row["best_fitness"], row["mean_fitness"])
        if generation == step.generations:
            break
        rank_of = {i: r for r, i in enumerate(ranked)}
        children = [population[i].clone() for i in ranked[: step.elite]]
        while len(children) < step.population:
            a, b = (_tournament(rank_of, generator) for _ in range(2))
            child = population[a].clone()
            if torch.rand(1, generator=generator).item() < step.crossover:  # uniform crossover
                take = torch.rand(channels, generator=generator) < 0.5
                child = torch.where(take, population[b], child)
                child = _repair(child, keep, generator)
            child = _mutate(child, step.mutation, generator)
            children.append(child)
        population = children
    return best_mask, history


def _tournament(rank_of: dict[int, int], generator: torch.Generator) -> int:
    a, b = torch.randint(0, len(rank_of), (2,), generator=generator).tolist()
    return a if rank_of[a] < rank_of[b] else b


def _mutate(mask: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Swap mutation: each kept channel is, with probability `rate`, exchanged for a dropped one."""
    mask = mask.clone()
    on, off = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
    if len(off) == 0:
        return mask
    flips = on[torch.rand(len(on), generator=generator) < rate]
    for channel in flips.tolist():
        off = torch.nonzero(~mask).flatten()
        mask[channel] = False
        mask[off[torch.randint(0, len(off), (1,), generator=generator)]] = True
    return mask

