"""Section type 8, shared version 3: version 2's layout with the indices coded in contexts of the previous kept
weight of the same row (the level that weight has), decoded a round at a time, vectorised over the rows.

A trained layer's rows (output neurons, conv filters) differ in scale, so a kept weight's level tells a lot
about the next one in its row (DeepCABAC's contexts see the previous level too). Contexts that depend on
already decoded symbols usually force a per-symbol loop; here every context is an order-0 stream of its own,
and the symbols are ordered by their rank inside their row ("round" j holds the j-th kept weight of every row
that has one), so a round's contexts are known once the previous round is decoded: each round is a few numpy
calls over the rows, whatever the number of symbols. The encoder offers this type only when it is smaller
than version 2 by its own exact size; the registry then keeps the smallest. A row may hold at most
MAX_ROUNDS kept weights (the rounds are a loop), so decoding a section takes a bounded number of steps.
"""

from __future__ import annotations

import numpy as np
import torch

from complab.storage import _dtypes
from complab.storage._bits import BitReader, BitWriter, ByteReader, damaged, varint
from complab.storage.entropy import Joined, code_symbols, counts_entropy_bits, decode_from, empirical_entropy_bytes
from complab.storage.escape import code_escaped, decode_escaped
from complab.storage.positions import decode_gaps, entry_positions, gaps_of, stream_info
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register
from complab.storage.shared_section import (
    FLAG_POSITIONS,
    MAX_CLUSTERS,
    MAX_INDEX_CONTEXTS,
    _checked_codebook,
    gap_classes,
    shared_codebook,
    shared_tensor,
)

TYPE_SHARED3 = 8
MAX_LEVEL_CLASSES = 16  # most classes the previous level is mapped to
MAX_ROUNDS = 4096  # most kept weights in one row: the rounds are a Python loop (a few numpy calls each)
_START_BINS = 32  # the encoder's merging starts from at most this many previous-level bins (+1: first in a row)
_MIN_KEPT = 256  # fewer kept weights: the extra tables never pay (version 2 is offered)
# skip the type unless the previous level's ideal saving exceeds this many bits per extra table cell per log2(n):
# a table cell costs about log2(n) / 2 bits to describe; iid levels "save" about 0.7 bits a cell by overfitting
_MIN_SAVING_PER_CELL = 0.15
_TABLE_PROXY_BITS = 40  # the encoder's guess of one stream's fixed cost (header, table head, flush) while merging
_SYMBOL_PROXY_BITS = 5  # ... and of a used symbol's table entry
FLAG_TAPS = 2  # the positions are stored per kernel tap (a convolution's kernel position), one block per tap
FLAG_TAP_CLASSES = 4  # (with FLAG_TAPS) the index contexts' second part is a class of the kernel tap, not of the gap
MAX_TAPS = 256  # most kernel taps (numel / (d0 * d1)) a per-tap positions layout may have
# per-tap positions are tried when per-tap densities ideally save this many bits per tap over one density
_MIN_TAP_SAVING_BITS = 256

