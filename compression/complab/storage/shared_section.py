"""Section types 2 and 5, shared: Deep Compression's pruned, weight-shared layer (Han et al. 2016, section 3).

The distinct non-zero values form a codebook and each kept weight stores its index; the kept weights'
positions and the indices are entropy coded (ANS here instead of the paper's Huffman). Type 2 (version 1)
stores the positions as fixed-width relative indices with filler entries for longer gaps, as the paper
does; type 5 (version 2, what the encoder writes unless the caller fixes the field width) stores one
escape-coded gap per kept weight and may split the indices by the class of the gap before each weight.
"""

from __future__ import annotations

import numpy as np
import torch

from complab.storage import _dtypes
from complab.storage._bits import ByteReader, damaged, varint
from complab.storage.entropy import Joined, PlanCache, code_symbols, decode_from, estimate_bits
from complab.storage.escape import code_escaped
from complab.storage.positions import (
    build_entries,
    build_tensor,
    choose_gap_bits,
    decode_gaps,
    decode_positions,
    entry_positions,
    gaps_of,
    read_gap_bits,
    stream_info,
)
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register

TYPE_SHARED, TYPE_SHARED2 = 2, 5
MAX_CLUSTERS = 256  # most distinct non-zero values a "shared" tensor may have (8-bit indices in the paper)
MAX_INDEX_CONTEXTS = 4  # v2 indices: classes of the gap before a weight, min(floor(log2(gap + 1)), C - 1)
FLAG_POSITIONS = 1  # the tensor has zeros, so positions are stored

FORMAT_V1 = """\
For a floating tensor with at most 256 distinct non-zero values (numel ≥ 64 when the encoder
chooses it). Han et al. (ICLR 2016) store such a layer as a codebook, a cluster index per
non-zero, and the non-zeros' positions as relative indices with filler entries; they Huffman-code
the two streams, we ANS-code them (section 3).

| field | |
|---|---|
| u8 `flags` | bit 0: positions stream present (the tensor has zeros); other bits 0 |
| u8 `gap_bits` | only with positions: the relative-index field width w, 2..12 |
| varint `k` | number of shared values, 0..256 (≥ 1 without positions) |
| k × itemsize | codebook: the distinct non-zero values, ascending by value, raw little-endian |
| stream | positions (only with flag bit 0): entropy-coded, alphabet 2**w |
| stream | indices: entropy-coded, alphabet k + 1 |

**Entries and positions.** Walk the flattened tensor. Each *entry* has a gap symbol g in
0..2**w − 1 and sits g + 1 positions after the previous entry (the first after position −1), so
entry i is at `sum(g[0..i]) + i`. A non-zero preceded by more zeros than the field holds is
reached through *filler* entries (Han et al.): each filler has gap symbol 2**w − 1, sits on a
zero and has index symbol 0. After the last non-zero the encoder adds fillers until fewer than
2**w zeros remain, so the entries pin down the tensor's size.

**Indices.** Index symbol 0 is a filler (the value zero), symbol j in 1..k is codebook[j − 1].
Without positions (no zeros) there is one index per element, all in 1..k.

**Field width.** The paper uses 8 bits for conv and 5 for fc layers. Because the streams are
entropy coded, a wider field costs little (rare long gaps cost their own information) while
fillers cost a symbol in both streams, so by default (`gap_bits="auto"`) the encoder picks, per
tensor, the w in 2..12 that gives the fewest bytes (it bounds each width by the streams' entropy
and computes exact sizes only while that bound can still win). `gap_bits="paper"` uses 8 for
tensors `layer_kinds` marks "conv" (looked up by tensor name, then by the name without its last
component) and 5 otherwise; an int fixes w (and the encoder then writes version 1 only).

**Compression rate.** For n weights of b bits shared among k values, weight sharing alone gives
(Han et al.) r = n·b / (n·log2(k) + k·b) before entropy coding. With p the fraction of non-zeros
and a w-bit gap field, the pre-entropy-coding size is about n·p·(w + log2(k)) + k·b bits plus
fillers; the entropy-coded streams then cost their empirical entropy plus the per-stream overhead
of section 3 (inspect reports both).

**Checks.** A floating dtype; codebook values non-zero and strictly ascending (no NaN); k ≤ 256;
the index stream holds exactly as many symbols as there are entries (or elements), checked before
decoding it; a filler sits on a full gap field; the last entry lies inside the tensor and fewer
than 2**w positions remain after it; no filler in a dense shared tensor."""

