"""Order-0 entropy coding of integer symbol streams: a semi-static ANS coder (constriction) with a tiny table.

Deep Compression Huffman-codes its index and position streams; Huffman pays up to ~1 bit per symbol
above the entropy on skewed streams and ~1-3% on typical ones. We use asymmetric numeral systems
(`constriction.stream.stack.AnsCoder` with a `Categorical` model), which codes within a few
millionths of a bit of the model's cross-entropy, so what remains is (a) the cost of describing
the model and (b) the model's mismatch with the empirical distribution. Both are minimised
together: the encoder computes, for each way of describing the model, the exact table bits +
n * cross-entropy(empirical, model) and keeps the cheapest:

- roots: per symbol root = round(sqrt(count) / step), weight root**2 (the square root makes a
  count's Poisson noise about constant, so one resolution suits rare and common symbols),
  predicted from its neighbours and Exp-Golomb coded; every step, predictor and code order tried;
- curve: a log-linear interpolation through a few knots (fitted by maximum likelihood), so a
  geometric or Gaussian-like histogram costs a handful of numbers and no bits for the sampling
  noise of rare symbols;
- uniform: no table at all;
- adaptive: no table either: the stream is coded in blocks of growing size, each with a model learnt from
  the counts of the blocks before it (what an adaptive coder pays instead of a table: about
  (m - 1) / 2 * log2(n) bits); it pays on short streams of many symbols and on drifting ones.

Blob layout (FORMAT.md, "Entropy-coded stream", is the spec):
    varint n                      number of symbols (0 -> nothing follows)
    varint m - 1                  number of distinct symbols used
    varint lo                     smallest used symbol (m == 1 -> nothing follows)
    varint span                   largest used symbol - lo
    bit table (LSB-first, padded to a byte): 3 bits mode, then the mode's fields
    varint payload_bytes, payload  the ANS words, little-endian uint32, trailing zero bytes dropped
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import constriction
import numpy as np

from complab.storage._bits import BitReader, BitWriter, ByteReader, damaged, eg_lengths, varint

MAX_ALPHABET = 65536  # largest alphabet a stream may use (symbols 0..65535)
MAX_SYMBOLS = 2**31  # most symbols in one stream
MAX_ROOT = 2**18  # root**2 * 65536 symbols < 2**53: weight sums are exact in float64 on every machine
# Table modes (3 bits): how the model over the used symbols is described.
MODE_ROOTS = 0  # every symbol lo..hi is used; a root per symbol
MODE_BITMAP, MODE_GAPS = 1, 2  # some of lo..hi unused: which (a bitmap / Exp-Golomb gaps), then roots
MODE_RANGE = 3  # a root per symbol lo..hi, 0 for unused ones
MODE_CURVE = 4  # a log-linear curve through a few knots over lo..hi
MODE_UNIFORM = 5  # every symbol lo..hi equally likely (no table)
MODE_ADAPTIVE = 6  # no table: blocks of growing size, each coded with the counts of the blocks before it
_MODE_BITS = 3
# Curve tables: log2-weights in 1/R steps at knots, interpolated in integer arithmetic and turned into
# integer weights with these fixed-point tables of round(4096 * 2**(f / R)) (literals, so every machine
# computes the same weights).
_CURVE_RESOLUTIONS = (2, 4, 8, 16)
_EXP = {2: (4096, 5793), 4: (4096, 4871, 5793, 6889),
        8: (4096, 4467, 4871, 5312, 5793, 6317, 6889, 7512),
        16: (4096, 4277, 4467, 4664, 4871, 5087, 5312, 5547, 5793, 6049, 6317, 6597, 6889, 7194, 7512, 7845)}
_CURVE_RANGE = 24  # doublings between the largest and smallest curve weight (constriction has 24 bits)
_CURVE_KNOTS = (2, 3, 5, 9, 17, 33)  # knot counts the encoder tries
_MAX_KNOT = 2**20
_STEPS = 2.0 ** (np.arange(-8, 28) / 4)  # table resolutions the encoder tries
_FLUSH_BITS = 24  # about what the ANS coder adds when it flushes its state (for size estimates)
# Adaptive streams (MODE_ADAPTIVE): block k holds max(_MIN_BLOCK, done >> shift) symbols (done = symbols before
# it), coded with weights (count << (prior + 1)) + 1 per symbol lo..hi from the counts of blocks 0..k-1, i.e. a
# pseudo-count of 2**-(prior + 1) (prior 0: the Krichevsky-Trofimov estimate). 2 bits each in the table.
_MIN_BLOCK = 4
_ADAPTIVE_SHIFTS = 4  # shift 0..3: each block 1, 1/2, 1/4, 1/8 of what came before
_ADAPTIVE_PRIORS = 4  # prior 0..3
_ADAPTIVE_MAX_SPAN = 4096  # the encoder tries the adaptive mode on alphabets up to this (the decoder takes any)
# ... and on streams up to this many symbols: beyond, a table costs a vanishing share of the stream while the
# adaptive mode's learning cost, about (m - 1) / 2 * log2(n) bits, keeps growing (and planning it takes a pass)
_ADAPTIVE_MAX_SYMBOLS = 1 << 16
# estimate_bits counts the adaptive mode in up to this many symbols: the choosers that call it (escapes, gap
# classes, index contexts) then code more candidates exactly, which cost ResNet-18's random layers (codec_speed)
# 0.98 -> 1.25 s of encoding with no byte saved when counted up to 65,536; 4,096 costs 1.09 s (0.84 s before)
_ADAPTIVE_ESTIMATE_SYMBOLS = 4096

__all__ = [
    "CodedStream", "Joined", "PlanCache", "code_symbols", "counts_entropy_bits", "decode_symbols",
    "empirical_entropy_bytes", "encode_symbols", "estimate_bits",
]


_CHUNK = 1 << 20  # symbols per numpy call where numpy would copy a whole stream to int64 (8 bytes a symbol)


def empirical_entropy_bytes(symbols: np.ndarray) -> float:
    """n * H(empirical distribution) / 8: the order-0 limit for coding this stream, in bytes."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0.0
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, symbols.size, _CHUNK):  # bincount copies its input to int64: a chunk at a time
        part = np.bincount(symbols[start:start + _CHUNK])
        if part.size > counts.size:
            part[:counts.size] += counts
            counts = part
        else:
            counts[:part.size] += part
    return counts_entropy_bits(counts) / 8.0