FORMAT_V3 = """\
Version 2 (2.5) with the indices coded in contexts of the *previous kept weight in the same row*. A trained
layer's rows (output neurons, conv filters) differ in scale, so the level of a row's previous kept weight
predicts the next one. The encoder writes this type only when it is smaller than version 2 (which stays
what it writes otherwise); a reader that predates it refuses it naming the tensor (section 2).

| field | |
|---|---|
| u8 `flags` | bit 0: positions (the tensor has zeros); bit 1: per-tap positions (needs 0); bit 2: tap classes |
| varint `k` | number of shared values, 1..256 |
| k × itemsize | codebook, as in 2.5 |
| positions block | only with flag bit 0: as in 2.5 (varint n, escape-coded gaps); with bit 1: per tap (below) |
| u8 `G` | gap classes, 1..4 (1 without positions) |
| u8 `C` | level classes, 1..16 |
| map | (k + 1) fields of ⌈log2 C⌉ bits, LSB-first, zero-padded to a byte: m[0], m[1], …, m[k] |
| tap map | only with flag bit 2 (G ≥ 2): T fields of ⌈log2 G⌉ bits, LSB-first, zero-padded: each tap's class < G |
| C·G streams | section 3, alphabet k: stream c·G + g holds the indices of context (c, g), in round order |

**Per-tap positions** (flag bit 1): for a convolution weight (d0, d1, k1, …) with T = k1·… kernel taps,
2 ≤ T ≤ 256: for each tap t = 0..T − 1 in turn, varint n_t (kept weights at tap t) and, when n_t > 0, the
escape-coded gaps (section 3.2, n_t values) of those weights in the plane of tap t, the numel / T
elements (i0, i1) in row-major order; a kept weight at plane position q of tap t is element q·T + t of the
tensor. n = Σ n_t. A trained network's late layers often see feature maps of 1×1 or 2×2, so only some taps
carry weights (in the digits ResNet-18's layer4.0.conv2, 512×512×3×3 pruned to 10%, the centre tap is kept
in 85% of the kernels, every other tap in under 1%); one gap stream per tap codes each tap's own density.
The encoder tries it when per-tap densities ideally save at least 256 bits per tap and keeps it when its
exact size is smaller. **Tap classes** (flag bit 2): g_i (below) is then the tap map's class of kept weight i's
tap (p_i mod T) instead of its gap class, so the indices are coded in contexts of the tap too (the encoder
offers two classes: taps with at least half the densest tap's kept weights, and the others).

n = the number of kept weights (numel without positions) is at least 1. **Rows.** With shape (d0, d1, …)
and rank ≥ 2 the rows are M = tensor.reshape(d0, numel / d0)'s rows (a Linear layer's output neurons, a
convolution's filters); a rank-0 or rank-1 tensor is one row. Kept weight i (in row-major order) is in row
r_i = p_i div (numel / d0) and has rank j_i in its row (0 for the row's first kept weight). Index symbol s_i
in 0..k − 1 is codebook[s_i].

**Context** of kept weight i: (m[0], g_i) when j_i = 0, else (m[s_{i−1} + 1], g_i) (the previous kept weight
is then in the same row), where g_i = min(⌊log2(gap_i + 1)⌋, G − 1) is version 2's gap class (0 without
positions).

**Round order.** The rows are ranked by their number of kept weights, more first, ties by row index. Round
j holds the j-th kept weight of every row that has more than j, in that rank order; the symbols are taken
round by round. Stream c·G + g holds, in round order, exactly the symbols of the kept weights whose
context is (c, g). So a reader decodes every stream, then resolves the rounds in turn: round j's contexts
depend only on rounds before it (a few vectorised steps per round).

**Choice.** The encoder builds the previous-level classes by merging (from the k + 1 previous levels, or 32
bins of neighbouring levels and the row start) the pair of classes whose merge saves the most estimated
bytes, for G = 1..4, and keeps the exact smallest; it offers this type only for n ≥ 256, k ≥ 2, rows of at
most 4096 kept weights, and when it is smaller than the best offer so far (version 2).

**Checks.** As for type 5 (flags, codebook, positions block); k ≥ 1; no row holds more than 4096 kept
weights (the encoder then writes version 2: the rounds are a loop; without positions this is checked on the
shape before anything is decoded); G in 1..4 (1 without positions); C in
1..16; every map entry below C and the map's padding bits zero; each stream's symbols below k; the streams
together hold exactly n symbols (each stream's count checked against what remains before decoding it), and
the rounds use exactly each stream's count."""


# ----------------------------------------------------------------------------------------------- layout


def _row_length(shape: tuple[int, ...], numel: int) -> int:
    return numel // shape[0] if len(shape) >= 2 and shape[0] else max(numel, 1)


def _rounds(positions: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first_in_row per kept weight, its place in round order, kept weights per round); int32/bool, no sort of n.

    Rows are ranked by kept count (more first, ties by row index), so the rows that take part in round j are
    ranks 0..A_j - 1 and a kept weight's place is offset[j] + its row's rank: a counting sort, in O(n).
    """
    n = positions.size
    first = np.ones(n, dtype=bool)
    if n > 1:
        rows = positions // row_length
        np.not_equal(rows[1:], rows[:-1], out=first[1:])
        del rows
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, n))  # kept weights of each non-empty row, in row order
    rank_of_row = np.empty(counts.size, dtype=np.int32)
    rank_of_row[np.argsort(-counts, kind="stable")] = np.arange(counts.size, dtype=np.int32)
    row_id = np.cumsum(first, dtype=np.int32)
    row_id -= 1  # which non-empty row each kept weight is in
    within = np.arange(n, dtype=np.int32)
    within -= starts.astype(np.int32)[row_id]  # rank inside the row = the round
    per_round = np.bincount(within, minlength=1) if n else np.zeros(0, dtype=np.int64)
    offsets = (np.cumsum(per_round) - per_round).astype(np.int32)
    place = offsets[within]
    del within
    place += rank_of_row[row_id]
    return first, place, per_round


def _dense_rounds(rows: int, row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(first_in_row, place in round order) of a tensor without zeros: round order is the [rows, row_length]
    matrix read column by column."""
    n = rows * row_length
    place = np.arange(n, dtype=np.int32).reshape(row_length, rows).T.ravel() if n else np.zeros(0, dtype=np.int32)
    first = np.zeros(n, dtype=bool)
    first[::max(row_length, 1)] = True
    return first, place


