"""Deployment exports of a decoded model: TorchScript and ONNX (dense fp32 weights, as runtimes expect).

A classifier exports as it is: input "input", output "logits". An Ultralytics detector in eval mode returns
a tuple (decoded predictions, raw head outputs); it is exported through `DetectorPredictions`, which keeps
only the predictions, [batch, 4 + classes, anchors] (box centre, width, height in pixels, then per-class
scores), the tensor Ultralytics' own ONNX export gives and its NMS reads: input "images", output
"predictions". Both are traced here with torch's own exporters on a fixed image size and a dynamic batch;
Ultralytics' exporter is not used (its requirement check pip-installs a missing onnxslim or onnxruntime).
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch

from complab.errors import CompressionLabError, first_line
from complab.models.handle import ModelHandle
from complab.paths import write_bytes_atomic

DETECT = "detect"  # handle.task of a detector (models/detector.DetectorHandle)


class DetectorPredictions(torch.nn.Module):
    """A copy of a detector, batch norm folded, whose Detect head returns only its decoded predictions,
    [batch, 4 + classes, anchors], not the raw head outputs beside them: one tensor, which TorchScript and ONNX
    can both name and give a dynamic batch (the tracer cannot type the head's usual (tensor, dict of lists)
    output). The head's `export` flag is Ultralytics' own switch for this and changes nothing else in a Detect
    head's forward; the copy leaves the handle's model as it was."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        from complab.models.detector import fuse
        from complab.models.yolo_env import offline_ultralytics

        offline_ultralytics()  # before ultralytics is imported: nothing it does may reach the network
        from ultralytics.nn.modules.head import Detect

        # batch norm folded into the convolutions, as Ultralytics runs and exports a detector (the ONNX exporter
        # folds it too): a smaller, faster TorchScript archive with the same predictions up to float rounding
        self.model = fuse(copy.deepcopy(model).eval())
        for module in self.model.modules():
            if isinstance(module, Detect):
                module.export = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _exportable(handle: ModelHandle) -> tuple[torch.nn.Module, torch.Tensor, str, str]:
    """The module to trace, an example input, and the input and output names for this handle's task."""
    model = handle.model.eval().cpu()
    example = torch.zeros((1, *handle.input_shape))
    if getattr(handle, "task", None) == DETECT:
        detector = DetectorPredictions(model)
        with torch.no_grad():  # a dry run, as Ultralytics' exporter does: the head caches its anchor grid for this
            detector(example)  # image size, so the trace holds it as a constant instead of tracing make_anchors
        return detector, example, "images", "predictions"
    return model, example, "input", "logits"


def torchscript_bytes(handle: ModelHandle) -> bytes:
    """The model traced to TorchScript (loads with torch.jit.load, no Python class needed); a detector
    returns its predictions tensor only (`DetectorPredictions`)."""
    model, example, _, _ = _exportable(handle)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's deprecation and shape-as-constant warnings, per layer
        scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def onnx_bytes(handle: ModelHandle, opset: int = 17) -> bytes:
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


def export(handle: ModelHandle, path: str | Path, fmt: str | None = None) -> int:
    """Write `path` as TorchScript (.pt/.ts) or ONNX (.onnx); returns the bytes written."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if fmt not in ("onnx", "torchscript"):
        raise CompressionLabError(f"unknown export format {fmt!r}: use onnx or torchscript")
    data = onnx_bytes(handle) if fmt == "onnx" else torchscript_bytes(handle)
    return write_bytes_atomic(path, data)  # whole or not at all; a full disk leaves no .tmp behind
