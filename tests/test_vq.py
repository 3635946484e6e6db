"""Vector quantization (Gong et al. 2014): quantizers, the "vq" file section, plan rules, codebook fine-tuning."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from complab.errors import FormatError, PlanError
from complab.methods import vq
from complab.methods.context import StepContext
from complab.models.compact import load_compressed, save_compressed
from complab.plan import Plan, PruneStep, QuantizeStep
from complab.storage import MAGIC, decode_state, encode_state, inspect_bytes
from complab.storage.codec import HEADER, HEADER_BYTES
from complab.storage.vq_section import Quantized, encode_vq, formula_bits, reconstruct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_storage import decode_or_format_error  # the storage fuzz tests' own check

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAYOUTS = {  # lenet5: conv1 (20,1,5,5), conv2 (50,20,5,5), fc1 (500,800), fc2 (10,500)
    "binary": {"conv1": "binary"},
    "kmeans": {"fc2": "kmeans"},
    "pq": {"conv2": "pq", "fc1": "pq"},
    "rq": {"fc1": "rq"},
}


def context(handle, data, **kwargs):
    return StepContext(data=data, layers=list(handle.prunable_layers()), **kwargs)


def random_layout(method: str, shape=(24, 40), k=16, s=4, t=2, axis="in", seed=0) -> Quantized:
    rng = np.random.default_rng(seed)
    q = Quantized(method, shape, 2 if method == "binary" else k, np.zeros(1, np.float32), np.zeros(1, np.int64),
                  segment_length=s if method == "pq" else 0, stages=t if method == "rq" else 1, axis=axis)
    from complab.storage.vq_section import matrix_dims, sizes

    floats, count, alphabet = sizes(method, shape, q.n_codewords, q.segment_length, q.stages, axis)
    q.codebook = rng.standard_normal(floats).astype(np.float32)
    vectors, _ = matrix_dims(shape, axis)
    if method == "pq":
        q.codebook = q.codebook.reshape(-1, k, s)
    elif method == "rq":
        q.codebook = q.codebook.reshape(t, k, -1)
    codes = rng.integers(0, alphabet, count)
    q.codes = codes.reshape(vectors, -1) if method in ("pq", "rq") else codes
    return q


@pytest.mark.parametrize("method", sorted(LAYOUTS))
def test_quantized_model_decodes_bit_exactly(lenet5, digits28, tmp_path, method):
    """Each quantizer (fine-tuned one epoch on a subset) bakes weights the file gives back bit for bit."""
    work = lenet5.clone()
    step = QuantizeStep(quantizer=LAYOUTS[method], n_codewords={"fc1": 16, "conv2": 32, "fc2": 8},
                        segment_length={"_default": 5}, stages={"_default": 2}, finetune_epochs=0)
    ctx = context(work, digits28)
    result = vq.run(work.model, step, ctx)
    assert set(result.report["layers"]) == set(LAYOUTS[method])
    save_compressed(work, tmp_path / "m.clab", products=result.products)
    decoded = load_compressed(tmp_path / "m.clab")
    expected, actual = work.model.state_dict(), decoded.model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(tensor.view(torch.int32) if tensor.is_floating_point() else tensor,
                           actual[key].view(torch.int32) if tensor.is_floating_point() else actual[key]), key
    rows = {row["name"]: row for row in inspect_bytes((tmp_path / "m.clab").read_bytes())}
    for layer in LAYOUTS[method]:
        row = rows[f"{layer}.weight"]
        assert row["encoding"] == "vq" and row["quantizer"] == method
        assert row["bits_per_weight"] < 32
        # the file never costs more than the paper's formula plus the section's own header
        assert row["bytes_total"] <= math.ceil(row["formula_bits"] / 8) + 24 + len(layer)


def test_codebook_finetuning_keeps_codes_and_stays_exact(lenet300, digits28, tmp_path):
    work = lenet300.clone()
    subset = digits28.subset("train", 256)
    data = type(digits28)(**{**digits28.__dict__, "train": subset})
    step = QuantizeStep(quantizer={"fc1": "pq", "fc2": "rq", "fc3": "binary"}, n_codewords={"_default": 16},
                        segment_length={"_default": 4}, stages={"_default": 2}, axis={"_default": "out"},
                        finetune_epochs=1, lr=1e-3)
    ctx = context(work, data)
    result = vq.run(work.model, step, ctx)
    structures = result.products.vq_structures
    fc1 = structures["fc1.weight"]
    first = vq.quantize_weight(lenet300.model.fc1.weight, step.layer_settings("fc1"), seed=0)
    assert np.array_equal(fc1.codes, first.codes)  # codes fixed, codebook trained
    assert not np.array_equal(fc1.codebook, first.codebook)
    assert torch.equal(work.model.fc1.weight.detach(), torch.from_numpy(reconstruct(fc1)))
    save_compressed(work, tmp_path / "m.clab", products=result.products)
    decoded = load_compressed(tmp_path / "m.clab")
    for key, tensor in work.model.state_dict().items():
        assert torch.equal(tensor, decoded.model.state_dict()[key]), key


def test_codeword_gradient_is_sum_over_its_weights():
    q = Quantized("pq", (2, 4), 2, np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], np.float32),
                  np.array([[0, 1], [0, 0]]), segment_length=2)
    param = torch.tensor(q.codebook, requires_grad=True)
    weight = vq.CodebookWeight(q, torch.device("cpu"))(param)
    assert weight.tolist() == [[1, 2, 7, 8], [1, 2, 5, 6]]
    (weight * torch.arange(8.0).view(2, 4)).sum().backward()
    assert param.grad[0, 0].tolist() == [0 + 4, 1 + 5]  # codeword 0 of segment 0 is used by both rows
    assert param.grad[1, 0].tolist() == [6, 7] and param.grad[1, 1].tolist() == [2, 3]


@pytest.mark.parametrize("method,axis", [("binary", "in"), ("kmeans", "in"), ("pq", "in"), ("pq", "out"),
                                         ("rq", "in"), ("rq", "out")])
def test_formula_equals_bit_packed_section_bytes(method, axis):
    """Bit-packed codes: the section is the paper's formula (codes log2 k + 32-bit codebook) plus its header."""
    for shape, k in (((24, 40), 16), ((64, 6, 3, 3), 8), ((10, 30), 4)):
        q = random_layout(method, shape, k=k, s=3 if method == "pq" else 4, axis=axis)
        assert np.array_equal(reconstruct(q), reconstruct(q))
        bits = formula_bits(method, shape, q.n_codewords, q.segment_length, q.stages, axis)
        body = encode_vq(q, entropy=False)
        assert math.ceil(bits / 8) <= len(body) <= math.ceil(bits / 8) + 8
        data = encode_state({"w": torch.from_numpy(reconstruct(q))}, {}, structures={"w": q})
        row = inspect_bytes(data)[1]
        assert row["encoding"] == "vq" and row["formula_bits"] == bits
        assert row["bytes_total"] <= math.ceil(bits / 8) + 8 + 14  # + type, length, name, dtype, shape
        _, state = decode_state(data)
        assert np.array_equal(state["w"].numpy().view(np.int32), reconstruct(q).view(np.int32))


