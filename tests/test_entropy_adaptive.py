"""Entropy-coded streams' table-free adaptive mode (table mode 6): round trips, choice, size estimate, hostile data."""

from __future__ import annotations

import numpy as np
import pytest
from complab.errors import FormatError
from complab.storage import entropy
from complab.storage._bits import varint
from complab.storage.entropy import MODE_ADAPTIVE, code_symbols, decode_symbols, estimate_bits


def _forced_blob(symbols: np.ndarray, shift: int, prior: int) -> bytes:
    """A mode-6 stream with the given fields, whatever the encoder would choose."""
    used = np.unique(symbols)
    lo, span = int(used[0]), int(used[-1] - used[0])
    payload = entropy._code_payload((symbols - lo).astype(np.int32), MODE_ADAPTIVE, (shift, prior), span)
    head = varint(symbols.size) + varint(used.size - 1) + varint(lo) + varint(span)
    return head + entropy._write_table(MODE_ADAPTIVE, (shift, prior), used) + varint(len(payload)) + payload


@pytest.mark.parametrize("shift", range(4))
@pytest.mark.parametrize("prior", range(4))
def test_every_shift_and_prior_round_trips(shift, prior):
    rng = np.random.default_rng(10 * shift + prior)
    for n in (2, 5, 37, 1000, 4099):
        symbols = 3 + rng.integers(0, 20, n)
        symbols[0], symbols[-1] = 3, 22  # lo and hi used
        blob = _forced_blob(symbols, shift, prior)
        decoded, used = decode_symbols(blob + b"tail", n, 64)
        assert used == len(blob) and np.array_equal(decoded, symbols)


def test_short_stream_of_many_symbols_drops_its_table(monkeypatch):
    rng = np.random.default_rng(1)
    symbols = rng.choice(8, 300, p=rng.dirichlet(np.ones(8)))  # an index stream of a small context: no curve fits
    coded = code_symbols(symbols, 64)
    monkeypatch.setattr(entropy, "_ADAPTIVE_MAX_SPAN", 0)
    tables_only = code_symbols(symbols, 64)
    assert coded.mode == MODE_ADAPTIVE and tables_only.mode != MODE_ADAPTIVE
    assert coded.size < tables_only.size
    assert np.array_equal(decode_symbols(coded.to_bytes(), 300, 64)[0], symbols)


def test_encoder_never_picks_a_larger_stream(monkeypatch):
    """The encoder's choice is never worse than tables alone (it codes both when they are close)."""
    rng = np.random.default_rng(4)
    for trial in range(40):
        n, k = int(rng.integers(10, 3000)), int(rng.integers(2, 200))
        symbols = np.minimum(rng.geometric(rng.uniform(0.02, 0.9), n) - 1, k - 1)
        if trial % 2:
            symbols = np.sort(symbols)  # as drifting as it gets
        best = code_symbols(symbols, k)
        with monkeypatch.context() as patch:
            patch.setattr(entropy, "_ADAPTIVE_MAX_SPAN", 0)
            assert best.size <= code_symbols(symbols, k).size
        assert np.array_equal(decode_symbols(best.to_bytes(), n, k)[0], symbols)


def test_planned_bits_match_the_coded_payload():
    rng = np.random.default_rng(5)
    for n in (50, 2000, 60_000):
        symbols = np.minimum(rng.geometric(0.2, n) - 1, 30)
        used = np.unique(symbols)
        dense = np.searchsorted(used, symbols)
        (shift, prior), bits = entropy._plan_adaptive(dense, used.size, int(used[-1] - used[0]) + 1)
        payload = entropy._code_payload(symbols.astype(np.int32) - int(used[0]), MODE_ADAPTIVE, (shift, prior),
                                        int(used[-1] - used[0]))
        assert abs(8 * len(payload) - (bits - 4)) <= 64 + 0.001 * bits  # ANS flush and rounding only


def test_estimate_from_counts_knows_the_adaptive_mode():
    rng = np.random.default_rng(6)
    symbols = rng.integers(0, 60, 150)  # stationary: the histogram-only estimate applies
    counts = np.bincount(symbols, minlength=64)
    coded = code_symbols(symbols, 64)
    assert abs(estimate_bits(counts) / 8 - coded.size) <= 0.1 * coded.size + 4
    assert estimate_bits(counts) <= estimate_bits(counts, curves=False)


def test_hostile_adaptive_streams_are_refused():
    symbols = np.array([1, 4, 2, 4, 1, 2, 2, 4, 1, 1])
    blob = bytearray(_forced_blob(symbols, 2, 0))
    assert np.array_equal(decode_symbols(bytes(blob), 10, 8)[0], symbols)
    lying = bytearray(blob)
    lying[1] = 1  # says 2 distinct symbols, the data holds 3
    with pytest.raises(FormatError, match="distinct"):
        decode_symbols(bytes(lying), 10, 8)
    reserved = bytearray(blob)
    reserved[4] = (reserved[4] & ~7) | 7  # table mode 7 is reserved
    with pytest.raises(FormatError, match="mode 7"):
        decode_symbols(bytes(reserved), 10, 8)
    with pytest.raises(FormatError):
        decode_symbols(bytes(blob[:-1]), 10, 8)  # truncated payload
