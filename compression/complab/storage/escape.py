"""Two-part (escape) code for non-negative integers of any size: the gaps between a layer's kept weights.

Han et al. store positions as fixed-width relative indices with filler entries for longer gaps; the
version-1 sections (FORMAT.md 2.2) entropy-code those symbols, so a wide field means a large alphabet
whose table costs a lot, and every filler costs a symbol in both streams. Here a gap v is coded as a
small symbol min(v, E) (alphabet E + 1, order-0 ANS, section 3 of FORMAT.md) and, for the escapes
(v >= E), u = v - E + 1 as an Elias-gamma-like class (bit length, plus the `keep` bits below the
leading one) entropy-coded in a second stream and the remaining low bits stored raw. The encoder picks
E and keep for the fewest bytes. No fillers: there is exactly one gap per kept weight.

Block layout (FORMAT.md, "Escape-coded gaps"):
    varint E                     escape symbol, 1..MAX_ESCAPE
    stream short                 n symbols min(v, E), alphabet E + 1 (n = the block's value count)
    only when some symbol == E:
      u8 keep                    0..MAX_KEEP
      stream classes             one per escape: (b << keep) | top, alphabet 31 << keep
      varint raw_len, raw bits   the max(b - keep, 0) low bits of each u, LSB-first, zero-padded
"""

from __future__ import annotations

import numpy as np

from complab.storage._bits import ByteReader, damaged, varint
from complab.storage.entropy import Joined, PlanCache, code_symbols, counts_entropy_bits, decode_from, estimate_bits

MAX_ESCAPE = 4096  # largest escape symbol (the short alphabet is at most 4097 symbols)
MAX_KEEP = 7  # mantissa bits an escape's class may carry (alphabet 31 << 7 = 3968)
MAX_VALUE = 2**31 - 1  # largest value (a gap inside a tensor of at most 2**31 elements)
_CLASS_BITS = 31  # u = v - E + 1 < 2**31, so its bit length - 1 is at most 30
_ESCAPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # what the encoder tries
_SEARCH_KEEPS = (0, 2)  # class bits the encoder tries (more only pay on huge streams)

__all__ = ["MAX_VALUE", "code_escaped", "decode_escaped", "encode_escaped"]