def test_paper_rates():
    """Gong et al.'s rates: binary 32x, kmeans 32/log2 k, PQ 32mn / (32kn + m (n/s) log2 k)."""
    m, n = 4096, 9216
    assert 32 * m * n / formula_bits("binary", (m, n), 2) == pytest.approx(32, rel=1e-6)
    assert 32 * m * n / formula_bits("kmeans", (m, n), 16) == pytest.approx(8, rel=1e-3)
    assert formula_bits("pq", (m, n), 256, segment_length=4) == 32 * 256 * n + m * (n // 4) * 8
    assert formula_bits("rq", (m, n), 256, stages=2) == 2 * (32 * 256 * n + m * 8)


def test_structure_that_does_not_match_the_tensor_is_not_used():
    q = random_layout("pq", (24, 40), s=4)
    other = torch.from_numpy(reconstruct(q)) + 1.0
    row = inspect_bytes(encode_state({"w": other}, {}, structures={"w": q}))[1]
    assert row["encoding"] != "vq"


@pytest.mark.parametrize("plan,message", [
    ({"steps": [{"type": "prune", "sparsity": {"fc1": 0.9}}, {"type": "quantize", "quantizer": {"fc1": "pq"}}]},
     "layer 'fc1' is pruned"),
    ({"steps": [{"type": "cluster", "n_clusters": {"fc2": 8}}, {"type": "quantize", "quantizer": "binary"}]},
     "layer 'fc2' is both clustered"),
    ({"steps": [{"type": "quantize", "quantizer": "kmeans"}, {"type": "prune", "sparsity": 0.5}]},
     "prune must come before quantize"),
    ({"steps": [{"type": "quantize", "quantizer": {"fc1": "lattice"}}]}, "quantizer 'lattice' is unknown"),
    ({"steps": [{"type": "quantize", "quantizer": "pq", "n_codewords": 100}]}, "not a power of two"),
    ({"steps": [{"type": "quantize", "quantizer": "kmeans", "n_codewords": 1000}]}, "use 2 to 256"),
    ({"steps": [{"type": "quantize", "quantizer": "pq", "axis": "diagonal"}]}, "axis 'diagonal' is unknown"),
])
def test_rejected_plans_say_why(plan, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_dict({"schema_version": 1, **plan}).validate(["fc1", "fc2", "fc3"])


def test_prune_then_kmeans_keeps_zeros_and_patterns_are_checked_against_layers(lenet300, digits28):
    plan = Plan(steps=(PruneStep(sparsity={"re:fc[12]": 0.8}, iterations=1, finetune_epochs=0),
                       QuantizeStep(quantizer={"re:fc.*": "pq"})))
    plan.validate()  # patterns cannot be resolved without the model's layers
    with pytest.raises(PlanError, match="layer 'fc1' is pruned"):
        plan.validate(["fc1", "fc2", "fc3"])
    work = lenet300.clone()
    ctx = context(work, digits28)
    from complab.methods import prune

    prune.run(work.model, PruneStep(sparsity={"fc2": 0.8}, iterations=1, finetune_epochs=0), ctx)
    zeros = work.model.fc2.weight == 0
    result = vq.run(work.model, QuantizeStep(quantizer={"fc2": "kmeans"}, n_codewords={"fc2": 4}, finetune_epochs=0),
                    ctx)
    weight = work.model.fc2.weight
    assert torch.equal(weight == 0, zeros) and torch.unique(weight[~zeros]).numel() <= 4
    assert result.products.vq_structures["fc2.weight"].zero_code


def test_layer_too_small_for_the_codebook_is_refused(lenet300, digits28):
    work = lenet300.clone()
    step = QuantizeStep(quantizer={"fc3": "pq"}, n_codewords={"fc3": 256})
    with pytest.raises(PlanError, match="needs at least 256 vectors.*fc3|fc3.*needs at least 256 vectors"):
        vq.run(work.model, step, context(work, digits28))
    assert torch.equal(work.model.fc3.weight, lenet300.model.fc3.weight)


def test_plan_json_round_trip():
    plan = Plan(steps=(QuantizeStep(quantizer={"fc1": "pq", "_default": "kmeans"}, n_codewords={"fc1": 64},
                                    segment_length={"fc1": 8}, axis={"fc1": "out"}),), name="vq")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.steps[0].layer_settings("fc1") == {"quantizer": "pq", "n_codewords": 64, "segment_length": 8,
                                                    "stages": 2, "axis": "out"}
    assert again.steps[0].layer_settings("fc2")["n_codewords"] == 16


# ----------------------------------------------------------------------------------------------- damaged files


def reseal(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, 1, 0, zlib.crc32(payload), len(payload)) + payload


@pytest.fixture(scope="module")
def vq_file() -> bytes:
    state, structures = {}, {}
    for index, (method, axis) in enumerate([("binary", "in"), ("kmeans", "in"), ("pq", "out"), ("rq", "in")]):
        q = random_layout(method, (12, 16), k=4, s=4, axis=axis, seed=index)
        state[f"{method}.weight"] = torch.from_numpy(reconstruct(q))
        structures[f"{method}.weight"] = q
    data = encode_state(state, {"architecture": {"name": "tiny"}}, structures=structures)
    assert [row["encoding"] for row in inspect_bytes(data)[1:]] == ["vq"] * 4
    return data


def test_vq_file_truncated_anywhere_raises_format_error(vq_file):
    payload = vq_file[HEADER_BYTES:]
    for cut in range(0, len(payload), 3):
        with pytest.raises(FormatError):
            decode_state(reseal(payload[:cut]))


@FUZZ
@given(st.data())
def test_vq_byte_flips_raise_format_error_or_decode(vq_file, data):
    payload = bytearray(vq_file[HEADER_BYTES:])
    for _ in range(data.draw(st.integers(1, 4))):
        payload[data.draw(st.integers(0, len(payload) - 1))] ^= data.draw(st.integers(1, 255))
    decode_or_format_error(reseal(bytes(payload)))


@FUZZ
@given(st.binary(min_size=1, max_size=80))
def test_random_vq_section_bytes(blob):
    body = bytes([1]) + b"x" + bytes([1, 2, 6, 8]) + blob  # name "x", float32, shape 6x8
    decode_or_format_error(reseal(b"\x02{}\x01" + bytes([4]) + bytes([len(body)]) + body))


def test_compare_page_families_and_inspect_columns(tmp_path, capsys):
    from complab.analysis.pareto import method_family
    from complab.cli import main

    assert method_family(["prune", "cluster"]) == "prune+cluster"
    assert method_family(["prune", "quantize"]) == "vq"
    assert method_family(["channels", "distill"]) == "channels"
    q = random_layout("pq", (24, 40), s=4)
    from complab.storage import write_file

    weight = torch.from_numpy(reconstruct(q))
    write_file(tmp_path / "m.clab", {"layer.weight": weight}, {}, structures={"layer.weight": q})
    assert main(["inspect", str(tmp_path / "m.clab")]) == 0
    out = capsys.readouterr().out
    assert "vq:pq" in out and "bits/w" in out and str(formula_bits("pq", (24, 40), 16, 4)) in out


def test_live_estimate_follows_the_file(lenet300, digits28, tmp_path):
    """The plan page's estimate of a quantized model (paper's formulas) is within 5% of the real file."""
    from complab.analysis.estimate import estimate, model_stats
    from complab.pipeline import compress

    layers = list(lenet300.prunable_layers())
    step = QuantizeStep(quantizer={"_default": "pq", "fc3": "binary"}, n_codewords={"_default": 16},
                        segment_length={"_default": 16}, axis={"_default": "out"}, finetune_epochs=0)
    quantizers = {layer: step.layer_settings(layer) for layer in layers}
    predicted = estimate(model_stats(lenet300), {layer: (0.0, None) for layer in layers}, quantizers)
    unquantized = estimate(model_stats(lenet300), {layer: (0.0, None) for layer in layers})
    result = compress(lenet300, Plan(steps=(step,)), digits28, tmp_path, latency=False)
    real = result.metrics["after"]["compressed_bytes"]
    assert abs(predicted["compressed_bytes"] - real) <= 0.05 * real
    assert unquantized["compressed_bytes"] > 10 * predicted["compressed_bytes"]


def test_quantizers_run_on_the_demo_detector(tmp_path):
    """vq works through the handle's `layers` and the generic hooks: the demo YOLO detector's convolutions."""
    from complab.models.detector import load_detector
    from complab.storage import read_file, write_file

    work = load_detector().clone()
    layers = list(work.prunable_layers())
    quantizer = {"model.1.conv": "pq", "model.2.cv1.conv": "binary", "re:model\\.[5-9]\\..*": "kmeans"}
    step = QuantizeStep(quantizer=quantizer,
                        n_codewords={"model.1.conv": 8, "_default": 16}, segment_length={"_default": 9},
                        finetune_epochs=0)
    ctx = StepContext(data=None, layers=layers)
    result = vq.run(work.model, step, ctx)
    assert "model.1.conv" in result.report["layers"] and len(result.report["layers"]) > 3
    state = {k: v.detach().cpu() + 0.0 for k, v in work.model.state_dict().items() if v.is_floating_point()}
    write_file(tmp_path / "d.clab", state, {}, structures=result.products.vq_structures)
    _, decoded = read_file(tmp_path / "d.clab")
    for key, tensor in state.items():
        assert torch.equal(tensor, decoded[key]), key
    rows = {row["name"]: row for row in inspect_bytes((tmp_path / "d.clab").read_bytes())}
    assert rows["model.1.conv.weight"]["quantizer"] == "pq" and rows["model.2.cv1.conv.weight"]["quantizer"] == "binary"


def test_pareto_figure_draws_one_series_and_front_per_family():
    import pandas as pd
    from complab.ui.figures import pareto_figure

    table = pd.DataFrame({"run": list("abcdef"), "plan": "", "ratio": 1.0,
                          "method": ["vq", "vq", "prune+cluster", "prune+cluster", "channels", "vq"],
                          "compressed_bytes": [10, 20, 15, 30, 40, 25], "accuracy": [0.9, 0.95, 0.92, 0.97, 0.99, 0.9]})
    fig = pareto_figure(table, "compressed_bytes", "bytes")
    names = [trace.name for trace in fig.data]
    assert {"vq", "prune+cluster", "channels", "vq front", "prune+cluster front", "Pareto front"} <= set(names)
    vq_front = next(trace for trace in fig.data if trace.name == "vq front")
    assert list(vq_front.x) == [10, 20]  # run f (25 bytes, 0.90) is dominated within vq


def test_shipped_pq_recipe_fits_lenet300(lenet300):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "assets" / "recipes" / "lenet300_pq.json"
    plan = Plan.from_json(recipe.read_text()).validate(list(lenet300.prunable_layers()))
    step = plan.steps[0]
    for layer, weight in lenet300.prunable_layers().items():
        vq.check_layer(layer, tuple(weight.shape), step.layer_settings(layer))
