"""The compact file's int section (type 7): integer levels and scales stored entropy coded, decoded bit for bit and
handed back, a decoded classifier and detector computing what was written (levels and 8-bit activation hooks), damaged
sections refused, old files unchanged."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from complab.errors import FormatError
from complab.methods import int_quant
from complab.methods.int_quant import quantize_weight
from complab.models import actquant
from complab.models.compact import load_compressed
from complab.models.compact_writer import Products
from complab.models.handle import load_model
from complab.models.tasks import read_compact
from complab.storage import decode_state, encode_state, inspect_bytes, read_file
from complab.storage._bits import varint
from complab.storage.codec import HEADER, MAGIC
from complab.storage.entropy import code_symbols
from complab.storage.int_section import IntWeights, dequantize, level_range

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1_sections.clab"


def int_layer(shape: tuple[int, ...], bits: int, granularity: str = "channel", zeros: float = 0.0,
              seed: int = 0) -> tuple[torch.Tensor, IntWeights]:
    """A weight quantized by the int step's quantizer (magnitude-pruned first when zeros > 0), and its structure."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    if zeros:
        weight = torch.where(weight.abs() <= weight.abs().flatten().quantile(zeros), torch.zeros(()), weight)
    levels, scales = quantize_weight(weight, bits, granularity)
    return dequantize(levels, scales), IntWeights(levels, scales, bits)


def sections_of(data: bytes) -> dict[str, dict]:
    return {row["name"]: row for row in inspect_bytes(data)[1:]}


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("shape,zeros", [((24, 8, 3, 3), 0.0), ((24, 8, 3, 3), 0.7), ((40, 30), 0.0),
                                         ((40, 30), 0.9), ((1, 50), 0.3)])
def test_levels_and_scales_round_trip_bit_exactly_and_come_back(bits, granularity, shape, zeros):
    weight, structure = int_layer(shape, bits, granularity, zeros, seed=bits)
    bias = torch.randn(shape[0])
    data = encode_state({"w": weight, "b": bias}, {"k": 1}, structures={"w": structure})
    out: dict = {}
    meta, state = decode_state(data, structures=out)
    assert meta == {"k": 1} and torch.equal(state["b"], bias)
    assert torch.equal(state["w"].view(torch.int32), weight.view(torch.int32))  # bit for bit (+0.0 included)
    assert set(out) == {"w"}
    back = out["w"]
    assert back.bits == bits and back.levels.dtype == torch.int8 and tuple(back.levels.shape) == shape
    assert torch.equal(back.levels, structure.levels) and torch.equal(back.scales, structure.scales)
    row = sections_of(data)["w"]
    scales = 1 if granularity == "tensor" else shape[0]
    assert (row["encoding"], row["quantizer"], row["layout"]) == ("int", "int", {"bits": bits, "scales": scales})
    assert row["bytes_codebook"] == 4 * scales
    assert row["nonzeros"] == int(torch.count_nonzero(structure.levels))
    assert row["formula_bits"] == weight.numel() * bits + 32 * scales
    assert row["bytes_total"] > row["bytes_indices"] + row["bytes_positions"] + row["bytes_codebook"]


def test_read_file_hands_the_structures_back_and_callers_without_a_dict_see_nothing_new(tmp_path):
    weight, structure = int_layer((16, 4, 3, 3), 4)
    from complab.storage import write_file

    write_file(tmp_path / "m.clab", {"w": weight}, {}, structures={"w": structure})
    out: dict = {}
    _, state = read_file(tmp_path / "m.clab", structures=out)
    assert torch.equal(out["w"].levels, structure.levels) and torch.equal(state["w"], weight)
    meta, plain = read_file(tmp_path / "m.clab")
    assert torch.equal(plain["w"], weight)


def test_the_step_and_the_decoder_share_one_formula():
    assert int_quant.dequantize is dequantize and int_quant.level_range is level_range
    assert [level_range(b) for b in (2, 4, 8)] == [1, 7, 127]


