"""The compact file's fixed 24-byte header, checked without torch or numpy.

A file that is not ours (wrong magic, truncated, damaged CRC) is refused here, before anything heavy is
imported: `complab export GARBAGE` costs the interpreter, not torch's ~650 MB (issue 24).
"""

from __future__ import annotations

import os
import struct
import zlib

from complab.errors import FormatError

MAGIC = b"\x89CLAB\r\n\x1a"  # PNG-style: a high-bit byte, CR LF and ^Z catch text-mode transfers
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIQ")  # magic, version, flags, crc32(payload), payload length
HEADER_BYTES = HEADER.size  # 24


def damaged(problem: str) -> FormatError:
    """A FormatError whose message names the problem and the fix."""
    return FormatError(f"{problem}: the file is damaged or was not written by Compression Lab; "
                       "re-export it from the run folder")


def shown(text: str, limit: int = 80) -> str:
    """text as a message may show it: control and other unprintable characters escaped, cut to `limit`."""
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_header(view: memoryview) -> None:
    """The magic, format version, flags, payload length and CRC32 of a whole file's bytes (FormatError)."""
    if bytes(view[:8]) != MAGIC:
        if len(view) < 8 and len(view) and MAGIC.startswith(bytes(view)):
            raise damaged(f"file is truncated at byte {len(view)} (the header needs {HEADER_BYTES} bytes)")
        raise FormatError("not a Compression Lab model file (its first bytes are not the format's magic): "
                          "pass a file written by `complab run` or storage.write_file")
    if len(view) < HEADER_BYTES:
        raise damaged(f"file is truncated at byte {len(view)} (the header needs {HEADER_BYTES} bytes)")
    _, version, flags, crc, payload_len = HEADER.unpack_from(view, 0)
    if version > FORMAT_VERSION:
        raise FormatError(f"the file uses format version {version}, this reader knows up to {FORMAT_VERSION}: "
                          "it was written by a newer Compression Lab; upgrade complab to read it")
    if version == 0 or flags != 0:
        raise damaged(f"header holds format version {version} and flags {flags:#x}")
    if payload_len != len(view) - HEADER_BYTES:
        if payload_len > len(view) - HEADER_BYTES:
            raise damaged(f"file is truncated at byte {len(view)} "
                          f"(the header says it has {HEADER_BYTES + payload_len})")
        raise damaged(f"file has {len(view) - HEADER_BYTES - payload_len} extra bytes after its payload")
    if zlib.crc32(view[HEADER_BYTES:]) != crc:
        raise damaged("the file's CRC32 does not match its contents")


def read_model_file(path: str | os.PathLike) -> bytes:
    """A model file's bytes; FormatError naming the path and the fix when it cannot be read.

    The one place these messages live: check_file_header (torch-free) and codec.read_file both read here."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FormatError(f"model file {shown(str(path), 200)} does not exist: check the path") from None
    except IsADirectoryError:
        raise FormatError(f"model file {shown(str(path), 200)} is a folder: give the .clab file in it") from None
    except OSError as exc:
        raise FormatError(f"cannot read model file {shown(str(path), 200)} ({exc.strerror}): check the path and "
                          "permissions") from None


def naming(path: str | os.PathLike, exc: FormatError) -> FormatError:
    """exc's message prefixed with the file it is about."""
    return FormatError(f"{shown(str(path), 200)}: {exc}")


def check_file_header(path: str | os.PathLike) -> None:
    """A compact file's header and CRC checked from disk, torch-free (FormatError naming the path otherwise).

    Front ends call it before importing the decoder, so a foreign file costs no more than reading it."""
    data = read_model_file(path)
    try:
        check_header(memoryview(data))
    except FormatError as exc:
        raise naming(path, exc) from None
