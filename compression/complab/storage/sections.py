"""One tensor's section of the compact format: the encodings (raw, shared, sparse) and their checked decoding.

"shared" is Deep Compression's layer (Han et al. 2016, section 3): the distinct non-zero values
form a codebook, the non-zeros' positions are stored as relative indices (gaps) of a fixed field
width with filler entries for longer gaps, and both the gaps and the codebook indices are
entropy coded (ANS here instead of the paper's Huffman). "sparse" keeps the same positions but
stores the non-zero values raw (a pruned, unclustered layer). "raw" is everything else.

Section types 5 and 6 are version 2 of shared and sparse (what the encoder writes by default): one gap
per kept weight, escape-coded (escape.py) instead of fixed-width fields with fillers, so the gap
alphabet stays small and no filler costs a symbol; the indices may be split by the class of the gap
before each weight (a context known once the positions are decoded), when that is smaller. Types 2
and 3 stay readable, and are still written for a fixed field width (gap_bits "paper" or an int).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from complab.errors import FormatError
from complab.storage import _dtypes, escape, vq_section
from complab.storage._bits import ByteReader, damaged, shown, varint
from complab.storage.entropy import (
    counts_entropy_bits,
    decode_from,
    empirical_entropy_bytes,
    encode_symbols,
    estimate_bits,
)

# zstandard is a hard dependency (pyproject.toml). The guard only matters where the package is missing anyway
# (a copy of this module used as a standalone reader): raw sections are then written uncompressed and a
# zstd-compressed section is refused with the install hint, as FORMAT.md section 2.1 describes
try:
    import zstandard
except ImportError:  # pragma: no cover - exercised only where zstandard is missing
    zstandard = None

# Section type ids are part of the file format: never renumber, only append.
TYPE_RAW, TYPE_SHARED, TYPE_SPARSE = 1, 2, 3
TYPE_VQ = 4  # vector-quantized (Gong et al.): codebooks + codes, compression/complab/storage/vq_section.py
TYPE_SHARED2, TYPE_SPARSE2 = 5, 6  # version 2 of shared and sparse: escape-coded gaps, no fillers
ENCODINGS = {TYPE_RAW: "raw", TYPE_SHARED: "shared", TYPE_SPARSE: "sparse", TYPE_VQ: "vq",
             TYPE_SHARED2: "shared", TYPE_SPARSE2: "sparse"}
MAX_INDEX_CONTEXTS = 4  # v2 indices: classes of the gap before a weight, min(floor(log2(gap + 1)), C - 1)

MAX_RANK = 8
MAX_NUMEL = 2**31
MAX_NAME_BYTES = 65535
MAX_CLUSTERS = 256  # most distinct non-zero values a "shared" tensor may have (8-bit indices in the paper)
MIN_CODED_NUMEL = 64  # smaller tensors are stored raw: a table would cost more than it saves
GAP_BITS_MIN, GAP_BITS_MAX = 2, 12
PAPER_GAP_BITS = {"conv": 8, "fc": 5}  # Han et al.: relative-index field width per layer kind
# A few bytes can describe a huge tensor (a constant or all-zero one: an entropy-coded stream of one
# symbol costs no payload bits at all), so no per-stream ratio bounds what a file decodes to. Decoding
# therefore refuses files whose tensors add up to more than an allowance set by the file's own size:
# MIN_DECODE_ALLOWANCE for any file, plus MAX_EXPANSION bytes of tensors per byte of file, and never more
# than MAX_DECODED_BYTES. MAX_EXPANSION is what our encoder can honestly reach on a whole model: a float32
# layer pruned to the plan's largest sparsity (0.999) and shared costs >= ~12.4 bits per non-zero (the
# gap stream of a geometric gap of mean 1000 has ~11.4 bits of entropy, the index >= 1 bit), i.e. a
# ratio of ~2,600; 4,096 leaves headroom. A caller that really loads huge constant tensors passes an
# explicit max_decoded_bytes (which then replaces the allowance).
MAX_DECODED_BYTES = 2**33  # 8 GiB: the largest torchvision classifiers (ViT-H/14, RegNet-Y-128GF) need 2.5 GB
MIN_DECODE_ALLOWANCE = 64 * 2**20
MAX_EXPANSION = 4096

FLAG_ZSTD, FLAG_SHUFFLE = 1, 2  # raw data flags (raw and sparse sections)
FLAG_POSITIONS = 1  # shared: the tensor has zeros, so a positions stream is present
# A zstd block decodes to at most 128 KiB (Block_Maximum_Size) and costs at least 4 bytes (an RLE block:
# 3-byte header + the byte), so a frame of c bytes honestly holds at most ZSTD_MAX_RATIO * c bytes.
ZSTD_MAX_RATIO = (128 << 10) // 4
ZSTD_SMALL_BYTES = 1 << 16  # up to this size zstd runs at level 19; above, level 3 (19 is ~60x slower there
# and gains under 0.1% on float data)


@dataclass
class SectionInfo:
    """What inspect_bytes reports for one section (sizes in bytes)."""

    encoding: str
    nonzeros: int | None = None
    n_clusters: int | None = None
    gap_bits: int | None = None
    bytes_positions: int = 0
    bytes_indices: int = 0
    bytes_codebook: int = 0
    bytes_raw: int = 0
    raw_compression: str | None = None
    streams: list[dict] = field(default_factory=list)
    quantizer: str | None = None  # vq: binary, kmeans, pq or rq
    layout: dict | None = None  # vq: the quantizer's parameters
    formula_bits: int | None = None  # vq: Gong et al.'s bits for this layer (codes log2 k + 32-bit codebooks)
    section_version: int = 1  # 2 for the escape-coded shared and sparse sections (types 5 and 6)


# ----------------------------------------------------------------------------------------------- raw data


def _little_endian(array: np.ndarray) -> bytes:
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _from_little_endian(data: bytes | memoryview, bits_type: type) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(bits_type).newbyteorder("<")).astype(bits_type)


def _shuffle(raw: bytes, size: int) -> bytes:
    """Byte planes (all first bytes, then all second bytes, ...): zstd finds float exponents this way."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, size).T.tobytes()


