"""Section types 3 and 6, sparse: a pruned layer that is not weight-shared (too many distinct values).

The kept weights' positions are stored as for shared (type 3: fixed-width relative indices with fillers;
type 6: escape-coded gaps) and their values raw, or zstd-compressed as in a raw section.
"""

# ruff: noqa: E501  (FORMAT.md table rows stay one line each)

from __future__ import annotations

import numpy as np
import torch

from complab.storage import _dtypes
from complab.storage._bits import ByteReader, damaged, varint
from complab.storage.entropy import Joined, code_symbols
from complab.storage.escape import code_escaped
from complab.storage.positions import (
    build_entries,
    build_tensor,
    choose_gap_bits,
    decode_gaps,
    decode_positions,
    gaps_of,
    read_gap_bits,
)
from complab.storage.raw_section import FLAG_ZSTD, packed, unpack_raw
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register
from complab.storage.shared_section import shared_codebook

TYPE_SPARSE, TYPE_SPARSE2 = 3, 6
MAX_NONZERO_FRACTION = 0.75  # sparse is tried for tensors with at least a quarter zeros

FORMAT_V1 = """\
For a tensor with many zeros but too many distinct values to share. The encoder tries it for tensors
of numel ≥ 64 with at least a quarter zeros, unless shared applies with fewer than one shared value
per 8 kept weights (shared then wins by far).

| field | |
|---|---|
| u8 `flags` | as for raw: bit 0 zstd, bit 1 byte-shuffled |
| u8 `gap_bits` | w, 2..12 |
| stream | positions, exactly as in 2.2 |
| data | rest of the body: one value per entry (fillers store zero), raw little-endian, or zstd as in 2.1 with content size = entries × itemsize |

**Checks.** Not a complex dtype; the position checks of 2.2; stored zeros only in fillers; the raw
data checks of 2.1; bool values are 0 or 1."""

FORMAT_V2 = """\
Sparse with version 2's positions (2.5): no fillers, one escape-coded gap per kept weight.

| field | |
|---|---|
| u8 `flags` | as for raw: bit 0 zstd, bit 1 byte-shuffled |
| positions block | varint n, escape-coded gaps (2.5) |
| data | rest of the body: the n kept values (none is zero), raw little-endian, or zstd as in 2.1 with content size = n × itemsize |

With `gap_bits="auto"` the encoder writes the smaller of types 3 and 6 (type 3 on equal sizes).

**Checks.** Not a complex dtype; the positions block as in 2.5; no stored value is zero; the raw data
checks of 2.1; bool values are 0 or 1."""


def _applies(subject: Subject) -> bool:
    """At least a quarter zeros, and sharing impossible or costing a codebook entry per < 8 kept weights."""
    if not subject.codable or subject.nonzero.size > MAX_NONZERO_FRACTION * subject.bits.size:
        return False
    shared = shared_codebook(subject)  # sparse can win when the codebook is a large part of a shared section
    return shared is None or shared[0].size * 8 > subject.nonzero.size


def _offer_v1(subject: Subject, best: Offer | None) -> Offer | None:
    if not _applies(subject):
        return None
    bits, nonzero, size = subject.bits, subject.nonzero, subject.itemsize
    gaps, trailing = gaps_of(nonzero, bits.size)
    gap_bits = subject.gap_bits
    if gap_bits is None:
        gap_bits = choose_gap_bits(gaps, trailing, None, 8 * size, subject.plans)
    symbols, ends, total = build_entries(gaps, trailing, gap_bits)
    values = np.zeros(total, dtype=bits.dtype)
    values[ends] = bits[nonzero]
    flags, data = packed(subject, _dtypes.little_endian(values))
    parts = Joined(bytes([flags, gap_bits]), code_symbols(symbols, 1 << gap_bits, subject.plans), data)
    return Offer(TYPE_SPARSE, parts.size, parts.to_bytes)


def _offer_v2(subject: Subject, best: Offer | None) -> Offer | None:
    if subject.gap_bits is not None or not _applies(subject):  # a fixed field width asks for version 1 only
        return None
    bits, nonzero = subject.bits, subject.nonzero
    gaps, _ = gaps_of(nonzero, bits.size)
    flags, data = packed(subject, _dtypes.little_endian(bits[nonzero]))
    parts = Joined(bytes([flags]), varint(nonzero.size), code_escaped(gaps, cache=subject.plans), data)
    return Offer(TYPE_SPARSE2, parts.size, parts.to_bytes)


def _check_values(values: np.ndarray, frame: Frame) -> None:
    if frame.dtype == torch.bool and (values.view(np.uint8) > 1).any():
        raise damaged(f"tensor '{frame.name}': a bool tensor holds a value other than 0 or 1")


def _check_dtype(frame: Frame) -> None:
    if frame.dtype.is_complex:  # the encoder never stores complex tensors sparse (complex128 has no bit-pattern int)
        raise damaged(f"tensor '{frame.name}': a sparse section cannot hold {_dtypes.dtype_name(frame.dtype)}")


def _decode_v1(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, numel, size = frame.name, frame.numel, frame.itemsize
    _check_dtype(frame)
    flags = body.u8("sparse flags")
    gap_bits = read_gap_bits(body, name)
    gap_symbols, pos_info = decode_positions(body, numel, gap_bits, name, not frame.want_tensor)
    data = body.take(body.remaining(), "values")
    raw = unpack_raw(data, flags, gap_symbols.size * size, size, f"tensor '{name}' values")
    values = _dtypes.from_little_endian(raw, _dtypes.bits_dtype(frame.dtype))
    zero = values == 0
    if np.any(gap_symbols[zero] != (1 << gap_bits) - 1):
        raise damaged(f"tensor '{name}': a stored zero is not a filler entry")
    _check_values(values, frame)
    tensor = None
    if frame.want_tensor:
        tensor = build_tensor(numel, frame.dtype, frame.shape, gap_symbols, entries=values)
    info = SectionInfo(nonzeros=int(values.size - zero.sum()), gap_bits=gap_bits,
                       bytes_positions=pos_info["bytes"], bytes_raw=len(data),
                       raw_compression="zstd" if flags & FLAG_ZSTD else None, streams=[pos_info])
    return tensor, info


def _decode_v2(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, size = frame.name, frame.itemsize
    _check_dtype(frame)
    flags = body.u8("sparse flags")
    gaps, pos_info = decode_gaps(body, frame.numel, name, not frame.want_tensor)
    data = body.take(body.remaining(), "values")
    values = _dtypes.from_little_endian(unpack_raw(data, flags, gaps.size * size, size, f"tensor '{name}' values"),
                                        _dtypes.bits_dtype(frame.dtype))
    if (values == 0).any():
        raise damaged(f"tensor '{name}': a sparse section stores a zero")
    _check_values(values, frame)
    tensor = None
    if frame.want_tensor:
        tensor = build_tensor(frame.numel, frame.dtype, frame.shape, gaps, entries=values)
    info = SectionInfo(nonzeros=int(values.size), bytes_positions=pos_info["bytes"], bytes_raw=len(data),
                       raw_compression="zstd" if flags & FLAG_ZSTD else None, streams=[pos_info])
    return tensor, info


register(SectionType(TYPE_SPARSE, "sparse", "Type 3, sparse (pruned, not shared)", FORMAT_V1, _decode_v1, _offer_v1,
                     rank=30))
register(SectionType(TYPE_SPARSE2, "sparse", "Type 6, sparse version 2 (escape-coded gaps)", FORMAT_V2, _decode_v2,
                     _offer_v2, rank=40, version=2))
