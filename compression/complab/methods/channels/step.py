"""The channels step: prune each targeted channel group to its keep ratio (GA, L1 or random), least sensitive first."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from complab.methods import bn_stats
from complab.methods.channels.ga import Fitness, genetic_search
from complab.methods.channels.graph import (
    ChannelGroup,
    MaskedChannels,
    channel_groups,
    group_of,
    group_ratio,
    keep_count,
    l1_scores,
    remove_channels,
    top_mask,
)
from complab.methods.context import StepContext, StepResult
from complab.methods.registry import handler
from complab.models.channel_replay import build_graph, plain_history
from complab.models.compact import Products
from complab.steps.channels import ChannelStep

# Each stage of the step draws from its own random stream (offsets from the plan's seed + the step's
# seed), so one stage's draws never depend on how many another stage took. The values are arbitrary but
# fixed: changing one changes every result.
SCREEN_SEED = 1  # the cheap screen's validation images, apart from the fitness subset (drawn at offset 0)
RECALIBRATE_SEED = 2  # the training images that re-estimate batch norm after each group
GROUP_SEED_STRIDE = 1000  # group i's GA generator: seed * stride + i (its own stream per group)
GROUP_FINETUNE_SEED = 100  # + i: the data order of the fine-tuning after group i
FINAL_FINETUNE_SEED = 99  # the data order of the fine-tuning after the last group


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
    replaced, ignored = ctx.task.prepare_channel_pruning(model)  # (a detector's C2f made prunable, head kept)
    if replaced:
        ctx.log(f"channels: {len(replaced)} C2f modules made prunable (split replaced by two convolutions)")
    input_shape = tuple(ctx.task.input_shape)
    graph = build_graph(model, input_shape)
    groups = channel_groups(model, input_shape, graph, ignored)
    targets = {}
    for group in groups:
        ratio = group_ratio(step.keep_ratio, group)
        if ratio is not None and float(ratio) < 1.0:
            targets[group.name] = float(ratio)
    convolutions = {name for group in groups for name in group.members}
    # (its own name: `ignored` above is the layers kept whole, passed to every channel_groups call below; reusing it
    # for these keys made the later calls trace into YOLO11's attention, which ran for minutes)
    unused = [key for key in step.keep_ratio if key in ctx.layers and key not in convolutions]
    if unused:
        ctx.log(f"channels: keep_ratio of {', '.join(unused)} ignored (only convolutions' output channels are "
                "removed, and not those a grouped or depthwise-grouped convolution reads by groups; a classifier's "
                "outputs are its classes)")
    if not targets:
        ctx.log("channels: no convolution has a keep_ratio below 1; nothing to do")
        # a detector's C2f were replaced all the same: the file must record it to decode
        return StepResult({"c2f_replaced": replaced}, Products(c2f_replaced=replaced))
    seed = ctx.seed + step.seed
    device = next(model.parameters()).device
    accurate_scorer = ctx.make_scorer(step.fitness_size, seed, "fitness")
    if step.selection == "ga" or len(targets) > 1:
        sensitivity = _sensitivity(model, [g for g in groups if g.name in targets], accurate_scorer)
        order = sorted(targets, key=lambda name: -sensitivity[name])
    else:
        sensitivity, order = {}, list(targets)
    screen_images = None
    if step.selection == "ga":  # the cheap fitness's images
        screen_images = ctx.screen_images(step.screen_size, seed + SCREEN_SEED, device)
    report = {"selection": step.selection, "round_to": step.round_to, "order": order, "sensitivity": sensitivity,
              "layers": {}, "fitness": ctx.task.fitness_name}  # the accurate step: make_scorer(..., "fitness")
    for position, name in enumerate(order):
        ctx.check_cancelled()
        group = group_of(channel_groups(model, input_shape, graph, ignored), name)
        # the count is rounded before the choice, so every criterion fills the rounded count by its own importance
        # (L1: the largest filters; GA: masks with exactly that many ones)
        keep = keep_count(group.channels, targets[name], step.round_to)
        generator = torch.Generator().manual_seed(seed * GROUP_SEED_STRIDE + position)
        stage = f"channels {name} ({position + 1}/{len(order)})"
        row = {"members": group.members, "channels": group.channels, "kept": keep}
        if step.round_to > 1:
            row["kept_unrounded"] = keep_count(group.channels, targets[name])
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
        # the next group is scored on a model that is not already broken (no training: statistics only); a task
        # with its own recalibrator (a detector) gets it from ctx.finetune below, so the statistics are only
        # re-estimated once
        if ctx.task.statistics_between_groups:
            bn_stats.reestimate_on(model, ctx.data.subset("train", step.recalibrate_size, seed + RECALIBRATE_SEED),
                                   ctx.batch_size, None, seed + RECALIBRATE_SEED)
        report["layers"][name] = row
        ctx.finetune(model, step.finetune_epochs, step.lr, seed + GROUP_FINETUNE_SEED + position, stage + " fine-tune",
                     ema=step.ema)
    ctx.finetune(model, step.final_epochs, step.lr, seed + FINAL_FINETUNE_SEED, "channels fine-tune", ema=step.ema)
    model.eval()
    ctx.log("channels: kept " + ", ".join(f"{k}={v['kept']}/{v['channels']}" for k, v in report["layers"].items()))
    # Torch-Pruning's replay record of this step: the file stores it and the decoder replays it
    report["c2f_replaced"] = replaced
    return StepResult(report, Products(channel_history=plain_history(graph.pruning_history()),
                                       c2f_replaced=replaced))