FORMAT_V2 = """\
Version 1 codes positions as fixed-width fields of w bits with fillers: the entropy coder's alphabet
is 2**w (up to 4096 symbols, whose table costs a lot on a stream of a few thousand symbols) and every
filler costs a symbol in both streams. Version 2 (types 5 and 6) stores exactly one gap per kept
weight, coded by escape (section 3.2), so the alphabet stays small and there are no fillers; nothing
is coded for the zeros after the last kept weight (the shape says where the tensor ends). With the
default `gap_bits="auto"` the encoder writes version 2 or version 1, whichever is smaller (on equal
sizes version 2); readers read both. A reader that predates version 2 refuses types 5 and 6 naming the
tensor and asking for an upgrade (section 2's type byte), as for any new type id.

**Gaps.** Walk the flattened tensor; the kept weights (non-zero bit patterns) are at p_0 < p_1 < …
< p_{n−1}; gap_i = p_i − p_{i−1} − 1 with p_{−1} = −1 (the zeros before kept weight i). So p_i =
Σ_{j≤i} gap_j + i. A *positions block* is varint `n` (≤ numel) then the n gaps as an escape-coded
block (section 3.2); the reader checks Σ gap + n ≤ numel.

| field | |
|---|---|
| u8 `flags` | bit 0: positions block present (the tensor has zeros); other bits 0 |
| varint `k` | number of shared values, 0..256 (0 only when nothing is kept) |
| k × itemsize | codebook: the distinct non-zero values, ascending by value, raw little-endian |
| positions block | only with flag bit 0: varint n, escape-coded gaps |
| indices | only when n > 0 (n = numel without positions): u8 `C` (1..4), then C streams (section 3), alphabet k |

Index symbol j in 0..k − 1 is codebook[j] (there are no fillers, so no zero symbol). **Index
context.** With C = 1 the one stream holds the n indices in order. With C ≥ 2 (only with positions)
each kept weight has the class c_i = min(⌊log2(gap_i + 1)⌋, C − 1) of the gap before it (0: right
after another kept weight; 1: one or two zeros before it; …), known once the positions are decoded;
stream c holds, in order, exactly the indices of the weights of class c. The encoder tries C = 1..4
(C ≥ 2 only for n ≥ 256) and keeps the fewest bytes, so a context is used only where its saving pays
for its extra tables.

**Checks.** Flags and codebook as for type 2; n ≤ numel; the positions block as in section 3.2;
Σ gaps + n ≤ numel; k ≥ 1 when n > 0; C in 1..4 (C = 1 without positions); each context stream holds
exactly its class's count of symbols below k."""


# ----------------------------------------------------------------------------------------------- encoding


def _codebook(values: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook bit patterns sorted by value, 1-based cluster index of each value), or None."""
    patterns = np.unique(values[:4096])
    if patterns.size > MAX_CLUSTERS:
        return None
    inverse = np.searchsorted(patterns, values)  # the sample usually holds every value: no full sort
    inverse = np.minimum(inverse, max(patterns.size - 1, 0))
    if values.size and not np.array_equal(patterns[inverse], values):  # values the sample missed: add them
        missing = np.unique(values[patterns[inverse] != values])
        patterns = np.union1d(patterns, missing)
        if patterns.size > MAX_CLUSTERS:
            return None
        inverse = np.searchsorted(patterns, values)
    floats = _dtypes.float_values(patterns, dtype)
    if np.isnan(floats).any():
        return None
    order = np.argsort(floats, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return patterns[order], rank[inverse.ravel()] + 1


def shared_codebook(subject: Subject) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook, 1-based cluster index per kept weight) when the tensor can be shared, else None (once per tensor).

    The sparse types ask too: they are tried only when sharing is impossible or its codebook is large.
    """
    def compute():
        if not subject.codable or subject.dtype not in _dtypes.FLOATING:
            return None
        sample = subject.bits[:8192]  # a quick look at the first values before the full pass
        if np.unique(sample[sample != 0]).size > MAX_CLUSTERS:
            return None
        return _codebook(subject.bits[subject.nonzero], subject.dtype)
    return subject.memo("shared codebook", compute)


def _offer_v1(subject: Subject, best: Offer | None) -> Offer | None:
    found = shared_codebook(subject)
    if found is None:
        return None
    codebook, clusters = found
    bits, nonzero, cache = subject.bits, subject.nonzero, subject.plans
    k = codebook.size
    if nonzero.size == bits.size:  # dense clustered: no positions stream (flag clear)
        parts = Joined(bytes([0]) + varint(k) + _dtypes.little_endian(codebook), code_symbols(clusters, k + 1, cache))
        return Offer(TYPE_SHARED, parts.size, parts.to_bytes)
    gaps, trailing = gaps_of(nonzero, bits.size)
    gap_bits = subject.gap_bits
    if gap_bits is None:
        gap_bits = choose_gap_bits(gaps, trailing, np.bincount(clusters, minlength=k + 1)[1:], 0, cache)
    symbols, ends, total = build_entries(gaps, trailing, gap_bits)
    indices = np.zeros(total, dtype=np.int64)
    indices[ends] = clusters
    parts = Joined(bytes([FLAG_POSITIONS, gap_bits]) + varint(k) + _dtypes.little_endian(codebook),
                   code_symbols(symbols, 1 << gap_bits, cache), code_symbols(indices, k + 1, cache))
    return Offer(TYPE_SHARED, parts.size, parts.to_bytes)


