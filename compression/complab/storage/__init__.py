"""The compact model file format: pruned, weight-shared, entropy-coded tensors + JSON meta; no unpickling.

The names below are loaded on first use (PEP 562), so `complab.storage.header` (the torch-free header
check) can be imported without torch: a foreign file is refused before the decoder is imported.
"""

from __future__ import annotations

import importlib

_FROM = {
    "FORMAT_VERSION": "header", "MAGIC": "header", "check_file_header": "header",
    "decode_state": "codec", "encode_state": "codec", "inspect_bytes": "codec", "inspect_header": "codec",
    "read_file": "codec", "write_file": "codec",
    "decode_symbols": "entropy", "empirical_entropy_bytes": "entropy", "encode_symbols": "entropy",
}

__all__ = sorted(_FROM)


def __getattr__(name: str):
    if name in _FROM:
        return getattr(importlib.import_module(f"complab.storage.{_FROM[name]}"), name)
    raise AttributeError(f"module 'complab.storage' has no attribute {name!r}")