def test_levels_are_entropy_coded_below_their_bit_width():
    """A bell-shaped weight's levels cost less than b bits each (their entropy), far less than float32."""
    for bits in (4, 8):
        weight, structure = int_layer((128, 64, 3, 3), bits)
        row = sections_of(encode_state({"w": weight}, {}, structures={"w": structure}))["w"]
        levels = structure.levels.numpy().ravel().astype(np.int64)
        counts = np.bincount(levels - levels.min())
        p = counts[counts > 0] / levels.size
        entropy_bytes = -(p * np.log2(p)).sum() * levels.size / 8
        assert row["bytes_indices"] < levels.size * bits / 8  # below bit-packed
        assert row["bytes_indices"] < 1.01 * entropy_bytes + 600  # at the levels' entropy (plus a table)


def test_the_positions_layout_is_taken_where_it_is_smaller():
    """Pruned rows (zeros in runs): positions + non-zero levels beat one level per weight; dense levels stay one
    stream."""
    weight, structure = int_layer((64, 32, 3, 3), 8)
    levels = structure.levels.clone()
    levels[::2] = 0  # every other output channel pruned away
    pruned = IntWeights(levels, structure.scales, 8)
    data = encode_state({"w": dequantize(levels, structure.scales)}, {}, structures={"w": pruned})
    row = sections_of(data)["w"]
    assert [s["stream"] for s in row["streams"]] == ["positions", "indices"]
    dense = code_symbols(levels.numpy().ravel().astype(np.int64) + 127, 255).size
    assert row["bytes_positions"] + row["bytes_indices"] < dense
    dense_row = sections_of(encode_state({"w": weight}, {}, structures={"w": structure}))["w"]
    assert [s["stream"] for s in dense_row["streams"]] == ["levels"]


def test_a_structure_that_does_not_decode_to_the_tensor_is_ignored():
    weight, structure = int_layer((16, 32), 6)
    changed = weight.clone()
    changed[0, 0] = changed[0, 0] * 1.5 + 0.25  # no longer scales * levels
    bad = [structure, IntWeights(structure.levels, structure.scales, 9),  # bits out of range
           IntWeights(structure.levels, -structure.scales, 6),  # negative scales
           IntWeights(structure.levels.to(torch.int16), structure.scales, 6),  # levels not int8
           IntWeights(structure.levels, structure.scales[:3], 6),  # neither one scale per row nor one
           IntWeights(structure.levels, structure.scales, 2)]  # levels beyond 2 bits
    for tensor, candidate in [(changed, bad[0])] + [(weight, b) for b in bad[1:]] + [(weight.double(), bad[0])]:
        out: dict = {}
        _, state = decode_state(encode_state({"w": tensor}, {}, structures={"w": candidate}), structures=out)
        assert torch.equal(state["w"], tensor) and out == {}


# ----------------------------------------------------------------------------------------------- decoded handles


