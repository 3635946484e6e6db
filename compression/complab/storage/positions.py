"""Where a shared or sparse section's kept weights sit: version 1's fixed-width relative indices with fillers
(Han et al.), version 2's escape-coded gaps (escape.py), and the tensor rebuilt from checked positions."""

from __future__ import annotations

import numpy as np
import torch

from complab.storage import _dtypes, escape
from complab.storage._bits import ByteReader, damaged
from complab.storage.entropy import (
    PlanCache,
    counts_entropy_bits,
    decode_from,
    empirical_entropy_bytes,
    estimate_bits,
)

GAP_BITS_MIN, GAP_BITS_MAX = 2, 12
PAPER_GAP_BITS = {"conv": 8, "fc": 5}  # Han et al.: relative-index field width per layer kind


def gaps_of(nonzero_positions: np.ndarray, numel: int) -> tuple[np.ndarray, int]:
    """Zeros before each non-zero, and zeros after the last one."""
    gaps = np.diff(nonzero_positions, prepend=-1) - 1
    last = int(nonzero_positions[-1]) if nonzero_positions.size else -1
    return gaps, numel - 1 - last


# ----------------------------------------------------------------------------------------------- version 1


def choose_gap_bits(gaps: np.ndarray, trailing: int, cluster_counts: np.ndarray | None,
                    value_bits: int, cache: PlanCache | None = None) -> int:
    """The field width in GAP_BITS_MIN..GAP_BITS_MAX that gives the fewest bytes.

    For "shared", cluster_counts are the non-zeros per shared value (fillers add a zero symbol to the
    index stream); for "sparse" (cluster_counts None) each filler stores a zero of value_bits bits.
    Widths are tried in order of a lower bound (the streams' entropy, no tables); the exact size
    estimate (tables included) is computed only while the bound can still beat the best so far.
    """
    options = []
    values, counts = escape.value_counts(gaps)  # each width's histogram from the distinct gaps, not every gap
    for bits in range(GAP_BITS_MIN, GAP_BITS_MAX + 1):
        field = 1 << bits
        fillers = int((values >> bits) @ counts) + (trailing >> bits)
        histogram = np.bincount(values & (field - 1), weights=counts, minlength=field).astype(np.int64)  # exact
        histogram[field - 1] += fillers
        if cluster_counts is None:
            index_counts, extra = None, float(fillers * value_bits)
        else:
            index_counts, extra = np.concatenate(([fillers], cluster_counts)), 0.0
        bound = counts_entropy_bits(histogram) + extra
        if index_counts is not None:
            bound += counts_entropy_bits(index_counts)
        options.append((bound, bits, histogram, index_counts, extra))
    options.sort(key=lambda option: option[0])
    best_bits, best_cost = options[0][1], float("inf")
    for bound, bits, histogram, index_counts, extra in options:
        if bound >= best_cost:
            break
        cost = estimate_bits(histogram, curves=False, cache=cache) + extra  # root tables: close, and much faster
        if index_counts is not None:
            cost += estimate_bits(index_counts, curves=False, cache=cache)
        if cost < best_cost:
            best_bits, best_cost = bits, cost
    return best_bits