# ----------------------------------------------------------------------------------------------- encoding


def _proxy_bits(counts: np.ndarray) -> np.ndarray:
    """Guess of the coded bits of each histogram (last axis): entropy + a per-stream and per-symbol table cost."""
    counts = counts.astype(np.float64)
    totals = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log2(np.where(counts > 0, counts / np.maximum(totals, 1), 1)), 0.0)
    used = (counts > 0).sum(axis=-1)
    return -terms.sum(axis=-1) + np.where(totals[..., 0] > 0, _TABLE_PROXY_BITS + _SYMBOL_PROXY_BITS * used, 8)


def _merge_classes(joint: np.ndarray) -> list[np.ndarray]:
    """Maps of start bins to classes for C = 1..MAX_LEVEL_CLASSES, by greedy merging of the cheapest pair.

    joint: counts [bins, G, k]. Returns maps[C - 1] = class of each bin (classes numbered 0..C-1).
    """
    bins = joint.shape[0]
    members = [[b] for b in range(bins)]
    hist = [joint[b] for b in range(bins)]
    maps: dict[int, np.ndarray] = {}

    def record() -> None:
        mapping = np.zeros(bins, dtype=np.int64)
        for c, group in enumerate(members):
            mapping[group] = c
        maps[len(members)] = mapping

    if bins <= MAX_LEVEL_CLASSES:
        record()
    while len(members) > 1:
        stack = np.stack(hist)  # [C, G, k]
        alone = _proxy_bits(stack).sum(axis=-1)  # [C]
        merged = _proxy_bits(stack[:, None] + stack[None, :]).sum(axis=-1)  # [C, C]
        saving = alone[:, None] + alone[None, :] - merged
        np.fill_diagonal(saving, -np.inf)
        a, b = np.unravel_index(int(np.argmax(saving)), saving.shape)
        a, b = min(a, b), max(a, b)
        members[a] = members[a] + members[b]
        hist[a] = hist[a] + hist[b]
        del members[b], hist[b]
        if len(members) <= MAX_LEVEL_CLASSES:
            record()
    return [maps[c] for c in sorted(maps)]


def _map_bytes(level_map: np.ndarray, classes: int) -> bytes:
    writer = BitWriter()
    writer.write_array(level_map, max(classes - 1, 0).bit_length())
    return writer.to_bytes()


def _context_streams(symbols_rm: np.ndarray, contexts_rm: np.ndarray, count: int, k: int, cache) -> list:
    return [code_symbols(symbols_rm[contexts_rm == c], k, cache) for c in range(count)]


def _taps(shape: tuple[int, ...], numel: int) -> int:
    """Kernel taps of a convolution weight (d0, d1, k1, ...): k1 * ...; 1 for other shapes."""
    if len(shape) < 3 or numel == 0:
        return 1
    return numel // (shape[0] * shape[1])


def _tap_positions(nonzero: np.ndarray, taps: int, numel: int, cache) -> Joined:
    """The per-tap positions layout: for each tap t, varint n_t then (n_t > 0) the escape-coded gaps of the
    kept weights at tap t in the plane of that tap's numel / taps elements (row-major (d0, d1))."""
    plane = numel // taps
    tap_of, in_plane = nonzero % taps, nonzero // taps
    block = Joined()
    for t in range(taps):
        kept = in_plane[tap_of == t]
        block.add(varint(kept.size))
        if kept.size:
            block.add(code_escaped(gaps_of(kept, plane)[0], cache=cache))
    return block


