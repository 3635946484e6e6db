"""Compression Lab: measure and explore neural-network compression trade-offs.

The public verb is `compress(handle, plan, data) -> Result` (see `complab.pipeline`).
"""

from complab.errors import CompressionLabError

__all__ = ["CompressionLabError"]
__version__ = "0.1.0"