def _unshuffle(raw: bytes, size: int) -> bytearray:
    """Inverse of _shuffle into one new writable buffer (no intermediate copy)."""
    out = bytearray(len(raw))
    np.frombuffer(out, dtype=np.uint8).reshape(-1, size)[:] = np.frombuffer(raw, dtype=np.uint8).reshape(size, -1).T
    return out


def pack_raw(raw: bytes, size: int) -> tuple[int, bytes]:
    """(flags, data): the raw bytes, zstd-compressed (byte-shuffled where that helps) when that is smaller."""
    best = (0, raw)
    if zstandard is None or len(raw) < 64:
        return best
    level = 19 if len(raw) <= ZSTD_SMALL_BYTES else 3
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    options = [FLAG_SHUFFLE] if size > 1 else []
    if size == 1 or len(raw) <= 1 << 16:
        options.append(0)
    for flags in options:
        packed = compressor.compress(_shuffle(raw, size) if flags & FLAG_SHUFFLE else raw)
        if len(packed) < len(best[1]):
            best = (FLAG_ZSTD | flags, packed)
    return best


def unpack_raw(data: memoryview, flags: int, expected: int, size: int, what: str) -> bytes | bytearray:
    """Inverse of pack_raw; checks the declared size before allocating anything.

    The expected size must be what the stored bytes can honestly hold (exactly, without zstd; at most
    ZSTD_MAX_RATIO times the frame with it), and zstd never writes more than it (max_output_size).
    """
    if flags & ~(FLAG_ZSTD | FLAG_SHUFFLE) or (flags & FLAG_SHUFFLE and not flags & FLAG_ZSTD):
        raise damaged(f"{what}: unknown raw-data flags {flags:#x}")
    if not flags & FLAG_ZSTD:
        if len(data) != expected:
            raise damaged(f"{what}: raw data is {len(data)} bytes, its shape and dtype need {expected}")
        return bytearray(data)
    if zstandard is None:
        raise FormatError(f"{what} is zstd-compressed and the zstandard package is not installed: "
                          "install it (pip install zstandard) to read this file")
    try:
        content = zstandard.frame_content_size(bytes(data[:18]))
    except zstandard.ZstdError:
        raise damaged(f"{what}: its zstd frame header is invalid") from None
    if content != expected:
        raise damaged(f"{what}: its zstd frame holds {content} bytes, its shape and dtype need {expected}")
    if expected > ZSTD_MAX_RATIO * len(data):
        raise damaged(f"{what}: {len(data)} bytes of zstd data cannot hold {expected} bytes "
                      f"(zstd compresses at most {ZSTD_MAX_RATIO}:1)")
    try:
        out = zstandard.ZstdDecompressor().decompress(bytes(data), max_output_size=expected,
                                                      allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise damaged(f"{what}: its zstd data is corrupt ({exc})") from None
    if len(out) != expected:
        raise damaged(f"{what}: zstd data decompressed to {len(out)} bytes, expected {expected}")
    return _unshuffle(out, size) if flags & FLAG_SHUFFLE else out


# ----------------------------------------------------------------------------------------------- positions


def _gaps(nonzero_positions: np.ndarray, numel: int) -> tuple[np.ndarray, int]:
    """Zeros before each non-zero, and zeros after the last one."""
    gaps = np.diff(nonzero_positions, prepend=-1) - 1
    last = int(nonzero_positions[-1]) if nonzero_positions.size else -1
    return gaps, numel - 1 - last


def choose_gap_bits(gaps: np.ndarray, trailing: int, cluster_counts: np.ndarray | None,
                    value_bits: int) -> int:
    """The field width in GAP_BITS_MIN..GAP_BITS_MAX that gives the fewest bytes.

    For "shared", cluster_counts are the non-zeros per shared value (fillers add a zero symbol to the
    index stream); for "sparse" (cluster_counts None) each filler stores a zero of value_bits bits.
    Widths are tried in order of a lower bound (the streams' entropy, no tables); the exact size
    estimate (tables included) is computed only while the bound can still beat the best so far.
    """
    options = []
    for bits in range(GAP_BITS_MIN, GAP_BITS_MAX + 1):
        field = 1 << bits
        fillers = int((gaps >> bits).sum()) + (trailing >> bits)
        histogram = np.bincount(gaps & (field - 1), minlength=field)
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
        cost = estimate_bits(histogram, curves=False) + extra  # root tables: close, and much faster
        if index_counts is not None:
            cost += estimate_bits(index_counts, curves=False)
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


def _stream_info(stream: str, symbols: np.ndarray, nbytes: int, measure: bool) -> dict:
    return {"stream": stream, "symbols": int(symbols.size), "bytes": nbytes,
            "entropy_bytes": empirical_entropy_bytes(symbols) if measure else None}


def decode_positions(reader: ByteReader, numel: int, bits: int, name: str,
                     measure: bool) -> tuple[np.ndarray, dict]:
    """(gap symbols, stream info); checks that the entries fit the tensor exactly."""
    start = reader.pos
    symbols = decode_from(reader, numel, 1 << bits, f"tensor '{name}' positions stream")
    last = int(symbols.sum(dtype=np.int64)) + symbols.size - 1  # where the last entry sits
    if last >= numel or numel - 1 - last > (1 << bits) - 1:
        raise damaged(f"tensor '{name}': its positions end at {last}, which does not fit {numel} elements")
    return symbols, _stream_info("positions", symbols, reader.pos - start, measure)


def entry_positions(gap_symbols: np.ndarray) -> np.ndarray:
    """Entry i sits at sum(gaps[:i+1]) + i (checked to lie inside the tensor by decode_positions)."""
    positions = np.cumsum(gap_symbols + 1, dtype=np.int64)  # (gap + 1 stays int32: no int64 temporary)
    positions -= 1
    return positions


def _build(numel: int, dtype: torch.dtype, shape: tuple[int, ...], gap_symbols: np.ndarray | None,
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


# ----------------------------------------------------------------------------------------------- encoding


def _shared_codebook(values: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray] | None:
    """(codebook bit patterns sorted by value, 1-based cluster index of each value), or None."""
    patterns = np.unique(values[:4096])
    if patterns.size > MAX_CLUSTERS:
        return None
    inverse = np.searchsorted(patterns, values)  # the sample usually holds every value: no full sort
    inverse = np.minimum(inverse, max(patterns.size - 1, 0))
    if values.size and not np.array_equal(patterns[inverse], values):
        patterns, inverse = np.unique(values, return_inverse=True)
        if patterns.size > MAX_CLUSTERS:
            return None
    floats = _dtypes.float_values(patterns, dtype)
    if np.isnan(floats).any():
        return None
    order = np.argsort(floats, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return patterns[order], rank[inverse.ravel()] + 1


def _encode_shared(bits_flat: np.ndarray, nonzero: np.ndarray, dtype: torch.dtype,
                   gap_bits: int | None) -> tuple[int, bytes, int] | None:
    """(section type, shared-section bytes, number of shared values), or None if there are too many values.

    gap_bits None: the smaller of version 2 and version 1 with the best field width (fillers can beat
    escapes on small streams); an int: version 1 with that width.
    """
    codebook, clusters = _shared_codebook(bits_flat[nonzero], dtype) or (None, None)
    if codebook is None:
        return None
    k = codebook.size
    if gap_bits is None:
        v2 = _encode_shared2(bits_flat, nonzero, codebook, clusters)
        v1 = _encode_shared1(bits_flat, nonzero, codebook, clusters, None)  # (dense: v2's context byte is 1 more)
        return (TYPE_SHARED2, v2, k) if len(v2) <= len(v1) else (TYPE_SHARED, v1, k)
    return TYPE_SHARED, _encode_shared1(bits_flat, nonzero, codebook, clusters, gap_bits), k


def _encode_shared1(bits_flat: np.ndarray, nonzero: np.ndarray, codebook: np.ndarray, clusters: np.ndarray,
                    gap_bits: int | None) -> bytes:
    """Version 1 (type 2): fixed-width gap fields with fillers (Han et al.); the width chosen when None."""
    k = codebook.size
    head = bytearray()
    if nonzero.size == bits_flat.size:  # dense clustered: no positions stream (flag clear)
        head += bytes([0]) + varint(k) + _little_endian(codebook)
        return bytes(head) + encode_symbols(clusters, k + 1)
    gaps, trailing = _gaps(nonzero, bits_flat.size)
    if gap_bits is None:
        gap_bits = choose_gap_bits(gaps, trailing, np.bincount(clusters, minlength=k + 1)[1:], 0)
    symbols, ends, total = build_entries(gaps, trailing, gap_bits)
    indices = np.zeros(total, dtype=np.int64)
    indices[ends] = clusters
    head += bytes([FLAG_POSITIONS, gap_bits]) + varint(k) + _little_endian(codebook)
    return bytes(head) + encode_symbols(symbols, 1 << gap_bits) + encode_symbols(indices, k + 1)


def gap_classes(gaps: np.ndarray, contexts: int) -> np.ndarray:
    """The context of each kept weight's index: min(floor(log2(gap + 1)), contexts - 1) of the gap before it."""
    classes = np.zeros(gaps.size, dtype=np.int64)
    for c in range(1, contexts):  # gap >= 2**c - 1 <=> floor(log2(gap + 1)) >= c
        classes += gaps >= (1 << c) - 1
    return classes


def encode_indices(indices: np.ndarray, gaps: np.ndarray | None, k: int) -> bytes:
    """u8 C, then C streams over alphabet k: the indices split by gap class (C = 1: one stream).

    The encoder keeps the C in 1..MAX_INDEX_CONTEXTS that gives the fewest bytes (exact sizes), so a
    context is only used where its saving pays for the extra tables.
    """
    best = bytes([1]) + encode_symbols(indices, k)
    if gaps is None or indices.size < 256:
        return best
    for contexts in range(2, MAX_INDEX_CONTEXTS + 1):
        classes = gap_classes(gaps, contexts)
        counts = np.bincount(classes * k + indices, minlength=contexts * k).reshape(contexts, k)  # one pass
        estimate = sum(estimate_bits(counts[c], curves=False) for c in range(contexts)) / 8
        if estimate >= len(best) + 8:
            continue  # clearly larger (root-table estimates are close): skip the exact encodes
        blob = bytes([contexts]) + b"".join(encode_symbols(indices[classes == c], k) for c in range(contexts))
        if len(blob) < len(best):
            best = blob
    return best


def _encode_shared2(bits_flat: np.ndarray, nonzero: np.ndarray, codebook: np.ndarray,
                    clusters: np.ndarray) -> bytes:
    k = codebook.size
    dense = nonzero.size == bits_flat.size
    out = bytes([0 if dense else FLAG_POSITIONS]) + varint(k) + _little_endian(codebook)
    gaps = None
    if not dense:
        gaps, _ = _gaps(nonzero, bits_flat.size)
        out += varint(nonzero.size) + escape.encode_escaped(gaps)
    if nonzero.size:
        out += encode_indices(clusters - 1, gaps, k)
    return out


def _encode_sparse2(bits_flat: np.ndarray, nonzero: np.ndarray, size: int) -> bytes:
    gaps, _ = _gaps(nonzero, bits_flat.size)
    flags, data = pack_raw(_little_endian(bits_flat[nonzero]), size)
    return bytes([flags]) + varint(nonzero.size) + escape.encode_escaped(gaps) + data


def _encode_sparse(bits_flat: np.ndarray, nonzero: np.ndarray, size: int, gap_bits: int | None) -> bytes:
    gaps, trailing = _gaps(nonzero, bits_flat.size)
    if gap_bits is None:
        gap_bits = choose_gap_bits(gaps, trailing, None, 8 * size)
    symbols, ends, total = build_entries(gaps, trailing, gap_bits)
    values = np.zeros(total, dtype=bits_flat.dtype)
    values[ends] = bits_flat[nonzero]
    flags, data = pack_raw(_little_endian(values), size)
    return bytes([flags, gap_bits]) + encode_symbols(symbols, 1 << gap_bits) + data


def encode_body(tensor: torch.Tensor, name: str, gap_bits: int | None) -> tuple[int, bytes]:
    """(type id, encoding-specific bytes) of the smallest encoding tried for this tensor.

    Tries shared (floating tensors with at most 256 distinct non-zero values), sparse (at least a
    quarter zeros, unless shared already wins by far) and raw (zstd-compressed when smaller; zstd is
    skipped when a coded encoding is already under 1/16 of the raw bytes).
    """
    dtype = tensor.dtype
    size = _dtypes.itemsize(dtype)
    raw = _dtypes.to_bytes(tensor)
    coded: tuple[int, bytes] | None = None
    if tensor.numel() >= MIN_CODED_NUMEL and dtype != torch.bool and not dtype.is_complex:
        coded = _encode_coded(_dtypes.to_bits(tensor), dtype, size, gap_bits)
    if coded is not None and len(coded[1]) * 16 < len(raw):
        return coded
    flags, data = pack_raw(raw, size)
    best = (TYPE_RAW, bytes([flags]) + data)
    return coded if coded is not None and len(coded[1]) < len(best[1]) else best


def _encode_coded(bits_flat: np.ndarray, dtype: torch.dtype, size: int,
                  gap_bits: int | None) -> tuple[int, bytes] | None:
    """The smaller of the shared and sparse encodings that apply, or None."""
    n_nonzero = int(np.count_nonzero(bits_flat))
    maybe_sparse = n_nonzero <= 0.75 * bits_flat.size
    maybe_shared = dtype in _dtypes.FLOATING
    if maybe_shared:  # a quick look at the first values before the full pass
        sample = bits_flat[:8192]
        maybe_shared = np.unique(sample[sample != 0]).size <= MAX_CLUSTERS
    if not (maybe_shared or maybe_sparse):
        return None
    nonzero = np.flatnonzero(bits_flat)
    candidates = []
    shared = _encode_shared(bits_flat, nonzero, dtype, gap_bits) if maybe_shared else None
    if shared is not None:
        candidates.append(shared[:2])
    # sparse can win when the codebook is a large part of a shared section (few non-zeros per value)
    if maybe_sparse and (shared is None or shared[2] * 8 > nonzero.size):
        candidates.append((TYPE_SPARSE, _encode_sparse(bits_flat, nonzero, size, gap_bits)))
        if gap_bits is None:  # a fixed field width asks for the version-1 (Han et al.) layout only
            candidates.append((TYPE_SPARSE2, _encode_sparse2(bits_flat, nonzero, size)))
    return min(candidates, key=lambda candidate: len(candidate[1])) if candidates else None


def encode_section(name: str, tensor: torch.Tensor, gap_bits: int | None = None, structure=None) -> bytes:
    """type id, varint body length, body = name, dtype, shape, then the encoding's bytes.

    structure: a vq_section.Quantized the tensor was built from (vector quantization); it is stored as
    a "vq" section when it decodes to exactly this tensor (float32), otherwise it is ignored.
    """
    if not isinstance(tensor, torch.Tensor):
        raise FormatError(f"state entry '{name}' is a {type(tensor).__name__}, not a tensor: put it in meta")
    if tensor.layout != torch.strided:
        raise FormatError(f"tensor '{name}' has layout {tensor.layout}: store tensor.to_dense() instead")
    if tensor.dim() > MAX_RANK:
        raise FormatError(f"tensor '{name}' has {tensor.dim()} dimensions; the compact format stores at most "
                          f"{MAX_RANK}: reshape it")
    if tensor.numel() > MAX_NUMEL:
        raise FormatError(f"tensor '{name}' has {tensor.numel()} elements, more than {MAX_NUMEL}: split it")
    encoded_name = name.encode("utf-8")
    if len(encoded_name) > MAX_NAME_BYTES:
        raise FormatError(f"tensor name '{name[:40]}...' is longer than {MAX_NAME_BYTES} bytes: shorten it")
    type_id, specific = None, None
    if structure is not None and tensor.dtype == torch.float32 and tuple(tensor.shape) == tuple(structure.shape):
        exact = vq_section.reconstruct(structure)
        if np.array_equal(exact.view(np.int32).ravel(), _dtypes.to_bits(tensor)):
            type_id, specific = TYPE_VQ, vq_section.encode_vq(structure)
    if type_id is None:
        type_id, specific = encode_body(tensor, name, gap_bits)
    dtype_code = _dtypes.code_of(tensor.dtype, name)
    body = (varint(len(encoded_name)) + encoded_name + bytes([dtype_code, tensor.dim()])
            + b"".join(varint(d) for d in tensor.shape) + specific)
    return bytes([type_id]) + varint(len(body)) + body


# ----------------------------------------------------------------------------------------------- decoding


def decode_section(reader: ByteReader, want_tensor: bool = True,
                   budget: list[int] | None = None) -> tuple[str, torch.Tensor | None, dict, SectionInfo]:
    """Read one section at the reader's position: (name, tensor or None, {shape, dtype, numel}, info).

    budget: a one-element list with the tensor bytes still allowed in this file; reduced here, and a
    section that would exceed it raises FormatError before anything is allocated.
    """
    section_start = reader.pos
    type_id = reader.u8("section type")
    body_len = reader.varint("section length", MAX_NUMEL * 16)
    reader.need(body_len, "section body")
    body = ByteReader(reader.data, reader.pos, reader.pos + body_len, reader.base,
                      f"section at byte {section_start}")
    reader.pos += body_len
    name_len = body.varint("name length", MAX_NAME_BYTES)
    try:
        name = bytes(body.take(name_len, "name")).decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(f"section at byte {section_start}: its tensor name is not UTF-8") from None
    real_name, name = name, shown(name)  # messages show the name escaped and cut: they stay one short line
    body.context = f"tensor '{name}'"
    if type_id not in ENCODINGS:
        raise FormatError(f"tensor '{name}' uses encoding type {type_id}, which this reader does not know: "
                          "the file was written by a newer Compression Lab; upgrade complab")
    dtype = _dtypes.dtype_of(body.u8("dtype"), name)
    rank = body.u8("rank")
    if rank > MAX_RANK:
        raise damaged(f"tensor '{name}' claims {rank} dimensions (at most {MAX_RANK})")
    shape = tuple(body.varint("dimension", MAX_NUMEL) for _ in range(rank))
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > MAX_NUMEL:
            raise damaged(f"tensor '{name}' claims shape {shape}, more than {MAX_NUMEL} elements")
    described = {"shape": list(shape), "dtype": _dtypes.dtype_name(dtype), "numel": numel}
    size = _dtypes.itemsize(dtype)
    if budget is not None:
        budget[0] -= numel * size
        if budget[0] < 0:
            raise FormatError(f"tensor '{name}' ({numel * size} bytes) takes the file past its decode limit "
                              f"({MIN_DECODE_ALLOWANCE >> 20} MiB plus {MAX_EXPANSION} bytes of tensors per byte "
                              f"of file, at most {MAX_DECODED_BYTES >> 30} GiB): a file this small cannot honestly "
                              "describe that much, so it is damaged or crafted; a model larger than the cap needs "
                              "an explicit max_decoded_bytes")
    decoder = {TYPE_RAW: _decode_raw, TYPE_SHARED: _decode_shared, TYPE_SPARSE: _decode_sparse,
               TYPE_VQ: _decode_vq, TYPE_SHARED2: _decode_shared2, TYPE_SPARSE2: _decode_sparse2}[type_id]
    if type_id == TYPE_VQ:
        tensor, info = _decode_vq(body, name, dtype, shape, numel, size, want_tensor, budget)
    else:
        tensor, info = decoder(body, name, dtype, shape, numel, size, want_tensor)
    if body.remaining():
        raise damaged(f"tensor '{name}': {body.remaining()} unexplained bytes at the end of its section")
    return real_name, tensor, described, info


def _decode_raw(body: ByteReader, name, dtype, shape, numel, size, want_tensor):
    flags = body.u8("raw flags")
    data = body.take(body.remaining(), "raw data")
    raw = unpack_raw(data, flags, numel * size, size, f"tensor '{name}'")
    tensor = _dtypes.from_bytes(raw, dtype, shape, name) if want_tensor else None
    nonzeros = None
    if not want_tensor:  # inspect: check bools, count elements with any non-zero byte (in blocks: no big copy)
        if dtype == torch.bool:
            _dtypes.from_bytes(raw, dtype, shape, name)
        nonzeros = 0
        elements = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size) if raw else np.zeros((0, size), np.uint8)
        for start in range(0, len(elements), 1 << 20):
            nonzeros += int(elements[start:start + (1 << 20)].any(axis=1).sum())
    info = SectionInfo("raw", nonzeros=nonzeros,
                       bytes_raw=len(data), raw_compression="zstd" if flags & FLAG_ZSTD else None)
    return (tensor if want_tensor else None), info


def _read_gap_bits(body: ByteReader, name: str) -> int:
    bits = body.u8("gap field width")
    if not GAP_BITS_MIN <= bits <= GAP_BITS_MAX:
        raise damaged(f"tensor '{name}': gap field width {bits} is outside {GAP_BITS_MIN}..{GAP_BITS_MAX}")
    return bits


def _decode_shared(body: ByteReader, name, dtype, shape, numel, size, want_tensor):
    if dtype not in _dtypes.FLOATING:
        raise damaged(f"tensor '{name}': a shared section must hold a floating dtype, not {dtype}")
    flags = body.u8("shared flags")
    if flags & ~FLAG_POSITIONS:
        raise damaged(f"tensor '{name}': unknown shared-section flags {flags:#x}")
    has_positions = bool(flags & FLAG_POSITIONS)
    gap_bits = _read_gap_bits(body, name) if has_positions else None
    k = body.varint("codebook size", MAX_CLUSTERS)
    if not has_positions and (k == 0) != (numel == 0):
        raise damaged(f"tensor '{name}': a dense shared tensor of {numel} elements with {k} shared values")
    bits_type = _dtypes.bits_dtype(dtype)
    codebook = _from_little_endian(body.take(k * size, "codebook"), bits_type)
    values = _dtypes.float_values(codebook, dtype)
    if (codebook == 0).any() or not (values[1:] > values[:-1]).all():
        raise damaged(f"tensor '{name}': its codebook is not a sorted list of distinct non-zero values")
    book = np.concatenate(([0], codebook)).astype(bits_type)  # index 0 = zero (a filler)
    streams = []
    if has_positions:
        gap_symbols, pos_info = decode_positions(body, numel, gap_bits, name, not want_tensor)
        streams.append(pos_info)
        count = gap_symbols.size
    else:
        gap_symbols, count = None, numel
    start = body.pos
    indices = decode_from(body, count, k + 1, f"tensor '{name}' indices stream", exact=True)
    streams.append(_stream_info("indices", indices, body.pos - start, not want_tensor))
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
        tensor = _build(numel, dtype, shape, gap_symbols, book=book, indices=indices)
    info = SectionInfo("shared", nonzeros=int(count - fillers.size), n_clusters=k, gap_bits=gap_bits,
                       bytes_positions=streams[0]["bytes"] if has_positions else 0,
                       bytes_indices=streams[-1]["bytes"], bytes_codebook=k * size, streams=streams)
    return tensor, info


def _decode_sparse(body: ByteReader, name, dtype, shape, numel, size, want_tensor):
    if dtype.is_complex:  # the encoder never stores complex tensors sparse (complex128 has no bit-pattern int)
        raise damaged(f"tensor '{name}': a sparse section cannot hold {_dtypes.dtype_name(dtype)}")
    flags = body.u8("sparse flags")
    gap_bits = _read_gap_bits(body, name)
    gap_symbols, pos_info = decode_positions(body, numel, gap_bits, name, not want_tensor)
    data = body.take(body.remaining(), "values")
    bits_type = _dtypes.bits_dtype(dtype)
    raw = unpack_raw(data, flags, gap_symbols.size * size, size, f"tensor '{name}' values")
    values = _from_little_endian(raw, bits_type)
    zero = values == 0
    if np.any(gap_symbols[zero] != (1 << gap_bits) - 1):
        raise damaged(f"tensor '{name}': a stored zero is not a filler entry")
    if dtype == torch.bool and (values.view(np.uint8) > 1).any():
        raise damaged(f"tensor '{name}': a bool tensor holds a value other than 0 or 1")
    tensor = None
    if want_tensor:
        tensor = _build(numel, dtype, shape, gap_symbols, entries=values)
    info = SectionInfo("sparse", nonzeros=int(values.size - zero.sum()), gap_bits=gap_bits,
                       bytes_positions=pos_info["bytes"], bytes_raw=len(data),
                       raw_compression="zstd" if flags & FLAG_ZSTD else None, streams=[pos_info])
    return tensor, info


def _decode_vq(body: ByteReader, name, dtype, shape, numel, size, want_tensor, budget=None):
    if dtype != torch.float32:
        raise damaged(f"tensor '{name}': a vq section must hold float32, not {dtype}")
    array, info = vq_section.decode_vq(body, name, shape, numel, want_tensor, budget)
    tensor = torch.from_numpy(array) if want_tensor else None
    return tensor, SectionInfo("vq", n_clusters=info["n_clusters"], bytes_indices=info["bytes_indices"],
                               bytes_codebook=info["bytes_codebook"], streams=info["streams"],
                               quantizer=info["quantizer"], layout=info["layout"], formula_bits=info["formula_bits"])


# ----------------------------------------------------------------------------------------------- version 2


def _decode_gaps(body: ByteReader, numel: int, name: str, measure: bool) -> tuple[np.ndarray, dict]:
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


def _decode_shared2(body: ByteReader, name, dtype, shape, numel, size, want_tensor):
    if dtype not in _dtypes.FLOATING:
        raise damaged(f"tensor '{name}': a shared section must hold a floating dtype, not {dtype}")
    flags = body.u8("shared flags")
    if flags & ~FLAG_POSITIONS:
        raise damaged(f"tensor '{name}': unknown shared-section flags {flags:#x}")
    k = body.varint("codebook size", MAX_CLUSTERS)
    bits_type = _dtypes.bits_dtype(dtype)
    codebook = _from_little_endian(body.take(k * size, "codebook"), bits_type)
    values = _dtypes.float_values(codebook, dtype)
    if (codebook == 0).any() or not (values[1:] > values[:-1]).all():
        raise damaged(f"tensor '{name}': its codebook is not a sorted list of distinct non-zero values")
    streams, gaps = [], None
    if flags & FLAG_POSITIONS:
        gaps, pos_info = _decode_gaps(body, numel, name, not want_tensor)
        streams.append(pos_info)
        count = gaps.size
    else:
        count = numel
    if count and not k:
        raise damaged(f"tensor '{name}': {count} kept weights and no shared values")
    start = body.pos
    indices = _decode_indices(body, gaps, count, k, name) if count else np.zeros(0, dtype=np.int32)
    index_info = _stream_info("indices", indices, body.pos - start, not want_tensor)
    index_info["contexts"] = body.data[start] if count else 0
    streams.append(index_info)
    tensor = None
    if want_tensor:
        positions = None if gaps is None else entry_positions(gaps)
        out = torch.empty(numel, dtype=_dtypes.bits_torch_dtype(dtype))
        view = out.numpy()
        if positions is None:
            np.take(codebook, indices, out=view)
        else:
            view.fill(0)
            view[positions] = np.take(codebook, indices)
        tensor = out.view(dtype).reshape(shape)
    info = SectionInfo("shared", nonzeros=count, n_clusters=k,
                       bytes_positions=streams[0]["bytes"] if gaps is not None else 0,
                       bytes_indices=index_info["bytes"], bytes_codebook=k * size, streams=streams,
                       section_version=2)
    return tensor, info


def _decode_sparse2(body: ByteReader, name, dtype, shape, numel, size, want_tensor):
    if dtype.is_complex:
        raise damaged(f"tensor '{name}': a sparse section cannot hold {_dtypes.dtype_name(dtype)}")
    flags = body.u8("sparse flags")
    gaps, pos_info = _decode_gaps(body, numel, name, not want_tensor)
    data = body.take(body.remaining(), "values")
    values = _from_little_endian(unpack_raw(data, flags, gaps.size * size, size, f"tensor '{name}' values"),
                                 _dtypes.bits_dtype(dtype))
    if (values == 0).any():
        raise damaged(f"tensor '{name}': a sparse section stores a zero")
    if dtype == torch.bool and (values.view(np.uint8) > 1).any():
        raise damaged(f"tensor '{name}': a bool tensor holds a value other than 0 or 1")
    tensor = None
    if want_tensor:
        tensor = _build(numel, dtype, shape, gaps, entries=values)
    info = SectionInfo("sparse", nonzeros=int(values.size), bytes_positions=pos_info["bytes"], bytes_raw=len(data),
                       raw_compression="zstd" if flags & FLAG_ZSTD else None, streams=[pos_info],
                       section_version=2)
    return tensor, info
