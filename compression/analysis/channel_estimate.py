"""Live estimate of what channel pruning removes: parameters, FLOPs and bytes per layer, without running the model.

Removing a fraction of a convolution's output channels shrinks that convolution (and its BatchNorm)
along the output axis and every layer reading those channels along the input axis. `channel_layout`
finds, once per model, which channel group each layer's outputs and inputs belong to (Torch-Pruning's
dependency graph; coupled convolutions share a group); `channel_factors` then gives each weight layer
the fraction of its weights (and FLOPs) that remains, which the plan page multiplies into its estimate.
The run measures the real model; this is exact for weights and FLOPs of convolutions and linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compression.plan import resolve


@dataclass(frozen=True)
class ChannelLayout:
    groups: dict[str, tuple[str, ...]]  # group name (its first convolution) -> member convolutions
    channels: dict[str, int]  # group name -> channels
    out_group: dict[str, str]  # weight layer -> the group its output channels belong to
    in_group: dict[str, str]  # weight layer -> the group its input channels come from


def channel_layout(model: nn.Module, input_shape: tuple[int, ...]) -> ChannelLayout:
    """Channel groups of a model and which group feeds / is fed by each weight layer (cache it per model)."""
    from compression.methods.channels.graph import channel_groups

    names = {module: name for name, module in model.named_modules()}
    groups, channels, out_group, in_group = {}, {}, {}, {}
    for group in channel_groups(model, input_shape):
        groups[group.name] = tuple(group.members)
        channels[group.name] = group.channels
        for member in group.members:
            out_group[member] = group.name
        for module, _ in group.consumers:
            in_group[names[module]] = group.name
    return ChannelLayout(groups, channels, out_group, in_group)


def group_keep(layout: ChannelLayout, keep_ratio: dict[str, float]) -> dict[str, float]:
    """Group -> kept fraction (the channel count the step will keep, over the group's channels)."""
    from compression.methods.channels.graph import keep_count

    out = {}
    for name, n in layout.channels.items():
        ratio = resolve(keep_ratio, name)
        named = [float(keep_ratio[m]) for m in layout.groups[name][1:] if m in keep_ratio]
        if name not in keep_ratio and named:  # as the channels step reads a key on another coupled member
            ratio = min(named)
        out[name] = 1.0 if ratio is None or ratio >= 1.0 else keep_count(n, float(ratio)) / n
    return out


def channel_factors(layout: ChannelLayout, keep_ratio: dict[str, float], layers: list[str]) -> dict[str, float]:
    """Weight layer -> fraction of its weights left after channel pruning (output kept x input kept)."""
    kept = group_keep(layout, keep_ratio)
    return {layer: kept.get(layout.out_group.get(layer, ""), 1.0) * kept.get(layout.in_group.get(layer, ""), 1.0)
            for layer in layers}


def apply_channels(est: dict, stats, factors: dict[str, float], sparsity: dict[str, float] | None = None) -> dict:
    """Scale a size/FLOPs estimate (analysis.estimate.estimate's dict) by the channel factors.

    sparsity: layer -> the prune step's sparsity (it applies to what the channels step leaves)."""
    sparsity = sparsity or {}
    per_layer = est.get("per_layer_bytes", {})
    removed_bytes = sum(size * (1.0 - factors.get(name, 1.0)) for name, size in per_layer.items())
    removed_flops = removed_sparse = removed_params = 0.0
    for name, layer in stats.layers.items():
        gone = 1.0 - factors.get(name, 1.0)
        removed_flops += layer.flops * gone
        removed_sparse += layer.flops * gone * (1.0 - sparsity.get(name, 0.0))
        removed_params += layer.numel * gone
    compressed = max(1.0, est["compressed_bytes"] - removed_bytes)
    return {**est, "compressed_bytes": int(round(compressed)), "ratio": stats.fp32_bytes / compressed,
            "channel_flops": int(round(est["flops"] - removed_flops)),
            "sparse_flops": int(round(est["sparse_flops"] - removed_sparse)),
            "weights_removed_by_channels": int(round(removed_params)),
            "per_layer_bytes": {n: size * factors.get(n, 1.0) for n, size in per_layer.items()}}
