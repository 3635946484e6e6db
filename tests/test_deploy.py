"""complab.deploy: fp32 and QDQ ONNX of decoded models, ONNX Runtime runs them as integers, paired ORT latency in
every run's metrics, the CPU's int8 instruction set, and what happens without onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from complab import deploy, metrics, pipeline
from complab.cli import main
from complab.data import load_data
from complab.methods.int_quant import dequantize, quantize_weight
from complab.models import actquant
from complab.models.compact_writer import Products
from complab.models.handle import load_model
from complab.models.tasks import read_compact
from complab.plan import Plan
from complab.storage.int_section import IntWeights

# pruning without fine-tuning: the cheapest plan that makes a compressed file (these tests time runtimes, not methods)
PRUNE = {"schema_version": 1, "name": "prune", "seed": 0, "eval_split": "test",
         "steps": [{"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 0}]}


def _int_file(tmp_path, demo: str, bits: int = 8, activations: bool = True) -> tuple[Path, object]:
    """demo model on b-bit per-channel levels (+ uint8 activation hooks calibrated on digits training images),
    written as a compact file and decoded: (path, digits data)."""
    handle = load_model(f"demo:{demo}").clone()
    data = load_data("digits", input_size=handle.input_shape[-1])
    int_weights = {}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            levels, scales = quantize_weight(weight, bits, observer="minmax")
            weight.copy_(dequantize(levels, scales))
            int_weights[f"{layer}.weight"] = IntWeights(levels, scales, bits)
    if activations:
        ranges: dict[str, tuple[float, float]] = {}

        def observe(module, args, layer):
            low, high = ranges.get(layer, (0.0, 0.0))
            ranges[layer] = (min(low, float(args[0].min())), max(high, float(args[0].max())))

        hooks = [handle.model.get_submodule(layer).register_forward_pre_hook(
            lambda module, args, layer=layer: observe(module, args, layer)) for layer in handle.prunable_layers()]
        with torch.no_grad():
            for images, _ in data.loader("train", batch_size=64, size=256):
                handle.model.eval()(images)
        for hook in hooks:
            hook.remove()
        actquant.install(handle.model, {layer: actquant.qparams(*span) for layer, span in ranges.items()})
    path = tmp_path / f"{demo}-int{bits}.clab"
    handle.save(path, {"plan": {"steps": []}, "data": "digits"}, Products(int_weights=int_weights))
    return path, data


def _test_split(data) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*data.loader("test", batch_size=512), strict=True)
    return torch.cat(images), torch.cat(labels)


def _ort_outputs(model_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    session = deploy._session(model_bytes, threads=2)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 64].numpy()})[0] for i in range(0, len(x), 64)])


def _ops(model_bytes: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(model_bytes).graph.node}


def test_int8_isa_names_the_best_int8_instruction_set():
    line = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {}\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert metrics.int8_isa(line.format("avx512bw avx512_vnni")) == "AVX512-VNNI"
    assert metrics.int8_isa(line.format("avx512_vnni amx_int8 amx_tile")) == "AMX-INT8"
    assert metrics.int8_isa(line.format("avx_vnni")) == "AVX-VNNI"
    assert metrics.int8_isa(line.format("")) == "AVX2"
    assert metrics.int8_isa("Features\t: fp asimd asimddp\n") == "NEON-DOTPROD"
    assert metrics.int8_isa("flags : fpu sse2\n").startswith("none")
    assert deploy.int8_isa is metrics.int8_isa
    assert metrics.machine()["int8_isa"] == metrics.int8_isa()


@pytest.mark.parametrize("demo", ["lenet5", pytest.param("vgg_small", marks=pytest.mark.slow)])  # BN folded: slow
def test_an_int8_model_exports_as_qdq_integers_that_ort_runs_and_agrees_with(tmp_path, demo):
    path, data = _int_file(tmp_path, demo)
    decoded = read_compact(path)
    assert deploy.is_int8(decoded)
    calibration = pipeline.calibration_batches(decoded, data)
    qdq = deploy.onnx_model_bytes(decoded, calibration=calibration)
    graph = onnx.load_from_string(qdq).graph
    # every int layer's weight is our int8 levels (a conv with batch norm folded into it: the same levels on
    # refitted scales)
    int8_inits = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
                  and len(i.dims) >= 2]
    assert len(int8_inits) == len(decoded.int_weights)
    ours = sorted((w.levels.numpy() for w in decoded.int_weights.values()), key=lambda a: (a.shape, a.tobytes()))
    for mine, theirs in zip(ours, sorted(int8_inits, key=lambda a: (a.shape, a.tobytes())), strict=True):
        assert np.array_equal(mine, theirs)
    assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    # ORT fuses them into int8 kernels: no float Conv or Gemm left in the graph it runs
    ran = deploy.optimized_ops(qdq, tmp_path / "optimized.onnx")
    assert "QLinearConv" in ran and "Conv" not in ran and "Gemm" not in ran, ran
    x, labels = _test_split(data)
    with torch.no_grad():
        expected = decoded.model.eval()(x).numpy()
    got = _ort_outputs(qdq, x)
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    assert agreement >= 0.99, agreement
    # without calibration only the layers' inputs are quantized: still a valid model, close to the decoded one
    plain = deploy.onnx_model_bytes(decoded)
    assert float((_ort_outputs(plain, x).argmax(1) == expected.argmax(1)).mean()) >= 0.99
    # --fp32 / int8=False: float weights and no quantizers at all
    fp32 = deploy.onnx_model_bytes(decoded, int8=False)
    assert not _ops(fp32) & {"QuantizeLinear", "DequantizeLinear"}
    assert len(fp32) > 2.5 * len(qdq)


def test_exact_levels_and_scales_where_no_batch_norm_is_folded(tmp_path):
    path, _ = _int_file(tmp_path, "lenet5")
    decoded = read_compact(path)
    graph = onnx.load_from_string(deploy.onnx_model_bytes(decoded)).graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    weights = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and values.get(node.input[0]) is not None \
                and values[node.input[0]].dtype == np.int8 and values[node.input[0]].ndim >= 2:
            weights[values[node.input[0]].shape] = (values[node.input[0]], values[node.input[1]])
            assert [a.i for a in node.attribute if a.name == "axis"] == [0]
    for structure in decoded.int_weights.values():
        levels, scales = weights[tuple(structure.levels.shape)]
        assert np.array_equal(levels, structure.levels.numpy())
        assert np.array_equal(scales, structure.scales.numpy())  # bit for bit: our one formula


def test_a_weight_that_is_not_a_multiple_of_the_levels_stays_float():
    weight = torch.randn(4, 3, 3, 3)
    levels, scales = quantize_weight(weight, 8)
    exact = dequantize(levels, scales).numpy()
    assert np.array_equal(deploy._fit_scales(exact, levels.numpy(), scales.numpy()), scales.numpy())
    folded = exact * np.array([0.5, 2.0, 1.5, 0.9], np.float32)[:, None, None, None]
    refit = deploy._fit_scales(folded, levels.numpy(), scales.numpy())
    assert np.allclose(refit, scales.numpy() * [0.5, 2.0, 1.5, 0.9], rtol=1e-6)
    assert deploy._fit_scales(weight.numpy(), levels.numpy(), scales.numpy()) is None  # the unquantized weight


def test_a_weight_only_int_model_exports_float_weights(tmp_path):
    path, _ = _int_file(tmp_path, "lenet5", bits=4, activations=False)
    decoded = read_compact(path)
    assert decoded.int_weights and not deploy.is_int8(decoded)
    model_bytes = deploy.onnx_model_bytes(decoded)
    assert not _ops(model_bytes) & {"QuantizeLinear", "DequantizeLinear"}
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert np.allclose(_ort_outputs(model_bytes, x), decoded.model(x).numpy(), atol=1e-4)


def test_ort_latency_pair_alternates_and_bounds_its_rounds():
    handle = load_model("demo:lenet300")
    model_bytes = deploy.onnx_model_bytes(handle)
    ms_a, ms_b, info = deploy.ort_latency_pair(model_bytes, model_bytes, handle.input_shape, threads=1, rounds=12)
    assert ms_a > 0 and ms_b > 0
    assert info["rounds"] == 12 and info["threads"] == 1 and info["provider"] == "CPUExecutionProvider"
    assert info["version"] and info["isa"] == metrics.int8_isa()
    # past its time budget it stops at min_rounds
    _, _, info = deploy.ort_latency_pair(model_bytes, model_bytes, handle.input_shape, rounds=10_000,
                                         min_rounds=10, seconds=0.0)
    assert info["rounds"] == 10


def test_a_run_records_ort_latency_of_both_models_paired(tmp_path):
    handle = load_model("demo:lenet300")
    data = load_data("digits")
    result = pipeline.compress(handle, Plan.from_dict(PRUNE), data, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == result.metrics
    assert written["before"]["ort_latency_ms"] > 0 and written["after"]["ort_latency_ms"] > 0
    assert written["before"]["latency_ms"] > 0  # PyTorch's stays beside it
    ort = written["ort"]
    assert ort["error"] is None and ort["int8"] is False and ort["threads"] == 2 and ort["rounds"] >= 10
    assert ort["isa"] == written["machine"]["int8_isa"]


def test_without_onnxruntime_runs_still_work_and_say_why(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy, "ort_available", lambda: False)
    handle = load_model("demo:lenet300")
    result = pipeline.compress(handle, Plan.from_dict(PRUNE), load_data("digits"), tmp_path / "run")
    assert result.metrics["ort"]["error"] == deploy.ORT_MISSING == \
        "onnxruntime is not installed: pip install onnxruntime"
    assert "ort_latency_ms" not in result.metrics["before"] and "ort_latency_ms" not in result.metrics["after"]
    assert result.metrics["after"]["latency_ms"] > 0
    with pytest.raises(deploy.CompressionLabError, match="onnxruntime is not installed"):
        deploy.ort_latency_pair(b"", b"", (1, 28, 28))


def test_no_latency_no_ort_block(tmp_path):
    result = pipeline.compress(load_model("demo:lenet300"), Plan.from_dict(PRUNE), load_data("digits"), tmp_path / "r",
                               latency=False)
    assert "ort" not in result.metrics and "ort_latency_ms" not in result.metrics["after"]


def test_cli_export_writes_qdq_for_an_int_file_and_floats_with_fp32(tmp_path, capsys):
    path, data = _int_file(tmp_path, "lenet5")
    assert main(["export", str(path), str(tmp_path / "q.onnx")]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["int8"] is True and "QDQ" in said["form"] and "note" not in said
    assert said["bytes"] == (tmp_path / "q.onnx").stat().st_size
    assert main(["export", str(path), str(tmp_path / "f.onnx"), "--fp32"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["int8"] is False and said["form"] == "fp32"
    qdq, fp32 = (tmp_path / "q.onnx").read_bytes(), (tmp_path / "f.onnx").read_bytes()
    assert "QuantizeLinear" in _ops(qdq) and "QuantizeLinear" not in _ops(fp32)
    x, _ = _test_split(data)
    with torch.no_grad():
        expected = read_compact(path).model(x).numpy()
    assert float((_ort_outputs(qdq, x).argmax(1) == expected.argmax(1)).mean()) >= 0.99


@pytest.mark.slow
def test_an_int8_detector_exports_as_qdq_that_ort_runs(tmp_path):
    from complab.models.detector import load_detector, load_detector_file

    handle = load_detector().clone()
    int_weights = {}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            levels, scales = quantize_weight(weight, 8, observer="minmax")
            weight.copy_(dequantize(levels, scales))
            int_weights[f"{layer}.weight"] = IntWeights(levels, scales, 8)
    calibration = [torch.rand(4, *handle.input_shape, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    ranges: dict[str, tuple[float, float]] = {}

    def observe(args, layer):
        low, high = ranges.get(layer, (0.0, 0.0))
        ranges[layer] = (min(low, float(args[0].min())), max(high, float(args[0].max())))

    hooks = [handle.model.get_submodule(layer).register_forward_pre_hook(
        lambda module, args, layer=layer: observe(args, layer)) for layer in handle.prunable_layers()]
    with torch.no_grad():
        for batch in calibration:
            handle.model.eval()(batch)
    for hook in hooks:
        hook.remove()
    actquant.install(handle.model, {layer: actquant.qparams(*span) for layer, span in ranges.items()})
    handle.save(tmp_path / "det.clab", products=Products(int_weights=int_weights))
    decoded = load_detector_file(tmp_path / "det.clab")
    qdq = deploy.onnx_model_bytes(decoded, calibration=calibration)
    ran = deploy.optimized_ops(qdq, tmp_path / "optimized.onnx")
    assert ran.get("QLinearConv", 0) >= 0.8 * len(int_weights), ran
    module, example, _, _ = decoded.export_graph()
    with torch.no_grad():
        expected = module(calibration[0]).numpy()
    got = deploy._session(qdq, 2).run(None, {"images": calibration[0].numpy()})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    ms_fp32, ms_int8, info = deploy.ort_latency_pair(deploy.onnx_model_bytes(decoded, int8=False), qdq,
                                                     decoded.input_shape, rounds=10)
    assert ms_fp32 > 0 and ms_int8 > 0 and info["rounds"] == 10
