"""Tests of the version-2 shared/sparse sections: escape-coded gaps, index contexts, and the v1 reader path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from complab.errors import FormatError
from complab.storage import decode_state, encode_state, inspect_bytes
from complab.storage._bits import ByteReader, varint
from complab.storage.escape import MAX_ESCAPE, MAX_KEEP, MAX_VALUE, decode_escaped, encode_escaped
from complab.storage.sections import decode_section
from complab.storage.shared_section import MAX_INDEX_CONTEXTS, encode_indices, gap_classes

FIXTURE = Path(__file__).parent / "fixtures" / "format_v1_sections.clab"


def round_trip_values(values: np.ndarray, escape: int | None = None, keep: int | None = None) -> bytes:
    blob = encode_escaped(values, escape, keep)
    reader = ByteReader(blob)
    decoded = decode_escaped(reader, values.size, "gaps")
    assert reader.pos == len(blob) and np.array_equal(decoded, values)
    return blob


RNG = np.random.default_rng(5)
STREAMS = {
    "empty": np.zeros(0, dtype=np.int64),
    "one": np.array([7]),
    "all zero": np.zeros(5000, dtype=np.int64),
    "all huge": np.full(300, MAX_VALUE),
    "huge random": RNG.integers(0, MAX_VALUE + 1, 500),
    "geometric": RNG.geometric(0.05, 20_000) - 1,
    "geometric with long tail": np.concatenate([RNG.geometric(0.2, 5000) - 1, RNG.integers(1000, 10**6, 50)]),
    "edges": np.array([0, 1, MAX_ESCAPE - 1, MAX_ESCAPE, MAX_ESCAPE + 1, 2**30 - 1, 2**30, MAX_VALUE - 1, MAX_VALUE]),
    "one distinct large": np.full(1000, 123_456),
    "powers of two": np.array([2**b - d for b in range(1, 31) for d in (0, 1)]),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_escaped_gaps_round_trip_with_the_encoders_choice(name):
    round_trip_values(STREAMS[name])


@pytest.mark.parametrize("escape,keep", [(1, 0), (1, MAX_KEEP), (2, 3), (MAX_ESCAPE, 0), (MAX_ESCAPE, MAX_KEEP)])
@pytest.mark.parametrize("name", ["all zero", "all huge", "edges", "geometric with long tail", "powers of two"])
def test_escaped_gaps_round_trip_at_every_escape_and_class_width(name, escape, keep):
    round_trip_values(STREAMS[name], escape, keep)


def test_the_escape_keeps_a_long_tailed_alphabet_small():
    values = STREAMS["geometric with long tail"]
    blob = round_trip_values(values)
    assert blob[0] < 256  # the escape symbol (a one-byte varint): the short alphabet has under 257 symbols


def test_out_of_range_values_are_refused_by_the_encoder():
    with pytest.raises(ValueError):
        encode_escaped(np.array([-1]))
    with pytest.raises(ValueError):
        encode_escaped(np.array([MAX_VALUE + 1]))


@pytest.mark.parametrize("blob", [
    varint(0),  # escape symbol 0
    varint(MAX_ESCAPE + 1),  # escape symbol too large
    varint(1) + varint(3) + varint(0) + varint(1),  # 3 escapes and nothing after the short stream
])
def test_damaged_escape_blocks_are_format_errors(blob):
    with pytest.raises(FormatError):
        decode_escaped(ByteReader(blob), 3, "gaps")


def test_truncated_and_flipped_escape_blocks_are_format_errors_or_other_values():
    values = STREAMS["geometric with long tail"][:2000]
    blob = encode_escaped(values, 64, 2)
    for cut in range(0, len(blob), 7):
        with pytest.raises(FormatError):
            decode_escaped(ByteReader(blob[:cut]), values.size, "gaps")
    rng = np.random.default_rng(0)
    for _ in range(200):
        damaged = bytearray(blob)
        damaged[rng.integers(len(blob))] ^= 1 << int(rng.integers(8))
        try:
            decode_escaped(ByteReader(bytes(damaged)), values.size, "gaps")
        except FormatError:
            pass


def test_index_contexts_round_trip_and_are_only_kept_when_smaller():
    rng = np.random.default_rng(1)
    gaps = rng.geometric(0.3, 30_000) - 1
    classes = gap_classes(gaps, 2)
    correlated = np.where(classes == 0, rng.integers(0, 2, gaps.size), rng.integers(2, 8, gaps.size))
    blob = encode_indices(correlated, gaps, 8)
    assert blob[0] == 2 or blob[0] > 2  # the context pays here
    independent = rng.integers(0, 8, gaps.size)
    assert encode_indices(independent, gaps, 8)[0] == 1  # and not here
    assert gap_classes(np.array([0, 1, 2, 3, 6, 7, 100]), MAX_INDEX_CONTEXTS).tolist() == [0, 1, 1, 2, 2, 3, 3]


def test_a_tensor_whose_indices_follow_its_gaps_uses_a_context_and_round_trips():
    rng = np.random.default_rng(2)
    numel = 200_000
    kept = np.sort(rng.choice(numel, 20_000, replace=False))
    gaps = np.diff(kept, prepend=-1) - 1
    book = np.array([-0.75, -0.25, 0.25, 0.75], dtype=np.float32)
    values = np.where(gaps == 0, book[rng.integers(0, 2, kept.size)], book[rng.integers(2, 4, kept.size)])
    weight = torch.zeros(numel)
    weight[torch.from_numpy(kept)] = torch.from_numpy(values)
    data = encode_state({"w": weight}, {})
    row = inspect_bytes(data)[1]
    assert row["section_version"] == 2 and row["streams"][1]["contexts"] >= 2
    assert torch.equal(decode_state(data)[1]["w"], weight)


def test_the_positions_overhead_is_measured_against_the_gaps_own_entropy():
    """entropy_bytes of a v2 positions stream is n * H(gaps) / 8 of the gaps (not of the escape symbols)."""
    from complab.storage.entropy import empirical_entropy_bytes

    rng = np.random.default_rng(3)
    weight = torch.zeros(300_000)
    kept = np.sort(rng.choice(weight.numel(), 15_000, replace=False))
    weight[torch.from_numpy(kept)] = 0.5
    row = inspect_bytes(encode_state({"w": weight}, {}))[1]
    positions = row["streams"][0]
    assert positions["entropy_bytes"] == pytest.approx(empirical_entropy_bytes(np.diff(kept, prepend=-1) - 1))


@pytest.mark.parametrize("tensor", [
    torch.zeros(500),  # nothing kept
    torch.zeros(500).index_fill_(0, torch.tensor([0]), 1.0),  # one weight at the start
    torch.zeros(500).index_fill_(0, torch.tensor([499]), 1.0),  # one at the end
    torch.arange(1, 301, dtype=torch.float32).reshape(30, 10) % 5 + 1,  # dense
])
def test_v2_sections_round_trip_at_the_edges(tensor):
    data = encode_state({"t": tensor}, {})
    assert torch.equal(decode_state(data)[1]["t"], tensor)


def v2_sparse_section(values: np.ndarray, gaps: np.ndarray, numel: int) -> bytes:
    body = (varint(1) + b"w" + bytes([1, 1]) + varint(numel) + bytes([0]) + varint(gaps.size)
            + encode_escaped(gaps) + values.astype("<f4").tobytes())
    return bytes([6]) + varint(len(body)) + body


def test_sparse_v2_round_trips_and_refuses_a_stored_zero_or_gaps_past_the_end():
    rng = np.random.default_rng(4)  # bursts of kept weights far apart: v1 would need many fillers
    gaps = np.where(rng.random(900) < 0.1, rng.integers(5000, 50_000, 900), rng.integers(0, 3, 900))
    kept = torch.from_numpy(np.cumsum(gaps + 1) - 1)
    weight = torch.zeros(int(kept[-1]) + 10)
    weight[kept] = torch.randn(900, generator=torch.Generator().manual_seed(4))
    data = encode_state({"w": weight}, {})
    row = inspect_bytes(data)[1]
    assert row["encoding"] == "sparse" and row["section_version"] == 2
    assert torch.equal(decode_state(data)[1]["w"], weight)
    good = v2_sparse_section(np.array([1.0, 2.0]), np.array([3, 4]), 10)
    name, tensor, _, _ = decode_section(ByteReader(good))
    assert tensor.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 2, 0]
    with pytest.raises(FormatError, match="stores a zero"):
        decode_section(ByteReader(v2_sparse_section(np.array([1.0, 0.0]), np.array([3, 4]), 10)))
    with pytest.raises(FormatError, match="do not fit"):
        decode_section(ByteReader(v2_sparse_section(np.array([1.0, 2.0]), np.array([3, 6]), 10)))


def test_a_file_written_by_the_version_1_encoder_still_decodes():
    """tests/fixtures/format_v1_sections.clab was written by main (4da047b) before the v2 sections existed."""
    rng = np.random.default_rng(17)
    book = np.array([-0.5, -0.25, 0.125, 0.75], dtype=np.float32)
    shared = book[rng.integers(0, 4, 3000)] * (rng.random(3000) < 0.08)
    shared[2900:] = 0
    dense = book[rng.integers(0, 4, 256)]
    sparse = rng.standard_normal(2000).astype(np.float32) * (rng.random(2000) < 0.1)
    expected = {"shared": shared.astype(np.float32).reshape(30, 100), "dense": dense.reshape(16, 16),
                "sparse": sparse.reshape(20, 100), "bias": rng.standard_normal(10).astype(np.float32)}
    data = FIXTURE.read_bytes()
    rows = {row["name"]: row for row in inspect_bytes(data)}
    assert [rows[name]["encoding"] for name in expected] == ["shared", "shared", "sparse", "raw"]
    assert rows["shared"]["gap_bits"] and rows["sparse"]["gap_bits"]  # v1: fixed-width gap fields with fillers
    assert all(rows[name]["section_version"] == 1 for name in expected)
    meta, state = decode_state(data)
    assert meta["fixture"].startswith("format v1")
    for name, array in expected.items():
        assert np.array_equal(state[name].numpy().view(np.int32), array.view(np.int32)), name
    # and the fixed-width (paper) layout is still what a fixed gap width writes
    again = encode_state({name: torch.from_numpy(array) for name, array in expected.items()}, {}, gap_bits=7)
    assert all(row["section_version"] in (None, 1) for row in inspect_bytes(again))


def test_an_unknown_section_type_names_the_upgrade():
    data = encode_state({"w": torch.zeros(100).index_fill_(0, torch.tensor([3]), 1.0)}, {})
    rows = inspect_bytes(data)
    start = rows[0]["bytes_total"]
    assert data[start] in (3, 5, 6)  # the encoder's choice for one kept weight
    damaged = bytearray(data)
    damaged[start] = 99
    with pytest.raises(FormatError, match="upgrade"):
        decode_section(ByteReader(bytes(damaged), start))


def test_raw_escape_bits_with_set_padding_are_refused():
    blob = bytearray(encode_escaped(np.array([5]), 1, 0))  # u = 5: class 2, two raw bits, one raw byte at the end
    assert decode_escaped(ByteReader(bytes(blob)), 1, "gaps").tolist() == [5]
    blob[-1] |= 0x80
    with pytest.raises(FormatError, match="padding"):
        decode_escaped(ByteReader(bytes(blob)), 1, "gaps")
