"""Channel-wise distillation of a YOLO's neck (Shu et al. 2021, "Channel-wise Knowledge Distillation for Dense
Prediction"): the student's feature maps that feed the Detect head learn the teacher's, channel by channel.

Each channel of a feature map [N, C, H, W] becomes a distribution over its H*W positions (softmax of the activations
divided by a temperature T); the loss is the KL divergence from the teacher's distribution to the student's, summed
over positions, averaged over channels and images, times T^2, averaged over the head's input levels (YOLOv8's
layers 15, 18 and 21). It tells the student where each channel fires, which is what box placement reads.

A channel-pruned student's neck has fewer channels than the teacher's: a learned 1x1 convolution per level (an
adapter, trained with the student and discarded after fine-tuning, never part of the model or its file) maps the
student's channels to the teacher's; a level whose channel counts match is compared directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cwd_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation loss over matching lists of [N, C, H, W] maps (equal shapes per level)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"channel-wise distillation needs one teacher map per student map, got {len(student)} "
                         f"and {len(teacher)}")
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"channel-wise distillation compares maps of one shape, got {tuple(s.shape)} and "
                             f"{tuple(t.shape)}: map the student's channels with an adapter first")
        n, c = s.shape[:2]
        s_log = F.log_softmax(s.reshape(n * c, -1) / temperature, 1)
        t_log = F.log_softmax(t.detach().reshape(n * c, -1) / temperature, 1)
        total = total + (t_log.exp() * (t_log - s_log)).sum(1).mean() * temperature ** 2
    return total / len(student)


class NeckFeatures:
    """The inputs of a YOLO's Detect head (its last module), captured on every forward by a pre-hook."""

    def __init__(self, model: nn.Module) -> None:
        self.maps: list[torch.Tensor] = []
        self._handle = model.model[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        self.maps = list(args[0])

    def remove(self) -> None:
        self._handle.remove()


class Adapters(nn.Module):
    """One 1x1 convolution per level from the student's channels to the teacher's (identity where they match)."""

    def __init__(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> None:
        super().__init__()
        self.maps = nn.ModuleList()
        for s, t in zip(student, teacher, strict=True):
            if s.shape[1] == t.shape[1]:
                self.maps.append(nn.Identity())
            else:
                conv = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False).to(s.device)
                self.maps.append(conv)

    @property
    def learned(self) -> int:
        """How many levels go through a learned 1x1 convolution."""
        return sum(isinstance(m, nn.Conv2d) for m in self.maps)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [adapter(x) for adapter, x in zip(self.maps, maps, strict=True)]
