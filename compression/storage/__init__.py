"""The compact model file format: pruned, weight-shared, entropy-coded tensors + JSON meta; no unpickling."""

from compression.storage.codec import (
    FORMAT_VERSION,
    MAGIC,
    decode_state,
    encode_state,
    inspect_bytes,
    inspect_header,
    read_file,
    write_file,
)
from compression.storage.entropy import decode_symbols, empirical_entropy_bytes, encode_symbols

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "decode_state",
    "decode_symbols",
    "empirical_entropy_bytes",
    "encode_state",
    "encode_symbols",
    "inspect_bytes",
    "inspect_header",
    "read_file",
    "write_file",
]
