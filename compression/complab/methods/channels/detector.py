"""Structured channel pruning of an Ultralytics YOLO detector: C2f made prunable, then every group to one keep ratio.

Ultralytics' C2f splits a tensor by a stored count, which Torch-Pruning's dependency graph cannot follow;
`models.yolo_prunable.make_prunable` first replaces each C2f by an output-identical split-free C2fV2. The
graph is then built as for any model (graph.py) and every channel group is pruned to `keep_ratio` by the
criterion the channels step offers (L1 norm of the filters, Li et al. 2017, or random), except groups
that would remove outputs of the Detect head's final prediction convolutions (box distribution `cv2.*.2`,
class scores `cv3.*.2`, the same layers the detector keeps out of every method: models.detector.HEAD_SKIP)
or of its DFL (a fixed projection of the box distribution): their inputs shrink with the layers that feed
them, their outputs stay the boxes and scores Ultralytics decodes. Attention (YOLO11's C2PSA, YOLOv10's PSA,
YOLO12's A2C2f) is pruned around: its layers and the convolutions a block splits by a stored count keep their
channels (yolo_prunable.kept_whole), as do the groups coupled to them; everything else is pruned.

All masks are chosen on the unpruned model, then removed group by group through the one graph, so the
choice of one group does not depend on the order the others were removed in. The record is Torch-Pruning's
`pruning_history()` as plain JSON plus the names of the replaced C2f modules: what a decoder needs to
rebuild the pruned architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from complab.methods.channels.graph import channel_groups, keep_count, l1_scores, remove_channels, top_mask
from complab.models.channel_replay import build_graph, plain_history
from complab.models.detector import HEAD_SKIP
from complab.models.yolo_env import offline_ultralytics
from complab.models.yolo_prunable import check_prunable, kept_modules, kept_whole, make_prunable
from complab.steps.channels import DETECTOR_ROUND_TO

SELECTIONS = ("l1", "random")  # the channels step's one-shot criteria (its GA needs a scorer and data)


@dataclass
class DetectorPruning:
    """What pruning a detector did: the replaced C2f modules, the replay record and each group's widths."""

    replaced: list[str]  # C2f modules replaced by C2fV2 (names in the model), in model order
    history: list  # Torch-Pruning's pruning history as plain JSON (channel_replay.plain_history)
    layers: dict[str, dict] = field(default_factory=dict)  # group name -> {"members", "channels", "kept"}
    kept_whole: list[str] = field(default_factory=list)  # modules whose channels were kept (attention, split convs)


def head_outputs(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels must stay: the Detect head's final convolutions and its DFL."""
    offline_ultralytics()
    from ultralytics.nn.modules.block import DFL

    return [module for name, module in model.named_modules() if HEAD_SKIP.fullmatch(name) or isinstance(module, DFL)]


def ignored_layers(model: nn.Module) -> tuple[nn.Module, ...]:
    """The layers whose output channels the channels step keeps: the head's prediction outputs (head_outputs) and
    the attention layers and split convolutions (yolo_prunable.kept_modules)."""
    return (*head_outputs(model), *kept_modules(model))


def prune_detector(model: nn.Module, keep_ratio: float, input_shape: tuple[int, int, int],
                   selection: str = "l1", seed: int = 0, round_to: int = DETECTOR_ROUND_TO) -> DetectorPruning:
    """Make the detector's C2f prunable and remove channels of every prunable group down to `keep_ratio`, in place.

    round_to: each group's kept count rounded to a multiple of it (graph.keep_count; 1 = off; 16 by default for
    detectors: steps/channels.DETECTOR_ROUND_TO).

    Raises PlanError, with the model untouched, on a block the channels step cannot prune yet (yolo_prunable.
    check_prunable: RT-DETR's blocks, YOLOv9's ADown)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], not {keep_ratio}")
    check_prunable(model)  # a block the graph cannot follow is refused before anything changes
    replaced = make_prunable(model)
    graph = build_graph(model, tuple(input_shape))
    groups = channel_groups(model, tuple(input_shape), graph, ignored=ignored_layers(model))
    generator = torch.Generator().manual_seed(seed)
    masks, layers = [], {}
    for group in groups:
        keep = keep_count(group.channels, keep_ratio, round_to)
        scores = l1_scores(group) if selection == "l1" else torch.rand(group.channels, generator=generator)
        masks.append((group, top_mask(scores, keep)))
        layers[group.name] = {"members": group.members, "channels": group.channels, "kept": keep}
    for group, mask in masks:
        remove_channels(model, graph, group, mask)
    model.eval()
    return DetectorPruning(replaced, plain_history(graph.pruning_history()), layers, kept_whole(model))