def build_entries(gaps: np.ndarray, trailing: int, bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(gap symbol of every entry, entry index of each non-zero, number of entries).

    An entry sits 1 + gap_symbol positions after the previous one. A gap longer than the field holds
    becomes filler entries with symbol 2**bits - 1 (each skips 2**bits - 1 zeros and sits on a zero),
    as in Han et al.; fillers are also added after the last non-zero until fewer than 2**bits zeros
    remain, which pins the tensor's size to the stream (a decoder check).
    """
    top = (1 << bits) - 1
    sizes = (gaps >> bits) + 1
    ends = np.cumsum(sizes) - 1
    total = int(ends[-1]) + 1 if ends.size else 0
    total += trailing >> bits
    symbols = np.full(total, top, dtype=np.int64)
    symbols[ends] = gaps & top
    return symbols, ends, total


def stream_info(stream: str, symbols: np.ndarray, nbytes: int, measure: bool) -> dict:
    return {"stream": stream, "symbols": int(symbols.size), "bytes": nbytes,
            "entropy_bytes": empirical_entropy_bytes(symbols) if measure else None}


def read_gap_bits(body: ByteReader, name: str) -> int:
    bits = body.u8("gap field width")
    if not GAP_BITS_MIN <= bits <= GAP_BITS_MAX:
        raise damaged(f"tensor '{name}': gap field width {bits} is outside {GAP_BITS_MIN}..{GAP_BITS_MAX}")
    return bits


def decode_positions(reader: ByteReader, numel: int, bits: int, name: str,
                     measure: bool) -> tuple[np.ndarray, dict]:
    """(gap symbols, stream info); checks that the entries fit the tensor exactly."""
    start = reader.pos
    symbols = decode_from(reader, numel, 1 << bits, f"tensor '{name}' positions stream")
    last = int(symbols.sum(dtype=np.int64)) + symbols.size - 1  # where the last entry sits
    if last >= numel or numel - 1 - last > (1 << bits) - 1:
        raise damaged(f"tensor '{name}': its positions end at {last}, which does not fit {numel} elements")
    return symbols, stream_info("positions", symbols, reader.pos - start, measure)


# ----------------------------------------------------------------------------------------------- version 2


def decode_gaps(body: ByteReader, numel: int, name: str, measure: bool) -> tuple[np.ndarray, dict]:
    """(gap before each kept weight, stream info); the kept weights must fit in the tensor.

    The info's entropy_bytes is the order-0 empirical entropy of the gaps themselves (the information the
    positions carry, whatever the escape split), so bytes / entropy_bytes - 1 stays an honest overhead.
    """
    start = body.pos
    count = body.varint("kept-weight count", numel)
    gaps = escape.decode_escaped(body, count, f"tensor '{name}' positions stream")
    if int(gaps.sum()) + count > numel:
        raise damaged(f"tensor '{name}': its {count} kept weights and their gaps do not fit {numel} elements")
    info = {"stream": "positions", "symbols": count, "bytes": body.pos - start,
            "entropy_bytes": empirical_entropy_bytes(gaps) if measure else None}
    return gaps, info


# ----------------------------------------------------------------------------------------------- rebuilding


def entry_positions(gap_symbols: np.ndarray) -> np.ndarray:
    """Entry i sits at sum(gaps[:i+1]) + i (checked to lie inside the tensor by the decoders)."""
    positions = np.cumsum(gap_symbols + 1, dtype=np.int64)  # (gap + 1 stays int32: no int64 temporary)
    positions -= 1
    return positions


def build_tensor(numel: int, dtype: torch.dtype, shape: tuple[int, ...], gap_symbols: np.ndarray | None,
                 entries: np.ndarray | None = None, book: np.ndarray | None = None,
                 indices: np.ndarray | None = None) -> torch.Tensor:
    """The tensor from checked streams: entry bit patterns (`entries`, or book[indices]) at their positions.

    The output is allocated by torch (torch.empty, filled by numpy on this thread), not numpy:
    numpy asks the kernel for transparent huge pages on big arrays, which on some Linux set-ups (THP
    defrag=madvise) stalls for compaction and made decoding ResNet-18 50% slower; and torch.zeros
    fills in parallel, waking OpenMP threads that then spin and slow the next entropy decode.
    """
    out = torch.empty(numel, dtype=_dtypes.bits_torch_dtype(dtype))
    view = out.numpy()
    if gap_symbols is None:
        # in chunks: np.take copies its indices to int64 and buffers `out` (mode='raise'), so a one-symbol stream
        # of 16M indices in a 121-byte file peaked at 5x its 64 MB tensor; the decoder has checked every index
        step = 1 << 20
        for start in range(0, numel, step):
            np.take(book, indices[start:start + step], out=view[start:start + step], mode="clip")
    else:
        view.fill(0)
        view[entry_positions(gap_symbols)] = entries if entries is not None else np.take(book, indices)
    return out.view(dtype).reshape(shape)