def gap_classes(gaps: np.ndarray, contexts: int) -> np.ndarray:
    """The context of each kept weight's index: min(floor(log2(gap + 1)), contexts - 1) of the gap before it."""
    classes = np.zeros(gaps.size, dtype=np.int64)
    for c in range(1, contexts):  # gap >= 2**c - 1 <=> floor(log2(gap + 1)) >= c
        classes += gaps >= (1 << c) - 1
    return classes


def code_indices(indices: np.ndarray, gaps: np.ndarray | None, k: int, cache: PlanCache | None = None) -> Joined:
    """u8 C, then C streams over alphabet k: the indices split by gap class (C = 1: one stream).

    The encoder keeps the C in 1..MAX_INDEX_CONTEXTS that gives the fewest bytes (exact sizes), so a
    context is only used where its saving pays for the extra tables.
    """
    best = Joined(bytes([1]), code_symbols(indices, k, cache))
    if gaps is None or indices.size < 256:
        return best
    for contexts in range(2, MAX_INDEX_CONTEXTS + 1):
        classes = gap_classes(gaps, contexts)
        counts = np.bincount(classes * k + indices, minlength=contexts * k).reshape(contexts, k)  # one pass
        estimate = sum(estimate_bits(counts[c], curves=False, cache=cache) for c in range(contexts)) / 8
        if estimate >= best.size + 8:
            continue  # clearly larger (root-table estimates are close): skip the exact encodes
        split = Joined(bytes([contexts]), *(code_symbols(indices[classes == c], k, cache) for c in range(contexts)))
        if split.size < best.size:
            best = split
    return best


def encode_indices(indices: np.ndarray, gaps: np.ndarray | None, k: int) -> bytes:
    """code_indices' bytes."""
    return code_indices(indices, gaps, k).to_bytes()


def _offer_v2(subject: Subject, best: Offer | None) -> Offer | None:
    if subject.gap_bits is not None:  # a fixed field width asks for the version-1 (Han et al.) layout only
        return None
    found = shared_codebook(subject)
    if found is None:
        return None
    codebook, clusters = found
    bits, nonzero, cache = subject.bits, subject.nonzero, subject.plans
    k = codebook.size
    dense = nonzero.size == bits.size
    parts = Joined(bytes([0 if dense else FLAG_POSITIONS]) + varint(k) + _dtypes.little_endian(codebook))
    gaps = None
    if not dense:
        gaps, _ = gaps_of(nonzero, bits.size)
        parts.add(varint(nonzero.size), code_escaped(gaps, cache=cache))
    if nonzero.size:
        parts.add(code_indices(clusters - 1, gaps, k, cache))
    return Offer(TYPE_SHARED2, parts.size, parts.to_bytes)


# ----------------------------------------------------------------------------------------------- decoding


def _read_flags(body: ByteReader, frame: Frame) -> int:
    """The shared flags, after checking the dtype."""
    name, dtype = frame.name, frame.dtype
    if dtype not in _dtypes.FLOATING:
        raise damaged(f"tensor '{name}': a shared section must hold a floating dtype, not {dtype}")
    flags = body.u8("shared flags")
    if flags & ~FLAG_POSITIONS:
        raise damaged(f"tensor '{name}': unknown shared-section flags {flags:#x}")
    return flags


def _checked_codebook(body: ByteReader, frame: Frame, k: int) -> np.ndarray:
    codebook = _dtypes.from_little_endian(body.take(k * frame.itemsize, "codebook"), _dtypes.bits_dtype(frame.dtype))
    values = _dtypes.float_values(codebook, frame.dtype)
    if (codebook == 0).any() or not (values[1:] > values[:-1]).all():
        raise damaged(f"tensor '{frame.name}': its codebook is not a sorted list of distinct non-zero values")
    return codebook


