"""Channel pruning with a genetic algorithm (Hu et al. 2018, arXiv 1805.11394), L1 and random baselines.

Removed channels are removed for real: Torch-Pruning's dependency graph finds every layer a channel
touches (the next convolution's input, BatchNorm, the residual adds that couple ResNet blocks) and
shrinks them all, so parameters, FLOPs, file bytes and CPU latency drop on any device. No code here
knows an architecture: a "channel group" is Torch-Pruning's group rooted at a convolution's output
channels, and coupled convolutions (outputs added by skip connections) share one keep mask.

The method, per the paper:
- groups are pruned one at a time, least sensitive first (accuracy drop with half the channels
  masked by L1 norm, measured here on a validation subset);
- per group a population of 0/1 keep masks with exactly round(keep_ratio * n) ones (seeded with the
  L1 choice plus Bernoulli samples), uniform crossover, swap mutation, tournament selection, elitism;
- two-step approximate fitness: a cheap screen of every candidate (the relative reconstruction error
  of the consumer layers' outputs on `screen_size` images, as the paper's first step), then the
  task score (top-1) on `fitness_size` validation images for the best `survivors` only;
- after each group, BatchNorm statistics are re-estimated on `recalibrate_size` training images (no
  training: the search then scores the next group on a model that is not already broken), then
  fine-tuning (with the KD loss when the plan has a distill step), after which ctx.finetune
  re-estimates them again (methods/bn_stats.py).
During the search a candidate is applied by zeroing the masked channels at the inputs of the consumer
layers (forward pre-hooks), which gives exactly the outputs the physically pruned model gives.

The compact file records Torch-Pruning's `pruning_history()` (plain JSON: module name, direction,
channel indices); `models.channel_replay.replay` re-applies it to a freshly built architecture before the
weights load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from compression.errors import PlanError
from compression.methods import bn_stats
from compression.methods.context import StepContext, StepResult
from compression.methods.registry import handler
from compression.models.channel_replay import build_graph, plain_history, torch_pruning
from compression.models.compact import Products
from compression.plan import ChannelStep, resolve


@dataclass
class ChannelGroup:
    """One pruning decision: convolutions whose output channels are removed together."""

    name: str  # the first convolution (model order): the plan's key for this group
    members: list[str]  # every convolution whose output channels this group removes
    channels: int  # channels in the group
    consumers: list[tuple[nn.Module, torch.Tensor]]  # (layer reading the channels, group channel of each input)
    out_weights: list[torch.Tensor]  # weights of the member convolutions (for the L1 criterion)


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], graph=None) -> list[ChannelGroup]:
    """The convolution channel groups of a model, in model order (coupled convolutions share a group)."""
    graph = graph if graph is not None else build_graph(model, input_shape)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    groups = []
    for group in graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Conv1d, nn.Conv3d)):
        members, consumers, weights = [], [], []
        for item in group:
            dep = item.dep
            module = dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            if isinstance(module, nn.modules.conv._ConvNd) and graph.is_out_channel_pruning_fn(dep.handler):
                if module.groups > 1:
                    members = []  # grouped / depthwise convolutions are left alone
                    break
                members.append(names[module])
                weights.append(module.weight)
            elif isinstance(module, nn.modules.conv._ConvNd | nn.Linear) and graph.is_in_channel_pruning_fn(
                    dep.handler):
                width = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
                roots = torch.full((width,), -1, dtype=torch.long)  # -1: an input this group does not feed
                roots[torch.as_tensor([int(i) for i in item.idxs])] = torch.as_tensor([int(i) for i in item.root_idxs])
                consumers.append((module, roots))
        if not members:
            continue
        members.sort(key=order.get)
        channels = int(weights[0].shape[0])
        groups.append(ChannelGroup(members[0], members, channels, consumers, weights))
    groups.sort(key=lambda g: order[g.name])
    return groups


def group_of(groups: list[ChannelGroup], layer: str) -> ChannelGroup | None:
    for group in groups:
        if layer in group.members:
            return group
    return None


class MaskedChannels:
    """Context manager: zero a group's dropped channels at the inputs of every consumer layer."""

    def __init__(self, group: ChannelGroup, keep: torch.Tensor) -> None:
        self.group, self.keep, self.handles = group, keep, []

    def __enter__(self) -> MaskedChannels:
        for module, roots in self.group.consumers:
            scale = _scale(self.keep, roots)
            self.handles.append(module.register_forward_pre_hook(_input_mask(scale)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _scale(keep: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
    """Per input of a consumer layer: 1 if kept (or not fed by this group), 0 if its channel is dropped."""
    scale = torch.ones(len(roots))
    fed = roots >= 0
    scale[fed] = keep.float()[roots[fed]]
    return scale


def _input_mask(scale: torch.Tensor) -> Callable:
    def hook(module, args):
        x = args[0]
        shape = [1] * x.dim()
        shape[1 if x.dim() > 2 else -1] = -1
        return (x * scale.to(x.device, x.dtype).view(shape), *args[1:])
    return hook


def group_ratio(keep_ratio: dict, group: ChannelGroup) -> float | None:
    """The keep ratio a plan gives a group: its first convolution's value, else the smallest value a plan key
    names for another member exactly (coupled convolutions share one decision)."""
    ratio = resolve(keep_ratio, group.name)
    named = [float(keep_ratio[m]) for m in group.members[1:] if m in keep_ratio]
    if group.name not in keep_ratio and named:
        return min(named)
    return ratio


def l1_scores(group: ChannelGroup) -> torch.Tensor:
    """Li et al. (2017): the L1 norm of each output filter, summed over the coupled convolutions."""
    return sum(w.detach().abs().flatten(1).sum(1).cpu() for w in group.out_weights)


def top_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return mask


def keep_count(channels: int, keep_ratio: float) -> int:
    return max(1, min(channels, int(round(keep_ratio * channels))))


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
            scale = _scale(keep, roots).to(x.device, x.dtype)
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


def remove_channels(model: nn.Module, graph, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Physically remove the group's dropped channels (and every coupled slice) from the model."""
    tp = torch_pruning()
    drop = [int(i) for i in torch.nonzero(~keep).flatten()]
    if not drop:
        return
    root = model.get_submodule(group.name)
    graph.get_pruning_group(root, tp.prune_conv_out_channels, drop).prune()


def _sensitivity(model: nn.Module, groups: list[ChannelGroup], scorer: Callable[[nn.Module], float]) -> dict:
    """Score with half of each group's channels masked by L1 (the others intact): higher = less sensitive."""
    out = {}
    for group in groups:
        with MaskedChannels(group, top_mask(l1_scores(group), keep_count(group.channels, 0.5))):
            out[group.name] = float(scorer(model))
    return out


@handler(ChannelStep)
def run(model: nn.Module, step: ChannelStep, ctx: StepContext) -> StepResult:
    """Prune each targeted channel group to its keep ratio (GA, L1 or random), least sensitive first."""
    if ctx.task == "detect":
        raise PlanError("channels: channel pruning of YOLO detectors is not supported yet (Ultralytics' C2f splits "
                        "its channels by a stored count, which needs Torch-Pruning's split-free C2f variant): "
                        "remove the channels step, prune and cluster the detector instead")
    input_shape = tuple(ctx.data.input_shape)
    graph = build_graph(model, input_shape)
    groups = channel_groups(model, input_shape, graph)
    targets = {}
    for group in groups:
        ratio = group_ratio(step.keep_ratio, group)
        if ratio is not None and float(ratio) < 1.0:
            targets[group.name] = float(ratio)
    convolutions = {name for group in groups for name in group.members}
    ignored = [key for key in step.keep_ratio if key in ctx.layers and key not in convolutions]
    if ignored:
        ctx.log(f"channels: keep_ratio of {', '.join(ignored)} ignored (only convolutions' output channels are "
                "removed; a classifier's outputs are its classes)")
    if not targets:
        ctx.log("channels: no convolution has a keep_ratio below 1; nothing to do")
        return StepResult()
    seed = ctx.seed + step.seed
    device = next(model.parameters()).device
    accurate_scorer = ctx.make_scorer(step.fitness_size, seed)
    if step.selection == "ga" or len(targets) > 1:
        sensitivity = _sensitivity(model, [g for g in groups if g.name in targets], accurate_scorer)
        order = sorted(targets, key=lambda name: -sensitivity[name])
    else:
        sensitivity, order = {}, list(targets)
    screen = ctx.data.subset("val", step.screen_size, seed + 1)
    screen_images = torch.stack([screen[i][0] for i in range(len(screen))]).to(device)
    report = {"selection": step.selection, "order": order, "sensitivity": sensitivity, "layers": {}}
    for position, name in enumerate(order):
        ctx.check_cancelled()
        group = group_of(channel_groups(model, input_shape, graph), name)
        keep = keep_count(group.channels, targets[name])
        generator = torch.Generator().manual_seed(seed * 1000 + position)
        stage = f"channels {name} ({position + 1}/{len(order)})"
        row = {"members": group.members, "channels": group.channels, "kept": keep}
        l1 = top_mask(l1_scores(group), keep)
        if step.selection == "l1":
            mask = l1
        elif step.selection == "random":
            mask = top_mask(torch.rand(group.channels, generator=generator), keep)
        else:
            fitness = Fitness(model, group, screen_images, accurate_scorer)

            def progress(generation: int, best: float, mean: float, stage=stage) -> None:
                ctx.emit(stage, generation / max(1, step.generations), generation=generation,
                         best_fitness=best, mean_fitness=mean)
            started = time.perf_counter()
            mask, history = genetic_search(fitness, group.channels, keep, step, generator, [l1], progress)
            row.update(generations=history, screened=fitness.screens, scored=fitness.scores,
                       search_seconds=round(time.perf_counter() - started, 3),
                       l1_fitness=fitness.accurate(l1), ga_fitness=fitness.accurate(mask))
            ctx.log(f"channels {name}: GA fitness {row['ga_fitness']:.4f} vs L1 {row['l1_fitness']:.4f} "
                    f"({fitness.screens} screened, {fitness.scores} scored)")
        row["kept_channels"] = [int(i) for i in torch.nonzero(mask).flatten()]
        remove_channels(model, graph, group, mask)
        # the next group is scored on a model that is not already broken (no training: statistics only)
        bn_stats.reestimate_on(model, ctx.data.subset("train", step.recalibrate_size, seed + 2), ctx.batch_size,
                               None, seed + 2)
        report["layers"][name] = row
        ctx.finetune(model, step.finetune_epochs, step.lr, seed + 100 + position, stage + " fine-tune")
    ctx.finetune(model, step.final_epochs, step.lr, seed + 99, "channels fine-tune")
    model.eval()
    ctx.log("channels: kept " + ", ".join(f"{k}={v['kept']}/{v['channels']}" for k, v in report["layers"].items()))
    # Torch-Pruning's replay record of this step: the file stores it and the decoder replays it
    return StepResult(report, Products(channel_history=plain_history(graph.pruning_history())))
