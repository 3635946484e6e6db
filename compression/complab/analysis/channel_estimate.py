"""Live estimate of what channel pruning removes: parameters, FLOPs and bytes per layer, without running the model.

Removing a fraction of a convolution's output channels shrinks that convolution (and its BatchNorm)
along the output axis and every layer reading those channels along the input axis. `channel_layout`
finds, once per model, which channel group each layer's outputs and inputs belong to (Torch-Pruning's
dependency graph; coupled convolutions share a group); `channel_factors` then gives each weight layer
the fraction of its weights (and FLOPs) that remains, which the plan page multiplies into its estimate.
The run measures the real model; this is exact for weights and FLOPs of convolutions and linear layers.

A YOLO detector is traced as the channels step prunes it: its C2f made prunable (the split becomes two
convolutions, both named by the C2f's `cv1` in a plan), the Detect head's prediction outputs and the attention
layers left whole (methods/channels/detector.ignored_layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from complab.methods.channels.graph import channel_groups, keep_count, original_names
from complab.methods.tasks import task_class
from complab.models.tasks import task_kind
from complab.plan import resolve


@dataclass(frozen=True)
class ChannelLayout:
    groups: dict[str, tuple[str, ...]]  # plan key (the group's first convolution) -> member convolutions (plan names)
    channels: dict[str, int]  # plan key -> channels (summed over its parts)
    out_group: dict[str, str]  # weight layer -> the plan key its output channels belong to
    in_group: dict[str, str]  # weight layer -> a plan key its input channels come from
    # weight layer -> {plan key: how many of its inputs that group feeds} (a concatenation reads several groups)
    in_shares: dict[str, dict[str, int]] = field(default_factory=dict)
    in_width: dict[str, int] = field(default_factory=dict)  # weight layer -> its inputs
    # plan key -> channels of each group it names: one plan key can name several groups (a detector's C2f `cv1`
    # is two convolutions once made prunable, each pruned to the key's ratio)
    parts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)  # plan key -> the block it belongs to (detectors)

    def kept(self, key: str, ratio: float | None, round_to: int = 1) -> int:
        """Channels the step keeps of the group(s) a plan key names at `ratio` (None: all), each part's count rounded
        to a multiple of `round_to` as the step rounds it (1: not rounded)."""
        if ratio is None or ratio >= 1.0:
            return self.channels[key]
        return sum(keep_count(n, float(ratio), round_to) for n in self.parts.get(key, (self.channels[key],)))


def channel_layout(model: nn.Module, input_shape: tuple[int, ...], task: str = "classify") -> ChannelLayout:
    """Channel groups of a model and which group feeds / is fed by each weight layer (cache it per model).

    The model (a copy: it may be changed) is prepared by its task as the channels step prepares it (a detector:
    made prunable, its head's outputs left whole), so the groups and the estimate are the step's; a YOLO block
    refused by the step raises PlanError here too (RT-DETR's blocks: before any trace)."""
    by_block = task_kind(task).groups_channels_by_block
    labels = block_labels(model) if by_block else {}  # before the preparation: blocks named as the user knows them
    _, ignored = task_class(task).prepare_channel_pruning(model)
    blocks = {}
    original = original_names(model)
    names = {module: name for name, module in model.named_modules()}
    groups, channels, parts, out_group = {}, {}, {}, {}
    fed: dict[str, dict[str, torch.Tensor]] = {}  # consumer (this model's name) -> {key: which inputs it feeds}
    for group in channel_groups(model, input_shape, ignored=ignored):
        key = group.key
        members = tuple(dict.fromkeys(original.get(m, m) for m in group.members))  # as the plan names them
        groups[key] = tuple(dict.fromkeys(groups.get(key, ()) + members))
        channels[key] = channels.get(key, 0) + group.channels
        parts[key] = parts.get(key, ()) + (group.channels,)
        for member in group.members:
            out_group[original.get(member, member)] = key
        for module, roots in group.consumers:
            masks = fed.setdefault(names[module], {})
            masks[key] = masks[key] | (roots >= 0) if key in masks else roots >= 0
    in_group, in_shares, in_width = {}, {}, {}
    for name, masks in fed.items():  # the halves of one original layer read the same inputs: either one says it
        layer = original.get(name, name)
        if layer in in_shares:
            continue
        in_shares[layer] = {key: int(mask.sum()) for key, mask in masks.items()}
        in_width[layer] = len(next(iter(masks.values())))
        in_group[layer] = max(in_shares[layer], key=in_shares[layer].get)
    if by_block:
        blocks = {key: block_label(labels, key) for key in groups}
    return ChannelLayout(groups, channels, out_group, in_group, in_shares, in_width, parts, blocks)


def block_labels(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """An Ultralytics model's blocks ("model.2", ...) -> (their type's name, whether it is a Detect head)."""
    return {name: (type(module).__name__, hasattr(module, "dfl"))  # a Detect head holds the DFL
            for name, module in model.named_modules() if name.count(".") == 1 and name.split(".")[1].isdigit()}


def block_label(labels: dict[str, tuple[str, bool]], layer: str) -> str:
    """The block a layer belongs to, as the page shows it: "model.2 · C2f", "model.22 · Detect (box branch)"
    (a Detect head's cv2 predicts the box distribution, its cv3 the class scores)."""
    parts = layer.split(".")
    block = ".".join(parts[:2])
    if block not in labels:
        return ""
    kind, detect = labels[block]
    branch = {"cv2": "box branch", "cv3": "class branch"}.get(parts[2] if len(parts) > 2 else "")
    return f"{block} · {kind}" + (f" ({branch})" if detect and branch else "")


def group_keep(layout: ChannelLayout, keep_ratio: dict[str, float], round_to: int = 1) -> dict[str, float]:
    """Plan key -> kept fraction (the channels the step will keep, rounded as its round_to says, over the group's
    channels)."""
    out = {}
    for name, n in layout.channels.items():
        ratio = resolve(keep_ratio, name)
        named = [float(keep_ratio[m]) for m in layout.groups[name][1:] if m in keep_ratio]
        if name not in keep_ratio and named:  # as the channels step reads a key on another coupled member
            ratio = min(named)
        out[name] = layout.kept(name, ratio, round_to) / n
    return out


def channel_factors(layout: ChannelLayout, keep_ratio: dict[str, float], layers: list[str],
                    round_to: int = 1) -> dict[str, float]:
    """Weight layer -> fraction of its weights left after channel pruning (output kept x input kept); round_to: the
    channels step's option (kept counts rounded to its multiples)."""
    kept = group_keep(layout, keep_ratio, round_to)
    out = {}
    for layer in layers:
        shares = layout.in_shares.get(layer)
        if shares:  # each group's inputs kept at its fraction, inputs no group feeds stay
            width = layout.in_width[layer]
            inputs = (width - sum(shares.values()) + sum(n * kept.get(key, 1.0) for key, n in shares.items())) / width
        else:
            inputs = kept.get(layout.in_group.get(layer, ""), 1.0)
        out[layer] = kept.get(layout.out_group.get(layer, ""), 1.0) * inputs
    return out


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
