"""Deployment in ONNX Runtime: the fp32 or integer (QDQ) ONNX of a decoded model, and its latency there.

`onnx_model_bytes(handle, int8=True)` exports the model with torch's exporter (export.onnx_bytes: the exporter
folds batch norm into the convolutions in eval mode, and writes the actquant hooks' fake quantizers as
QuantizeLinear/DequantizeLinear pairs on the quantized layers' inputs). For an int model with 8-bit activations
(`handle.int_weights` and an activation table installed) it then rewrites the graph into the QDQ form ONNX Runtime
runs with its int8 kernels:
- every int layer's float weight initializer becomes our int8 levels + DequantizeLinear (axis 0, zero point 0, our
  per-channel scales; where batch norm was folded into the weight the scale of channel c is refitted to
  (folded weight . levels) / (levels . levels), checked to reproduce the folded weight to float rounding);
- its bias becomes int32 on scale s_x * s_w (what ORT's QDQ Conv/Gemm fusion wants);
- each activation the hooks quantize for one consumer is quantized for all of them (a residual's identity branch
  reads the same uint8 tensor), and, given calibration images, the outputs of convolutions, Gemms and Adds (after
  their ReLU) get a calibrated uint8 QuantizeLinear/DequantizeLinear pair too, so that ORT fuses
  DQ -> Conv -> Q into QLinearConv and DQ, DQ -> Add -> Q into QLinearAdd instead of running float kernels on
  dequantized tensors.
A weight-only int model (no activation table) exports float weights: ORT has no int8 kernel for a float
activation times an int8 weight, and DequantizeLinear on the weights would run on every inference.

`ort_latency_pair` times two ONNX models in ONNX Runtime on the CPU, alternating, batch 1, fixed threads;
`int8_isa` names the CPU's int8 instruction set from /proc/cpuinfo (ORT's MLAS picks its int8 GEMM kernels by
cpuid: AMX, AVX512-VNNI, AVX-VNNI, AVX512BW or AVX2, in that order of preference).
onnxruntime is optional at import: `ort_available()` says whether it is installed, and without it no ORT figure
is measured (ORT_MISSING says why).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from complab.errors import CompressionLabError
from complab.export import onnx_bytes
from complab.metrics import int8_isa
from complab.models import actquant

__all__ = ["int8_isa", "is_int8", "onnx_model_bytes", "ort_available", "ort_latency_pair", "ort_metrics"]

ORT_MISSING = "onnxruntime is not installed: pip install onnxruntime"
QUANTIZED_OPS = ("Conv", "Gemm")
OUTPUT_QUANTIZED_OPS = ("Conv", "Gemm", "Add", "GlobalAveragePool", "AveragePool")


def ort_available() -> bool:
    """Whether onnxruntime can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------- export


def is_int8(handle) -> bool:
    """Whether the handle exports as integers: int weights and an installed activation table (static uint8)."""
    return bool(getattr(handle, "int_weights", None)) and bool(actquant.table_of(handle.model))


def onnx_model_bytes(handle, int8: bool = True, calibration: Iterable[torch.Tensor] | None = None) -> bytes:
    """The handle's model as ONNX: QDQ integers when it has int weights and 8-bit activations and `int8`, else fp32
    (a float graph without the activation quantizers). `calibration`: a few input batches (NCHW float, as the model
    reads them) to calibrate the QDQ form's output quantizers; without them only the hooks' inputs are quantized and
    ORT fuses fewer nodes into int8 kernels."""
    if not (int8 and is_int8(handle)):
        if not actquant.table_of(handle.model):
            return onnx_bytes(handle)
        plain = copy.copy(handle)
        plain.model = copy.deepcopy(handle.model)
        actquant.remove(plain.model)
        return onnx_bytes(plain)
    import onnx

    proto = onnx.load_from_string(onnx_bytes(handle))
    layers = {name: (_np(obj.levels).astype(np.int8), _np(obj.scales).astype(np.float32))
              for name, obj in handle.int_weights.items()}
    _QDQ(proto, layers).rewrite(list(calibration) if calibration is not None else None)
    return proto.SerializeToString()


