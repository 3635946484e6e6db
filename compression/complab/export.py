"""Deployment exports of a decoded model: TorchScript and ONNX (dense fp32 weights, as runtimes expect).

A classifier exports as it is: input "input", output "logits". An Ultralytics detector in eval mode returns
a tuple (decoded predictions, raw head outputs); it is exported through models/detector.DetectorPredictions,
which keeps only the predictions, [batch, 4 + classes, anchors] (box centre, width, height in pixels, then per-class
scores), the tensor Ultralytics' own ONNX export gives and its NMS reads: input "images", output
"predictions". Both are traced here with torch's own exporters on a fixed image size and a dynamic batch;
Ultralytics' exporter is not used (its requirement check pip-installs a missing onnxslim or onnxruntime).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from complab.errors import CompressionLabError, first_line
from complab.models.protocol import Handle
from complab.paths import write_bytes_atomic


def _exportable(handle: Handle) -> tuple[torch.nn.Module, torch.Tensor, str, str]:
    """The module to trace, an example input, and the input and output names: what the handle's task exports."""
    return handle.export_graph()


def torchscript_bytes(handle: Handle) -> bytes:
    """The model traced to TorchScript (loads with torch.jit.load, no Python class needed); a detector
    returns its predictions tensor only (`DetectorPredictions`)."""
    model, example, _, _ = _exportable(handle)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation and shape-as-constant warnings, per layer
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def onnx_bytes(handle: Handle, opset: int = 17) -> bytes:
    """The model in ONNX with a dynamic batch dimension (a classifier: input "input", output "logits"; a
    detector: input "images", output "predictions")."""
    model, example, input_name, output_name = _exportable(handle)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[input_name],
                              output_names=[output_name],
                              dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - exporter errors are many and model-specific
        raise CompressionLabError(f"ONNX export failed: {first_line(exc)}; "
                                  "export TorchScript instead") from None
    return buffer.getvalue()


def export(handle: Handle, path: str | Path, fmt: str | None = None) -> int:
    """Write `path` as TorchScript (.pt/.ts) or ONNX (.onnx); returns the bytes written."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt not in ("onnx", "torchscript"):
        raise CompressionLabError(f"unknown export format {fmt!r}: use onnx or torchscript")
    data = onnx_bytes(handle) if fmt == "onnx" else torchscript_bytes(handle)
    return write_bytes_atomic(path, data)  # whole or not at all; a full disk leaves no .tmp behind
