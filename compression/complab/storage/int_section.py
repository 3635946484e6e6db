"""The integer section of the compact format (type 7): a uniformly quantized weight as its levels and scales.

The int step (methods/int_quant.py) turns a weight into integer levels in [-qmax, qmax] (qmax = 2**(b-1) - 1,
symmetric, so a pruned zero is level 0) and one float32 scale per output channel (or one per tensor); the weight
it bakes is `dequantize(levels, scales)`. The per-element floats cannot reveal that structure, so the step hands
it to the encoder (`IntWeights`), which stores the scales raw and the levels entropy coded (an alphabet of
2*qmax + 1 symbols, as the shared section codes its indices), or, for a pruned layer, the kept levels' positions
(escape-coded gaps) and the non-zero levels, whichever is smaller. The decoder rebuilds the weight with the same
`dequantize`, so it equals the in-memory one bit for bit, and hands the structure back (codec.decode_state's
`structures`): a decoded model knows which layers are integers and exports them as such.

`level_range` and `dequantize` live here, on the ground floor, so that the step, the decoder and the ONNX export
share one formula (methods/int_quant.py imports them).
"""

# ruff: noqa: E501  (FORMAT.md table rows stay one line each)

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from complab.storage._bits import ByteReader, damaged, varint
from complab.storage.entropy import Joined, code_symbols, decode_from
from complab.storage.escape import code_escaped
from complab.storage.positions import decode_gaps, entry_positions, gaps_of, stream_info
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register
from complab.storage.shared_section import _decode_indices, code_indices

TYPE_INT = 7
MIN_BITS, MAX_BITS = 2, 8
FLAG_POSITIONS = 1  # the kept (non-zero) levels' positions are stored, then only their levels
# the positions layout is tried only for tensors with at least this share of level-0 weights. Measured on
# magnitude-pruned Gaussian weights (256x128x3x3, 2-8 bits, 5-80% zeros) the two layouts are within 20 bytes
# (the positions carry the same information as the zero symbols); the positions win where zeros come in runs
# (pruned rows, the gap contexts), which only pruned tensors have
POSITIONS_MIN_ZERO_FRACTION = 0.25


def level_range(bits: int) -> int:
    """The largest level magnitude of a symmetric b-bit quantizer (127 at 8 bits, 7 at 4, 1 at 2)."""
    return (1 << (bits - 1)) - 1


