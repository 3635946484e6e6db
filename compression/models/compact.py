"""Save a compressed classifier as a compact file and load it back into a working model (no unpickling)."""

from __future__ import annotations

from pathlib import Path

import torch

from compression import __version__
from compression.errors import FormatError, ModelLoadError
from compression.models.handle import ModelHandle, build_architecture
from compression.storage import read_file, write_file


def save_compressed(handle: ModelHandle, path: str | Path, extra: dict | None = None) -> int:
    """Encode the handle's model into our compact format; returns the bytes written."""
    meta = {
        "producer": f"compression-lab {__version__}",
        "task": "classify",
        "architecture": handle.architecture,
        "input_shape": list(handle.input_shape),
        "num_classes": handle.num_classes,
        "label": handle.label,
        "mean": list(handle.mean) if handle.mean else None,
        "std": list(handle.std) if handle.std else None,
        **(extra or {}),
    }
    history = getattr(handle.model, "clab_channel_history", None)
    if history:  # channels were removed: the decoder replays this record on the built architecture
        meta["channel_pruning"] = history
    # x + 0.0 == x for every x except -0.0, which becomes +0.0: pruned weights (w * 0) keep the sign bit,
    # and the bit-exact codec would otherwise have to store every negative zero as a non-zero
    state = {k: (v.detach().cpu() + 0.0 if v.is_floating_point() else v.detach().cpu())
             for k, v in handle.model.state_dict().items()}
    # vector-quantized layers (methods/vq.py) leave their codebooks + codes on the model: stored as "vq" sections
    structures = getattr(handle.model, "clab_vq_structures", None)
    return write_file(path, state, meta, handle.layer_kinds(), structures=structures)


def handle_from_decoded(meta: dict, state: dict[str, torch.Tensor], base_file: str | Path | None = None,
                        source: str = "file") -> ModelHandle:
    """Rebuild the recorded architecture and load the decoded tensors into it."""
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict):
        raise FormatError(f"{source} records no architecture: it was not written by Compression Lab's compress")
    model = build_architecture(architecture, base_file)
    if meta.get("channel_pruning"):
        from compression.methods.channels import replay

        replay(model, meta["channel_pruning"], tuple(meta.get("input_shape", (3, 224, 224))))
    expected = model.state_dict()
    if set(expected) != set(state):
        missing = sorted(set(expected) - set(state))[:3]
        raise ModelLoadError(f"{source} does not match its architecture (missing {missing}): the file is damaged "
                             "or was written for another model")
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ModelLoadError(f"{source}: {key} has shape {tuple(state[key].shape)}, the architecture "
                                 f"expects {tuple(tensor.shape)}: the file was written for another model")
    model.load_state_dict(state)
    shape = tuple(meta.get("input_shape", (3, 224, 224)))
    mean = tuple(meta["mean"]) if meta.get("mean") else None
    std = tuple(meta["std"]) if meta.get("std") else None
    return ModelHandle(model.eval(), architecture, shape, int(meta.get("num_classes", 0)),
                       str(meta.get("label", source)), mean, std, {"meta": meta})


def load_compressed(path: str | Path, base_file: str | Path | None = None) -> ModelHandle:
    """Decode a compact file into a working model (our own parser; nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"compressed file {path} does not exist: check the path")
    meta, state = read_file(path)
    return handle_from_decoded(meta, state, base_file, path.name)
