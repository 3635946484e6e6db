"""Where a model runs: the device its parameters live on, and the default device for new work (CUDA if present)."""

from __future__ import annotations

import torch
from torch import nn


def device_for(model: nn.Module) -> torch.device:
    """The device a model's parameters live on (CPU for a parameter-less model)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
