"""One tensor's section of the compact format: the common head (name, dtype, shape), and the registered types.

Every section starts with its type id and length, then the tensor's name, dtype and shape; what follows
is the type's own encoding. The types live in the `*_section.py` modules of this package, each of which
registers its type ids (registry.py) with an encoder, a decoder and its FORMAT.md entry; this module
imports them all, so a new section type is one new module. The encoder asks every type for an offer
(its exact size) and builds only the winner's bytes; the decoder looks the type id up in the registry.

`python -m complab.storage.sections` rewrites FORMAT.md's section-type list and subsections 2.1.. from the
registrations (`--check` only compares).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import torch

from complab.errors import FormatError
from complab.storage import _dtypes
from complab.storage._bits import ByteReader, damaged, shown, varint
from complab.storage.raw_section import pack_raw  # noqa: F401 - analysis/estimate.py prices zstd with it
from complab.storage.registry import TYPES, Frame, Offer, SectionInfo, Subject, by_rank

MAX_RANK = 8
MAX_NUMEL = 2**31
MAX_NAME_BYTES = 65535
# A few bytes can describe a huge tensor (a constant or all-zero one: an entropy-coded stream of one
# symbol costs no payload bits at all), so no per-stream ratio bounds what a file decodes to. Decoding
# therefore refuses files whose tensors add up to more than an allowance set by the file's own size:
# MIN_DECODE_ALLOWANCE for any file, plus MAX_EXPANSION bytes of tensors per byte of file, and never more
# than MAX_DECODED_BYTES. MAX_EXPANSION is what our encoder can honestly reach on a whole model: a float32
# layer pruned to the plan's largest sparsity (0.999) and shared costs >= ~12.4 bits per non-zero (the
# gap stream of a geometric gap of mean 1000 has ~11.4 bits of entropy, the index >= 1 bit), i.e. a
# ratio of ~2,600; 4,096 leaves headroom. A caller that really loads huge constant tensors passes an
# explicit max_decoded_bytes (which then replaces the allowance).
MAX_DECODED_BYTES = 2**33  # 8 GiB: the largest torchvision classifiers (ViT-H/14, RegNet-Y-128GF) need 2.5 GB
MIN_DECODE_ALLOWANCE = 64 * 2**20
MAX_EXPANSION = 4096

__all__ = ["MAX_DECODED_BYTES", "MAX_EXPANSION", "MIN_DECODE_ALLOWANCE", "SectionInfo", "choose_offer",
           "decode_section", "encode_section", "render_format"]


def _load_types() -> None:
    """Import every `*_section.py` module of this package: each registers its section types."""
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda found: found.name):
        if module.name.endswith("_section"):
            importlib.import_module(f"{__package__}.{module.name}")


_load_types()


# ----------------------------------------------------------------------------------------------- encoding


def choose_offer(subject: Subject) -> Offer:
    """The registered types' offers for this tensor compared by exact size; the winner (no bytes built yet).

    Types are asked in rank order, each seeing the best offer so far; of equal sizes the lower tie_rank
    wins; a final offer (a vq layout that decodes to exactly the tensor) is taken at once.
    """
    best, best_ties = None, 0
    for section in by_rank():
        if section.offer is None:
            continue
        offer = section.offer(subject, best)
        if offer is None:
            continue
        if offer.final:
            return offer
        if best is None or (offer.size, section.ties()) < (best.size, best_ties):
            best, best_ties = offer, section.ties()
    if best is None:  # raw always offers while nothing else has
        raise RuntimeError(f"no section type offered to store tensor '{subject.name}'")
    return best


def encode_section(name: str, tensor: torch.Tensor, gap_bits: int | None = None, structure=None) -> bytes:
    """type id, varint body length, body = name, dtype, shape, then the encoding's bytes.

    gap_bits: None (each coded type picks its layout) or a fixed relative-index width (version 1 only).
    structure: a vq_section.Quantized (vector quantization) or int_section.IntWeights (integer levels and
    scales) the tensor was built from; it is stored as a "vq" or "int" section when it decodes to exactly
    this tensor (float32), otherwise it is ignored.
    """
    if not isinstance(tensor, torch.Tensor):
        raise FormatError(f"state entry '{name}' is a {type(tensor).__name__}, not a tensor: put it in meta")
    if tensor.layout != torch.strided:
        raise FormatError(f"tensor '{name}' has layout {tensor.layout}: store tensor.to_dense() instead")
    if tensor.dim() > MAX_RANK:
        raise FormatError(f"tensor '{name}' has {tensor.dim()} dimensions; the compact format stores at most "
                          f"{MAX_RANK}: reshape it")
    if tensor.numel() > MAX_NUMEL:
        raise FormatError(f"tensor '{name}' has {tensor.numel()} elements, more than {MAX_NUMEL}: split it")
    encoded_name = name.encode("utf-8")
    if len(encoded_name) > MAX_NAME_BYTES:
        raise FormatError(f"tensor name '{name[:40]}...' is longer than {MAX_NAME_BYTES} bytes: shorten it")
    dtype_code = _dtypes.code_of(tensor.dtype, name)
    offer = choose_offer(Subject(name, tensor, gap_bits, structure))
    body = (varint(len(encoded_name)) + encoded_name + bytes([dtype_code, tensor.dim()])
            + b"".join(varint(d) for d in tensor.shape) + offer.build())
    return bytes([offer.type_id]) + varint(len(body)) + body


# ----------------------------------------------------------------------------------------------- decoding


def decode_section(reader: ByteReader, want_tensor: bool = True,
                   budget: list[int] | None = None) -> tuple[str, torch.Tensor | None, dict, SectionInfo]:
    """Read one section at the reader's position: (name, tensor or None, {shape, dtype, numel}, info).

    budget: a one-element list with the tensor bytes still allowed in this file; reduced here, and a
    section that would exceed it raises FormatError before anything is allocated.
    """
    section_start = reader.pos
    type_id = reader.u8("section type")
    body_len = reader.varint("section length", MAX_NUMEL * 16)
    reader.need(body_len, "section body")
    body = ByteReader(reader.data, reader.pos, reader.pos + body_len, reader.base,
                      f"section at byte {section_start}")
    reader.pos += body_len
    name_len = body.varint("name length", MAX_NAME_BYTES)
    try:
        name = bytes(body.take(name_len, "name")).decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(f"section at byte {section_start}: its tensor name is not UTF-8") from None
    real_name, name = name, shown(name)  # messages show the name escaped and cut: they stay one short line
    body.context = f"tensor '{name}'"
    section = TYPES.get(type_id)
    if section is None:
        raise FormatError(f"tensor '{name}' uses encoding type {type_id}, which this reader does not know: "
                          "the file was written by a newer Compression Lab; upgrade complab")
    dtype = _dtypes.dtype_of(body.u8("dtype"), name)
    rank = body.u8("rank")
    if rank > MAX_RANK:
        raise damaged(f"tensor '{name}' claims {rank} dimensions (at most {MAX_RANK})")
    shape = tuple(body.varint("dimension", MAX_NUMEL) for _ in range(rank))
    numel = 1
    for dim in shape:
        numel *= dim
        if numel > MAX_NUMEL:
            raise damaged(f"tensor '{name}' claims shape {shape}, more than {MAX_NUMEL} elements")
    described = {"shape": list(shape), "dtype": _dtypes.dtype_name(dtype), "numel": numel}
    size = _dtypes.itemsize(dtype)
    if budget is not None:
        budget[0] -= numel * size
        if budget[0] < 0:
            raise FormatError(f"tensor '{name}' ({numel * size} bytes) takes the file past its decode limit "
                              f"({MIN_DECODE_ALLOWANCE >> 20} MiB plus {MAX_EXPANSION} bytes of tensors per byte "
                              f"of file, at most {MAX_DECODED_BYTES >> 30} GiB): a file this small cannot honestly "
                              "describe that much, so it is damaged or crafted; a model larger than the cap needs "
                              "an explicit max_decoded_bytes")
    tensor, info = section.decode(body, Frame(name, dtype, shape, numel, size, want_tensor, budget))
    if body.remaining():
        raise damaged(f"tensor '{name}': {body.remaining()} unexplained bytes at the end of its section")
    info.encoding, info.section_version = section.encoding, section.version
    return real_name, (tensor if want_tensor else None), described, info


# ----------------------------------------------------------------------------------------------- FORMAT.md

FORMAT_PATH = Path(__file__).with_name("FORMAT.md")
TYPE_ROW = "| u8 `type` | "
BEGIN = ("<!-- Subsections 2.N (N = the type id) are generated from the registrations in "
         "compression/complab/storage/*_section.py: edit them there, then run `python -m complab.storage.sections` -->")
END = "<!-- end of the generated subsections -->"


def type_row() -> str:
    """FORMAT.md's row for the section type byte: every registered id and what it is."""
    names = ", ".join(f"{t.type_id} {t.encoding}" + (f" (version {t.version})" if t.version > 1 else "")
                      for t in sorted(TYPES.values(), key=lambda t: t.type_id))
    return f"{TYPE_ROW}{names} ({max(TYPES) + 1}+ reserved) |"


def format_entries() -> str:
    """The generated part of FORMAT.md: one subsection per registered type, in type id order."""
    parts = [BEGIN]
    for section in sorted(TYPES.values(), key=lambda t: t.type_id):
        parts += [f"### 2.{section.type_id} {section.title}", section.doc.strip()]
    return "\n\n".join(parts + [END])


def render_format(text: str) -> str:
    """FORMAT.md's text with its type row and generated subsections replaced by the registrations' own."""
    lines = text.split("\n")
    rows = [i for i, line in enumerate(lines) if line.startswith(TYPE_ROW)]
    if len(rows) != 1 or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError("FORMAT.md needs one section type row and one pair of generated-subsection markers")
    lines[rows[0]] = type_row()
    text = "\n".join(lines)
    head, rest = text.split(BEGIN)
    return head + format_entries() + rest.split(END, 1)[1]


def main(argv: list[str]) -> int:
    current = FORMAT_PATH.read_text(encoding="utf-8")
    wanted = render_format(current)
    if "--check" in argv:
        print("FORMAT.md is up to date" if wanted == current else "FORMAT.md differs from the registrations")
        return 0 if wanted == current else 1
    FORMAT_PATH.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