def counts_entropy_bits(counts: np.ndarray) -> float:
    """n * H in bits of a histogram (the order-0 limit for a stream with these symbol counts)."""
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / counts.sum())).sum()) if counts.size else 0.0


def _probabilities(weights: np.ndarray) -> np.ndarray:
    """Model probabilities from integer weights (sum < 2**53, so exact): identical floats on every machine."""
    weights = weights.astype(np.float64)
    return weights / weights.sum()


def _zigzag(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 2 * values, -2 * values - 1)


def _residual_codes(roots: np.ndarray, order: int, floor: int) -> np.ndarray:
    """What the table stores after the first root (works on the last axis, so on many candidates at once).

    order 0: root - floor; order 1: zigzag(root - previous); order 2: zigzag(root - prediction) with
    prediction = max(floor, 2 * previous - the one before) (the previous root for the second entry).
    """
    if order == 0:
        return roots[..., 1:] - floor
    pred = roots[..., :-1].copy()
    if order == 2:
        pred[..., 1:] = np.maximum(floor, 2 * roots[..., 1:-1] - roots[..., :-2])
    return _zigzag(roots[..., 1:] - pred)


@dataclass
class _Table:
    roots: np.ndarray  # one per table entry
    order: int  # predictor
    eg_order: int  # Exp-Golomb order of the residuals
    bits: float  # table bits (from the predictor field on) + n * cross-entropy


def _plan_table(counts: np.ndarray, floor: int) -> _Table:
    """The cheapest table for these counts (floor 1: every entry is a used symbol; 0: zeros allowed)."""
    counts = counts.astype(np.float64)
    used = counts > 0
    roots = np.rint(np.sqrt(counts)[None, :] / _STEPS[:, None]).astype(np.int64)
    roots = np.where(used, np.maximum(roots, 1), 0)
    log_roots = np.log2(np.where(used, roots, 1).astype(np.float64))
    coding = counts.sum() * np.log2((roots.astype(np.float64) ** 2).sum(axis=1)) - 2 * (log_roots @ counts)
    base = coding + 4 + eg_lengths(roots[:, 0] - 1)
    best: _Table | None = None
    for order in (0, 1, 2):
        codes = _residual_codes(roots, order, floor)
        for eg_order in range(4):
            totals = base + eg_lengths(codes, eg_order).sum(axis=1)
            step = int(np.argmin(totals))
            if best is None or totals[step] < best.bits:
                best = _Table(roots[step], order, eg_order, float(totals[step]))
    assert best is not None
    return best


@dataclass
class _Curve:
    spacing: int  # knot spacing K
    resolution: int  # R: knot values are log2-weights in 1/R steps
    eg_order: int
    knots: np.ndarray  # integer knot values, knots[0] == 0
    bits: float  # table bits (from the spacing field on) + n * cross-entropy


