"""Channel groups from Torch-Pruning's dependency graph, masking hooks, the L1 criterion and physical removal.

A "channel group" is Torch-Pruning's group rooted at a convolution's output channels: every convolution
whose output channels are removed together (coupled by residual adds) and every layer reading them.
Masking a group zeroes its dropped channels at the inputs of those consumer layers (forward pre-hooks),
which gives exactly the outputs the physically pruned model gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from complab.layermap import DEFAULT_KEY, resolve
from complab.models.channel_replay import build_graph, torch_pruning
from complab.models.yolo_prunable import DEPTHWISE_FLAG


@dataclass
class ChannelGroup:
    """One pruning decision: convolutions whose output channels are removed together."""

    name: str  # the first convolution (model order): the plan's key for this group
    members: list[str]  # every convolution whose output channels this group removes
    channels: int  # channels in the group
    consumers: list[tuple[nn.Module, torch.Tensor]]  # (layer reading the channels, group channel of each input)
    out_weights: list[torch.Tensor]  # weights of the member convolutions (for the L1 criterion)
    key: str = ""  # the plan's name for it: `name`, or the original model's layer a replacement module split

    def __post_init__(self) -> None:
        self.key = self.key or self.name


def original_names(model: nn.Module) -> dict[str, str]:
    """Layer -> its name in the model before a module was replaced to make it prunable.

    A plan names layers of the model the user loaded; a replacement module (a detector's C2fV2, whose `cv0`
    and `cv1` are the two halves of the C2f's `cv1`) lists its layers' original names in `original_names`."""
    out = {}
    for name, module in model.named_modules():
        for child, original in getattr(module, "original_names", {}).items():
            out[f"{name}.{child}" if name else child] = f"{name}.{original}" if name else original
    return out


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], graph=None,
                   ignored: tuple[nn.Module, ...] = (), depthwise: bool | None = None) -> list[ChannelGroup]:
    """The convolution channel groups of a model, in model order (coupled convolutions share a group).

    A group that would remove output channels of an `ignored` layer is left out (its inputs may still shrink):
    a detector's final prediction convolutions, whose outputs are boxes and class scores, and its attention layers.
    depthwise: whether a group holding a depthwise convolution (one filter per input channel) is pruned, the
    depthwise convolution losing the same channels as its input; None: when the model says so (a detector made
    prunable: yolo_prunable.DEPTHWISE_FLAG). Otherwise, as for a classifier, such groups are left alone.
    """
    graph = graph if graph is not None else build_graph(model, input_shape)
    if depthwise is None:
        depthwise = bool(getattr(model, DEPTHWISE_FLAG, False))
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    original = original_names(model)
    groups = []
    for group in graph.get_all_groups(ignored_layers=list(ignored),
                                       root_module_types=(nn.Conv2d, nn.Conv1d, nn.Conv3d)):
        members, consumers, weights = [], [], []
        for item in group:
            dep = item.dep
            module = dep.target.module
            if not isinstance(module, nn.Module) or module not in names:
                continue
            if isinstance(module, nn.modules.conv._ConvNd) and graph.is_out_channel_pruning_fn(dep.handler):
                if module.groups > 1 and not (depthwise and module.groups == module.in_channels
                                              == module.out_channels):
                    members = []  # grouped (and, unless asked, depthwise) convolutions are left alone
                    break
                members.append(names[module])
                weights.append(module.weight)
            elif isinstance(module, nn.modules.conv._ConvNd | nn.Linear) and graph.is_in_channel_pruning_fn(
                    dep.handler):
                if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
                    # a grouped convolution (RegNet, ResNeXt) can only lose whole groups of its inputs; removing
                    # single channels from it left the model inconsistent (Torch-Pruning crashed on RegNetY's
                    # next layer), so these groups are left alone, like grouped convolutions' own outputs
                    members = []
                    break
                width = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
                roots = torch.full((width,), -1, dtype=torch.long)  # -1: an input this group does not feed
                roots[torch.as_tensor([int(i) for i in item.idxs])] = torch.as_tensor([int(i) for i in item.root_idxs])
                consumers.append((module, roots))
        if not members:
            continue
        members.sort(key=order.get)
        channels = int(weights[0].shape[0])
        groups.append(ChannelGroup(members[0], members, channels, consumers, weights,
                                   original.get(members[0], members[0])))
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
            scale = input_scale(self.keep, roots)
            self.handles.append(module.register_forward_pre_hook(_input_mask(scale)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def input_scale(keep: torch.Tensor, roots: torch.Tensor) -> torch.Tensor:
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
    """The keep ratio a plan gives a group: its first convolution's value (by that name or by the original model's
    name for it), else the smallest value a plan key names for another member exactly (coupled convolutions share
    one decision), else a re: pattern or _default."""
    names = dict.fromkeys((group.name, group.key))
    for name in names:
        if name in keep_ratio:
            return keep_ratio[name]
    named = [float(keep_ratio[m]) for m in group.members[1:] if m in keep_ratio]
    if named:
        return min(named)
    patterns = {key: value for key, value in keep_ratio.items() if key != DEFAULT_KEY}
    for name in names:
        ratio = resolve(patterns, name)
        if ratio is not None:
            return ratio
    return keep_ratio.get(DEFAULT_KEY)


def l1_scores(group: ChannelGroup) -> torch.Tensor:
    """Li et al. (2017): the L1 norm of each output filter, summed over the coupled convolutions."""
    return sum(w.detach().abs().flatten(1).sum(1).cpu() for w in group.out_weights)


def top_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[torch.argsort(scores, descending=True, stable=True)[:keep]] = True
    return mask


def keep_count(channels: int, keep_ratio: float, round_to: int = 1) -> int:
    """The channels a group keeps at a keep ratio: round(keep_ratio * channels), at least one.

    round_to > 1 (8, 16: runtimes' convolution kernels vectorize over 8 or 16 channels): that count rounded to the
    nearest multiple of round_to (halves up), never 0 and never above the group's width; a group no wider than
    round_to, or kept whole, is left as it is."""
    kept = max(1, min(channels, int(round(keep_ratio * channels))))
    if round_to <= 1 or channels <= round_to or kept >= channels:
        return kept
    return min(channels, max(round_to, (kept + round_to // 2) // round_to * round_to))


def remove_channels(model: nn.Module, graph, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Physically remove the group's dropped channels (and every coupled slice) from the model."""
    tp = torch_pruning()
    drop = [int(i) for i in torch.nonzero(~keep).flatten()]
    if not drop:
        return
    root = model.get_submodule(group.name)
    graph.get_pruning_group(root, tp.prune_conv_out_channels, drop).prune()