def dequantize(levels: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 weights `scales[c] * levels` (per output channel, or one scale): the step's, the decoder's and the
    export's one formula, so all three give bit-identical weights."""
    shape = (-1,) + (1,) * (levels.dim() - 1) if scales.numel() > 1 or levels.shape[0] == 1 else (1,) * levels.dim()
    return scales.to(torch.float32).reshape(shape) * levels.to(torch.float32)


@dataclass
class IntWeights:
    """One integer-quantized weight: int8 levels in the weight's shape, float32 scales ([out] or [1]), the bits."""

    levels: torch.Tensor
    scales: torch.Tensor
    bits: int

    def weight(self) -> torch.Tensor:
        """The float32 weight these levels and scales stand for (dequantize)."""
        return dequantize(self.levels, self.scales)


FORMAT = """\
For a float32 weight that the int step (`compression/complab/methods/int_quant.py`) quantized uniformly:
integer levels in [−q, q] with q = 2**(b−1) − 1 (symmetric: no zero point, a pruned zero is level 0) and
one float32 scale per output channel (or one for the tensor). The per-element values cannot reveal that
structure, so the encoder is handed it (`encode_state(..., structures={name: IntWeights})`) and uses this
section only when `scales[c] · levels` in float32 equals the tensor bit for bit (then without trying the
other types). The decoder builds the weight with `complab.storage.int_section.dequantize`, the function
the step bakes its weights with, and hands the levels and scales back (`decode_state(..., structures=out)`).

| field | |
|---|---|
| u8 `bits` | b, 2..8 |
| u8 `flags` | bit 0: positions (the non-zero levels' positions are stored, then only those levels); other bits 0 |
| varint `S` | number of scales: the tensor's first dimension (one per output channel) or 1 (one for the tensor) |
| S × 4 bytes | scales, float32 little-endian, each finite and > 0 |
| without flag bit 0: stream | levels: exactly numel symbols, alphabet 2q + 1, symbol = level + q, row-major |
| with flag bit 0: positions block | varint n (≤ numel), escape-coded gaps as in 2.5: the n non-zero levels' positions |
| with flag bit 0, n > 0: indices | u8 `C` (1..4), then C streams as in 2.5's indices (index contexts by the gap before each level), alphabet 2q: symbol = level + q for a negative level, level + q − 1 for a positive one |

**Weights.** With shape (d0, d1, …) and S = d0 scales, element (i, …) is `scales[i] · level` computed in
float32 (one correctly rounded multiplication, the same on every machine); with S = 1, `scales[0] · level`.
Level 0 gives +0.0.

**Layout choice.** The encoder writes the levels as one stream, or (for a tensor with at least a quarter
level-0 weights, i.e. pruned) as positions + non-zero levels, whichever is smaller by exact size.

**Size.** A layer of n weights costs about n·H(levels)/8 bytes (H: the levels' empirical entropy, at most
b bits, usually less: trained weights are bell-shaped, so the outer levels are rare) plus 4 bytes per
scale; `formula_bits` in `inspect` is the bit-packed n·b + 32·S it is compared with.

**Checks.** dtype float32; rank ≥ 1 and numel ≥ 1; b in 2..8; flags known; S = d0 or 1, checked before the
scales are read; scales finite and > 0; the levels stream holds exactly numel symbols below 2q + 1, or the
positions block fits the tensor (2.5's checks) and the index streams hold exactly n symbols below 2q."""


# ----------------------------------------------------------------------------------------------- encoding


def check_structure(structure: IntWeights, tensor: torch.Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """(levels int8 flat, scales float32) when the structure is valid and decodes to exactly this tensor, else None."""
    if not isinstance(structure, IntWeights) or tensor.dtype != torch.float32 or tensor.dim() < 1 or not tensor.numel():
        return None
    levels, scales, bits = structure.levels, structure.scales, structure.bits
    if (not isinstance(levels, torch.Tensor) or not isinstance(scales, torch.Tensor) or levels.dtype != torch.int8
            or tuple(levels.shape) != tuple(tensor.shape) or isinstance(bits, bool) or not isinstance(bits, int)
            or not MIN_BITS <= bits <= MAX_BITS or scales.dim() != 1 or scales.numel() not in (1, tensor.shape[0])):
        return None
    levels, scales = levels.detach().cpu(), scales.detach().cpu().to(torch.float32)
    if not (torch.isfinite(scales).all() and (scales > 0).all()) or int(levels.abs().max()) > level_range(bits):
        return None
    if not torch.equal(dequantize(levels, scales).view(torch.int32), tensor.detach().cpu().view(torch.int32)):
        return None  # the structure does not decode to exactly this tensor: the other types store it
    return levels.numpy().ravel(), scales.numpy()


def _kept_symbols(kept: np.ndarray, qmax: int) -> np.ndarray:
    """Non-zero levels as symbols 0..2q-1 (level + q below zero, level + q - 1 above)."""
    symbols = kept.astype(np.int64) + qmax
    symbols[kept > 0] -= 1
    return symbols


def _parts(levels: np.ndarray, scales: np.ndarray, bits: int, subject: Subject) -> Joined:
    """The smaller of the dense and the positions layouts, as exact-size parts."""
    qmax = level_range(bits)
    head = varint(scales.size) + scales.astype("<f4").tobytes()
    dense = Joined(bytes([bits, 0]), head, code_symbols(levels.astype(np.int64) + qmax, 2 * qmax + 1, subject.plans))
    nonzero = np.flatnonzero(levels)
    if nonzero.size > (1 - POSITIONS_MIN_ZERO_FRACTION) * levels.size:
        return dense
    gaps, _ = gaps_of(nonzero, levels.size)
    sparse = Joined(bytes([bits, FLAG_POSITIONS]), head, varint(nonzero.size), code_escaped(gaps, cache=subject.plans))
    if nonzero.size:
        sparse.add(code_indices(_kept_symbols(levels[nonzero], qmax), gaps, 2 * qmax, subject.plans))
    return sparse if sparse.size < dense.size else dense


def encode_int(structure: IntWeights, tensor: torch.Tensor) -> bytes:
    """The section's encoding-specific bytes for a structure that decodes to exactly `tensor` (ValueError if not)."""
    checked = check_structure(structure, tensor)
    if checked is None:
        raise ValueError("the integer levels and scales do not decode to exactly this tensor")
    subject = Subject("int", tensor)
    return _parts(*checked, structure.bits, subject).to_bytes()


def _offer(subject: Subject, best: Offer | None) -> Offer | None:
    checked = check_structure(subject.structure, subject.tensor)
    if checked is None:
        return None
    parts = _parts(*checked, subject.structure.bits, subject)
    return Offer(TYPE_INT, parts.size, parts.to_bytes, final=True)


# ----------------------------------------------------------------------------------------------- decoding


def _decode(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, shape, numel = frame.name, frame.shape, frame.numel
    if frame.dtype != torch.float32:
        raise damaged(f"tensor '{name}': an int section must hold float32, not {frame.dtype}")
    if not shape or not numel:
        raise damaged(f"tensor '{name}': an int section needs a tensor of rank >= 1 with elements, not {list(shape)}")
    bits = body.u8("int bits")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise damaged(f"tensor '{name}': {bits} bits is outside {MIN_BITS}..{MAX_BITS}")
    flags = body.u8("int flags")
    if flags & ~FLAG_POSITIONS:
        raise damaged(f"tensor '{name}': unknown int-section flags {flags:#x}")
    count = body.varint("scale count", shape[0])
    if count not in (1, shape[0]):
        raise damaged(f"tensor '{name}': {count} scales for {shape[0]} output channels (expected {shape[0]} or 1)")
    scales = np.frombuffer(body.take(4 * count, "scales"), dtype="<f4").astype(np.float32)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise damaged(f"tensor '{name}': a scale is not a finite number above 0")
    qmax = level_range(bits)
    measure = not frame.want_tensor
    streams = []
    start = body.pos
    if flags & FLAG_POSITIONS:
        gaps, pos_info = decode_gaps(body, numel, name, measure)
        streams.append(pos_info)
        kept = gaps.size
        index_start = body.pos
        symbols = (_decode_indices(body, gaps, kept, 2 * qmax, name) if kept else np.zeros(0, dtype=np.int32))
        index_info = stream_info("indices", symbols, body.pos - index_start, measure)
        index_info["contexts"] = body.data[index_start] if kept else 0
        streams.append(index_info)
        levels = np.zeros(numel, dtype=np.int8)
        values = symbols.astype(np.int16) - qmax
        values[values >= 0] += 1
        levels[entry_positions(gaps)] = values.astype(np.int8)
        bytes_positions, bytes_levels = pos_info["bytes"], index_info["bytes"]
    else:
        symbols = decode_from(body, numel, 2 * qmax + 1, f"tensor '{name}' levels stream", exact=True)
        streams.append(stream_info("levels", symbols, body.pos - start, measure))
        levels = (symbols.astype(np.int16) - qmax).astype(np.int8)
        del symbols
        kept = int(np.count_nonzero(levels))
        bytes_positions, bytes_levels = 0, body.pos - start
    info = SectionInfo(nonzeros=int(kept), bytes_positions=bytes_positions, bytes_indices=bytes_levels,
                       bytes_codebook=4 * count, streams=streams, quantizer="int",
                       layout={"bits": bits, "scales": count}, formula_bits=numel * bits + 32 * count)
    if not frame.want_tensor:
        return None, info
    structure = IntWeights(torch.from_numpy(levels).reshape(shape), torch.from_numpy(scales), bits)
    info.structure = structure
    return structure.weight(), info


register(SectionType(TYPE_INT, "int", "Type 7, int (uniformly quantized integer levels and scales)", FORMAT, _decode,
                     _offer, rank=1))

__all__ = ["FLAG_POSITIONS", "IntWeights", "MAX_BITS", "MIN_BITS", "TYPE_INT", "dequantize", "encode_int",
           "level_range"]
