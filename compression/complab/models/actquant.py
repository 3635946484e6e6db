"""Static 8-bit activations of an integer-quantized model: a fake quantizer on the input of each quantized layer.

The int step calibrates one (scale, zero point) per quantized Conv/Linear input (asymmetric uint8, what ONNX
Runtime's int8 kernels read) and installs an ActivationQuant forward pre-hook there. Hooks are not part of the
state dict, so the compact file records the table in its meta (`int_quant.activations`) and the decoder installs
the same hooks: the decoded model computes exactly what the in-memory one did. torch's ONNX exporter writes
`fake_quantize_per_tensor_affine` as a QuantizeLinear/DequantizeLinear pair, so the export carries them too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from complab.errors import FormatError

QMIN, QMAX = 0, 255  # uint8 activations
MAX_ACTIVATION_ENTRIES = 100_000
MAX_NAME_CHARS = 1000


class ActivationQuant:
    """A forward pre-hook: the layer's input fake-quantized to uint8 on (scale, zero_point)."""

    def __init__(self, scale: float, zero_point: int) -> None:
        self.scale = float(scale)
        self.zero_point = int(zero_point)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, QMIN, QMAX), *args[1:])


def qparams(low: float, high: float) -> tuple[float, int]:
    """(scale, zero point) of an asymmetric uint8 range that holds [low, high] and zero exactly."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / (QMAX - QMIN) if high > low else 1.0
    zero_point = int(min(QMAX, max(QMIN, round(QMIN - low / scale))))
    return scale, zero_point


def install(model: nn.Module, table: dict[str, tuple[float, int]]) -> list:
    """Install an ActivationQuant pre-hook on each named module (replacing one installed before); the handles."""
    remove(model)
    handles = []
    for name, (scale, zero_point) in table.items():
        module = model.get_submodule(name)
        hook = ActivationQuant(scale, zero_point)
        handles.append(module.register_forward_pre_hook(hook))
    return handles


def remove(model: nn.Module) -> int:
    """Take every ActivationQuant hook off the model; how many were removed."""
    removed = 0
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, ActivationQuant):
                del module._forward_pre_hooks[key]
                removed += 1
    return removed


def table_of(model: nn.Module) -> dict[str, tuple[float, int]]:
    """{module name: (scale, zero point)} of the hooks installed on the model."""
    table = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, ActivationQuant):
                table[name] = (hook.scale, hook.zero_point)
    return table


def to_meta(table: dict[str, tuple[float, int]]) -> dict:
    """The compact file's `int_quant` meta for an activation table."""
    return {"activation_bits": 8, "activations": {name: [float(s), int(z)] for name, (s, z) in table.items()}}


def table_from_meta(meta: dict, model: nn.Module | None = None, source: str = "file") -> dict[str, tuple[float, int]]:
    """A file's activation table, checked (FormatError naming the problem); {} when the file has none."""
    record = meta.get("int_quant")
    if record is None:
        return {}
    activations = record.get("activations") if isinstance(record, dict) else None
    if not isinstance(activations, dict) or len(activations) > MAX_ACTIVATION_ENTRIES:
        raise FormatError(f"{source}: its meta int_quant is not an object with an 'activations' table: the file is "
                          "damaged or was not written by Compression Lab; re-export it from the run folder")
    table = {}
    for name, pair in activations.items():
        ok = (isinstance(name, str) and len(name) <= MAX_NAME_CHARS and isinstance(pair, list) and len(pair) == 2
              and isinstance(pair[0], int | float) and not isinstance(pair[0], bool) and math.isfinite(pair[0])
              and pair[0] > 0 and isinstance(pair[1], int) and not isinstance(pair[1], bool)
              and QMIN <= pair[1] <= QMAX)
        if not ok:
            raise FormatError(f"{source}: its meta int_quant entry {str(name)[:60]!r} is not [scale > 0, zero point "
                              f"{QMIN}-{QMAX}]: the file is damaged; re-export it from the run folder")
        if model is not None:
            try:
                model.get_submodule(name)
            except AttributeError:
                raise FormatError(f"{source}: its meta int_quant names {name[:60]!r}, which is not a module of its "
                                  "architecture: the file is damaged or was written for another model") from None
        table[name] = (float(pair[0]), int(pair[1]))
    return table
