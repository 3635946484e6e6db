"""Which layer do a compressed classifier's flips trace back to? Ablation, or the sensitivity report's prediction.

Same architecture (same tensor names and shapes, e.g. pruning, sharing, quantization): an **ablation**. For each
layer whose tensors differ between the two models, the original with only that layer's decoded tensors swapped
in is run on the flipped images only (those the two models answer differently), and the flips it reproduces
(it answers as the compressed model does) are counted: share = reproduced / flips. A layer that alone reproduces
most flips is where they come from; shares of several layers may sum past 1 (a flip several layers each cause)
or stay under it (a flip only their combination causes). The swapped-in model carries no 8-bit activation hooks
(models/actquant): an int8 file's activation rounding is not attributed to a layer.

Different architectures (channel pruning) and a sensitivity report of the original: the layers ranked by the
drop the report predicts for each alone at the run's settings (the plan in the compressed file's meta) -
"sensitivity". Otherwise the method is None and the note says why.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

TOP_LAYERS = 12  # layers listed at most


def _module_of(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0] or tensor_name


def same_architecture(before: torch.nn.Module, after: torch.nn.Module) -> bool:
    """Whether the two models hold the same tensor names with the same shapes."""
    state_a, state_b = before.state_dict(), after.state_dict()
    return state_a.keys() == state_b.keys() and all(state_a[k].shape == state_b[k].shape for k in state_a)


def changed_layers(before: torch.nn.Module, after: torch.nn.Module) -> list[str]:
    """Modules (by name, in model order) any of whose tensors differ between two same-architecture models."""
    state_a, state_b = before.state_dict(), after.state_dict()
    layers: list[str] = []
    for name, tensor in state_a.items():
        other = state_b[name]
        if not torch.equal(tensor.detach().cpu(), other.detach().cpu().to(tensor.dtype)):
            module = _module_of(name)
            if module not in layers:
                layers.append(module)
    return layers


@torch.no_grad()
def _answers(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    from complab.metrics import device_for

    model.eval()
    return model(images.to(device_for(model))).argmax(1).cpu().numpy()


def _ablation(before, after, dataset, flipped: np.ndarray, answers_b: np.ndarray) -> dict:
    layers = changed_layers(before.model, after.model)
    images = torch.stack([dataset[int(i)][0] for i in flipped])
    wanted = answers_b[flipped]
    state_b = after.model.state_dict()
    rows = []
    for layer in layers:
        hybrid = copy.deepcopy(before.model)
        state = hybrid.state_dict()
        for name in state:
            if _module_of(name) == layer:
                state[name] = state_b[name].detach().clone().to(state[name].dtype)
        hybrid.load_state_dict(state)
        reproduced = int(np.sum(_answers(hybrid, images) == wanted))
        rows.append({"layer": layer, "flips_reproduced": reproduced, "share": reproduced / len(flipped)})
    rows.sort(key=lambda row: -row["flips_reproduced"])
    note = (f"{len(layers)} changed layer(s), each swapped alone into the original and run on the "
            f"{len(flipped)} flipped image(s)")
    return {"method": "ablation", "layers": rows[:TOP_LAYERS], "note": note}


def _sensitivity(before, after, report: dict) -> dict:
    from complab.analysis.estimate import plan_settings
    from complab.analysis.predict import layer_drop
    from complab.errors import CompressionLabError
    from complab.plan import Plan

    recorded = (after.file_meta or {}).get("plan")
    if not isinstance(recorded, dict):
        return {"method": None, "layers": [], "note": "the architectures differ and the compressed file records no "
                                                      "plan to read its settings from"}
    try:
        plan = Plan.from_dict(recorded)
        layers = list(before.prunable_layers())
        settings = plan_settings(plan.steps, layers)[0]
        drops = [(layer, layer_drop(report, layer, sparsity, clusters))
                 for layer, (sparsity, clusters) in settings.items()]
    except (CompressionLabError, KeyError, TypeError, ValueError) as exc:
        return {"method": None, "layers": [], "note": f"the sensitivity report does not fit this model ({exc})"}
    known = sorted(((layer, drop) for layer, drop in drops if drop is not None), key=lambda item: -item[1])
    total = sum(max(0.0, drop) for _, drop in known)
    rows = [{"layer": layer, "predicted_drop": float(drop), "share": max(0.0, drop) / total if total > 0 else 0.0}
            for layer, drop in known[:TOP_LAYERS]]
    return {"method": "sensitivity", "layers": rows,
            "note": "the architectures differ (channels removed): layers ranked by the drop the sensitivity report "
                    "predicts for each alone at the run's settings"}


def trace_flips(before, after, dataset, flipped: np.ndarray, answers_b: np.ndarray,
                sensitivity: dict | None = None) -> dict:
    """{"method": "ablation" | "sensitivity" | None, "layers": [...], "note": str} (module docstring)."""
    if not len(flipped):
        return {"method": None, "layers": [], "note": "no flips: the two models answer every image alike"}
    if same_architecture(before.model, after.model):
        return _ablation(before, after, dataset, flipped, answers_b)
    if sensitivity is not None:
        return _sensitivity(before, after, sensitivity)
    return {"method": None, "layers": [], "note": "the architectures differ (channels removed) and no sensitivity "
                                                  "report of the original was given to rank the layers"}
