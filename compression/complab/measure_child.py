"""The Model page's numbers for a trusted TorchScript model, measured in a one-shot child process (codeload's runner).

TorchScript is code, and the Streamlit server never runs it (codeload.py says why): the child loads the spec
with sources.load, measures it and writes back JSON only, which the server checks as untrusted. This module sits
above sources.py (it loads a spec); codeload.py, below sources.py, holds the runner and the detector child.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from complab import codeload, sources
from complab.analysis.layers import layer_table
from complab.errors import ModelLoadError
from complab.models.handle import untrusted_code

MEASURE_TIMEOUT_S = 900.0  # load a TorchScript model and its data, measure accuracy, sizes and latency


def measure_in_child(spec: dict, timeout: float = MEASURE_TIMEOUT_S) -> dict:
    """The Model page's numbers for a trusted TorchScript spec, measured in a child process.

    Returns {"measured": {accuracy, params, flops, fp32_bytes, latency_ms, ..., "layers": [rows]}, "label",
    "input_shape", "num_classes", "data", "images": [train, val, test]}, every value checked here."""
    model = str(spec.get("model", ""))
    if not model.startswith("torchscript:"):
        raise ModelLoadError(f"{model[:80]!r} is not a TorchScript model reference (torchscript:FILE)")
    if not spec.get("trust"):
        raise untrusted_code(model[len("torchscript:"):])
    spec = sources.check(spec)  # paths, data and sizes checked here, before a process starts
    path = Path(spec["model"][len("torchscript:"):]).expanduser().resolve()
    spec = {**spec, "model": f"torchscript:{path}"}
    return codeload.run_child("measure", {"spec": spec}, timeout, path.name,
                              lambda payload, out: _checked_measure(payload), "complab.measure_child")


MEASURED_NUMBERS = ("accuracy", "params", "nonzero_params", "flops", "fp32_bytes", "prunable_weights",
                    "prunable_nonzero", "latency_ms", "images")
LAYER_KEYS = ("layer", "type", "shape", "params", "nonzero", "flops", "flops_share")
MAX_LAYERS = 100_000


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ModelLoadError(f"the measurement of the model gave {key} = {str(value)[:20]}, not a number: "
                             "check the file")
    return value


def _checked_measure(payload: dict) -> dict:
    """The measurement a child reported, with only the expected keys and value types."""
    measured = payload.get("measured")
    layers = measured.get("layers") if isinstance(measured, dict) else None
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise ModelLoadError("the measurement of the model gave no layer table: check the file")
    out = {key: _number(measured.get(key), key) for key in MEASURED_NUMBERS if key in measured}
    if "accuracy" not in out:
        raise ModelLoadError("the measurement of the model gave no accuracy: check the file")
    rows = []
    for row in layers:
        if not isinstance(row, dict):
            raise ModelLoadError("the measurement's layer table holds a row that is not a record: check the file")
        rows.append({key: (str(row.get(key))[:200] if key in ("layer", "type", "shape")
                           else _number(row.get(key), key)) for key in LAYER_KEYS})
    shape = payload.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ModelLoadError("the measurement of the model gave no input shape: check the file")
    images = payload.get("images")
    if not isinstance(images, list) or len(images) != 3 or not all(isinstance(n, int) and n >= 0 for n in images):
        raise ModelLoadError("the measurement of the model gave no image counts: check the file")
    return {"measured": {**out, "layers": rows}, "label": str(payload.get("label"))[:200],
            "input_shape": shape, "num_classes": int(_number(payload.get("num_classes"), "num_classes")),
            "data": str(payload.get("data"))[:500], "images": images}


# --- the child's side ------------------------------------------------------------------------------------------

def _measure(request: dict, out: Path) -> dict:
    handle, data = sources.load({**request["spec"], "trust": True})  # the server checked the person's trust
    measured = handle.measure(data)
    layers = json.loads(layer_table(handle).to_json(orient="records"))  # numpy numbers as plain JSON
    return {"measured": {**measured, "layers": layers}, "label": handle.label, "input_shape": list(handle.input_shape),
            "num_classes": handle.num_classes, "data": data.ref,
            "images": [len(data.train), len(data.val), len(data.test)]}




if __name__ == "__main__":
    sys.exit(codeload.main(sys.argv[1:], {"measure": _measure}))
