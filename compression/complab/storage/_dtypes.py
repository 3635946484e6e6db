"""Tensor dtypes in the compact format: one-byte codes and exact conversions to raw bytes and bit patterns."""

from __future__ import annotations

import numpy as np
import torch

from complab.errors import FormatError
from complab.storage._bits import damaged

# code -> torch dtype. Codes are part of the file format: never renumber, only append.
_CODES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "float16", 4: "bfloat16",
    5: "int8", 6: "uint8", 7: "int16", 8: "int32", 9: "int64", 10: "bool",
    11: "complex64", 12: "complex128", 13: "float8_e4m3fn", 14: "float8_e5m2",
    15: "uint16", 16: "uint32", 17: "uint64",
}
DTYPE_OF_CODE: dict[int, torch.dtype] = {code: getattr(torch, name) for code, name in _CODES.items()
                                         if hasattr(torch, name)}
CODE_OF_DTYPE: dict[torch.dtype, int] = {dtype: code for code, dtype in DTYPE_OF_CODE.items()}
FLOATING = {torch.float32, torch.float64, torch.float16, torch.bfloat16,
            *(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))}
# Signed integer containers for bit patterns (torch supports all of them in from_numpy).
_BITS_OF_SIZE = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_TORCH_BITS_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def code_of(dtype: torch.dtype, name: str) -> int:
    if dtype not in CODE_OF_DTYPE:
        raise FormatError(f"tensor '{name}' has dtype {dtype}, which the compact format cannot store: "
                          f"convert it to one of {sorted(dtype_name(d) for d in CODE_OF_DTYPE)}")
    return CODE_OF_DTYPE[dtype]


def dtype_of(code: int, name: str) -> torch.dtype:
    if code not in DTYPE_OF_CODE:
        raise FormatError(f"tensor '{name}' has dtype code {code}, which this reader does not know: the file "
                          "was written by a newer Compression Lab (upgrade) or it is damaged")
    return DTYPE_OF_CODE[code]


_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in CODE_OF_DTYPE}
_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def itemsize(dtype: torch.dtype) -> int:
    return _ITEMSIZE[dtype] if dtype in _ITEMSIZE else torch.empty((), dtype=dtype).element_size()


def to_bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's elements in row-major order as little-endian raw bytes."""
    flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def to_bits(tensor: torch.Tensor) -> np.ndarray:
    """Flattened bit patterns as signed integers of the element size (exact, including -0.0 and NaNs)."""
    flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    size = flat.element_size()
    if flat.numel() == 0:
        return np.zeros(0, dtype=_BITS_OF_SIZE[size])
    return flat.view(_TORCH_BITS_OF_SIZE[size]).numpy()


def bits_dtype(dtype: torch.dtype) -> type:
    return _BITS_OF_SIZE[itemsize(dtype)]


def bits_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return _TORCH_BITS_OF_SIZE[itemsize(dtype)]


def float_values(bits: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The float64 values of floating bit patterns (exact for every floating dtype we store)."""
    if bits.size == 0:
        return np.zeros(0, dtype=np.float64)
    if dtype in _NUMPY_FLOAT:
        with np.errstate(invalid="ignore"):  # NaN payloads in damaged codebooks; the caller rejects them
            return bits.view(_NUMPY_FLOAT[dtype]).astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(bits)).view(dtype).to(torch.float64).numpy()


def from_bytes(raw: bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """A tensor from its raw little-endian bytes (the caller checked the length); a bytearray is used in place."""
    if len(raw) == 0:
        return torch.empty(shape, dtype=dtype)
    array = np.frombuffer(raw if isinstance(raw, bytearray) else bytearray(raw), dtype=np.uint8)
    if dtype == torch.bool and int(array.max()) > 1:
        raise damaged(f"tensor '{name}': a bool tensor holds a byte other than 0 or 1")
    return torch.from_numpy(array).view(dtype).reshape(shape)


def little_endian(array: np.ndarray) -> bytes:
    """An array's elements as little-endian bytes (codebooks and values of the coded sections)."""
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def from_little_endian(data: bytes | memoryview, bits_type: type) -> np.ndarray:
    """Inverse of little_endian into a native array of bits_type."""
    return np.frombuffer(data, dtype=np.dtype(bits_type).newbyteorder("<")).astype(bits_type)
