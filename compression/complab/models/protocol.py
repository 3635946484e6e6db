"""The one interface every model handle offers (a classifier's ModelHandle, a detector's DetectorHandle), and the
facts about its task that callers ask instead of testing which task it is.

A caller never branches on the task's name: it asks the handle (`handle.kind.folds_batch_norm`,
`handle.skipped_layers()`, `handle.export_graph()`); how a task fine-tunes, scores, screens and re-estimates
batch norm is one object, methods/task.py's `Task`, made for a handle and its data (`task_for`). A new task is a
new handle module that sets its `TaskKind` and its `Task`, plus its row in models/tasks.py and methods/task.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class TaskKind:
    """What a task is, as the pipeline, the analyses, the CLI and the pages ask it (no data needed)."""

    name: str  # recorded in every compact file and metrics.json ("classify", "detect")
    score_name: str  # what its score is called where it is plotted as "accuracy" ("accuracy", "mAP50")
    score_label: str  # the score in a sentence ("top-1 accuracy", "mAP50")
    score_short: str  # the score in a headline or a table ("top-1", "mAP50")
    # the score is the share of images classified right: a whole number of images, shown as a percentage
    score_counts_images: bool
    finds_boxes: bool  # it finds objects in images: its pages show mAP and boxes
    chooses_split: bool  # its score is measured on a split the person chooses (a detector: its validation images)
    normalizes_input: bool  # it reads images normalised with the data's mean and std (recorded in its file)
    folds_batch_norm: bool  # a plan's fold_bn step can fold its batch norms into its convolutions
    groups_channels_by_block: bool  # the channel groups are shown under the model block they belong to
    # a sensitivity analysis' defaults for this task where they differ from SensitivityConfig's
    analysis_defaults: dict = field(default_factory=dict)
    # the Plan page's "round kept channels to a multiple of" default (the channels step's round_to; 1 = off)
    channel_round_to: int = 1


@runtime_checkable
class Handle(Protocol):
    """A loaded model, the record that rebuilds it and what its task answers (models/handle.py, detector.py)."""

    kind: ClassVar[TaskKind]
    task: ClassVar[str]  # kind.name
    score_name: ClassVar[str]  # kind.score_name
    model: nn.Module
    architecture: dict  # the JSON-friendly record a compact file stores to rebuild the model
    label: str
    # channel-pruning replay records already applied to this model (a decoded channel-pruned file)
    channel_history: list
    # modules replaced by prunable equivalents before channels were removed (a detector's C2f; the decoder repeats
    # the replacement before it replays channel_history); empty for a classifier
    c2f_replaced: list
    file_meta: dict | None  # the compact file's meta this model was decoded from (its data reference, plan)
    source_file: str | None  # the user's file it was read from (a TorchScript archive, an Ultralytics checkpoint)
    # weight tensor name -> storage.int_section.IntWeights: the layers its compact file stored as integer levels and
    # scales ({} for a float model); a decoded model also carries the file's 8-bit activation hooks (models/actquant)
    int_weights: dict

    @property
    def input_shape(self) -> tuple[int, int, int]: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def mean(self) -> tuple[float, ...] | None: ...

    @property
    def std(self) -> tuple[float, ...] | None: ...

    def save(self, path, extra: dict | None = None, products=None) -> int:
        """Write this model as a compact file (models/compact_writer.write_compact); bytes written."""

    def compact_meta(self) -> dict:
        """What the compact file records to rebuild this model (models/compact.write_compact)."""

    def score(self, model: nn.Module, data, split: str = ...) -> float:
        """The task's score of `model` (this one or a compressed copy of it) on `data`."""

    def measure(self, data, split: str = ..., latency: bool = True) -> dict:
        """The score (as "accuracy"), sizes, FLOPs and (optionally) CPU latency."""

    def deployed_model(self) -> nn.Module:
        """The model as it runs at inference, what its CPU latency is timed on (a detector: a fused copy)."""

    def prunable_layers(self) -> dict[str, torch.Tensor]:
        """Layer name -> weight of every layer compression may change, in model order."""

    def skipped_layers(self) -> list[str]:
        """Weight layers kept out of compression (a detector's head outputs), in model order."""

    def layer_kinds(self) -> dict[str, str]:
        """Weight tensor name -> "conv" or "fc" (the compact file's position field width depends on it)."""

    def clone(self) -> Handle:
        """A deep copy: models cached by the app are shared, so never change one in place."""

    def export_graph(self) -> tuple[nn.Module, torch.Tensor, str, str]:
        """(module to trace, example input, input name, output name) for TorchScript and ONNX export."""