def _tap_saving_bits(nonzero: np.ndarray, taps: int, numel: int) -> float:
    """Ideal bits saved by a Bernoulli density per tap over one density for the whole mask (no table costs)."""
    def bernoulli(kept: np.ndarray, cells: float) -> float:
        kept = kept.astype(np.float64)
        p = np.clip(kept / cells, 1e-300, 1.0)
        q = np.clip(1.0 - p, 1e-300, 1.0)
        return float(-(kept * np.log2(p) + (cells - kept) * np.log2(q)).sum())

    per_tap = np.bincount(nonzero % taps, minlength=taps)
    return bernoulli(np.array([nonzero.size]), float(numel)) - bernoulli(per_tap, float(numel // taps))


def _offer(subject: Subject, best: Offer | None) -> Offer | None:
    if subject.gap_bits is not None:
        return None
    found = shared_codebook(subject)
    if found is None:
        return None
    codebook, clusters = found
    bits, nonzero, cache = subject.bits, subject.nonzero, subject.plans
    n, k = nonzero.size, codebook.size
    if n < _MIN_KEPT or k < 2:
        return None
    dense = n == bits.size
    symbols = (clusters - 1).astype(np.int64)
    row_length = _row_length(tuple(subject.tensor.shape), bits.size)
    if dense and row_length > MAX_ROUNDS:
        return None
    first = np.ones(n, dtype=bool)
    rows = nonzero // row_length
    np.not_equal(rows[1:], rows[:-1], out=first[1:])
    del rows
    # previous-level bin of each kept weight: 0 = first in its row, else 1 + a bin of the previous level
    bins = min(k, _START_BINS)
    level_bin = 1 + (np.arange(k) * bins) // k
    previous = np.empty(n, dtype=np.int64)
    previous[0] = 0
    previous[1:] = level_bin[symbols[:-1]]
    previous[first] = 0
    # a quick look first: what the previous level tells about the next (ideal, no tables) must clearly beat what
    # (bins + 1) tables cost, or nothing below is worth computing (near-iid layers: most of a large model)
    joint = np.bincount(previous * k + symbols, minlength=(bins + 1) * k).reshape(bins + 1, k)
    saving = counts_entropy_bits(joint.sum(axis=0)) - sum(counts_entropy_bits(row) for row in joint)
    levels_pay = saving >= _MIN_SAVING_PER_CELL * bins * (k - 1) * np.log2(n)
    taps = _taps(tuple(subject.tensor.shape), bits.size)
    try_taps = (not dense and 2 <= taps <= MAX_TAPS
                and _tap_saving_bits(nonzero, taps, bits.size) >= _MIN_TAP_SAVING_BITS * taps)
    if not levels_pay and not try_taps:
        return None
    if dense:
        place = _dense_rounds(bits.size // row_length, row_length)[1]
    else:
        _, place, per_round = _rounds(nonzero, row_length)
        if per_round.size > MAX_ROUNDS:
            return None
    gaps = None if dense else gaps_of(nonzero, bits.size)[0]
    flags, positions_block = 0, None
    if not dense:
        flags, positions_block = FLAG_POSITIONS, Joined(varint(n), code_escaped(gaps, cache=cache))
        if try_taps:
            per_tap = _tap_positions(nonzero, taps, bits.size, cache)
            if per_tap.size < positions_block.size:
                flags, positions_block = FLAG_POSITIONS | FLAG_TAPS, per_tap
        if not levels_pay and not flags & FLAG_TAPS:
            return None
    head = Joined(varint(k) + _dtypes.little_endian(codebook))  # the flags byte goes in front at the end
    if positions_block is not None:
        head.add(positions_block)
    head.size += 1
    # with per-tap positions the kept weights' taps are known before the indices: dense taps vs sparse ones
    tap_map = None
    if flags & FLAG_TAPS:
        per_tap = np.bincount(nonzero % taps, minlength=taps)
        tap_map = (per_tap * 2 < per_tap.max()).astype(np.int64)  # class 1: under half the densest tap's count
        if not tap_map.any():
            tap_map = None
    limit = best.size - head.size if best is not None else None  # what the indices must beat
    candidates = []
    variants = [(g_count, False) for g_count in range(1, (1 if dense else MAX_INDEX_CONTEXTS) + 1)]
    if tap_map is not None:
        variants.append((2, True))

    def classes_of(g_count: int, by_tap: bool) -> np.ndarray:
        if by_tap:
            return tap_map[nonzero % taps]
        return np.zeros(n, dtype=np.int64) if g_count == 1 else gap_classes(gaps, g_count)

    for g_count, by_tap in variants:
        gclass = classes_of(g_count, by_tap)
        joint = np.bincount((previous * g_count + gclass) * k + symbols,
                            minlength=(bins + 1) * g_count * k).reshape(bins + 1, g_count, k)
        for bin_map in (_merge_classes(joint) if levels_pay else [np.zeros(bins + 1, dtype=np.int64)]):
            classes = int(bin_map.max()) + 1
            folded = np.zeros((classes, g_count, k), dtype=np.int64)
            np.add.at(folded, bin_map, joint)
            proxy = float(_proxy_bits(folded).sum()) / 8 + 2 + (k + 1) * max(classes - 1, 0).bit_length() / 8
            if by_tap:
                proxy += taps / 8
            candidates.append((proxy, g_count, by_tap, bin_map))
    candidates.sort(key=lambda c: c[0])
    best_parts, best_flags = None, flags
    for proxy, g_count, by_tap, bin_map in candidates[:3]:
        if limit is not None and proxy > 1.02 * limit + 16:
            break
        classes = int(bin_map.max()) + 1
        level_map = np.concatenate(([bin_map[0]], bin_map[level_bin]))  # m[0]: row start, m[s + 1]: level s
        gclass = classes_of(g_count, by_tap)
        contexts = bin_map[previous] * g_count + gclass
        symbols_rm, contexts_rm = np.empty_like(symbols), np.empty_like(contexts)
        symbols_rm[place], contexts_rm[place] = symbols, contexts
        streams = _context_streams(symbols_rm, contexts_rm, classes * g_count, k, cache)
        parts = Joined(bytes([g_count, classes]), _map_bytes(level_map, classes))
        if by_tap:
            parts.add(_map_bytes(tap_map, g_count))
        parts.add(*streams)
        if best_parts is None or parts.size < best_parts.size:
            best_parts, best_flags = parts, flags | (FLAG_TAP_CLASSES if by_tap else 0)
    if best_parts is None or (limit is not None and best_parts.size >= limit):
        return None
    head.size -= 1
    parts = Joined(bytes([best_flags]), head, best_parts)
    return Offer(TYPE_SHARED3, parts.size, parts.to_bytes)


# ----------------------------------------------------------------------------------------------- decoding


def _read_head(body: ByteReader, k: int, has_gaps: bool, name: str) -> tuple[int, int, np.ndarray]:
    """(G, C, level map) after checking them."""
    g_count = body.u8("gap class count")
    classes = body.u8("level class count")
    if not 1 <= g_count <= MAX_INDEX_CONTEXTS or (g_count > 1 and not has_gaps):
        raise damaged(f"tensor '{name}': gap class count {g_count} is not valid here")
    if not 1 <= classes <= MAX_LEVEL_CLASSES:
        raise damaged(f"tensor '{name}': level class count {classes} is outside 1..{MAX_LEVEL_CLASSES}")
    width = max(classes - 1, 0).bit_length()
    reader = BitReader(body.data, body.pos, body.end, f"tensor '{name}' level map")
    level_map = reader.read_array(k + 1, width)
    end = reader.byte_end()
    used_bits = (k + 1) * width
    if used_bits % 8 and int(body.data[end - 1]) >> (used_bits % 8):
        raise damaged(f"tensor '{name}': the level map's padding bits are not zero")
    body.pos = end
    if level_map.size and int(level_map.max()) >= classes:
        raise damaged(f"tensor '{name}': a level map entry is not below its {classes} classes")
    return g_count, classes, level_map


def _read_tap_map(body: ByteReader, taps: int, g_count: int, name: str) -> np.ndarray:
    """The class (0..G-1) of each kernel tap, after checking it: ⌈log2 G⌉ bits a tap, zero-padded to a byte."""
    if g_count < 2:
        raise damaged(f"tensor '{name}': tap classes need at least 2 classes, G is {g_count}")
    width = (g_count - 1).bit_length()
    reader = BitReader(body.data, body.pos, body.end, f"tensor '{name}' tap map")
    tap_map = reader.read_array(taps, width)
    end = reader.byte_end()
    used_bits = taps * width
    if used_bits % 8 and int(body.data[end - 1]) >> (used_bits % 8):
        raise damaged(f"tensor '{name}': the tap map's padding bits are not zero")
    body.pos = end
    if int(tap_map.max()) >= g_count:
        raise damaged(f"tensor '{name}': a tap map entry is not below its {g_count} classes")
    return tap_map.astype(np.int64)


def _read_streams(body: ByteReader, n: int, contexts: int, k: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(every context stream's symbols one after another, each stream's count); together exactly n symbols."""
    streams, remaining = [], n
    what = f"tensor '{name}' indices stream"
    for c in range(contexts):
        stream = decode_from(body, remaining, k, f"{what} (context {c})")
        remaining -= stream.size
        streams.append(stream)
    if remaining:
        raise damaged(f"tensor '{name}': its index streams hold {n - remaining} symbols for {n} kept weights")
    sizes = np.array([stream.size for stream in streams], dtype=np.int64)
    pool = np.concatenate(streams) if len(streams) > 1 else streams[0]
    return pool, sizes


def _resolve(pool: np.ndarray, sizes: np.ndarray, per_round: list[int], gclass_rm: np.ndarray | None,
             g_count: int, level_map: np.ndarray, name: str) -> np.ndarray:
    """The symbols in round order: round by round, each active row's context from its previous level (and the
    gap class), each context's next symbols taken from its stream (a few numpy calls per round).

    A context that takes more symbols than its stream holds reads its neighbour's (or, past the end, the last
    symbol): harmless, every symbol is below k, and the counts are compared once at the end.
    """
    contexts_total = sizes.size
    if contexts_total == 1:
        return pool  # one stream: it is the round order
    if not level_map.any() and gclass_rm is not None:  # one level class: a symbol's context is its gap class
        out = np.empty(pool.size, dtype=np.int32)
        start = 0
        for c in range(contexts_total):
            at = np.flatnonzero(gclass_rm == c)
            if at.size != sizes[c]:
                raise damaged(f"tensor '{name}': a context's index stream runs out of symbols or has symbols left "
                              "over")
            out[at] = pool[start:start + at.size]
            start += at.size
        return out
    base = np.cumsum(sizes) - sizes
    taken = np.zeros(contexts_total, dtype=np.int64)
    out = np.empty(pool.size, dtype=np.int32)
    after = level_map[1:].astype(np.int64) * g_count  # context (times G) of the weight after one of level s
    widest = per_round[0] if per_round else 0
    ramp = np.arange(widest, dtype=np.int64)
    context = np.full(widest, int(level_map[0]) * g_count, dtype=np.int64)
    offset = 0
    for active in per_round:
        current = context[:active]
        if gclass_rm is not None:
            current = current + gclass_rm[offset:offset + active]
        counts = np.bincount(current, minlength=contexts_total)
        arranged = current.argsort(kind="stable")
        shift = base + taken - (counts.cumsum() - counts)
        source = shift[current[arranged]] + ramp[:active]
        chunk = out[offset:offset + active]
        chunk[arranged] = pool.take(source, mode="clip")
        taken += counts
        context = after[chunk]
        offset += active
    if (taken != sizes).any():
        raise damaged(f"tensor '{name}': a context's index stream runs out of symbols or has symbols left over")
    return out


def _read_flags3(body: ByteReader, frame: Frame) -> int:
    """Type 8's flags: the shared flags plus FLAG_TAPS (which needs positions and a convolution's shape)."""
    name, dtype = frame.name, frame.dtype
    if dtype not in _dtypes.FLOATING:
        raise damaged(f"tensor '{name}': a shared section must hold a floating dtype, not {dtype}")
    flags = body.u8("shared flags")
    if flags & ~(FLAG_POSITIONS | FLAG_TAPS | FLAG_TAP_CLASSES):
        raise damaged(f"tensor '{name}': unknown shared-section flags {flags:#x}")
    if flags & FLAG_TAP_CLASSES and not flags & FLAG_TAPS:
        raise damaged(f"tensor '{name}': tap classes (flag bit 2) need per-tap positions (flag bit 1)")
    if flags & FLAG_TAPS:
        taps = _taps(tuple(frame.shape), frame.numel)
        if not flags & FLAG_POSITIONS or not 2 <= taps <= MAX_TAPS:
            raise damaged(f"tensor '{name}': per-tap positions need positions and 2..{MAX_TAPS} kernel taps "
                          f"(shape {list(frame.shape)} has {taps})")
    return flags


def _decode_tap_positions(body: ByteReader, frame: Frame, measure: bool) -> tuple[np.ndarray, dict]:
    """(gaps of the kept weights in row-major order, stream info) from the per-tap positions layout."""
    name, numel = frame.name, frame.numel
    taps = _taps(tuple(frame.shape), numel)
    plane = numel // taps
    start, parts, total = body.pos, [], 0
    for t in range(taps):
        count = body.varint("kept-weight count of a kernel tap", plane)
        if not count:
            continue
        gaps = decode_escaped(body, count, f"tensor '{name}' positions stream (tap {t})")
        if int(gaps.sum()) + count > plane:
            raise damaged(f"tensor '{name}': tap {t}'s {count} kept weights and their gaps do not fit {plane} "
                          "elements")
        parts.append(entry_positions(gaps) * taps + t)
        total += count
    if not parts:
        raise damaged(f"tensor '{name}': a version-3 shared section with no kept weight")
    positions = np.sort(np.concatenate(parts), kind="stable") if len(parts) > 1 else parts[0]  # merges the runs
    gaps = gaps_of(positions, numel)[0]
    info = {"stream": "positions", "symbols": total, "bytes": body.pos - start, "taps": taps,
            "entropy_bytes": empirical_entropy_bytes(gaps) if measure else None}
    return gaps, info


def _decode(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, numel, want_tensor = frame.name, frame.numel, frame.want_tensor
    flags = _read_flags3(body, frame)
    k = body.varint("codebook size", MAX_CLUSTERS)
    if k == 0:
        raise damaged(f"tensor '{name}': a version-3 shared section needs at least one shared value")
    codebook = _checked_codebook(body, frame, k)
    has_gaps = bool(flags & FLAG_POSITIONS)
    streams, gaps, positions = [], None, None
    if flags & FLAG_TAPS:
        gaps, pos_info = _decode_tap_positions(body, frame, not want_tensor)
        streams.append(pos_info)
        n = gaps.size
    elif has_gaps:
        gaps, pos_info = decode_gaps(body, numel, name, not want_tensor)
        streams.append(pos_info)
        n = gaps.size
    else:
        n = numel
    if n == 0:
        raise damaged(f"tensor '{name}': a version-3 shared section with no kept weight")
    row_length = _row_length(frame.shape, numel)
    if not has_gaps and row_length > MAX_ROUNDS:
        raise damaged(f"tensor '{name}': rows of {row_length} kept weights, more than {MAX_ROUNDS}")
    start = body.pos
    g_count, classes, level_map = _read_head(body, k, has_gaps, name)
    tap_map = None
    if flags & FLAG_TAP_CLASSES:
        tap_map = _read_tap_map(body, _taps(tuple(frame.shape), numel), g_count, name)
    pool, sizes = _read_streams(body, n, classes * g_count, k, name)  # checked before the rounds allocate
    gclass_rm = None
    if has_gaps:
        positions = entry_positions(gaps)
        first, place, per_round = _rounds(positions, row_length)
        if per_round.size > MAX_ROUNDS:
            raise damaged(f"tensor '{name}': a row of {per_round.size} kept weights, more than {MAX_ROUNDS}")
        if g_count > 1:
            gclass_rm = np.empty(n, dtype=np.int8)
            gclass_rm[place] = (gap_classes(gaps, g_count) if tap_map is None
                                else tap_map[positions % _taps(tuple(frame.shape), numel)])
        gaps = None
        per_round = per_round.tolist()
    else:
        first, place = _dense_rounds(numel // row_length, row_length)
        per_round = [numel // row_length] * row_length
    del first
    symbols_rm = _resolve(pool, sizes, per_round, gclass_rm, g_count, level_map, name)
    del pool, gclass_rm
    indices = symbols_rm[place]
    del symbols_rm, place
    index_info = {"stream": "indices", "symbols": n, "contexts": classes * g_count, "bytes": body.pos - start,
                  "entropy_bytes": stream_info("indices", indices, 0, not want_tensor)["entropy_bytes"]}
    streams.append(index_info)
    tensor = shared_tensor(frame, numel, codebook, indices, positions) if want_tensor else None
    info = SectionInfo(nonzeros=n, n_clusters=k, bytes_positions=streams[0]["bytes"] if has_gaps else 0,
                       bytes_indices=index_info["bytes"], bytes_codebook=k * frame.itemsize, streams=streams)
    return tensor, info


register(SectionType(TYPE_SHARED3, "shared",
                     "Type 8, shared version 3 (indices in contexts of the row's previous level)",
                     FORMAT_V3, _decode, _offer, rank=12, version=3))
