"""Compression Lab: measure and explore neural-network compression trade-offs.

The public verb is `compress(handle, plan, data) -> Result` (see `complab.pipeline`).
"""

import functools
import hashlib
from pathlib import Path

from complab.errors import CompressionLabError

__all__ = ["CompressionLabError", "code_version"]
__version__ = "0.1.0"


@functools.cache
def code_version() -> str:
    """"VERSION+HASH": the package version and a sha256 (16 hex digits) of every .py file of the package (its
    relative path and bytes), computed once per process. What a content key (engine/keys.py) and a cached behaviour
    diff (analysis/behaviour_cache.py) record, so a result of other code is not reused."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"unreadable")
        digest.update(b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"
