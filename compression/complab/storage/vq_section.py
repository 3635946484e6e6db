"""The vector-quantized section of the compact format (type 4): codebooks + codes, decoded to the exact weight.

Gong et al. (arXiv 1412.6115) store a dense layer W as codebooks and the codes that index them:
binarization (one sign bit per weight and a scale), scalar k-means (log2 k bits per weight and k
values), product quantization (per segment of s columns, k codewords of length s; a code per row
and segment) and residual quantization (t stages of k full-length codewords; t codes per row).
The per-element values cannot reveal that structure, so the quantizer hands it to the encoder
(`Quantized`), which stores it here; the decoder rebuilds the weight with `reconstruct`, the same
function the quantizer bakes its weights with, so the decoded tensor equals the in-memory one bit
for bit (float32 gathers and sums in a fixed order).

Layout of a weight of shape (out, ...): the matrix is weight.reshape(out, -1), rows = output units
(the torch Linear weight, or a conv's im2col filter matrix). axis "in": the vectors are the rows
(pieces of one output unit's fan-in, the paper's column-wise segments of W); axis "out": the vectors
are the columns (one input's fan-out). PQ pads the vector length with zero columns to a multiple
of s; the padding is cropped after decoding.
"""

# ruff: noqa: E501  (FORMAT.md table rows stay one line each)

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from complab.storage._bits import ByteReader, damaged, varint
from complab.storage.entropy import MAX_ALPHABET, decode_from, empirical_entropy_bytes, encode_symbols
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject, register

TYPE_VQ = 4
METHODS = {1: "binary", 2: "kmeans", 3: "pq", 4: "rq"}
METHOD_IDS = {name: code for code, name in METHODS.items()}
FLAG_ANS, FLAG_ZERO_CODE, FLAG_AXIS_OUT = 1, 2, 4
MAX_STAGES = 64
MAX_CODEWORDS = MAX_ALPHABET - 1  # k + 1 symbols (a zero code) must fit the entropy coder's alphabet


@dataclass
class Quantized:
    """A layer's quantizer output: what the file stores (codebook float32, codes) and how they compose.

    codebook shapes: binary (1,) = the scale; kmeans (k,); pq (segments, k, s); rq (t, k, dim).
    codes: binary/kmeans one per element (C order; code k = an exact zero when zero_code);
    pq (vectors, segments); rq (vectors, t).
    """

    method: str
    shape: tuple[int, ...]
    n_codewords: int
    codebook: np.ndarray
    codes: np.ndarray
    segment_length: int = 0  # pq only
    stages: int = 1  # rq only
    axis: str = "in"  # pq / rq: "in" vectors are rows of weight.reshape(out, -1), "out" its columns
    zero_code: bool = False  # kmeans after pruning: code k is an exact zero (not a codeword)

    def layout(self) -> dict:
        return {"method": self.method, "n_codewords": self.n_codewords, "segment_length": self.segment_length,
                "stages": self.stages, "axis": self.axis, "zero_code": self.zero_code}


def matrix_dims(shape: tuple[int, ...], axis: str) -> tuple[int, int]:
    """(number of vectors, vector length) of the weight's matrix view for an axis."""
    rows = shape[0] if shape else 1
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return (rows, cols) if axis == "in" else (cols, rows)