def _quantized_classifier(bits: int, activations: bool) -> tuple:
    """demo:lenet5 with every conv/fc weight on b-bit levels and (optionally) uint8 activation hooks calibrated on
    random digits-sized inputs: the handle, its int_weights, the activation table."""
    handle = load_model("demo:lenet5").clone()
    int_weights = {}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            levels, scales = quantize_weight(weight, bits)
            weight.copy_(dequantize(levels, scales))
            int_weights[f"{layer}.weight"] = IntWeights(levels, scales, bits)
    table = {}
    if activations:
        ranges = {}
        hooks = [handle.model.get_submodule(layer).register_forward_pre_hook(
            lambda module, args, layer=layer: ranges.__setitem__(layer, (float(args[0].min()), float(args[0].max()))))
            for layer in handle.prunable_layers()]
        with torch.no_grad():
            handle.model(torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
        for hook in hooks:
            hook.remove()
        table = {layer: actquant.qparams(*span) for layer, span in ranges.items()}
        actquant.install(handle.model, table)
    return handle, int_weights, table


@pytest.mark.parametrize("activations", [False, True])
def test_a_decoded_classifier_has_its_levels_and_hooks_and_the_same_outputs(tmp_path, activations):
    handle, int_weights, table = _quantized_classifier(4, activations)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = handle.model.eval()(x)
    path = tmp_path / "int.clab"
    handle.save(path, {"plan": {"steps": []}}, Products(int_weights=int_weights))
    rows = sections_of(path.read_bytes())
    assert {name for name, row in rows.items() if row["encoding"] == "int"} == set(int_weights)
    meta = read_file(path)[0]
    assert ("int_quant" in meta) == activations
    for decoded in (read_compact(path), load_compressed(path)):
        assert set(decoded.int_weights) == set(int_weights)
        for name, structure in int_weights.items():
            assert torch.equal(decoded.int_weights[name].levels, structure.levels)
            assert torch.equal(decoded.int_weights[name].scales, structure.scales)
        assert actquant.table_of(decoded.model) == table
        with torch.no_grad():
            assert torch.equal(decoded.model(x), expected)
        copy = decoded.clone()
        assert set(copy.int_weights) == set(int_weights) and actquant.table_of(copy.model) == table
    if activations:  # the hooks change what the model computes: dropping them would be seen
        actquant.remove(handle.model)
        with torch.no_grad():
            assert not torch.equal(handle.model(x), expected)


def test_a_decoded_int_model_saved_again_stays_int(tmp_path):
    handle, int_weights, _ = _quantized_classifier(8, True)
    handle.save(tmp_path / "a.clab", products=Products(int_weights=int_weights))
    decoded = read_compact(tmp_path / "a.clab")
    decoded.save(tmp_path / "b.clab")  # no products: the handle's own int_weights
    first, second = sections_of((tmp_path / "a.clab").read_bytes()), sections_of((tmp_path / "b.clab").read_bytes())
    assert {n: r["bytes_total"] for n, r in first.items()} == {n: r["bytes_total"] for n, r in second.items()}
    assert read_file(tmp_path / "b.clab")[0]["int_quant"] == read_file(tmp_path / "a.clab")[0]["int_quant"]


def test_a_float_model_has_no_int_weights_and_no_hooks(tmp_path):
    handle = load_model("demo:lenet5")
    assert handle.int_weights == {} and handle.clone().int_weights == {}
    handle.save(tmp_path / "f.clab")
    decoded = read_compact(tmp_path / "f.clab")
    assert decoded.int_weights == {} and actquant.table_of(decoded.model) == {}
    assert "int_quant" not in read_file(tmp_path / "f.clab")[0]


def test_a_bad_activation_table_is_refused_in_one_line(tmp_path):
    handle, int_weights, _ = _quantized_classifier(8, False)
    for record in ({"activation_bits": 8, "activations": {"nope": [0.1, 3]}},
                   {"activation_bits": 8, "activations": {"conv1": [float("nan"), 3]}},
                   {"activation_bits": 8, "activations": {"conv1": [0.1, 300]}}, [1, 2]):
        handle.save(tmp_path / "bad.clab", {"int_quant": record}, Products(int_weights=int_weights))
        with pytest.raises(FormatError) as error:
            read_compact(tmp_path / "bad.clab")
        assert "int_quant" in str(error.value) and "\n" not in str(error.value)


def test_a_decoded_detector_has_its_levels_and_hooks_and_the_same_outputs(tmp_path):
    from complab.models.detector import load_detector, load_detector_file

    handle = load_detector().clone()
    int_weights = {}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            levels, scales = quantize_weight(weight, 8)
            weight.copy_(dequantize(levels, scales))
            int_weights[f"{layer}.weight"] = IntWeights(levels, scales, 8)
    table = {layer: (0.02, 128) for layer in list(handle.prunable_layers())[1:6]}
    actquant.install(handle.model, table)
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = handle.model.eval()(x)[0]
    path = tmp_path / "det.clab"
    handle.save(path, products=Products(int_weights=int_weights))
    for decoded in (load_detector_file(path), read_compact(path)):
        assert set(decoded.int_weights) == set(int_weights)
        assert actquant.table_of(decoded.model) == table
        with torch.no_grad():
            assert torch.equal(decoded.model(x)[0], expected)


# ----------------------------------------------------------------------------------------------- damaged files


def _file(specific: bytes, shape: list[int], dtype_code: int = 1) -> bytes:
    name = b"w"
    body = varint(len(name)) + name + bytes([dtype_code, len(shape)]) + b"".join(varint(d) for d in shape) + specific
    payload = varint(2) + b"{}" + varint(1) + bytes([7]) + varint(len(body)) + body
    return HEADER.pack(MAGIC, 1, 0, zlib.crc32(payload), len(payload)) + payload


def _levels_stream(symbols: np.ndarray, alphabet: int) -> bytes:
    return code_symbols(symbols, alphabet).to_bytes()


def test_a_crafted_int_section_decodes_and_damaged_ones_are_refused():
    scales = struct.pack("<ff", 0.5, 0.25)
    symbols = np.array([0, 1, 2, 1, 1, 0], dtype=np.int64)  # 2 bits: levels -1, 0, 1
    good = _file(bytes([2, 0]) + varint(2) + scales + _levels_stream(symbols, 3), [2, 3])
    out: dict = {}
    _, state = decode_state(good, structures=out)
    assert state["w"].tolist() == [[-0.5, 0.0, 0.5], [0.0, 0.0, -0.25]]
    assert out["w"].levels.tolist() == [[-1, 0, 1], [0, 0, -1]]
    stream = _levels_stream(symbols, 3)
    damaged = {
        "bits 1": _file(bytes([1, 0]) + varint(2) + scales + stream, [2, 3]),
        "bits 9": _file(bytes([9, 0]) + varint(2) + scales + stream, [2, 3]),
        "unknown flags": _file(bytes([2, 2]) + varint(2) + scales + stream, [2, 3]),
        "3 scales for 2 rows": _file(bytes([2, 0]) + varint(3) + scales + struct.pack("<f", 1.0) + stream, [2, 3]),
        "0 scales": _file(bytes([2, 0]) + varint(0) + stream, [2, 3]),
        "huge scale count": _file(bytes([2, 0]) + varint(2**40) + stream, [2, 3]),
        "NaN scale": _file(bytes([2, 0]) + varint(2) + struct.pack("<ff", float("nan"), 1) + stream, [2, 3]),
        "zero scale": _file(bytes([2, 0]) + varint(2) + struct.pack("<ff", 0.0, 1) + stream, [2, 3]),
        "negative scale": _file(bytes([2, 0]) + varint(2) + struct.pack("<ff", -1.0, 1) + stream, [2, 3]),
        "infinite scale": _file(bytes([2, 0]) + varint(2) + struct.pack("<ff", float("inf"), 1) + stream, [2, 3]),
        "scales cut": _file(bytes([2, 0]) + varint(2) + scales[:5], [2, 3]),
        "stream cut": _file(bytes([2, 0]) + varint(2) + scales + stream[:-1], [2, 3]),
        "too few levels": _file(bytes([2, 0]) + varint(2) + scales + _levels_stream(symbols[:5], 3), [2, 3]),
        "a level past 2 bits": _file(bytes([2, 0]) + varint(2) + scales + _levels_stream(symbols + 1, 4), [2, 3]),
        "trailing byte": _file(bytes([2, 0]) + varint(2) + scales + stream + b"\0", [2, 3]),
        "float16": _file(bytes([2, 0]) + varint(2) + scales + stream, [2, 3], dtype_code=3),
        "rank 0": _file(bytes([2, 0]) + varint(1) + scales[:4] + _levels_stream(symbols[:1], 3), []),
        "empty": _file(bytes([2, 0]) + varint(0), [0, 3]),
        "more kept than elements": _file(bytes([2, 1]) + varint(2) + scales + varint(7), [2, 3]),
        "positions past the end": _file(bytes([2, 1]) + varint(2) + scales + varint(2) + varint(6)
                                        + _levels_stream(np.array([5, 5]), 7) + bytes([1])
                                        + _levels_stream(np.array([0, 1]), 2), [2, 3]),
        "huge dense stream": _file(bytes([2, 0]) + varint(1) + scales[:4] + varint(2**31) + varint(0) + varint(1),
                                   [2**31]),
    }
    for what, data in damaged.items():
        with pytest.raises(FormatError) as error:
            decode_state(data)
        assert "\n" not in str(error.value), what
        with pytest.raises(FormatError):
            inspect_bytes(data)


def test_old_files_decode_as_before_with_no_structures():
    data = FIXTURE.read_bytes()
    out: dict = {}
    meta, state = decode_state(data, structures=out)
    assert out == {} and state
    assert {row["encoding"] for row in inspect_bytes(data)[1:]} <= {"raw", "shared", "sparse", "vq"}


def test_int_weights_in_a_file_are_smaller_than_int8_bytes():
    """A trained model's 8-bit levels (demo VGG, per channel) cost fewer bits than a byte each, scales and section
    headers included (measured 7.58 bits: bell-shaped weights on a per-channel max scale have ~7.5 bits of entropy,
    and context splits by row spread or the previous level were measured to save < 0.03 bits)."""
    handle = load_model("demo:vgg_small").clone()
    int_weights = {}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            levels, scales = quantize_weight(weight, 8)
            weight.copy_(dequantize(levels, scales))
            int_weights[f"{layer}.weight"] = IntWeights(levels, scales, 8)
    data = encode_state({k: v.detach() for k, v in handle.model.state_dict().items()}, {},
                        structures=int_weights)
    rows = [row for row in inspect_bytes(data)[1:] if row["encoding"] == "int"]
    assert len(rows) == len(int_weights)
    weights = sum(row["numel"] for row in rows)
    section_bytes = sum(row["bytes_total"] for row in rows)
    assert section_bytes < weights  # under 8 bits a weight, scales and headers included
    assert all(row["bits_per_weight"] < 8 for row in rows if row["numel"] >= 9216)
    assert json.dumps([row["layout"] for row in rows])  # inspect rows stay JSON (the CLI and report print them)


def test_the_waterfall_counts_int_sections_as_levels_and_scales():
    from complab.analysis.report import STEP_SHORT, tensor_steps

    weight, structure = int_layer((64, 32, 3, 3), 8, zeros=0.5)
    row = sections_of(encode_state({"w": weight}, {}, structures={"w": structure}))["w"]
    steps = tensor_steps(row)  # (it asserts the steps add up to the section's bytes minus fp32)
    assert set(steps) == {"sections", "levels", "codebooks"} and "levels" in STEP_SHORT
    assert steps["codebooks"] == 4 * 64
    assert steps["levels"] == row["bytes_positions"] + row["bytes_indices"] - 4 * weight.numel()
    assert 0 < steps["sections"] < 100  # only the section's own header, not its levels


def test_the_fuzz_family_reaches_the_int_decoder_and_its_unsafe_check_fires(tmp_path, monkeypatch):
    """benchmarks/fuzz_campaign.py's int family: the unmutated base decodes into a handle with every int layer and
    hook, mutated cases end in one-line errors or valid models, and a planted broken structure is an unsafe accept."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fuzz_campaign as fc

    monkeypatch.setattr(fc, "WORK", tmp_path)
    fc._STATE["int"] = fc._int_setup()
    meta, state, structures, handle = fc.door_int(fc._STATE["int"]["bases"][0])
    assert set(handle.int_weights) == set(structures) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    assert len(actquant.table_of(handle.model)) == 4 and fc._int_unsafe(state, structures, handle) is None
    outcomes = [fc.run_int(index, 11, str(tmp_path)) for index in range(120)]
    assert {outcome for outcome, _, _ in outcomes} <= {"ok", "error"}, [d for o, d, _ in outcomes if o not in
                                                                         ("ok", "error")][:3]
    assert sum(outcome == "error" for outcome, _, _ in outcomes) > 60
    broken = dict(structures)
    levels = broken["fc2.weight"].levels.clone()
    levels[0, 0] = 0 if levels[0, 0] else 1  # still 2 bits, no longer what the tensor holds
    broken["fc2.weight"] = IntWeights(levels, broken["fc2.weight"].scales, 2)
    assert "not its levels times its scales" in fc._int_unsafe(state, broken, None)
    actquant.install(handle.model, {"conv1": (float("nan"), 3)})
    assert "activation hook" in fc._int_unsafe(state, structures, handle)
