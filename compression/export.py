"""Deployment exports of a decoded model: TorchScript and ONNX (dense fp32 weights, as runtimes expect)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from compression.errors import CompressionLabError, first_line
from compression.models.handle import ModelHandle
from compression.paths import write_bytes_atomic


def torchscript_bytes(handle: ModelHandle) -> bytes:
    """The model traced to TorchScript (loads with torch.jit.load, no Python class needed)."""
    model = handle.model.eval().cpu()
    example = torch.zeros((1, *handle.input_shape))
    with torch.no_grad():
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def onnx_bytes(handle: ModelHandle, opset: int = 17) -> bytes:
    """The model in ONNX with a dynamic batch dimension (input "input", output "logits")."""
    model = handle.model.eval().cpu()
    example = torch.zeros((1, *handle.input_shape))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - exporter errors are many and model-specific
        raise CompressionLabError(f"ONNX export failed: {first_line(exc)}; "
                                  "export TorchScript instead") from None
    return buffer.getvalue()


def export(handle: ModelHandle, path: str | Path, fmt: str | None = None) -> int:
    """Write `path` as TorchScript (.pt/.ts) or ONNX (.onnx); returns the bytes written."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt not in ("onnx", "torchscript"):
        raise CompressionLabError(f"unknown export format {fmt!r}: use onnx or torchscript")
    data = onnx_bytes(handle) if fmt == "onnx" else torchscript_bytes(handle)
    return write_bytes_atomic(path, data)  # whole or not at all; a full disk leaves no .tmp behind
