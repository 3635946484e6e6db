"""Uniform integer quantization of weights (the int step): symmetric levels on a per-channel (or per-tensor) scale.

A layer of b bits stores integer levels in [-(2**(b-1) - 1), 2**(b-1) - 1] (symmetric: no zero point, so a pruned
zero is level 0 and stays exactly zero) and one float32 scale per output channel; the weight is
`scales[c] * levels`, computed in float32 the same way by the step, the decoder and the ONNX export.
"""

from __future__ import annotations

import torch

# the one formula of the step, the decoder and the export lives on the ground floor (storage may not import methods)
from complab.storage.int_section import dequantize, level_range  # noqa: F401 - this module's names too

OBSERVER_GRID = 100  # the mse observer tries this many clipping ratios of the channel's max |w|


def _rows(weight: torch.Tensor, granularity: str) -> torch.Tensor:
    """The weight as [scales, values per scale] (one row per output channel, or one row)."""
    flat = weight.detach().float()
    return flat.reshape(1, -1) if granularity == "tensor" else flat.reshape(flat.shape[0], -1)


def choose_scales(weight: torch.Tensor, bits: int, granularity: str = "channel", observer: str = "mse",
                  percentile: float = 99.99) -> torch.Tensor:
    """One float32 scale per output channel ([out]) or per tensor ([1]) from the weights' range.

    minmax: max |w| / qmax; percentile: the `percentile`-th percentile of |w| / qmax; mse: the clipping ratio (of
    OBSERVER_GRID in (0, 1]) whose rounded weights are closest to the original in squared error, per row."""
    rows = _rows(weight, granularity)
    qmax = level_range(bits)
    top = rows.abs().amax(dim=1)
    if observer == "percentile" and rows.shape[1] > 1:
        top = torch.quantile(rows.abs(), min(percentile, 100.0) / 100.0, dim=1)
    elif observer == "mse":
        best_error = torch.full_like(top, float("inf"))
        best = top.clone()
        for step in range(OBSERVER_GRID, 0, -1):
            ratio = step / OBSERVER_GRID
            scale = (top * ratio / qmax).clamp_min(torch.finfo(torch.float32).tiny)
            rounded = (rows / scale[:, None]).round().clamp(-qmax, qmax) * scale[:, None]
            error = ((rounded - rows) ** 2).sum(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best = torch.where(better, top * ratio, best)
        top = best
    scales = top / qmax
    # an all-zero row (a pruned-away channel) keeps scale 1: its levels are 0 whatever the scale
    return torch.where(scales > 0, scales, torch.ones_like(scales)).to(torch.float32)


def quantize_levels(weight: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest integer levels (int8, the weight's shape) of `weight` on `scales` (per row of _rows)."""
    qmax = level_range(bits)
    granularity = "tensor" if scales.numel() == 1 and weight.shape[0] != 1 else "channel"
    rows = _rows(weight, granularity)
    levels = (rows / scales.reshape(-1, 1).to(rows.device)).round().clamp(-qmax, qmax)
    return levels.reshape(weight.shape).to(torch.int8)


def quantize_weight(weight: torch.Tensor, bits: int, granularity: str = "channel", observer: str = "mse",
                    percentile: float = 99.99) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels int8 in the weight's shape, scales float32 [out] or [1]): nearest rounding on the observer's scale."""
    scales = choose_scales(weight, bits, granularity, observer, percentile)
    return quantize_levels(weight, scales, bits), scales
