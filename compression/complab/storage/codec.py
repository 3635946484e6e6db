"""The compact model file: state dict + JSON meta <-> bytes, atomic file I/O, and a per-tensor size report.

Layout (FORMAT.md has the byte-level spec):
    24-byte header: magic, format version, flags, CRC32 of the payload, payload length
    payload: varint meta length, meta as UTF-8 JSON, varint section count, one section per tensor

Reading never unpickles anything: the header and sections are parsed with struct and numpy, and
every length, count and shape is checked against what remains and against fixed caps before
anything is allocated, so damaged or foreign bytes raise FormatError and nothing else.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import torch

from complab.errors import FormatError
from complab.paths import write_bytes_atomic
from complab.storage._bits import ByteReader, damaged, shown, varint
from complab.storage.header import FORMAT_VERSION, HEADER, HEADER_BYTES, MAGIC, check_header, naming, read_model_file
from complab.storage.positions import GAP_BITS_MAX, GAP_BITS_MIN, PAPER_GAP_BITS
from complab.storage.sections import (
    MAX_DECODED_BYTES,
    MAX_EXPANSION,
    MIN_DECODE_ALLOWANCE,
    decode_section,
    encode_section,
)

MAX_META_BYTES = 1 << 30
MIN_SECTION_BYTES = 5  # type, length, name length, dtype, rank

__all__ = ["FORMAT_VERSION", "MAGIC", "decode_state", "encode_state", "inspect_bytes", "inspect_header",
           "read_file", "write_file"]


def _gap_bits_for(name: str, layer_kinds: dict[str, str] | None, gap_bits: int | str) -> int | None:
    """None = let the encoder choose the width per tensor; otherwise the fixed field width."""
    if gap_bits == "auto":
        return None
    if gap_bits == "paper":  # Han et al.: 8 bits for conv layers, 5 for fc (and anything else)
        kinds = layer_kinds or {}
        kind = kinds.get(name) or kinds.get(name.rsplit(".", 1)[0]) or "fc"
        return PAPER_GAP_BITS.get(kind, PAPER_GAP_BITS["fc"])
    if isinstance(gap_bits, int) and GAP_BITS_MIN <= gap_bits <= GAP_BITS_MAX:
        return gap_bits
    raise ValueError(f"gap_bits must be 'auto', 'paper' or an int in {GAP_BITS_MIN}..{GAP_BITS_MAX}, "
                     f"got {gap_bits!r}")


def encode_state(state: dict[str, torch.Tensor], meta: dict, layer_kinds: dict[str, str] | None = None, *,
                 gap_bits: int | str = "auto", structures: dict | None = None) -> bytes:
    """Encode an ordered state dict and a JSON-serialisable meta dict into the compact format.

    Each tensor gets the smallest of the encodings its section types offer ("shared", "sparse", "raw"). The
    relative-index field width of shared/sparse tensors is chosen per tensor for the fewest bytes
    (gap_bits="auto"), or is Han et al.'s 8 bits for conv / 5 for fc from layer_kinds
    (gap_bits="paper"), or a fixed int in 2..12. Decoding gives back bit-identical tensors.
    structures: tensor name -> vq_section.Quantized for vector-quantized weights (stored as codebooks +
    codes) or int_section.IntWeights for integer-quantized ones (levels + scales), each used only when it
    decodes to exactly the tensor.
    """
    if not isinstance(meta, dict):
        raise FormatError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FormatError(f"meta is not JSON-serialisable ({exc}): store only str, numbers, lists and dicts"
                          ) from None
    parts = [varint(len(meta_bytes)), meta_bytes, varint(len(state))]
    for name, tensor in state.items():
        if not isinstance(name, str):
            raise FormatError(f"state dict key {name!r} is not a string")
        parts.append(encode_section(name, tensor, _gap_bits_for(name, layer_kinds, gap_bits),
                                    (structures or {}).get(name)))
    payload = b"".join(parts)
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, zlib.crc32(payload), len(payload)) + payload


def _open(data: bytes | bytearray | memoryview) -> tuple[ByteReader, dict, int]:
    """Check the header and CRC, read meta; returns (reader at the first section, meta, section count)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(f"expected the file's bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    check_header(view)
    reader = ByteReader(view, HEADER_BYTES, context="header")
    meta_len = reader.varint("meta length", min(MAX_META_BYTES, reader.remaining()))
    try:
        meta = json.loads(bytes(reader.take(meta_len, "meta")).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise damaged("its meta is not valid UTF-8 JSON") from None
    if not isinstance(meta, dict):
        raise damaged(f"its meta is a JSON {type(meta).__name__}, not an object")
    count = reader.varint("section count", reader.remaining() // MIN_SECTION_BYTES)
    return reader, meta, count


def decode_allowance(file_bytes: int, max_decoded_bytes: int | None = None) -> int:
    """Most bytes of tensors a file of file_bytes may decode to (see MAX_EXPANSION); an explicit limit wins."""
    if max_decoded_bytes is not None:
        return int(max_decoded_bytes)
    return min(MAX_DECODED_BYTES, MIN_DECODE_ALLOWANCE + MAX_EXPANSION * int(file_bytes))


def decode_state(data: bytes | bytearray | memoryview, *, max_decoded_bytes: int | None = None,
                 structures: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, state) from bytes written by encode_state; tensors come back bit-exactly, in order.

    Raises FormatError for anything wrong with the bytes, and for files whose tensors need more memory
    than max_decoded_bytes (default: decode_allowance of the file's size, at most 8 GiB).
    structures: a dict to fill with tensor name -> the structure a section stored (int sections:
    int_section.IntWeights, the levels and scales); left alone for the other sections.
    """
    reader, meta, count = _open(data)
    budget = [decode_allowance(len(reader.data), max_decoded_bytes)]
    state: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name, tensor, _, info = decode_section(reader, budget=budget)
        if name in state:
            raise damaged(f"tensor '{shown(name)}' appears twice")
        state[name] = tensor
        if structures is not None and info.structure is not None:
            structures[name] = info.structure
    if reader.remaining():
        raise damaged(f"{reader.remaining()} bytes follow the last section")
    return meta, state


def inspect_header(data: bytes | bytearray | memoryview) -> dict:
    """{format_version, header_bytes (fixed header + meta + section count), meta_bytes, sections, meta}."""
    reader, meta, count = _open(data)
    version = HEADER.unpack_from(memoryview(data).cast("B"), 0)[1]
    return {"format_version": version, "header_bytes": reader.pos, "meta_bytes": reader.pos - HEADER_BYTES,
            "sections": count, "meta": meta}


def inspect_bytes(data: bytes | bytearray | memoryview, *,
                  max_decoded_bytes: int | None = None) -> list[dict]:
    """One row per tensor (after a first row named "<header>"); the rows' bytes_total sum to the file size.

    Row keys: name, shape, dtype, encoding, numel, nonzeros, n_clusters, gap_bits, bytes_positions,
    bytes_indices, bytes_codebook, bytes_raw, bytes_total, raw_compression, streams (a list of
    {stream: "positions"|"indices"|"codes", symbols, bytes (incl. its table), entropy_bytes}), quantizer,
    layout and formula_bits (vq and int sections, else None), section_version (2 for the escape-coded shared and
    sparse sections, else 1) and bits_per_weight (section bits / numel).
    """
    reader, _, count = _open(data)
    budget = [decode_allowance(len(reader.data), max_decoded_bytes)]
    rows = [{"name": "<header>", "shape": None, "dtype": None, "encoding": "header", "numel": 0,
             "nonzeros": None, "n_clusters": None, "gap_bits": None, "bytes_positions": 0, "bytes_indices": 0,
             "bytes_codebook": 0, "bytes_raw": 0, "bytes_total": reader.pos, "raw_compression": None,
             "streams": [], "quantizer": None, "layout": None, "formula_bits": None, "section_version": None,
             "bits_per_weight": None}]
    for _ in range(count):
        start = reader.pos
        name, _, described, info = decode_section(reader, want_tensor=False, budget=budget)
        rows.append({"name": name, **described, "encoding": info.encoding, "nonzeros": info.nonzeros,
                     "n_clusters": info.n_clusters, "gap_bits": info.gap_bits,
                     "bytes_positions": info.bytes_positions, "bytes_indices": info.bytes_indices,
                     "bytes_codebook": info.bytes_codebook, "bytes_raw": info.bytes_raw,
                     "bytes_total": reader.pos - start, "raw_compression": info.raw_compression,
                     "streams": info.streams, "quantizer": info.quantizer, "layout": info.layout,
                     "formula_bits": info.formula_bits, "section_version": info.section_version,
                     "bits_per_weight": 8 * (reader.pos - start) / described["numel"] if described["numel"] else None})
    if reader.remaining():
        raise damaged(f"{reader.remaining()} bytes follow the last section")
    return rows


def write_file(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict,
               layer_kinds: dict[str, str] | None = None, *, gap_bits: int | str = "auto",
               structures: dict | None = None) -> int:
    """Encode and write atomically (temporary name in the same folder, then os.replace); returns the size."""
    path = Path(path)
    data = encode_state(state, meta, layer_kinds, gap_bits=gap_bits, structures=structures)
    return write_bytes_atomic(path, data)  # whole or not at all; a full disk names itself (OutputError)


def read_file(path: str | os.PathLike, *, max_decoded_bytes: int | None = None,
              structures: dict | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, state) from a file written by write_file (see decode_state; `structures` is filled as there)."""
    data = read_model_file(path)
    try:
        return decode_state(data, max_decoded_bytes=max_decoded_bytes, structures=structures)
    except FormatError as exc:
        raise naming(path, exc) from None
