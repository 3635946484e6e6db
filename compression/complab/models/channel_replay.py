"""Torch-Pruning's dependency graph of a model, and the replay of a recorded channel pruning onto it.

The channels step (methods/channels/) records Torch-Pruning's `pruning_history()` (plain JSON: module
name, out-channels?, channel indices); the compact file stores it and `replay` re-applies it to a freshly
built architecture before the weights load, so a channel-pruned model decodes to its pruned shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from complab.errors import CompressionLabError, ModelLoadError


def torch_pruning():
    """The torch_pruning module (a CompressionLabError naming the install when it is missing)."""
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - torch-pruning is a dependency of the channels method
        raise CompressionLabError("channel pruning needs the torch-pruning package: "
                                  "pip install -c constraints.txt torch-pruning") from None
    return torch_pruning


def build_graph(model: nn.Module, input_shape: tuple[int, ...]):
    """Torch-Pruning's dependency graph of `model` traced on one zero input of shape (C, H, W)."""
    tp = torch_pruning()
    if isinstance(model, torch.jit.ScriptModule):
        raise CompressionLabError("channel pruning needs a Python model, not a TorchScript archive: load the "
                                  "architecture (torchvision:ARCH with its weights) instead")
    device = next(model.parameters()).device
    was_training = model.training
    # the tracer follows autograd from the parameters: a frozen one (Ultralytics loads a detector with
    # requires_grad off) left the layers before the first trainable one out of the graph, never pruned
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.eval()
    try:
        for parameter in frozen:
            parameter.requires_grad_(True)
        with torch.enable_grad():  # the tracer follows autograd: decoding inside torch.no_grad() must work too
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros((1, *input_shape),
                                                                                            device=device),
                                                          verbose=False)
    except Exception as exc:  # noqa: BLE001 - the tracer's errors mean one thing to a user
        raise CompressionLabError(f"channel pruning could not trace this model ({str(exc).splitlines()[0][:160]}): "
                                  "leave the channels step out for it") from None
    finally:
        model.train(was_training)
        for parameter in frozen:
            parameter.requires_grad_(False)
    return graph


def plain_history(history) -> list:
    """Torch-Pruning's pruning history as plain JSON lists: [module name, out-channels?, [indices]]."""
    return [[str(name), bool(out), [int(i) for i in idxs]] for name, out, idxs in history]


def replay(model: nn.Module, history: list, input_shape: tuple[int, ...]) -> nn.Module:
    """Re-apply a recorded channel pruning to a freshly built architecture (before its weights load)."""
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 3 for h in history):
        raise ModelLoadError("the file's channel-pruning record is damaged: re-export the model")
    graph = build_graph(model, input_shape)
    try:
        graph.load_pruning_history(plain_history(history))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot replay the file's channel pruning on its architecture ({exc}): "
                             "the file was written for another model") from None
    return model
