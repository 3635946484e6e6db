"""Where the compact format's section types register: type id, encoder, decoder and FORMAT.md entry together.

A section type is one module named `*_section.py` in this package (sections.py imports every such module,
so adding the module is all a new type needs): it calls `register(SectionType(...))` once per type id with

- `decode(body, frame)`: the tensor (or None when frame.want_tensor is false) and a SectionInfo, from the
  encoding-specific bytes of a section (`body` is a ByteReader over exactly those bytes);
- `offer(subject, best)`: an Offer for this tensor (its exact encoding-specific size and a function that
  builds those bytes), or None when the type does not apply; `best` is the best offer so far;
- `title` and `doc`: the FORMAT.md subsection "2.<type id>" (tests/test_section_registry.py checks that
  FORMAT.md holds exactly these; `python -m complab.storage.sections` rewrites them).

The encoder asks the registered types in `rank` order and keeps the smallest offer (on a tie, the lower
`tie_rank`: raw, the plainest, wins a tie; otherwise the type asked first);
an offer marked `final` ends the search (a vq layout or integer levels that decode to exactly the tensor). Only the
winner's bytes are built.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from complab.storage import _dtypes
from complab.storage.entropy import PlanCache

MIN_CODED_NUMEL = 64  # smaller tensors are stored raw: a table would cost more than it saves


@dataclass
class SectionInfo:
    """What inspect_bytes reports for one section (sizes in bytes)."""

    encoding: str = ""  # set by sections.decode_section from the registration
    nonzeros: int | None = None
    n_clusters: int | None = None
    gap_bits: int | None = None
    bytes_positions: int = 0
    bytes_indices: int = 0
    bytes_codebook: int = 0
    bytes_raw: int = 0
    raw_compression: str | None = None
    streams: list[dict] = field(default_factory=list)
    quantizer: str | None = None  # vq: binary, kmeans, pq or rq; int: "int"
    layout: dict | None = None  # vq: the quantizer's parameters; int: {"bits", "scales"}
    # vq: Gong et al.'s bits for this layer (codes log2 k + 32-bit codebooks); int: numel * bits + 32 * scales
    formula_bits: int | None = None
    section_version: int = 1  # the registration's version (2: escape-coded shared and sparse, types 5 and 6)
    # what the tensor was decoded from when the caller wants it back (int: an IntWeights); not an inspect row key
    structure: Any = None


@dataclass
class Frame:
    """What every section's common head says about its tensor, handed to the type's decoder."""

    name: str  # as messages show it (escaped, cut)
    dtype: torch.dtype
    shape: tuple[int, ...]
    numel: int
    itemsize: int
    want_tensor: bool = True
    budget: list[int] | None = None  # the file's remaining decode allowance (sections.decode_section)


@dataclass
class Offer:
    """One way to store a tensor: its exact encoding-specific size, and the bytes on demand."""

    type_id: int
    size: int
    build: Callable[[], bytes]
    final: bool = False  # take it without asking the other types (a structure the caller asked for)


class Subject:
    """The tensor being encoded, with what several section types need computed once (lazily).

    gap_bits: None (each type picks its layout by size) or the fixed relative-index width the caller asked
    for (version-1 shared and sparse only). structure: what the tensor was built from, if anything (a vq layout,
    integer levels and scales), handed over by the caller.
    """

    def __init__(self, name: str, tensor: torch.Tensor, gap_bits: int | None = None, structure: Any = None) -> None:
        self.name = name
        self.tensor = tensor
        self.dtype = tensor.dtype
        self.itemsize = _dtypes.itemsize(tensor.dtype)
        self.gap_bits = gap_bits
        self.structure = structure
        self.plans = PlanCache()  # entropy-coder tables planned once per histogram, whichever type asks
        self._memo: dict[str, Any] = {}

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """compute() once per tensor (e.g. the shared codebook that the sparse type also looks at)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def raw(self) -> bytes:
        return self.memo("raw", lambda: _dtypes.to_bytes(self.tensor))

    @property
    def bits(self) -> np.ndarray:
        """Flattened element bit patterns (signed ints of the element size)."""
        return self.memo("bits", lambda: _dtypes.to_bits(self.tensor))

    @property
    def nonzero(self) -> np.ndarray:
        """Positions of the non-zero bit patterns."""
        return self.memo("nonzero", lambda: np.flatnonzero(self.bits))

    @property
    def codable(self) -> bool:
        """Large enough for coded (shared, sparse) sections, and of a dtype they store."""
        dtype = self.dtype
        return self.tensor.numel() >= MIN_CODED_NUMEL and dtype != torch.bool and not dtype.is_complex


@dataclass(frozen=True)
class SectionType:
    """One registered section type (see the module docstring)."""

    type_id: int
    encoding: str  # inspect's "encoding": raw, shared, sparse, vq
    title: str  # FORMAT.md heading after "2.<type id> "
    doc: str  # FORMAT.md subsection body
    decode: Callable[[Any, Frame], tuple[torch.Tensor | None, SectionInfo]]
    offer: Callable[[Subject, Offer | None], Offer | None] | None = None
    rank: int = 50  # the encoder asks types in rank order
    tie_rank: int | None = None  # of offers of equal size the lowest tie_rank (default: rank) wins
    version: int = 1  # inspect's section_version

    def ties(self) -> int:
        return self.rank if self.tie_rank is None else self.tie_rank


TYPES: dict[int, SectionType] = {}


def register(section: SectionType) -> SectionType:
    """Add a section type; type ids are part of the file format (never renumber, only append)."""
    if not 1 <= section.type_id <= 255:
        raise ValueError(f"section type id must be 1..255, got {section.type_id}")
    known = TYPES.get(section.type_id)
    if known is not None and known is not section and (known.decode.__module__ != section.decode.__module__):
        raise ValueError(f"section type {section.type_id} is registered twice ({known.encoding}, {section.encoding})")
    TYPES[section.type_id] = section
    return section


def by_rank() -> list[SectionType]:
    """The registered types in the order the encoder asks them."""
    return sorted(TYPES.values(), key=lambda section: (section.rank, section.type_id))
