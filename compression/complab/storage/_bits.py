"""Checked byte and bit readers/writers for the compact format: every read is bounds-checked (FormatError)."""

from __future__ import annotations

import struct

import numpy as np

from complab.errors import FormatError
from complab.storage.header import damaged, shown  # noqa: F401 - re-exported to the section readers

MAX_VARINT_BYTES = 10  # LEB128 of a value < 2**64
MAX_UNARY = 40  # longest Exp-Golomb prefix we accept (values < 2**40)


def varint(value: int) -> bytes:
    """Unsigned LEB128 (7 bits per byte, low bits first, high bit = more bytes follow)."""
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ByteReader:
    """A cursor over a bytes-like object; `context` names what is being read, for error messages."""

    def __init__(self, data: bytes | memoryview, start: int = 0, end: int | None = None, base: int = 0,
                 context: str = "file") -> None:
        self.data = memoryview(data).cast("B")
        self.pos = start
        self.end = len(self.data) if end is None else end
        if not 0 <= self.pos <= self.end <= len(self.data):
            raise damaged(f"{context}: bytes {start}..{self.end} lie outside the {len(self.data)} there are")
        self.base = base  # added to positions in messages, so they are file offsets
        self.context = context

    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, count: int, what: str) -> None:
        if count < 0 or count > self.end - self.pos:
            raise damaged(f"file is truncated at byte {self.base + self.pos} ({self.context}: {what} needs "
                          f"{count} bytes, {self.end - self.pos} left)")

    def take(self, count: int, what: str) -> memoryview:
        self.need(count, what)
        view = self.data[self.pos:self.pos + count]
        self.pos += count
        return view

    def u8(self, what: str) -> int:
        pos = self.pos
        if pos >= self.end:
            self.need(1, what)
        self.pos = pos + 1
        return self.data[pos]

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        self.need(size, what)
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def varint(self, what: str, cap: int) -> int:
        """Read a LEB128 value and check it is <= cap."""
        start = self.pos
        if start < self.end and self.data[start] < 0x80:  # fast path: one-byte varint
            value = self.data[start]
            if value > cap:
                raise damaged(f"{self.context}: {what} is {value} at byte {self.base + start}, "
                              f"more than the limit {cap}")
            self.pos = start + 1
            return value
        value = 0
        for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > cap:
                    raise damaged(f"{self.context}: {what} is {value} at byte {self.base + start}, "
                                  f"more than the limit {cap}")
                return value
        raise damaged(f"{self.context}: {what} at byte {self.base + start} is not a valid varint")