def _np(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class _QDQ:
    """One ONNX graph rewritten in place into QDQ form (see the module docstring)."""

    def __init__(self, proto, layers: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        from onnx import numpy_helper

        self.proto = proto
        self.graph = proto.graph
        self.layers = layers
        self.inits = {init.name: init for init in self.graph.initializer}
        self.consts = {}  # Constant nodes' values (the exporter writes Q/DQ scales as Constants)
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute:
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.counter = 0
        self.weights_done = 0

    # -- helpers
    def value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return self.consts.get(name)

    def add_init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}__qdq{self.counter}"

    def producers(self) -> dict[str, object]:
        return {out: node for node in self.graph.node for out in node.output}

    def consumers(self) -> dict[str, list]:
        table: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                table.setdefault(name, []).append(node)
        return table

    # -- the rewrite
    def rewrite(self, calibration: list[torch.Tensor] | None) -> None:
        self.quantize_weights()
        self.share_activation_quantizers()
        if calibration:
            self.quantize_outputs(calibration)
        self.quantize_biases()
        self.drop_unused_initializers()

    def _fit(self, weight: np.ndarray, used: set[str]) -> tuple[str, np.ndarray, np.ndarray] | None:
        """The int layer whose levels this float weight is (a per-channel multiple of): (name, levels, scales)."""
        for name, (levels, scales) in self.layers.items():
            if name in used or levels.shape != weight.shape:
                continue
            fitted = _fit_scales(weight, levels, scales)
            if fitted is not None:
                return name, levels, fitted
        return None

    def quantize_weights(self) -> None:
        """Each int layer's weight initializer -> int8 levels + DequantizeLinear (axis 0 or one scale)."""
        from onnx import helper

        used: set[str] = set()
        new_nodes = []
        for node in self.graph.node:
            if node.op_type in QUANTIZED_OPS and len(node.input) > 1 and node.input[1] in self.inits:
                transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1
                                                                for a in node.attribute)
                if not transposed:
                    weight = self.value(node.input[1])
                    found = self._fit(weight.astype(np.float32), used)
                    if found is not None:
                        name, levels, scales = found
                        used.add(name)
                        stem = node.input[1].replace(":", "_")
                        q = self.add_init(self.fresh(stem + "_levels"), levels)
                        shape = scales.shape if scales.size > 1 else ()  # one scale: a scalar, no axis
                        s = self.add_init(self.fresh(stem + "_scale"), scales.reshape(shape))
                        z = self.add_init(self.fresh(stem + "_zero"), np.zeros(shape, np.int8))
                        out = self.fresh(stem + "_dq")
                        attrs = {"axis": 0} if scales.size > 1 else {}
                        new_nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [out],
                                                          name=self.fresh("DequantizeLinear"), **attrs))
                        node.input[1] = out
                        self.weights_done += 1
            new_nodes.append(node)
        self._replace_nodes(new_nodes)

    def share_activation_quantizers(self) -> None:
        """A tensor the hooks quantize for one layer is read through the same QuantizeLinear/DequantizeLinear by all
        its consumers (the exporter leaves the others on the float tensor: a residual's identity branch)."""
        consumers = self.consumers()
        outputs = {o.name for o in self.graph.output}
        for tensor, readers in list(consumers.items()):
            quant = [n for n in readers if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
            if not quant or tensor in outputs or tensor in self.inits or tensor in self.consts:
                continue
            deq = [n for n in consumers.get(quant[0].output[0], []) if n.op_type == "DequantizeLinear"]
            if not deq:
                continue
            for node in readers:
                if node is not quant[0]:
                    for i, name in enumerate(node.input):
                        if name == tensor:
                            node.input[i] = deq[0].output[0]

    def quantized_tensors(self) -> set[str]:
        return {n.input[0] for n in self.graph.node if n.op_type == "QuantizeLinear"} | \
               {n.output[0] for n in self.graph.node if n.op_type == "DequantizeLinear"}

    def output_targets(self) -> list[str]:
        """Float tensors to quantize: outputs of convolutions, Gemms, Adds and average pools (after a ReLU that alone
        reads them), and Add inputs, not yet quantized and not graph outputs."""
        import onnx

        consumers = self.consumers()
        outputs = {o.name for o in self.graph.output}
        done = self.quantized_tensors()
        inferred = onnx.shape_inference.infer_shapes(self.proto).graph  # only float tensors (not shape arithmetic)
        floats = {v.name for v in list(inferred.value_info) + list(inferred.input)
                  if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
        targets: list[str] = []
        for node in self.graph.node:
            names = []
            if node.op_type in OUTPUT_QUANTIZED_OPS:
                tensor = node.output[0]
                readers = consumers.get(tensor, [])
                if len(readers) == 1 and readers[0].op_type == "Relu":
                    tensor = readers[0].output[0]
                names.append(tensor)
            if node.op_type == "Add":
                names.extend(node.input)
            for name in names:
                if name in outputs or name in done or name in targets or name not in floats:
                    continue
                targets.append(name)
        return targets

    def quantize_outputs(self, calibration: list[torch.Tensor]) -> None:
        """Calibrated (min-max over the batches) uint8 QuantizeLinear/DequantizeLinear pairs on output_targets."""
        if not ort_available():
            return
        from onnx import TensorProto, helper

        targets = self.output_targets()
        if not targets:
            return
        probe = copy.deepcopy(self.proto)
        del probe.graph.output[:]
        for name in targets:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        session = _session(probe.SerializeToString(), threads=2, optimize=False)
        input_name = session.get_inputs()[0].name
        low = {name: 0.0 for name in targets}
        high = {name: 0.0 for name in targets}
        for batch in calibration:
            values = session.run(targets, {input_name: batch.detach().cpu().numpy().astype(np.float32)})
            for name, array in zip(targets, values, strict=True):
                low[name] = min(low[name], float(array.min()))
                high[name] = max(high[name], float(array.max()))
        producers = self.producers()
        consumers = self.consumers()
        after: dict[int, list] = {}
        for name in targets:
            scale, zero = actquant.qparams(low[name], high[name])
            s = self.add_init(self.fresh(name.replace(":", "_") + "_scale"), np.array(scale, np.float32))
            z = self.add_init(self.fresh(name.replace(":", "_") + "_zero"), np.array(zero, np.uint8))
            q_out, dq_out = self.fresh(name + "_q"), self.fresh(name + "_dq")
            for reader in consumers.get(name, []):
                for i, used in enumerate(reader.input):
                    if used == name:
                        reader.input[i] = dq_out
            pair = [helper.make_node("QuantizeLinear", [name, s, z], [q_out], name=self.fresh("QuantizeLinear")),
                    helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out], name=self.fresh("DequantizeLinear"))]
            after.setdefault(id(producers[name]), []).extend(pair)
        new_nodes = []
        for node in self.graph.node:
            new_nodes.append(node)
            new_nodes.extend(after.get(id(node), []))
        self._replace_nodes(new_nodes)

    def quantize_biases(self) -> None:
        """A quantized layer's float bias -> int32 on scale s_x * s_w + DequantizeLinear, where its input is read
        through a DequantizeLinear with one scale."""
        from onnx import helper

        producers = self.producers()
        new_nodes = []
        for node in self.graph.node:
            if node.op_type in QUANTIZED_OPS and len(node.input) > 2 and node.input[2] in self.inits:
                x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
                if (x_dq is not None and w_dq is not None and x_dq.op_type == "DequantizeLinear"
                        and w_dq.op_type == "DequantizeLinear"):
                    s_x = self.value(x_dq.input[1])
                    s_w = self.value(w_dq.input[1])
                    bias = self.value(node.input[2])
                    if s_x is not None and s_w is not None and s_x.size == 1:
                        scale = (np.float32(s_x.reshape(())) * np.broadcast_to(s_w, bias.shape)).astype(np.float32)
                        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
                        levels = np.clip(np.round(bias.astype(np.float64) / scale), -(2 ** 31), 2 ** 31 - 1)
                        stem = node.input[2].replace(":", "_")
                        q = self.add_init(self.fresh(stem + "_levels"), levels.astype(np.int32))
                        s = self.add_init(self.fresh(stem + "_scale"), scale)
                        z = self.add_init(self.fresh(stem + "_zero"), np.zeros(bias.shape, np.int32))
                        out = self.fresh(stem + "_dq")
                        new_nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [out], axis=0,
                                                          name=self.fresh("DequantizeLinear")))
                        node.input[2] = out
            new_nodes.append(node)
        self._replace_nodes(new_nodes)

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input} | {o.name for o in self.graph.output}
        keep = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)
        self.inits = {init.name: init for init in keep}

    def _replace_nodes(self, nodes: list) -> None:
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def _fit_scales(weight: np.ndarray, levels: np.ndarray, scales: np.ndarray) -> np.ndarray | None:
    """Scales s with s[c] * levels[c] == weight[c]: our stored scales where they give the weight bit for bit,
    else (batch norm folded into the weight) per-channel least-squares scales, if they reproduce the weight to
    float rounding; None when the weight is not a per-channel multiple of these levels."""
    from complab.methods.int_quant import dequantize

    exact = dequantize(torch.from_numpy(levels), torch.from_numpy(scales)).numpy()
    if np.array_equal(exact, weight):
        return scales
    rows_w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    rows_l = levels.reshape(levels.shape[0], -1).astype(np.float64)
    norm = (rows_l * rows_l).sum(axis=1)
    fitted = np.where(norm > 0, (rows_w * rows_l).sum(axis=1) / np.maximum(norm, 1.0), 1.0).astype(np.float32)
    rebuilt = fitted.astype(np.float64)[:, None] * rows_l
    tolerance = 1e-5 * max(float(np.abs(rows_w).max()), 1e-30)
    if float(np.abs(rebuilt - rows_w).max()) > tolerance:
        return None
    return fitted


