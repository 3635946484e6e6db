"""The layer table the model page shows: type, shape, parameters and share of FLOPs per prunable layer."""

from __future__ import annotations

import pandas as pd
import torch

from complab import metrics
from complab.models.handle import ModelHandle


def layer_table(handle: ModelHandle) -> pd.DataFrame:
    """One row per prunable layer, in model order."""
    total, per_module = metrics.layer_flops(handle.model, handle.input_shape)
    rows = []
    modules = dict(handle.model.named_modules())  # (get_submodule refuses a TorchScript model)
    for name, weight in handle.prunable_layers().items():
        module = modules.get(name, handle.model)
        layer_flops = per_module.get(name, 0)
        rows.append({
            "layer": name,
            "type": getattr(module, "original_name", type(module).__name__),
            "shape": "x".join(str(s) for s in weight.shape),
            "params": weight.numel(),
            "nonzero": int(torch.count_nonzero(weight)),
            "flops": layer_flops,
            "flops_share": layer_flops / total if total else 0.0,
        })
    return pd.DataFrame(rows)