def _classes(u: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class symbols, raw widths, raw values) of escape values u >= 1."""
    b = np.floor(np.log2(u.astype(np.float64))).astype(np.int64)  # exact: u < 2**31
    b -= (np.int64(1) << b) > u  # guard against rounding just below a power of two
    b += (np.int64(1) << (b + 1)) <= u
    raw = np.maximum(b - keep, 0)
    mantissa = u - (np.int64(1) << b)
    symbols = (b << keep) | (mantissa >> raw)
    return symbols, raw, mantissa & ((np.int64(1) << raw) - 1)


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Variable-width fields, each LSB-first, concatenated LSB-first into bytes (zero padding)."""
    total = int(widths.sum())
    if total == 0:
        return b""
    owner = np.repeat(np.arange(widths.size), widths)
    bit = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(widths) - widths, widths)
    bits = ((values[owner] >> bit) & 1).astype(np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_fields(data: bytes | memoryview, widths: np.ndarray, what: str) -> np.ndarray:
    """Inverse of _pack_fields (widths <= 30): one 64-bit window per field, so memory follows the field count."""
    total = int(widths.sum())
    if len(data) != (total + 7) // 8:
        raise damaged(f"{what}: {len(data)} bytes of raw escape bits, {(total + 7) // 8} expected")
    if total == 0:
        return np.zeros(widths.size, dtype=np.int64)
    buffer = np.zeros(len(data) + 8, dtype=np.uint8)
    buffer[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    if total % 8 and int(buffer[len(data) - 1]) >> (total % 8):
        raise damaged(f"{what}: the raw escape bits' padding is not zero")
    starts = np.cumsum(widths) - widths
    first = starts >> 3
    window = np.zeros(widths.size, dtype=np.uint64)
    for byte in range(8):
        window |= buffer[first + byte].astype(np.uint64) << np.uint64(8 * byte)
    mask = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    return ((window >> (starts & 7).astype(np.uint64)) & mask).astype(np.int64)


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_counts=True) of non-negative integers; by counting (no sort) when the largest is
    small enough for a table of that size (gaps nearly always are)."""
    if values.size == 0 or int(values.max()) > 4 * values.size + 4096:
        return np.unique(values, return_counts=True)
    table = np.bincount(values)
    unique = np.flatnonzero(table)
    return unique, table[unique]


def _split(values: np.ndarray, counts: np.ndarray, escape: int, keep: int):
    """(short histogram, class histogram, raw bits) of coding a histogram with this escape and keep."""
    below = values < escape
    short = np.zeros(escape + 1, dtype=np.int64)
    short[values[below]] = counts[below]
    short[escape] = counts[~below].sum()
    symbols, raw, _ = _classes(values[~below] - escape + 1, keep)
    classes = np.bincount(symbols, weights=counts[~below], minlength=1).astype(np.int64)
    return short, classes, float(raw @ counts[~below])


def _choose(values: np.ndarray, counts: np.ndarray, cache: PlanCache | None = None) -> list[tuple[float, int, int]]:
    """(estimated bits, escape, keep) of the candidates, best first.

    Every escape is ranked by a quick proxy (the streams' entropy + raw bits + ~6 bits of table per used
    symbol); the best three get root-table estimates (close to the exact size) for each keep searched.
    """
    top = int(values[-1]) + 1
    proxies = []
    for escape in sorted({min(e, top, MAX_ESCAPE) for e in _ESCAPES}):
        short, classes, raw = _split(values, counts, escape, 2)
        used = np.count_nonzero(short) + np.count_nonzero(classes)
        proxies.append((counts_entropy_bits(short) + counts_entropy_bits(classes) + raw + 6 * used, escape))
    options = []
    for _, escape in sorted(proxies)[:3]:
        for keep in _SEARCH_KEEPS:
            short, classes, raw = _split(values, counts, escape, keep)
            bits = estimate_bits(short, curves=False, cache=cache)
            if short[escape]:
                bits += 8 + estimate_bits(classes, curves=False, cache=cache) + raw + 8
            options.append((bits, escape, keep))
            if not short[escape]:
                break
    return sorted(options)


def encode_escaped(values: np.ndarray, escape: int | None = None, keep: int | None = None) -> bytes:
    """The block for these non-negative integers (each <= MAX_VALUE); E and keep chosen when None."""
    return code_escaped(values, escape, keep).to_bytes()


def code_escaped(values: np.ndarray, escape: int | None = None, keep: int | None = None,
                 cache: PlanCache | None = None) -> Joined:
    """encode_escaped's block with its exact size (`.size`); bytes assembled by `.to_bytes()`.

    With E and keep chosen here, the candidates are compared by exact size and the first smallest is kept.
    """
    values = np.asarray(values, dtype=np.int64).ravel()
    if values.size and (int(values.min()) < 0 or int(values.max()) > MAX_VALUE):
        raise ValueError(f"escape-coded values must lie in 0..{MAX_VALUE}")
    if escape is None:
        if values.size == 0:
            escape, keep = 1, 0
        else:
            unique, counts = value_counts(values)
            chosen = {(e, k) for _, e, k in _choose(unique, counts, cache)[:1]}
            if unique[-1] < MAX_ESCAPE:  # no escape at all: a curve table may describe the whole range cheaply
                chosen.add((int(unique[-1]) + 1, 0))
            return min((code_escaped(values, e, k, cache) for e, k in sorted(chosen)),
                       key=lambda block: block.size)  # exact sizes
    if not 1 <= escape <= MAX_ESCAPE or (keep is not None and not 0 <= keep <= MAX_KEEP):
        raise ValueError(f"escape must be in 1..{MAX_ESCAPE} and keep in 0..{MAX_KEEP}")
    keep = keep or 0
    block = Joined(varint(escape), code_symbols(np.minimum(values, escape), escape + 1, cache))
    escaped = values[values >= escape]
    if escaped.size:
        symbols, raw, low = _classes(escaped - escape + 1, keep)
        packed = _pack_fields(low, raw)
        block.add(bytes([keep]), code_symbols(symbols, _CLASS_BITS << keep, cache), varint(len(packed)), packed)
    return block


def decode_escaped(reader: ByteReader, count: int, what: str) -> np.ndarray:
    """Exactly `count` values (int64) from the block at the reader's position; every field checked."""
    escape = reader.varint("escape symbol", MAX_ESCAPE)
    if escape == 0:
        raise damaged(f"{what}: escape symbol 0 does not exist")
    short = decode_from(reader, count, escape + 1, what, exact=True)
    values = short.astype(np.int64)
    where = np.flatnonzero(short == escape)
    if where.size:
        keep = reader.u8("escape class bits")
        if keep > MAX_KEEP:
            raise damaged(f"{what}: escape class bits {keep} is more than {MAX_KEEP}")
        symbols = decode_from(reader, where.size, _CLASS_BITS << keep, f"{what} escapes", exact=True)
        b = symbols.astype(np.int64) >> keep
        top = symbols.astype(np.int64) & ((1 << keep) - 1)
        if (top >> np.minimum(b, keep)).any():
            raise damaged(f"{what}: an escape class carries more mantissa bits than its length")
        raw = np.maximum(b - keep, 0)
        packed_len = reader.varint("raw escape bits length", reader.remaining())
        low = _unpack_fields(reader.take(packed_len, "raw escape bits"), raw, what)
        u = (np.int64(1) << b) + (top << raw) + low
        values[where] = u + escape - 1
        if int(values[where].max()) > MAX_VALUE:
            raise damaged(f"{what}: an escaped value is larger than {MAX_VALUE}")
    return values