class BitWriter:
    """Bits packed LSB-first into bytes (bit i of the stream is bit i % 8 of byte i // 8)."""

    def __init__(self) -> None:
        self.value = 0
        self.nbits = 0

    def write(self, value: int, nbits: int) -> None:
        if nbits:
            self.value |= (value & ((1 << nbits) - 1)) << self.nbits
            self.nbits += nbits

    def write_eg(self, value: int, order: int = 0) -> None:
        """Exp-Golomb code of order `order`: (prefix zeros)(1)(suffix); 2*floor(log2(v/2^k+1))+1+k bits."""
        shifted = (value >> order) + 1
        length = shifted.bit_length() - 1
        self.write(0, length)
        self.write(1, 1)
        self.write(shifted - (1 << length), length)
        self.write(value, order)

    def write_array(self, values: np.ndarray, nbits: int) -> None:
        """Append each value of `values` in `nbits` bits (vectorised)."""
        if nbits == 0 or len(values) == 0:
            return
        bits = ((values.astype(np.uint64)[:, None] >> np.arange(nbits, dtype=np.uint64)) & np.uint64(1))
        packed = np.packbits(bits.astype(np.uint8).ravel(), bitorder="little")
        self.write(int.from_bytes(packed.tobytes(), "little"), nbits * len(values))

    def to_bytes(self) -> bytes:
        return self.value.to_bytes((self.nbits + 7) // 8, "little")


def eg_lengths(values: np.ndarray, order: int = 0) -> np.ndarray:
    """Bit length of the Exp-Golomb code of each value (vectorised), as written by BitWriter.write_eg."""
    shifted = (np.asarray(values, dtype=np.int64) >> order) + 1
    return 2 * np.frexp(shifted)[1].astype(np.int64) - 1 + order  # frexp exponent = floor(log2) + 1


class BitReader:
    """Reads what BitWriter wrote from bytes[start:end]; every read checks the bits are there.

    Bits are buffered in a Python int filled 24 bytes at a time, so a read costs a few int operations.
    """

    def __init__(self, data: memoryview, start: int, end: int, what: str) -> None:
        self.data = data
        self.start = start
        self.end = end
        self.what = what
        self._seek(0)

    def _seek(self, bit: int) -> None:
        self.consumed = bit  # bits read so far
        self.next_byte = self.start + (bit >> 3)
        self.buffer = 0
        self.buffered = 0
        if bit & 7:
            self._fill(8)
            self.buffer >>= bit & 7
            self.buffered -= bit & 7

    def _fill(self, nbits: int) -> None:
        while self.buffered < nbits and self.next_byte < self.end:
            take = min(24, self.end - self.next_byte)
            chunk = int.from_bytes(self.data[self.next_byte:self.next_byte + take], "little")
            self.buffer |= chunk << self.buffered
            self.buffered += 8 * take
            self.next_byte += take
        if self.buffered < nbits:
            raise damaged(f"{self.what} is truncated (needs {nbits} more bits, {self.buffered} left)")

    def read(self, nbits: int) -> int:
        if self.buffered < nbits:
            self._fill(nbits)
        value = self.buffer & ((1 << nbits) - 1)
        self.buffer >>= nbits
        self.buffered -= nbits
        self.consumed += nbits
        return value

    def read_eg(self, order: int = 0) -> int:
        if self.buffered < 2 * MAX_UNARY + 8:
            try:
                self._fill(2 * MAX_UNARY + 8)
            except FormatError:
                pass  # near the end: the checks below decide
        window = self.buffer & ((1 << (MAX_UNARY + 1)) - 1)
        if window == 0:
            if self.buffered <= MAX_UNARY:
                raise damaged(f"{self.what} is truncated inside an Exp-Golomb code")
            raise damaged(f"{self.what} holds a bad Exp-Golomb code (more than {MAX_UNARY} leading zeros)")
        zeros = (window & -window).bit_length() - 1
        length = 2 * zeros + 1 + order
        if length > self.buffered:
            raise damaged(f"{self.what} is truncated inside an Exp-Golomb code")
        value = ((self.buffer >> (zeros + 1)) & ((1 << zeros) - 1)) | (1 << zeros)
        low = (self.buffer >> (2 * zeros + 1)) & ((1 << order) - 1)
        self.buffer >>= length
        self.buffered -= length
        self.consumed += length
        return ((value - 1) << order) | low

    def read_eg_many(self, count: int, order: int) -> np.ndarray:
        """`count` Exp-Golomb codes of one order (read_eg's loop with local variables: fast tables)."""
        out: list[int] = []
        append = out.append
        low_mask = (1 << order) - 1
        window_mask = (1 << (MAX_UNARY + 1)) - 1
        refill = 2 * MAX_UNARY + 8
        buffer, buffered, consumed = self.buffer, self.buffered, self.consumed
        for _ in range(count):
            if buffered < refill:
                self.buffer, self.buffered = buffer, buffered
                try:
                    self._fill(refill)
                except FormatError:
                    pass  # near the end: the checks below decide
                buffer, buffered = self.buffer, self.buffered
            window = buffer & window_mask
            if not window:
                raise damaged(f"{self.what} holds a bad or truncated Exp-Golomb code")
            zeros = (window & -window).bit_length() - 1
            length = 2 * zeros + 1 + order
            if length > buffered:
                raise damaged(f"{self.what} is truncated inside an Exp-Golomb code")
            value = ((buffer >> (zeros + 1)) & ((1 << zeros) - 1)) + (1 << zeros) - 1
            append((value << order) | ((buffer >> (2 * zeros + 1)) & low_mask))
            buffer >>= length
            buffered -= length
            consumed += length
        self.buffer, self.buffered, self.consumed = buffer, buffered, consumed
        return np.array(out, dtype=np.int64)

    def read_array(self, count: int, nbits: int) -> np.ndarray:
        """Read `count` values of `nbits` bits each (vectorised); returns int64."""
        if nbits == 0 or count == 0:
            return np.zeros(count, dtype=np.int64)
        bit = self.consumed
        if bit + count * nbits > 8 * (self.end - self.start):
            raise damaged(f"{self.what} is truncated (needs {count * nbits} more bits)")
        first = self.start + (bit >> 3)
        last = self.start + ((bit + count * nbits + 7) >> 3)
        raw = np.frombuffer(self.data[first:last], dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")[(bit & 7):(bit & 7) + count * nbits]
        weights = (np.int64(1) << np.arange(nbits, dtype=np.int64))
        self._seek(bit + count * nbits)
        return bits.reshape(count, nbits).astype(np.int64) @ weights

    def byte_end(self) -> int:
        """Absolute byte index just after the last bit read (the bit stream is padded to a byte)."""
        return self.start + (self.consumed + 7) // 8
