"""Section type 8 (shared version 3): indices coded in contexts of the previous kept level of the same row."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from complab.errors import FormatError
from complab.storage import decode_state, encode_state, inspect_bytes
from complab.storage._bits import ByteReader, varint
from complab.storage.context_section import MAX_ROUNDS, TYPE_SHARED3, _dense_rounds, _rounds
from complab.storage.entropy import encode_symbols
from complab.storage.registry import Subject, by_rank
from complab.storage.sections import decode_section, encode_section

FIXTURE = Path(__file__).parent / "fixtures" / "format_v2_sections.clab"
BOOK = np.array([-0.75, -0.5, -0.25, -0.125, 0.125, 0.25, 0.5, 0.75], dtype=np.float32)


def _row_scaled(rng: np.random.Generator, shape: tuple[int, ...], keep: float) -> np.ndarray:
    """Levels whose spread differs per row (as a trained layer's output channels do), pruned to `keep`."""
    rows = shape[0]
    scale = np.where(rng.random(rows) < 0.5, 0.3, 3.0)
    levels = np.round(rng.standard_normal((rows, int(np.prod(shape[1:])))) * scale[:, None] + 3.5)
    values = BOOK[np.clip(levels, 0, 7).astype(np.int64)]
    return np.where(rng.random(values.shape) < keep, values, 0).astype(np.float32).reshape(shape)


def _offers(tensor: torch.Tensor) -> dict[int, int]:
    """Every section type's exact size for this tensor (each seeing the best so far, as the encoder asks)."""
    subject, best, sizes = Subject("w", tensor), None, {}
    for section in by_rank():
        offer = section.offer(subject, best) if section.offer else None
        if offer is not None:
            sizes[section.type_id] = offer.size
            best = offer if best is None or offer.size < best.size else best
    return sizes


@pytest.mark.parametrize("shape,keep", [((60, 200), 0.2), ((32, 8, 3, 3), 0.5), ((40, 64), 1.0), ((3000,), 0.3)])
def test_row_structured_tensors_round_trip_bit_for_bit(shape, keep):
    rng = np.random.default_rng(sum(shape))
    array = _row_scaled(rng, shape, keep)
    if len(shape) == 1:  # one row: make the previous level predictive along it (runs of small and large levels)
        array = _row_scaled(rng, (1, 3000), keep).reshape(shape)
        array[:1500] = np.where(np.abs(array[:1500]) > 0.2, 0.125, array[:1500])
    tensor = torch.from_numpy(array)
    section = encode_section("w", tensor)
    name, decoded, _, info = decode_section(ByteReader(section))
    assert name == "w" and torch.equal(decoded.view(torch.int32), tensor.view(torch.int32))
    sizes = _offers(tensor)
    if len(shape) >= 2:
        assert section[0] == TYPE_SHARED3 and info.section_version == 3
        assert sizes[TYPE_SHARED3] < sizes[5]  # smaller than version 2 by its exact size
    head = len(varint(1)) + 1 + 2 + sum(len(varint(d)) for d in shape)  # name, dtype, rank, shape
    reader = ByteReader(section)
    reader.u8("type")
    specific = reader.varint("body length", len(section)) - head
    assert specific == min(sizes.values())  # the smallest exact offer is what was written


def test_iid_levels_keep_version_2():
    """Without structure the extra tables do not pay: the encoder keeps version 2 (or version 1)."""
    rng = np.random.default_rng(3)
    array = np.where(rng.random((64, 300)) < 0.3, BOOK[rng.integers(0, 8, (64, 300))], 0).astype(np.float32)
    section = encode_section("w", torch.from_numpy(array))
    assert section[0] in (2, 5)
    assert TYPE_SHARED3 not in _offers(torch.from_numpy(array))


def test_rounds_order_rows_by_kept_count_then_index():
    # row 0 keeps 2, row 1 keeps 3, row 2 keeps 0, row 3 keeps 3 (row length 4)
    positions = np.array([0, 2, 4, 5, 7, 12, 13, 14])
    first, place, per_round = _rounds(positions, 4)
    assert first.tolist() == [True, False, True, False, False, True, False, False]
    assert per_round.tolist() == [3, 3, 2]
    # rank: row 1 (3 kept), row 3 (3), row 0 (2); round order: r1j0 r3j0 r0j0 | r1j1 r3j1 r0j1 | r1j2 r3j2
    assert place.tolist() == [2, 5, 0, 3, 6, 1, 4, 7]
    first, place = _dense_rounds(2, 3)
    assert first.tolist() == [True, False, False, True, False, False] and place.tolist() == [0, 2, 4, 1, 3, 5]


def test_a_file_written_before_type_8_still_decodes_and_the_new_encoder_writes_type_8():
    """tests/fixtures/format_v2_sections.clab was written by main (e411776), before type 8 existed."""
    rng = np.random.default_rng(30)
    scale = np.where(rng.random(60) < 0.5, 0.3, 3.0)
    levels = np.clip(np.round(rng.standard_normal((60, 200)) * scale[:, None] + 3.5), 0, 7).astype(np.int64)
    rows = np.where(rng.random((60, 200)) < 0.2, BOOK[levels], 0)
    conv = BOOK[np.clip(np.round(rng.standard_normal((16, 8, 3, 3)) * 2 + 3.5), 0, 7).astype(np.int64)]
    expected = {"rows": rows.astype(np.float32),
                "conv": np.where(rng.random((16, 8, 3, 3)) < 0.5, conv, 0).astype(np.float32),
                "bias": rng.standard_normal(10).astype(np.float32)}
    data = FIXTURE.read_bytes()
    meta, state = decode_state(data)
    assert meta["fixture"].startswith("format before type 8")
    for name, array in expected.items():
        assert np.array_equal(state[name].numpy().view(np.int32), array.view(np.int32)), name
    old = {row["name"]: row for row in inspect_bytes(data)}
    assert old["rows"]["section_version"] != 3
    again = encode_state({name: torch.from_numpy(array) for name, array in expected.items()}, dict(meta))
    new = {row["name"]: row for row in inspect_bytes(again)}
    assert new["rows"]["section_version"] == 3 and new["rows"]["bytes_total"] < old["rows"]["bytes_total"]
    assert len(again) < len(data)


# ----------------------------------------------------------------------------------------------- hostile sections


def _section(shape: tuple[int, ...], body: bytes) -> bytes:
    head = varint(1) + b"w" + bytes([1, len(shape)]) + b"".join(varint(d) for d in shape)
    return bytes([TYPE_SHARED3]) + varint(len(head) + len(body)) + head + body


def _dense_body(g: int, c: int, map_bytes: bytes, streams: list[np.ndarray], k: int = 2) -> bytes:
    codebook = struct.pack(f"<{k}f", *np.linspace(1, k, k))
    return bytes([0]) + varint(k) + codebook + bytes([g, c]) + map_bytes + b"".join(
        encode_symbols(s, k) for s in streams)


def test_a_valid_hand_built_section_decodes():
    # 2 rows of 4, k = 2, two classes: row start -> 0, level 0 -> 0, level 1 -> 1 (map bits 0,0,1 = 0b100)
    levels = np.array([[0, 1, 1, 0], [1, 1, 0, 1]])
    # round order (dense: column by column): contexts from the previous level in the row
    order = levels.T.ravel()
    previous = np.concatenate(([-1, -1], levels.T[:-1].ravel()))
    contexts = np.where(previous == 1, 1, 0)
    streams = [order[contexts == 0], order[contexts == 1]]
    _, tensor, _, info = decode_section(ByteReader(_section((2, 4), _dense_body(1, 2, bytes([0b100]), streams))))
    assert np.array_equal(tensor.numpy(), (levels + 1).astype(np.float32))
    assert info.section_version == 3


@pytest.mark.parametrize("g,c,map_bytes,streams,message", [
    (0, 2, bytes([0b100]), None, "gap class count 0"),
    (2, 2, bytes([0b100]), None, "gap class count 2"),  # gap classes without positions
    (1, 0, b"", None, "level class count 0"),
    (1, 17, bytes(2), None, "level class count 17"),
    (1, 2, bytes([0b1000_0100]), None, "padding bits"),
    (1, 3, bytes([0b11_00_00]), None, "not below its 3 classes"),
    (1, 2, bytes([0b100]), [np.zeros(3, int), np.zeros(3, int)], "hold 6 symbols for 8"),
    (1, 2, bytes([0b100]), [np.ones(8, int), np.zeros(0, int)], "runs out of symbols"),
])
def test_hostile_index_parts_are_refused_with_a_clear_message(g, c, map_bytes, streams, message):
    streams = streams if streams is not None else [np.zeros(8, int)] + [np.zeros(0, int)] * (max(c, 1) * g - 1)
    with pytest.raises(FormatError, match=message):
        decode_section(ByteReader(_section((2, 4), _dense_body(g, c, map_bytes, streams))))


def test_rows_longer_than_the_round_limit_are_refused_before_decoding():
    body = _dense_body(1, 1, b"", [np.zeros(MAX_ROUNDS + 1, int)])
    with pytest.raises(FormatError, match=f"more than {MAX_ROUNDS}"):
        decode_section(ByteReader(_section((1, MAX_ROUNDS + 1), body)))
    with pytest.raises(FormatError, match="at least one shared value"):
        decode_section(ByteReader(_section((2, 4), bytes([0]) + varint(0))))


def test_every_shape_and_context_choice_round_trips(monkeypatch):
    """The encoder's offer (its quick skip switched off) decodes bit for bit for random shapes, densities and
    codebook sizes, whatever G and C it picks: the round order and the contexts agree on both sides."""
    from complab.storage import context_section
    from complab.storage.registry import Frame

    monkeypatch.setattr(context_section, "_MIN_SAVING_PER_CELL", -1e9)
    rng = np.random.default_rng(8)
    seen = set()
    for trial in range(40):
        rank = int(rng.integers(1, 5))
        shape = tuple(int(d) for d in rng.integers(1, 12, rank))
        shape = (int(rng.integers(2, 40)),) + shape[1:] if rank > 1 else (int(rng.integers(300, 3000)),)
        k = int(rng.integers(2, 40))
        book = np.sort(rng.choice(np.arange(1, 200), k, replace=False) * (rng.choice([-1, 1], k))).astype(np.float32)
        book = np.unique(book / 64)
        steps = rng.integers(-1, 2, int(np.prod(shape))) * (rng.random(int(np.prod(shape))) < rng.uniform(0.1, 1))
        walk = np.cumsum(steps) + book.size // 2  # neighbours share levels: the previous level is a good context
        levels = (np.abs(walk) % (2 * book.size)).clip(0, book.size - 1).reshape(shape)
        keep = rng.random(shape) < rng.choice([0.05, 0.3, 0.8, 1.0])
        array = np.where(keep, book[levels.astype(np.int64)], 0).astype(np.float32)
        tensor = torch.from_numpy(array)
        offer = context_section._offer(Subject("w", tensor), None)
        if offer is None:  # fewer than 256 kept weights, one shared value, or a row past the round limit
            assert np.count_nonzero(array) < 256 or np.unique(array[array != 0]).size < 2 or rank == 1
            continue
        body = offer.build()
        assert len(body) == offer.size
        frame = Frame("w", torch.float32, tuple(array.shape), array.size, 4)
        decoded, info = context_section._decode(ByteReader(body), frame)
        assert torch.equal(decoded.view(torch.int32), tensor.view(torch.int32)), (trial, shape, k)
        seen.add(info.streams[-1]["contexts"])
    assert len(seen) >= 3  # several context counts were exercised


# ----------------------------------------------------------------------------------------------- per-tap positions


def _centre_tap_conv(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A conv weight whose kept weights sit mostly on the centre tap (a late layer that sees 1x1 feature maps), with
    middle levels there and outer ones elsewhere."""
    taps = shape[2] * shape[3]
    centre_tap = (np.arange(taps) == taps // 2).reshape(1, 1, shape[2], shape[3])
    levels = np.where(centre_tap, rng.integers(2, 6, shape), rng.choice([0, 1, 6, 7], shape))
    keep = np.where(np.arange(taps) == taps // 2, 0.85, 0.006).reshape(1, 1, shape[2], shape[3])
    return np.where(rng.random(shape) < keep, BOOK[levels], 0).astype(np.float32)


def test_centre_tap_convolution_stores_its_positions_per_tap(monkeypatch):
    from complab.storage import context_section

    tensor = torch.from_numpy(_centre_tap_conv(np.random.default_rng(7), (64, 64, 3, 3)))
    section = encode_section("w", tensor)
    _, decoded, _, info = decode_section(ByteReader(section))
    assert torch.equal(decoded.view(torch.int32), tensor.view(torch.int32))
    assert section[0] == TYPE_SHARED3 and info.streams[0].get("taps") == 9
    reader = ByteReader(section)
    reader.u8("type"), reader.varint("length", 1 << 30)
    flags = section[reader.pos + 4 + sum(len(varint(d)) for d in tensor.shape)]  # after name, dtype, rank, shape
    assert flags == 7 and info.streams[1]["contexts"] == 2  # indices in contexts of the tap class (dense/sparse)
    monkeypatch.setattr(context_section, "MAX_TAPS", 1)  # the encoder without the per-tap layout
    without = encode_section("w", tensor)
    assert len(section) < len(without)
    _, _, _, info_without = decode_section(ByteReader(without))
    # one density per tap (the centre's 85%, the rest's 0.6%) instead of one gap distribution for all
    assert info.bytes_positions < 0.95 * info_without.bytes_positions


def test_uniform_taps_keep_one_positions_stream():
    rng = np.random.default_rng(8)
    shape = (32, 16, 3, 3)
    tensor = torch.from_numpy(np.where(rng.random(shape) < 0.2, BOOK[rng.integers(0, 8, shape)], 0).astype(np.float32))
    section = encode_section("w", tensor)
    _, decoded, _, info = decode_section(ByteReader(section))
    assert torch.equal(decoded.view(torch.int32), tensor.view(torch.int32))
    assert all("taps" not in stream for stream in info.streams)


def _tap_body(flags: int, tap_blocks: bytes, tail: bytes = b"") -> bytes:
    return bytes([flags]) + varint(2) + struct.pack("<2f", 1.0, 2.0) + tap_blocks + tail


@pytest.mark.parametrize("shape,flags,blocks,message", [
    ((4, 8), 3, varint(0), "need positions and 2..256 kernel taps"),  # not a convolution
    ((2, 2, 3, 3), 2, varint(0), "need positions"),  # per tap without the positions bit
    ((2, 2, 1, 300), 3, varint(0), "2..256 kernel taps"),
    ((2, 2, 3, 3), 11, varint(0), "unknown shared-section flags"),
    ((2, 2, 3, 3), 5, varint(0), "tap classes \\(flag bit 2\\) need per-tap positions"),
    ((2, 2, 3, 3), 3, varint(5), "kept-weight count of a kernel tap"),  # 5 > the 4 elements of a tap's plane
    ((2, 2, 3, 3), 3, varint(0) * 9, "no kept weight"),
])
def test_hostile_per_tap_positions_are_refused(shape, flags, blocks, message):
    with pytest.raises(FormatError, match=message):
        decode_section(ByteReader(_section(shape, _tap_body(flags, blocks))))


def test_per_tap_gaps_must_fit_their_tap_plane():
    from complab.storage.escape import code_escaped

    blocks = varint(2) + code_escaped(np.array([1, 2])).to_bytes() + varint(0) * 8  # positions 1 and 4: plane has 4
    with pytest.raises(FormatError, match="tap 0's 2 kept weights"):
        decode_section(ByteReader(_section((2, 2, 3, 3), _tap_body(3, blocks))))


def test_one_level_class_shortcut_matches_the_round_loop():
    """With every level in one class a symbol's context is its gap class: the vectorised path gives what the
    round loop gives (run here by putting that one class second, so the loop is taken), and refuses bad counts."""
    from complab.storage.context_section import _resolve

    rng = np.random.default_rng(11)
    per_round = [9, 9, 7, 4, 4, 1]
    n, g_count, k = sum(per_round), 3, 5
    gclass_rm = rng.integers(0, g_count, n).astype(np.int8)
    sizes = np.bincount(gclass_rm, minlength=g_count)
    pool = rng.integers(0, k, n).astype(np.int32)
    fast = _resolve(pool, sizes, per_round, gclass_rm, g_count, np.zeros(k + 1, dtype=np.int64), "w")
    looped = _resolve(pool, np.concatenate([np.zeros(g_count, dtype=np.int64), sizes]), per_round, gclass_rm,
                      g_count, np.ones(k + 1, dtype=np.int64), "w")
    assert np.array_equal(fast, looped)
    assert sorted(fast.tolist()) == sorted(pool.tolist())
    wrong = sizes.copy()
    wrong[0] += 1
    wrong[1] -= 1
    with pytest.raises(FormatError, match="runs out of symbols"):
        _resolve(pool, wrong, per_round, gclass_rm, g_count, np.zeros(k + 1, dtype=np.int64), "w")


def _tap_class_section(tap_map_bytes: bytes, g: int = 2) -> bytes:
    """A 2x2x3x3 tensor, k = 2, kept weights at tap 4 of all four kernels, indices in tap-class contexts."""
    from complab.storage.escape import code_escaped

    blocks = b"".join(varint(0) for _ in range(4)) + varint(4) + code_escaped(np.zeros(4, int)).to_bytes() + \
        b"".join(varint(0) for _ in range(4))
    streams = [np.array([0, 1, 1, 0])] + [np.zeros(0, int)] * (g - 1)
    index_part = bytes([g, 1]) + tap_map_bytes + b"".join(encode_symbols(stream, 2) for stream in streams)
    return _section((2, 2, 3, 3), _tap_body(7, blocks, index_part))


def test_tap_class_contexts_decode_and_hostile_tap_maps_are_refused():
    _, tensor, _, info = decode_section(ByteReader(_tap_class_section(bytes([0xEF, 0x01]))))
    assert np.count_nonzero(tensor.numpy()) == 4 and info.section_version == 3
    assert np.array_equal(tensor.numpy()[:, :, 1, 1].ravel(), np.array([1.0, 2.0, 2.0, 1.0], dtype=np.float32))
    with pytest.raises(FormatError, match="padding bits"):
        decode_section(ByteReader(_tap_class_section(bytes([0xEF, 0x03]))))
    with pytest.raises(FormatError, match="at least 2 classes"):
        decode_section(ByteReader(_tap_class_section(b"", g=1)))
    with pytest.raises(FormatError, match="not below its 3 classes"):
        decode_section(ByteReader(_tap_class_section(bytes([0xFF, 0xFF, 0x03]), g=3)))