def _knot_positions(span: int, spacing: int) -> np.ndarray:
    count = -(-span // spacing) + 1
    return np.minimum(np.arange(count, dtype=np.int64) * spacing, span)


def _curve_weights(span: int, spacing: int, resolution: int, knots: np.ndarray) -> np.ndarray:
    """Integer weights of symbols lo..lo+span: knots interpolated (integer rounding), then 2**(x/R)."""
    positions = _knot_positions(span, spacing)
    index = np.arange(span + 1, dtype=np.int64)
    interval = np.minimum(index // spacing, len(positions) - 2)
    left = positions[interval]
    length = positions[interval + 1] - left
    offset = index - left
    x = (2 * knots[interval] * (length - offset) + 2 * knots[interval + 1] * offset + length) // (2 * length)
    x = np.maximum(x - (int(x.max()) - _CURVE_RANGE * resolution), 0)
    table = np.array(_EXP[resolution], dtype=np.int64)
    return table[x % resolution] << (x // resolution)


def _curve_codes(knots: np.ndarray) -> np.ndarray:
    """Zigzag residuals of knots[1:] against linear extrapolation (the previous knot for the second)."""
    pred = knots[:-1].copy()
    pred[1:] = 2 * knots[1:-1] - knots[:-2]
    return _zigzag(knots[1:] - pred)


def _fit_log_curve(counts: np.ndarray, spacing: int) -> np.ndarray:
    """Maximum-likelihood knot values (log2 units) of the interpolated log-linear model, by Newton steps."""
    span = len(counts) - 1
    positions = _knot_positions(span, spacing)
    index = np.arange(span + 1)
    interval = np.minimum(index // spacing, len(positions) - 2)
    length = (positions[interval + 1] - positions[interval]).astype(np.float64)
    frac = (index - positions[interval]) / length
    design = np.zeros((span + 1, len(positions)))
    design[index, interval] += 1 - frac
    design[index, interval + 1] += frac
    target = counts + 0.05  # a small pseudo-count keeps empty tails finite
    total = target.sum()
    y = np.linalg.lstsq(design, np.log(target), rcond=None)[0]
    ridge = 1e-9 * np.eye(len(positions))
    for _ in range(25):
        z = design @ y
        q = np.exp(z - z.max())
        q /= q.sum()
        grad = design.T @ (total * q - target)
        aq = design.T @ q
        hessian = total * ((design.T * q) @ design - np.outer(aq, aq)) + ridge
        step = np.linalg.solve(hessian, grad)
        y -= step
        if np.abs(step).max() < 1e-3:
            break
    return (y - y[0]) / np.log(2.0)


def _curve_cost(counts: np.ndarray, span: int, spacing: int, resolution: int, knots: np.ndarray) -> float:
    weights = _curve_weights(span, spacing, resolution, knots).astype(np.float64)
    used = counts > 0
    return float(counts.sum() * np.log2(weights.sum()) - counts[used] @ np.log2(weights[used]))


def _curve_total(counts: np.ndarray, span: int, spacing: int, resolution: int, knots: np.ndarray) -> _Curve:
    head = 4 + float(eg_lengths(np.array([spacing - 1])).sum())
    coding = _curve_cost(counts, span, spacing, resolution, knots)
    codes = _curve_codes(knots)
    table_bits = [float(eg_lengths(codes, eg_order).sum()) for eg_order in range(4)]
    eg_order = int(np.argmin(table_bits))
    return _Curve(spacing, resolution, eg_order, knots, head + coding + table_bits[eg_order])


def _plan_curve(counts: np.ndarray) -> _Curve | None:
    """The cheapest curve table for counts over a range (None when the range is too short to bother).

    Fits each knot spacing by maximum likelihood, rounds to each resolution, then refines the two
    best candidates knot by knot (+-1 while the exact cost drops).
    """
    span = len(counts) - 1
    if span < 3:
        return None
    counts = counts.astype(np.float64)
    candidates: list[_Curve] = []
    for spacing in sorted({max(1, -(-span // (n_knots - 1))) for n_knots in _CURVE_KNOTS}):
        try:
            fitted = _fit_log_curve(counts, spacing)
        except np.linalg.LinAlgError:
            continue
        for resolution in _CURVE_RESOLUTIONS:
            knots = np.clip(np.rint(fitted * resolution), -_MAX_KNOT, _MAX_KNOT).astype(np.int64)
            candidates.append(_curve_total(counts, span, spacing, resolution, knots))
    candidates.sort(key=lambda curve: curve.bits)
    best = candidates[0] if candidates else None
    for curve in candidates[:2]:
        knots = curve.knots.copy()
        current = curve
        for j in range(1, len(knots)):
            for delta in (-1, 1):
                knots[j] += delta
                trial = _curve_total(counts, span, curve.spacing, curve.resolution, knots.copy())
                if trial.bits < current.bits:
                    current = trial
                    break
                knots[j] -= delta
        if current.bits < best.bits:
            best = current
    return best


@functools.lru_cache(maxsize=1024)
def _block_ends(n: int, shift: int) -> np.ndarray:
    """Where the adaptive blocks of an n-symbol stream end: block k holds max(_MIN_BLOCK, done >> shift) symbols."""
    ends = []
    done = 0
    while done < n:
        done = min(n, done + max(_MIN_BLOCK, done >> shift))
        ends.append(done)
    out = np.array(ends, dtype=np.int64)
    out.flags.writeable = False  # shared by every caller (cached)
    return out


def _adaptive_weights(prior_counts: np.ndarray, prior: int) -> np.ndarray:
    """Integer weights of an adaptive block from the counts before it (sums stay far below 2**53)."""
    return (prior_counts.astype(np.int64) << (prior + 1)) + 1


def _adaptive_bits(block_counts: np.ndarray, lengths: np.ndarray, size: int) -> tuple[int, float]:
    """(prior, coding bits) of the best prior for these per-block counts (used columns) over `size` symbols.

    block_counts may be fractional (expected counts, for estimates from a histogram alone).
    """
    before = np.cumsum(block_counts, axis=0) - block_counts
    done = np.cumsum(lengths) - lengths
    best = (0, np.inf)
    for prior in range(_ADAPTIVE_PRIORS):
        scale = float(1 << (prior + 1))
        bits = float(lengths @ np.log2(done * scale + size) - (block_counts * np.log2(before * scale + 1)).sum())
        if bits < best[1]:
            best = (prior, bits)
    return best


def _plan_adaptive(dense: np.ndarray, m: int, size: int) -> tuple[tuple[int, int], float]:
    """((shift, prior), table + coding bits) of the cheapest adaptive coding of this stream.

    dense: the symbols as indices into the used symbols (0..m-1); size: the model's alphabet (span + 1).
    One pass of histograms over the union of every shift's block boundaries; each shift sums them up.
    """
    n = dense.size
    schedules = [_block_ends(n, shift) for shift in range(_ADAPTIVE_SHIFTS)]
    fine = np.unique(np.concatenate(schedules))
    starts = np.concatenate(([0], fine[:-1]))
    hist = np.zeros((len(fine), m), dtype=np.int64)
    for row, (start, end) in enumerate(zip(starts.tolist(), fine.tolist(), strict=True)):
        hist[row] = np.bincount(dense[start:end], minlength=m)
    best = ((0, 0), np.inf)
    for shift, ends in enumerate(schedules):
        first = np.searchsorted(fine, np.concatenate(([0], ends[:-1])), side="right")
        block_counts = np.add.reduceat(hist, first, axis=0)
        prior, bits = _adaptive_bits(block_counts.astype(np.float64), np.diff(np.concatenate(([0], ends))), size)
        if bits < best[1]:
            best = ((shift, prior), bits)
    return best[0], best[1] + 4


def _estimate_adaptive(ranged_counts: np.ndarray) -> float:
    """Estimated table + coding bits of the adaptive mode from a histogram alone (symbols taken as stationary)."""
    n = int(ranged_counts.sum())
    p = ranged_counts[ranged_counts > 0].astype(np.float64) / n
    best = np.inf
    for shift in range(_ADAPTIVE_SHIFTS):
        ends = _block_ends(n, shift)
        lengths = np.diff(np.concatenate(([0], ends))).astype(np.float64)
        best = min(best, _adaptive_bits(lengths[:, None] * p[None, :], lengths, len(ranged_counts))[1])
    return best + 4


def _used_set_bits(used: np.ndarray) -> tuple[int, int]:
    """(mode, bits) of the cheaper explicit used-symbol set: a bitmap or Exp-Golomb gaps."""
    bitmap_bits = int(used[-1] - used[0]) - 1
    gap_bits = int(eg_lengths(np.diff(used)[:-1] - 1).sum())
    return (MODE_BITMAP, bitmap_bits) if bitmap_bits <= gap_bits else (MODE_GAPS, gap_bits)


class PlanCache:
    """Tables planned per histogram, kept for the encoding of one tensor.

    A table depends only on the counts over the used range (not on where that range starts), so the
    section versions an encoder compares share it: version 1's index stream and version 2's (the same
    symbols less one), a positions stream without fillers and the escape block that needs no escape, and
    every estimate that precedes an exact encode. Lookups return the very objects _plan computed.
    """

    def __init__(self) -> None:
        self._tables: dict[bytes, tuple] = {}
        self._curves: dict[bytes, _Curve | None] = {}

    def tables(self, key: bytes, compute) -> tuple:
        if key not in self._tables:
            self._tables[key] = compute()
        return self._tables[key]

    def curve(self, key: bytes, compute) -> _Curve | None:
        if key not in self._curves:
            self._curves[key] = compute()
        return self._curves[key]


def _plan_tables(counts: np.ndarray, used: np.ndarray, ranged_counts: np.ndarray) -> tuple[int, _Table | None, float]:
    """(mode, table, bits) of the cheapest table that is not a curve (uniform, roots, a used set, range)."""
    n = float(counts.sum())
    options: list[tuple[int, _Table | _Curve | None, float]] = [
        (MODE_UNIFORM, None, n * float(np.log2(len(ranged_counts))))]
    if len(used) == len(ranged_counts):
        table = _plan_table(ranged_counts, 1)
        options.append((MODE_ROOTS, table, table.bits))
    else:
        mode, set_bits = _used_set_bits(used)
        table = _plan_table(counts[used], 1)
        options.append((mode, table, table.bits + set_bits))
        table = _plan_table(ranged_counts, 0)
        options.append((MODE_RANGE, table, table.bits))
    return min(options, key=lambda option: option[2])


def _plan(counts: np.ndarray, curves: bool = True,
          cache: PlanCache | None = None) -> tuple[np.ndarray, int, _Table | _Curve | None, float]:
    """(used symbols, table mode, table, table + coding bits) of the cheapest table for these counts.

    `curves=False` skips the (slower) curve fit. A curve is kept only when strictly cheaper than the others.
    """
    used = np.flatnonzero(counts)
    ranged_counts = counts[used[0]:used[-1] + 1]
    if cache is None:
        mode, table, bits = _plan_tables(counts, used, ranged_counts)
        curve = _plan_curve(ranged_counts) if curves else None
    else:
        key = np.ascontiguousarray(ranged_counts, dtype=np.int64).tobytes()
        mode, table, bits = cache.tables(key, lambda: _plan_tables(counts, used, ranged_counts))
        curve = cache.curve(key, lambda: _plan_curve(ranged_counts)) if curves else None
    if curve is not None and curve.bits < bits:
        mode, table, bits = MODE_CURVE, curve, curve.bits
    return used, mode, table, bits + _MODE_BITS


def estimate_bits(counts: np.ndarray, curves: bool = True, cache: PlanCache | None = None) -> float:
    """Close estimate of 8 * len(encode_symbols(...)) for a stream with these symbol counts."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    used = np.flatnonzero(counts)
    head = 8 * len(varint(n))
    if n == 0:
        return float(head)
    head += 8 * (len(varint(len(used) - 1)) + len(varint(int(used[0]))))
    if len(used) == 1:
        return float(head)
    _, _, _, bits = _plan(counts, curves, cache)
    span = int(used[-1] - used[0])
    if span < _ADAPTIVE_MAX_SPAN and n <= _ADAPTIVE_ESTIMATE_SYMBOLS:
        ranged = counts[used[0]:used[-1] + 1]
        if cache is None:
            adaptive = _estimate_adaptive(ranged)
        else:
            adaptive = cache.tables(b"adaptive" + np.ascontiguousarray(ranged).tobytes(),
                                    lambda: _estimate_adaptive(ranged))
        bits = min(bits, adaptive + _MODE_BITS)
    head += 8 * len(varint(span))
    return head + bits + _FLUSH_BITS + 8 * len(varint(int(bits / 8)))


def _table_bits(mode: int, table: _Table | _Curve | None, used: np.ndarray) -> int:
    """Bits of the table encode_symbols writes (mode included), counted from the plan without writing it."""
    bits = _MODE_BITS
    span = int(used[-1] - used[0])
    if mode == MODE_BITMAP:
        bits += span - 1
    elif mode == MODE_GAPS:
        bits += int(eg_lengths(np.diff(used)[:-1] - 1).sum())
    if mode == MODE_UNIFORM:
        return bits
    if mode == MODE_ADAPTIVE:
        return bits + 4
    if mode == MODE_CURVE:
        bits += int(eg_lengths(np.array([table.spacing - 1])).sum()) + 4
        return bits + int(eg_lengths(_curve_codes(table.knots), table.eg_order).sum())
    floor = 0 if mode == MODE_RANGE else 1
    bits += 4 + int(eg_lengths(np.array([int(table.roots[0]) - 1])).sum())
    return bits + int(eg_lengths(_residual_codes(table.roots, table.order, floor), table.eg_order).sum())


@dataclass
class CodedStream:
    """A stream planned and coded, whose bytes are assembled only when asked (`size` is exactly their count)."""

    head: bytes
    size: int
    mode: int = MODE_UNIFORM
    table: _Table | _Curve | tuple[int, int] | None = None  # MODE_ADAPTIVE: (shift, prior)
    used: np.ndarray | None = None  # None: a stream of at most one distinct symbol (the head is all of it)
    payload: bytes = b""

    def to_bytes(self) -> bytes:
        if self.used is None:
            return self.head
        return self.head + _write_table(self.mode, self.table, self.used) + varint(len(self.payload)) + self.payload


class Joined:
    """Bytes and coded streams (anything with `size` and `to_bytes()`) in order: the exact size now, bytes on demand."""

    def __init__(self, *parts) -> None:
        self.parts = list(parts)
        self.size = sum(_size(part) for part in self.parts)

    def add(self, *parts) -> Joined:
        self.parts.extend(parts)
        self.size += sum(_size(part) for part in parts)
        return self

    def to_bytes(self) -> bytes:
        return b"".join(part if isinstance(part, (bytes, bytearray)) else part.to_bytes() for part in self.parts)


def _size(part) -> int:
    return len(part) if isinstance(part, (bytes, bytearray)) else part.size


def _write_table(mode: int, table: _Table | _Curve | None, used: np.ndarray) -> bytes:
    lo, span = int(used[0]), int(used[-1] - used[0])
    bits = BitWriter()
    bits.write(mode, _MODE_BITS)
    if mode == MODE_BITMAP:
        interior = np.zeros(span - 1, dtype=np.int64)
        interior[used[1:-1] - lo - 1] = 1
        bits.write_array(interior, 1)
    elif mode == MODE_GAPS:
        for gap in (np.diff(used)[:-1] - 1).tolist():
            bits.write_eg(gap)
    if mode == MODE_ADAPTIVE:
        bits.write(table[0], 2)
        bits.write(table[1], 2)
    elif mode == MODE_CURVE:
        bits.write_eg(table.spacing - 1)
        bits.write(_CURVE_RESOLUTIONS.index(table.resolution), 2)
        bits.write(table.eg_order, 2)
        for code in _curve_codes(table.knots).tolist():
            bits.write_eg(code, table.eg_order)
    elif mode not in (MODE_UNIFORM, MODE_ADAPTIVE):
        floor = 0 if mode == MODE_RANGE else 1
        bits.write(table.order, 2)
        bits.write(table.eg_order, 2)
        bits.write_eg(int(table.roots[0]) - 1)
        for code in _residual_codes(table.roots, table.order, floor).tolist():
            bits.write_eg(code, table.eg_order)
    return bits.to_bytes()


def encode_symbols(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Entropy-code a stream of integers in [0, alphabet_size); the blob holds its own table and length."""
    return code_symbols(symbols, alphabet_size).to_bytes()


def code_symbols(symbols: np.ndarray, alphabet_size: int, cache: PlanCache | None = None) -> CodedStream:
    """encode_symbols' stream, planned and coded, with its exact size; the bytes are assembled by to_bytes().

    cache: tables already planned for the same histogram (shared by the section versions an encoder compares).
    """
    symbols = np.asarray(symbols).ravel()
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in 1..{MAX_ALPHABET}, got {alphabet_size}")
    n = symbols.size
    if n > MAX_SYMBOLS:
        raise ValueError(f"a stream holds at most {MAX_SYMBOLS} symbols, got {n}")
    if n == 0:
        return CodedStream(varint(0), 1)
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"symbols must be integers, got {symbols.dtype}")
    symbols = symbols.astype(np.int64, copy=False)
    if int(symbols.min()) < 0 or int(symbols.max()) >= alphabet_size:
        raise ValueError(f"symbols must lie in [0, {alphabet_size})")
    counts = np.bincount(symbols, minlength=alphabet_size)
    used = np.flatnonzero(counts)
    m = len(used)
    lo = int(used[0])
    head = varint(n) + varint(m - 1) + varint(lo)
    if m == 1:
        return CodedStream(head, len(head))
    head += varint(int(used[-1]) - lo)
    used, mode, table, bits = _plan(counts, cache=cache)
    span = int(used[-1]) - lo
    dense_index = None
    adaptive = span < _ADAPTIVE_MAX_SPAN and n <= _ADAPTIVE_MAX_SYMBOLS
    if mode in (MODE_BITMAP, MODE_GAPS) or adaptive:
        dense_index = np.zeros(alphabet_size, dtype=np.int64)
        dense_index[used] = np.arange(m)
    options = [(float(bits), mode, table)]
    # the exact adaptive plan takes a pass over the stream: only when the histogram-only estimate comes close
    if adaptive and _estimate_adaptive(counts[lo:lo + span + 1]) <= 1.01 * bits + 64:
        planned, adaptive_bits = _plan_adaptive(dense_index[symbols], m, span + 1)
        options.append((adaptive_bits + _MODE_BITS, MODE_ADAPTIVE, planned))
        options.sort(key=lambda option: option[0])
        if options[1][0] > 1.01 * options[0][0] + 16:  # code the runner-up too only when it may be smaller
            options.pop()
    else:
        options = options[:1]
    best: CodedStream | None = None
    for _, mode, table in options[:2]:
        if mode in (MODE_BITMAP, MODE_GAPS):
            model_symbols = dense_index[symbols]
        else:
            model_symbols = symbols - lo  # the model covers lo..hi
        payload = _code_payload(model_symbols.astype(np.int32), mode, table, span)
        size = len(head) + (_table_bits(mode, table, used) + 7) // 8 + len(varint(len(payload))) + len(payload)
        if best is None or size < best.size:
            best = CodedStream(head, size, mode, table, used, payload)
    return best


def _code_payload(model_symbols: np.ndarray, mode: int, table, span: int) -> bytes:
    """The ANS words of a stream of symbols 0..span (dense indices with a used-symbol set) under a table."""
    coder = constriction.stream.stack.AnsCoder()
    if mode == MODE_ADAPTIVE:
        shift, prior = table
        ends = _block_ends(model_symbols.size, shift)
        starts = np.concatenate(([0], ends[:-1]))
        counts = np.zeros(span + 1, dtype=np.int64)
        models = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            models.append(constriction.stream.model.Categorical(
                _probabilities(_adaptive_weights(counts, prior)), perfect=False))
            counts += np.bincount(model_symbols[start:end], minlength=span + 1)
        for start, end, model in zip(starts.tolist()[::-1], ends.tolist()[::-1], models[::-1], strict=True):
            coder.encode_reverse(model_symbols[start:end], model)
    else:
        if mode == MODE_UNIFORM:
            model = constriction.stream.model.Uniform(span + 1)
        elif mode == MODE_CURVE:
            weights = _curve_weights(span, table.spacing, table.resolution, table.knots)
            model = constriction.stream.model.Categorical(_probabilities(weights), perfect=False)
        else:
            model = constriction.stream.model.Categorical(_probabilities(table.roots ** 2), perfect=False)
        coder.encode_reverse(model_symbols, model)
    return coder.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the last word is never 0


def decode_symbols(blob: bytes | memoryview, expected_count_cap: int,
                   alphabet_size: int = MAX_ALPHABET) -> tuple[np.ndarray, int]:
    """Decode one stream written by encode_symbols from the start of `blob`.

    Returns (symbols as int32, bytes consumed). Raises FormatError when the stream claims more than
    `expected_count_cap` symbols, uses a symbol >= alphabet_size, or its data is inconsistent.
    """
    reader = ByteReader(blob, context="entropy-coded stream")
    return _decode(reader, expected_count_cap, alphabet_size), reader.pos


def decode_from(reader: ByteReader, expected_count_cap: int, alphabet_size: int, what: str,
                exact: bool = False) -> np.ndarray:
    """Decode one stream at the reader's position (the codec uses it: messages keep file offsets).

    exact=True: the stream must hold exactly expected_count_cap symbols (checked before allocating).
    """
    saved = reader.context
    reader.context = what
    try:
        return _decode(reader, expected_count_cap, alphabet_size, exact)
    finally:
        reader.context = saved


def _unzigzag(codes: np.ndarray) -> np.ndarray:
    return np.where(codes & 1, -((codes + 1) >> 1), codes >> 1)


def _read_roots(bits: BitReader, count: int, floor: int, what: str) -> np.ndarray:
    order = bits.read(2)
    eg_order = bits.read(2)
    if order == 3:
        raise damaged(f"{what}: table predictor {order} does not exist")
    first = bits.read_eg() + 1
    codes = bits.read_eg_many(count - 1, eg_order)
    if first > MAX_ROOT or (codes.size and int(codes.max()) > 2 * MAX_ROOT + 1):
        raise damaged(f"{what}: a table entry is larger than {MAX_ROOT}")
    if order == 0:
        roots = np.concatenate(([first], codes + floor))
    elif order == 1:
        roots = np.cumsum(np.concatenate(([first], _unzigzag(codes))))
    else:
        values = [first]
        for i, residual in enumerate(_unzigzag(codes).tolist()):
            pred = values[-1] if i == 0 else max(floor, 2 * values[-1] - values[-2])
            root = pred + residual
            if not floor <= root <= MAX_ROOT:
                raise damaged(f"{what}: table entry {root} is outside {floor}..{MAX_ROOT}")
            values.append(root)
        roots = np.array(values, dtype=np.int64)
    if int(roots.min()) < floor or int(roots.max()) > MAX_ROOT:
        raise damaged(f"{what}: a table entry is outside {floor}..{MAX_ROOT}")
    return roots


def _read_curve(bits: BitReader, span: int, what: str) -> np.ndarray:
    spacing = bits.read_eg() + 1
    if spacing > max(1, span):
        raise damaged(f"{what}: curve knot spacing {spacing} is longer than the symbol range {span}")
    resolution = _CURVE_RESOLUTIONS[bits.read(2)]
    eg_order = bits.read(2)
    codes = bits.read_eg_many(len(_knot_positions(span, spacing)) - 1, eg_order)
    if codes.size and int(codes.max()) > 8 * _MAX_KNOT:  # second differences of valid knots are smaller
        raise damaged(f"{what}: a curve knot residual is out of range")
    knots = np.concatenate(([0], np.cumsum(np.cumsum(_unzigzag(codes)))))  # linear extrapolation undone
    if int(np.abs(knots).max()) > _MAX_KNOT:
        raise damaged(f"{what}: a curve knot is outside -{_MAX_KNOT}..{_MAX_KNOT}")
    return _curve_weights(span, spacing, resolution, knots)


def _decode(reader: ByteReader, expected_count_cap: int, alphabet_size: int,
            exact: bool = False) -> np.ndarray:
    what = reader.context
    n = reader.varint("symbol count", min(int(expected_count_cap), MAX_SYMBOLS))
    if exact and n != expected_count_cap:
        raise damaged(f"{what} holds {n} symbols, {expected_count_cap} expected")
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    alphabet_size = min(int(alphabet_size), MAX_ALPHABET)
    m = reader.varint("distinct-symbol count", min(alphabet_size, n) - 1) + 1
    lo = reader.varint("smallest symbol", alphabet_size - 1)
    if m == 1:
        return np.full(n, lo, dtype=np.int32)
    span = reader.varint("symbol range", alphabet_size - 1 - lo)
    if span + 1 < m:
        raise damaged(f"{what}: {m} distinct symbols do not fit in a range of {span + 1}")
    bits = BitReader(reader.data, reader.pos, reader.end, f"{what} table")
    mode = bits.read(_MODE_BITS)
    dense = span + 1 == m
    fits = mode in (MODE_CURVE, MODE_UNIFORM, MODE_ADAPTIVE) or (mode <= MODE_RANGE and (mode == MODE_ROOTS) == dense)
    if not fits:
        raise damaged(f"{what}: table mode {mode} does not exist or does not fit {m} symbols in {span + 1}")
    used = None
    if mode == MODE_BITMAP:
        inside = np.flatnonzero(bits.read_array(span - 1, 1))
        if len(inside) != m - 2:
            raise damaged(f"{what}: its bitmap marks {len(inside)} symbols, the table says {m - 2}")
        used = np.concatenate(([lo], lo + 1 + inside, [lo + span]))
    elif mode == MODE_GAPS:
        used = lo + np.cumsum(np.concatenate(([0], bits.read_eg_many(m - 2, 0) + 1)))
        if used[-1] >= lo + span:
            raise damaged(f"{what}: its used-symbol list runs past the largest symbol {lo + span}")
        used = np.append(used, lo + span)
    adaptive = None
    if mode == MODE_UNIFORM:
        model = constriction.stream.model.Uniform(span + 1)
    elif mode == MODE_ADAPTIVE:
        adaptive = (bits.read(2), bits.read(2))
    else:
        if mode == MODE_CURVE:
            weights = _read_curve(bits, span, what)
        else:
            floor = 0 if mode == MODE_RANGE else 1
            roots = _read_roots(bits, span + 1 if mode in (MODE_RANGE, MODE_ROOTS) else m, floor, what)
            if mode == MODE_RANGE and (roots[0] == 0 or roots[-1] == 0 or np.count_nonzero(roots) != m):
                raise damaged(f"{what}: its table gives a used symbol probability zero")
            weights = roots ** 2
        model = constriction.stream.model.Categorical(_probabilities(weights), perfect=False)
    reader.pos = bits.byte_end()
    payload_len = reader.varint("payload length", min(reader.remaining(), 4 * (n + 2)))
    payload = bytes(reader.take(payload_len, "payload"))
    if payload_len == 0 or payload[-1] == 0:
        raise damaged(f"{what}: its payload is empty or ends in a zero byte")
    words = np.frombuffer(payload + b"\0" * (-payload_len % 4), dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        if adaptive is None:
            decoded = coder.decode(model, n)
        else:
            decoded = _decode_adaptive(coder, n, span, *adaptive)
        empty = coder.is_empty()
    except Exception as exc:  # constriction raises ValueError/others on garbage; never let them escape
        raise damaged(f"{what}: the entropy coder rejected the data ({exc})") from None
    if not empty or len(decoded) != n:
        raise damaged(f"{what}: the coded data does not end where its {n} symbols do")
    if adaptive is not None:
        counts = np.bincount(decoded, minlength=span + 1)
        if counts[0] == 0 or counts[-1] == 0 or np.count_nonzero(counts) != m:
            raise damaged(f"{what}: its symbols do not use {m} distinct values from {lo} to {lo + span}")
    if used is None:  # the model covers lo..hi
        if lo:
            decoded += np.int32(lo)  # the model covers lo..hi
        return decoded.astype(np.int32, copy=False)
    return np.take(used.astype(np.int32), decoded)  # (np.take is faster than fancy indexing)


def _decode_adaptive(coder, n: int, span: int, shift: int, prior: int) -> np.ndarray:
    """The n symbols (0..span) of an adaptive stream: block by block, each with the counts of those before it."""
    decoded = np.empty(n, dtype=np.int32)
    counts = np.zeros(span + 1, dtype=np.int64)
    start = 0
    for end in _block_ends(n, shift).tolist():
        model = constriction.stream.model.Categorical(_probabilities(_adaptive_weights(counts, prior)), perfect=False)
        block = coder.decode(model, end - start)
        decoded[start:end] = block
        counts += np.bincount(block, minlength=span + 1)
        start = end
    return decoded