def sizes(method: str, shape: tuple[int, ...], n_codewords: int, segment_length: int, stages: int,
          axis: str, zero_code: bool = False) -> tuple[int, int, int]:
    """(codebook floats, number of codes, code alphabet size) of a layout."""
    numel = math.prod(shape)
    vectors, dim = matrix_dims(shape, axis)
    if method == "binary":
        return 1, numel, 2
    if method == "kmeans":
        return n_codewords, numel, n_codewords + (1 if zero_code else 0)
    if method == "pq":
        segments = -(-dim // segment_length)
        return segments * n_codewords * segment_length, vectors * segments, n_codewords
    return stages * n_codewords * dim, vectors * stages, n_codewords


def code_bits(alphabet: int) -> int:
    """Bits per bit-packed code: ceil(log2(alphabet)) (log2 k of the paper for k a power of two)."""
    return max(0, (alphabet - 1).bit_length())


def formula_bits(method: str, shape: tuple[int, ...], n_codewords: int, segment_length: int = 0, stages: int = 1,
                 axis: str = "in", zero_code: bool = False, value_bits: int = 32) -> int:
    """Gong et al.'s storage for one layer in bits: the codes (log2 k bits each) + the codebooks (32-bit floats).

    binary: mn + 32 (the scale); kmeans: mn log2 k + 32k; pq: m (n/s) log2 k + 32 k n;
    rq: m t log2 k + 32 t k n. The compression rate is 32 mn / formula_bits.
    """
    floats, codes, alphabet = sizes(method, shape, n_codewords, segment_length, stages, axis, zero_code)
    return codes * code_bits(alphabet) + floats * value_bits


def reconstruct(q: Quantized) -> np.ndarray:
    """The float32 weight (shape q.shape) a layout decodes to; the quantizer bakes its weights with this too."""
    codebook = np.ascontiguousarray(q.codebook, dtype=np.float32)
    codes = np.asarray(q.codes).astype(np.int64, copy=False)
    if q.method == "binary":
        scale = codebook.reshape(-1)[0]
        table = np.array([-scale, scale], dtype=np.float32)
        return table[codes.reshape(-1)].reshape(q.shape)
    if q.method == "kmeans":
        table = codebook.reshape(-1)
        if q.zero_code:
            table = np.concatenate([table, np.zeros(1, dtype=np.float32)])
        return table[codes.reshape(-1)].reshape(q.shape)
    vectors, dim = matrix_dims(q.shape, q.axis)
    if q.method == "pq":
        s = q.segment_length
        segments = codebook.shape[0]
        matrix = np.empty((vectors, segments * s), dtype=np.float32)
        for j in range(segments):
            matrix[:, j * s:(j + 1) * s] = codebook[j][codes[:, j]]
        matrix = matrix[:, :dim]
    else:  # rq: the stages' codewords summed in stage order (float32, a fixed order: bit-exact everywhere)
        matrix = codebook[0][codes[:, 0]].copy()
        for stage in range(1, codebook.shape[0]):
            matrix += codebook[stage][codes[:, stage]]
    if q.axis == "out":
        matrix = matrix.T
    return np.ascontiguousarray(matrix).reshape(q.shape)


def _pack(codes: np.ndarray, nbits: int) -> bytes:
    """Codes as nbits-bit fields, LSB-first (bit i of the stream is bit i % 8 of byte i // 8)."""
    if nbits == 0 or codes.size == 0:
        return b""
    bits = (codes.astype(np.uint32)[:, None] >> np.arange(nbits, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


_UNPACK_BLOCK = 1 << 16  # codes unpacked per block: the bit matrix of a block stays small (<= 8 MiB)


def _unpack(data: memoryview, count: int, nbits: int) -> tuple[np.ndarray, bool]:
    """(codes, padding bits all zero); unpacked 8 codes (nbits whole bytes) at a time, in blocks."""
    if nbits == 0 or count == 0:
        return np.zeros(count, dtype=np.int64), True
    raw = np.frombuffer(data, dtype=np.uint8)
    codes = np.empty(count, dtype=np.int64)
    weights = np.int64(1) << np.arange(nbits, dtype=np.int64)
    for start in range(0, count, _UNPACK_BLOCK):  # a block of 2**16 codes starts on a whole byte
        stop = min(count, start + _UNPACK_BLOCK)
        first, last = start * nbits // 8, (stop * nbits + 7) // 8
        bits = np.unpackbits(raw[first:last], bitorder="little")[:(stop - start) * nbits]
        codes[start:stop] = bits.reshape(stop - start, nbits).astype(np.int64) @ weights
    tail = np.unpackbits(raw[(count * nbits) // 8:], bitorder="little")[(count * nbits) % 8:]
    return codes, not tail.any()


def encode_vq(q: Quantized, entropy: bool = True) -> bytes:
    """The section's encoding-specific bytes; the codes are bit-packed or ANS-coded, whichever is smaller
    (entropy=False: always bit-packed, exactly the paper's log2 k bits per code)."""
    floats, count, alphabet = sizes(q.method, q.shape, q.n_codewords, q.segment_length, q.stages, q.axis,
                                    q.zero_code)
    codebook = np.ascontiguousarray(q.codebook, dtype=np.float32).reshape(-1)
    codes = np.asarray(q.codes).astype(np.int64, copy=False).reshape(-1)
    if codebook.size != floats or codes.size != count:
        raise ValueError(f"{q.method} layout of {q.shape}: {codebook.size} codebook values and {codes.size} codes, "
                         f"expected {floats} and {count}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= alphabet):
        raise ValueError(f"codes must lie in [0, {alphabet})")
    flags = (FLAG_ZERO_CODE if q.zero_code else 0) | (FLAG_AXIS_OUT if q.axis == "out" else 0)
    packed = _pack(codes, code_bits(alphabet))
    coded = encode_symbols(codes, alphabet) if count and entropy else b""
    if coded and len(coded) < len(packed):
        flags, data = flags | FLAG_ANS, coded
    else:
        data = packed
    head = (bytes([METHOD_IDS[q.method], flags]) + varint(q.n_codewords) + varint(q.segment_length)
            + varint(q.stages))
    return head + codebook.astype("<f4").tobytes() + data


def decode_vq(body: ByteReader, name: str, shape: tuple[int, ...], numel: int,
              want_tensor: bool, budget: list[int] | None = None) -> tuple[np.ndarray | None, dict]:
    """(float32 weight or None, info dict) from a checked type-4 body; every count is checked before use.

    budget: the file's remaining decode allowance (see sections.decode_section); codes beyond one per
    element (rq with more stages than the vector length) are charged to it at 12 bytes each (int32 +
    int64) before they are decoded, so a few bytes cannot ask for 64 codes per element.
    """
    method_id = body.u8("quantizer")
    if method_id not in METHODS:
        raise damaged(f"tensor '{name}': quantizer id {method_id} is unknown")
    method = METHODS[method_id]
    flags = body.u8("quantizer flags")
    if flags & ~(FLAG_ANS | FLAG_ZERO_CODE | FLAG_AXIS_OUT):
        raise damaged(f"tensor '{name}': unknown quantizer flags {flags:#x}")
    zero_code, axis = bool(flags & FLAG_ZERO_CODE), ("out" if flags & FLAG_AXIS_OUT else "in")
    k = body.varint("codewords", MAX_CODEWORDS)
    s = body.varint("segment length", max(numel, 1))
    t = body.varint("stages", MAX_STAGES)
    vectors, dim = matrix_dims(shape, axis)
    valid = {"binary": k == 2 and s == 0 and t == 1 and not zero_code and axis == "in",
             "kmeans": k >= 1 and s == 0 and t == 1 and axis == "in",
             "pq": k >= 1 and 1 <= s <= max(dim, 1) and t == 1 and not zero_code,
             "rq": k >= 1 and s == 0 and t >= 1 and not zero_code}[method]
    if not valid or len(shape) < 1 or (numel == 0) != (vectors * dim == 0):
        raise damaged(f"tensor '{name}': {method} layout k={k}, s={s}, t={t} does not fit shape {list(shape)}")
    floats, count, alphabet = sizes(method, shape, k, s, t, axis, zero_code)
    if budget is not None and count > numel:
        budget[0] -= 12 * (count - numel)
        if budget[0] < 0:
            raise damaged(f"tensor '{name}': its {count} codes for {numel} elements take the file past its "
                          "decode limit")
    codebook = np.frombuffer(body.take(4 * floats, "codebook"), dtype="<f4").astype(np.float32)
    start = body.pos
    if flags & FLAG_ANS:
        codes = decode_from(body, count, alphabet, f"tensor '{name}' codes stream", exact=True).astype(np.int64)
    else:
        nbits = code_bits(alphabet)
        codes, clean = _unpack(body.take((count * nbits + 7) // 8, "codes"), count, nbits)
        if not clean:
            raise damaged(f"tensor '{name}': the padding bits after its codes are not zero")
        if codes.size and int(codes.max()) >= alphabet:
            raise damaged(f"tensor '{name}': a code is {int(codes.max())}, the alphabet has {alphabet}")
    bytes_codes = body.pos - start
    if method == "pq":
        codebook = codebook.reshape(-1, k, s)
        codes = codes.reshape(vectors, -1)
    elif method == "rq":
        codebook, codes = codebook.reshape(t, k, dim), codes.reshape(vectors, t)
    q = Quantized(method, tuple(shape), k, codebook, codes, s, t, axis, zero_code)
    info = {"quantizer": method, "layout": q.layout(), "n_clusters": k, "bytes_codebook": 4 * floats,
            "bytes_indices": bytes_codes, "formula_bits": formula_bits(method, tuple(shape), k, s, t, axis, zero_code),
            "streams": [{"stream": "codes", "symbols": count, "bytes": bytes_codes,
                         "entropy_bytes": None if want_tensor else empirical_entropy_bytes(codes)}]}
    return (reconstruct(q) if want_tensor else None), info


# ----------------------------------------------------------------------------------------------- registration

FORMAT = """\
For a float32 weight that a quantizer (`compression/complab/methods/vq.py`) built from codebooks and codes:
binarization, scalar k-means, product quantization (PQ) or residual quantization (RQ) (Gong et al.,
arXiv 1412.6115). The per-element values cannot reveal that structure, so the encoder is handed it
(`encode_state(..., structures={name: Quantized})`) and uses this section only when the layout
decodes to exactly the tensor's bits (then without trying the other types); otherwise the tensor gets
the other encodings. The decoder builds the weight with `complab.storage.vq_section.reconstruct`, the
function the quantizer bakes its weights with, so the decoded weight equals the in-memory one bit for bit.

| field | |
|---|---|
| u8 `method` | 1 binary, 2 kmeans, 3 pq, 4 rq |
| u8 `flags` | bit 0: codes ANS-coded (else bit-packed); bit 1: zero code (kmeans only); bit 2: axis "out" (pq/rq only); other bits 0 |
| varint `k` | codewords per codebook (binary: 2; ≤ 65535) |
| varint `s` | pq: segment length, 1 ≤ s ≤ vector length; other methods: 0 |
| varint `t` | rq: stages, 1..64; other methods: 1 |
| F × 4 bytes | codebook, float32 little-endian (F below) |
| codes | C codes over an alphabet of A symbols: bit-packed, or one entropy-coded stream (section 3) |

**Matrix view.** With shape (d0, d1, …), the weight's matrix is M = weight.reshape(d0, d1·d2·…)
(a Linear layer's (out, in); a convolution's (out, in·kh·kw) im2col filter matrix). Axis "in": the
vectors are M's V = d0 rows of length D = d1·d2·…; axis "out": M's columns (V = d1·d2·…, D = d0).

| method | F (codebook floats) | C (codes), in order | A | element |
|---|---|---|---|---|
| binary | 1: the scale α | one per element, row-major | 2 | code 0 → −α, 1 → α |
| kmeans | k | one per element, row-major | k (+1 with the zero code) | codebook[code]; code k → +0.0 (a pruned weight) |
| pq | ⌈D / s⌉ · k · s, codebook[j][c] = the s floats of codeword c of segment j | V × ⌈D / s⌉, vector-major | k | vector i = concat_j codebook[j][code(i, j)], cropped to D (PQ pads D with zero columns to a multiple of s) |
| rq | t · k · D, codebook[j][c] = codeword c of stage j | V × t, vector-major | k | vector i = ((codebook[0][code(i,0)] + codebook[1][code(i,1)]) + …) in float32, stages in order |

The vectors are then put back: rows of M (axis "in") or its columns (axis "out"), reshaped to the
tensor's shape.

**Bit-packed codes** take ⌈log2 A⌉ bits each (0 bits when A = 1), LSB-first as in section 3's bit
fields, in ⌈C · bits / 8⌉ bytes whose padding bits are zero. The encoder writes the ANS stream instead
when it is smaller (k-means codes of a pruned layer, skewed code histograms).

**Compression rate.** Gong et al. count a layer of m × n 32-bit floats as 32mn bits and its quantized
form as codes + codebooks: binary mn (+ 32 for α, our scale), kmeans mn·log2 k + 32k, pq m·(n/s)·log2 k +
32kn, rq m·t·log2 k + 32tkn (m = V vectors, n = D). `formula_bits` computes exactly these with
⌈log2 A⌉ bits per code; with bit-packed codes the section's bytes are ⌈formula_bits / 8⌉ plus the
section header (type, length, name, dtype, shape, method, flags, k, s, t: about 10 bytes + the name),
and with ANS-coded codes they are less. `inspect_bytes` reports `formula_bits` next to the bytes.

**Checks.** method and flags known; k, s, t as above and consistent with the method (binary k = 2,
no zero code, axis "in"); the codebook and code lengths computed from the shape are checked against
the bytes that remain before anything is read; bit-packed codes < A with zero padding; the stream
holds exactly C symbols below A; dtype float32; codes beyond one per element (rq with more stages
than the vector length) are charged to the decode allowance at 12 bytes each."""


def _offer(subject: Subject, best: Offer | None) -> Offer | None:
    q = subject.structure
    if not isinstance(q, Quantized) or subject.dtype != torch.float32 or tuple(subject.tensor.shape) != tuple(q.shape):
        return None
    if not np.array_equal(reconstruct(q).view(np.int32).ravel(), subject.bits):
        return None  # the layout does not decode to exactly this tensor: the other types store it
    data = encode_vq(q)
    return Offer(TYPE_VQ, len(data), lambda: data, final=True)


def _decode(body: ByteReader, frame: Frame) -> tuple[torch.Tensor | None, SectionInfo]:
    if frame.dtype != torch.float32:
        raise damaged(f"tensor '{frame.name}': a vq section must hold float32, not {frame.dtype}")
    array, info = decode_vq(body, frame.name, frame.shape, frame.numel, frame.want_tensor, frame.budget)
    tensor = torch.from_numpy(array) if frame.want_tensor else None
    return tensor, SectionInfo(n_clusters=info["n_clusters"], bytes_indices=info["bytes_indices"],
                               bytes_codebook=info["bytes_codebook"], streams=info["streams"],
                               quantizer=info["quantizer"], layout=info["layout"], formula_bits=info["formula_bits"])


register(SectionType(TYPE_VQ, "vq", "Type 4, vq (Gong et al.'s vector-quantized layer)", FORMAT, _decode, _offer,
                     rank=0))
