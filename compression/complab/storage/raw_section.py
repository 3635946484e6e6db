"""Section type 1, raw: the element bytes as they are, or zstd-compressed (byte-shuffled where that helps).

The fallback for every tensor; pack_raw/unpack_raw also store the values of the sparse sections.
"""

from __future__ import annotations

import numpy as np
import torch

from complab.errors import FormatError
from complab.storage import _dtypes
from complab.storage._bits import ByteReader, damaged
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register

# zstandard is a hard dependency (pyproject.toml). The guard only matters where the package is missing anyway
# (a copy of this module used as a standalone reader): raw sections are then written uncompressed and a
# zstd-compressed section is refused with the install hint, as FORMAT.md section 2.1 describes
try:
    import zstandard
except ImportError:  # pragma: no cover - exercised only where zstandard is missing
    zstandard = None

TYPE_RAW = 1
FLAG_ZSTD, FLAG_SHUFFLE = 1, 2  # raw data flags (raw and sparse sections)
# A zstd block decodes to at most 128 KiB (Block_Maximum_Size) and costs at least 4 bytes (an RLE block:
# 3-byte header + the byte), so a frame of c bytes honestly holds at most ZSTD_MAX_RATIO * c bytes.
ZSTD_MAX_RATIO = (128 << 10) // 4
ZSTD_SMALL_BYTES = 1 << 16  # up to this size zstd runs at level 19; above, level 3 (19 is ~60x slower there
# and gains under 0.1% on float data)

FORMAT = """\
| field | |
|---|---|
| u8 `flags` | bit 0: zstd; bit 1: byte-shuffled (only with zstd); other bits 0 |
| data | the rest of the body |

Without zstd, `data` is the numel × itemsize raw little-endian element bytes. With zstd, `data`
is one zstd frame whose header declares exactly numel × itemsize bytes of content; the bytes it
decompresses to are the raw bytes, or, with the shuffle flag, their byte planes (all first bytes
of the elements, then all second bytes, …), which zstd compresses better for floats. The encoder
uses zstd (level 19 up to 64 KiB, level 3 above) only when the `zstandard` package is installed
and the frame is smaller; a reader without `zstandard` refuses such a section with a message to
install it. The encoder does not try zstd when a shared or sparse encoding is already under 1/16
of the raw bytes (it never gets close there), and keeps raw when it is no larger than the best
coded encoding.

**Checks.** Data length = numel × itemsize, or the zstd frame's declared content size = numel ×
itemsize and ≤ 32768 × the frame's bytes (a zstd block decodes to at most 128 KiB and costs at
least 4 bytes, an RLE block) before decompressing, `max_output_size` = that size, and the output
length after; bool bytes are 0 or 1."""


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


def packed(subject: Subject, raw: bytes) -> tuple[int, bytes]:
    """pack_raw of these bytes, computed once per tensor (sparse v1 and v2 store the same values without fillers)."""
    return subject.memo(("pack_raw", raw), lambda: pack_raw(raw, subject.itemsize))


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


def _offer(subject: Subject, best: Offer | None) -> Offer | None:
    raw = subject.raw
    if best is not None and best.size * 16 < len(raw):
        return None  # a coded encoding under 1/16 of the raw bytes: zstd never gets close
    flags, data = packed(subject, raw)
    return Offer(TYPE_RAW, 1 + len(data), lambda: bytes([flags]) + data)


def _decode(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    name, dtype, shape, size = frame.name, frame.dtype, frame.shape, frame.itemsize
    flags = body.u8("raw flags")
    data = body.take(body.remaining(), "raw data")
    raw = unpack_raw(data, flags, frame.numel * size, size, f"tensor '{name}'")
    tensor = _dtypes.from_bytes(raw, dtype, shape, name) if frame.want_tensor else None
    nonzeros = None
    if not frame.want_tensor:  # inspect: check bools, count elements with any non-zero byte (in blocks: no big copy)
        if dtype == torch.bool:
            _dtypes.from_bytes(raw, dtype, shape, name)
        nonzeros = 0
        elements = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size) if raw else np.zeros((0, size), np.uint8)
        for start in range(0, len(elements), 1 << 20):
            nonzeros += int(elements[start:start + (1 << 20)].any(axis=1).sum())
    info = SectionInfo(nonzeros=nonzeros, bytes_raw=len(data), raw_compression="zstd" if flags & FLAG_ZSTD else None)
    return tensor, info


register(SectionType(TYPE_RAW, "raw", "Type 1, raw", FORMAT, _decode, _offer, rank=100, tie_rank=-1))