def _decode_v1(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, numel, want_tensor = frame.name, frame.numel, frame.want_tensor
    flags = _read_flags(body, frame)
    has_positions = bool(flags & FLAG_POSITIONS)
    gap_bits = read_gap_bits(body, name) if has_positions else None
    k = body.varint("codebook size", MAX_CLUSTERS)
    if not has_positions and (k == 0) != (numel == 0):
        raise damaged(f"tensor '{name}': a dense shared tensor of {numel} elements with {k} shared values")
    codebook = _checked_codebook(body, frame, k)
    book = np.concatenate(([0], codebook)).astype(codebook.dtype)  # index 0 = zero (a filler)
    streams = []
    if has_positions:
        gap_symbols, pos_info = decode_positions(body, numel, gap_bits, name, not want_tensor)
        streams.append(pos_info)
        count = gap_symbols.size
    else:
        gap_symbols, count = None, numel
    start = body.pos
    indices = decode_from(body, count, k + 1, f"tensor '{name}' indices stream", exact=True)
    streams.append(stream_info("indices", indices, body.pos - start, not want_tensor))
    if indices.size != count:
        raise damaged(f"tensor '{name}': {indices.size} cluster indices for {count} entries")
    fillers = np.flatnonzero(indices == 0)
    if has_positions:
        if (gap_symbols[fillers] != (1 << gap_bits) - 1).any():
            raise damaged(f"tensor '{name}': a filler entry does not skip a full gap field")
    elif fillers.size:
        raise damaged(f"tensor '{name}': a dense shared tensor holds a filler index")
    tensor = None
    if want_tensor:
        tensor = build_tensor(numel, frame.dtype, frame.shape, gap_symbols, book=book, indices=indices)
    info = SectionInfo(nonzeros=int(count - fillers.size), n_clusters=k, gap_bits=gap_bits,
                       bytes_positions=streams[0]["bytes"] if has_positions else 0,
                       bytes_indices=streams[-1]["bytes"], bytes_codebook=k * frame.itemsize, streams=streams)
    return tensor, info


def _decode_indices(body: ByteReader, gaps: np.ndarray | None, count: int, k: int, name: str) -> np.ndarray:
    contexts = body.u8("index context count")
    if not 1 <= contexts <= MAX_INDEX_CONTEXTS or (contexts > 1 and gaps is None):
        raise damaged(f"tensor '{name}': index context count {contexts} is not valid here")
    what = f"tensor '{name}' indices stream"
    if contexts == 1:
        return decode_from(body, count, k, what, exact=True)
    classes = gap_classes(gaps, contexts)
    indices = np.empty(count, dtype=np.int32)
    for c in range(contexts):
        where = np.flatnonzero(classes == c)
        indices[where] = decode_from(body, where.size, k, f"{what} (context {c})", exact=True)
    return indices


def shared_tensor(frame: Frame, numel: int, codebook: np.ndarray, indices: np.ndarray,
                  positions: np.ndarray | None) -> torch.Tensor:
    """The decoded tensor of a shared section (types 5 and 8): each kept weight its codebook value (`codebook` holds
    the values' bit patterns), zeros elsewhere; `positions` None: every element is kept."""
    out = torch.empty(numel, dtype=_dtypes.bits_torch_dtype(frame.dtype))
    view = out.numpy()
    if positions is None:
        np.take(codebook, indices, out=view)
    else:
        view.fill(0)
        view[positions] = np.take(codebook, indices)
    return out.view(frame.dtype).reshape(frame.shape)


def _decode_v2(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, numel, want_tensor = frame.name, frame.numel, frame.want_tensor
    flags = _read_flags(body, frame)
    k = body.varint("codebook size", MAX_CLUSTERS)
    codebook = _checked_codebook(body, frame, k)
    streams, gaps = [], None
    if flags & FLAG_POSITIONS:
        gaps, pos_info = decode_gaps(body, numel, name, not want_tensor)
        streams.append(pos_info)
        count = gaps.size
    else:
        count = numel
    if count and not k:
        raise damaged(f"tensor '{name}': {count} kept weights and no shared values")
    start = body.pos
    indices = _decode_indices(body, gaps, count, k, name) if count else np.zeros(0, dtype=np.int32)
    index_info = stream_info("indices", indices, body.pos - start, not want_tensor)
    index_info["contexts"] = body.data[start] if count else 0
    streams.append(index_info)
    tensor = None
    if want_tensor:
        tensor = shared_tensor(frame, numel, codebook, indices, None if gaps is None else entry_positions(gaps))
    info = SectionInfo(nonzeros=count, n_clusters=k, bytes_positions=streams[0]["bytes"] if gaps is not None else 0,
                       bytes_indices=index_info["bytes"], bytes_codebook=k * frame.itemsize, streams=streams)
    return tensor, info


register(SectionType(TYPE_SHARED, "shared", "Type 2, shared (Deep Compression's pruned, weight-shared layer)",
                     FORMAT_V1, _decode_v1, _offer_v1, rank=20))
register(SectionType(TYPE_SHARED2, "shared", "Type 5, shared version 2 (escape-coded gaps)",
                     FORMAT_V2, _decode_v2, _offer_v2, rank=10, version=2))