def export_onnx(handle, path: str | Path, int8: bool = True, calibration=None) -> tuple[int, bool]:
    """Write `path` as ONNX (QDQ integers where the handle is an int8 model and `int8`): (bytes, written as int8)."""
    from complab.paths import write_bytes_atomic

    data = onnx_model_bytes(handle, int8=int8, calibration=calibration)
    return write_bytes_atomic(Path(path), data), bool(int8 and is_int8(handle))


# ---------------------------------------------------------------------------------------------------- latency


def _session(model_bytes: bytes, threads: int, optimize: bool = True, optimized_path: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def optimized_ops(model_bytes: bytes, path: str | Path, threads: int = 2) -> dict[str, int]:
    """The op types (and counts) of the graph ORT runs after its optimizations (written to `path`): where
    QLinearConv, QLinearAdd, QGemm appear ORT runs int8 kernels."""
    import onnx

    _session(model_bytes, threads, optimized_path=str(path))
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def ort_latency_pair(a_bytes: bytes, b_bytes: bytes, input_shape: tuple[int, ...], threads: int = 2,
                     rounds: int = 30, warmup: int = 3, min_rounds: int = 10,
                     seconds: float = 2.0) -> tuple[float, float, dict]:
    """Median ms of one batch-1 inference of ONNX models A and B in ONNX Runtime on the CPU, measured alternating
    (A, B, A, B, ...: a load that comes and goes slows both alike), after `warmup` runs each. Stops after `rounds`
    rounds, or once past `seconds` per model with at least `min_rounds` done (a big model on a slow CPU).
    info: {"version", "threads", "isa", "provider", "rounds"}. CompressionLabError without onnxruntime."""
    if not ort_available():
        raise CompressionLabError(ORT_MISSING)
    import onnxruntime as ort

    try:
        sessions = [_session(data, threads) for data in (a_bytes, b_bytes)]
    except Exception as exc:  # noqa: BLE001 - ORT's load errors are many (an op it lacks, a bad graph)
        from complab.errors import first_line

        raise CompressionLabError(f"ONNX Runtime could not load the exported model: {first_line(exc)}; "
                                  "export it with --fp32 or measure PyTorch latency only") from None
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for _ in range(warmup):
        for session, feed in zip(sessions, feeds, strict=True):
            session.run(None, feed)
    times: list[list[float]] = [[], []]
    started = time.perf_counter()
    done = 0
    while done < max(rounds, min_rounds):
        for session, feed, row in zip(sessions, feeds, times, strict=True):
            start = time.perf_counter()
            session.run(None, feed)
            row.append((time.perf_counter() - start) * 1000.0)
        done += 1
        if done >= min_rounds and time.perf_counter() - started > 2 * seconds:
            break
    info = {"version": ort.__version__, "threads": int(threads), "isa": int8_isa(),
            "provider": sessions[0].get_providers()[0], "rounds": done}
    return statistics.median(times[0]), statistics.median(times[1]), info


def ort_metrics(original, compressed, input_shape: tuple[int, ...], calibration=None, threads: int = 2) -> tuple:
    """(before ms or None, after ms or None, metrics["ort"]): the original's fp32 ONNX and the compressed model's
    (QDQ when it is an int8 model) timed paired in ORT; `error` says why there is no figure (never raises)."""
    from complab.errors import first_line

    info = {"version": None, "threads": int(threads), "isa": int8_isa(), "provider": None, "rounds": 0,
            "int8": False, "error": None}
    if not ort_available():
        return None, None, {**info, "error": ORT_MISSING}
    try:
        a = onnx_model_bytes(original, int8=False)
        b = onnx_model_bytes(compressed, int8=True, calibration=calibration)
        ms_a, ms_b, measured = ort_latency_pair(a, b, input_shape, threads=threads)
    except Exception as exc:  # noqa: BLE001 - a model ORT cannot run leaves the run without an ORT figure, not failed
        return None, None, {**info, "error": first_line(exc)}
    return ms_a, ms_b, {**info, **measured, "int8": is_int8(compressed)}
