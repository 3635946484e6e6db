"""Section types register themselves: FORMAT.md comes from the registrations, a new type is one module, and the
encoder decides by exact sizes (its files byte-identical to those of the encoder that built every candidate)."""

from __future__ import annotations

import hashlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from complab.errors import FormatError
from complab.storage import decode_state, encode_state, inspect_bytes, read_file, registry, sections, write_file
from complab.storage._bits import damaged
from complab.storage._dtypes import to_bytes
from complab.storage.entropy import PlanCache, code_symbols, encode_symbols
from complab.storage.escape import code_escaped, encode_escaped
from complab.storage.header import check_file_header
from complab.storage.registry import Frame, Offer, SectionInfo, SectionType, Subject
from complab.storage.vq_section import Quantized, reconstruct

STORAGE = Path(sections.__file__).parent


def random_tensors(seed: int, count: int) -> dict[str, torch.Tensor]:
    """Seeded tensors that reach every encoder decision (numpy's PCG64 gives the same values on every machine)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        numel = int(rng.choice([0, 5, 64, 100, 300, 1000, 4096, 20000]))
        sparsity = float(rng.choice([0.0, 0.3, 0.5, 0.8, 0.92, 0.99, 1.0]))
        k = int(rng.choice([1, 2, 16, 32, 256, 300]))
        dtype = rng.choice(["float32", "float32", "float16", "bfloat16", "float64", "int8", "int64", "bool"])
        values = rng.standard_normal(numel).astype(np.float32)
        if k <= 256 and rng.random() < 0.8:
            book = np.sort(rng.standard_normal(k)).astype(np.float32)
            values = book[rng.integers(0, k, numel)]
        mask = rng.random(numel) < sparsity
        if rng.random() < 0.3:  # zeros in runs: long gaps, fillers and escapes
            mask = np.repeat(rng.random(-(-numel // 50)) < sparsity, 50)[:numel]
        values = np.where(mask, 0.0, values).astype(np.float32)
        tensor = torch.from_numpy(values)
        if dtype == "bool":
            tensor = tensor != 0
        elif dtype in ("int8", "int64"):
            tensor = (tensor * 20).to(getattr(torch, dtype))
        else:
            tensor = tensor.to(getattr(torch, dtype))
        if numel == 4096 and rng.random() < 0.5:
            tensor = tensor.reshape(64, 8, 8)
        out[f"t{i}"] = tensor
    return out


def with_vq(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Quantized]]:
    rng = np.random.default_rng(7)
    kmeans = Quantized("kmeans", (16, 8), 4, np.array([-1.0, -0.5, 0.5, 1.0], dtype=np.float32),
                       rng.integers(0, 5, 128), zero_code=True)
    pq = Quantized("pq", (6, 8), 4, rng.standard_normal((2, 4, 4)).astype(np.float32), rng.integers(0, 4, (6, 2)),
                   segment_length=4)
    structures = {"vq.kmeans": kmeans, "vq.pq": pq, "vq.unmatched": pq}
    state = dict(state)
    state["vq.kmeans"] = torch.from_numpy(reconstruct(kmeans))
    state["vq.pq"] = torch.from_numpy(reconstruct(pq))
    state["vq.unmatched"] = torch.from_numpy(reconstruct(pq)) + 1  # not the layout's tensor: other types store it
    return state, structures


# sha256 of encode_state's output for these states, written by the encoder before the registry (7554c5c), which
# encoded every candidate section in full and kept the smallest: deciding by exact sizes must not change a byte.
# (The tables' curve fit is float arithmetic: a BLAS that rounds differently may fit other, equally valid
# tables; these were taken on Linux x86-64 with numpy's bundled OpenBLAS, as CI runs.)
BEFORE_REGISTRY = {
    (1, "auto"): "224ecae05ba7b7d017be3b2c48c24a377090a88b20251253a08277b5e1e10645",
    (2, "auto"): "cc8a70a7d3bd71c8b998d7d158233c6219398c6466ed4e8b91f4970caa0e9bca",
    (3, "paper"): "2f3a609550df34868b2ba663069f4e0ee52d6ecc0ac0462fa2d19660ee99b4ca",
    (4, 6): "f9bc82b4bfdbc275aa510f0799e8d1fe03bd80cff7faa094ff6e651ffe531520",
    (5, "auto"): "e812b2cbf502e31c4574908b0f755e628117a8a5b07bef9002efe00d176d45e5",
}


@pytest.mark.parametrize(("seed", "gap_bits"), list(BEFORE_REGISTRY))
def test_files_are_byte_identical_to_the_encoder_that_built_every_candidate(seed, gap_bits, monkeypatch):
    from complab.storage import entropy

    state, structures = with_vq(random_tensors(seed, 40))
    with monkeypatch.context() as patch:  # the table-free adaptive stream mode (added later) switched off
        patch.setattr(entropy, "_ADAPTIVE_MAX_SPAN", 0)
        patch.setattr(entropy, "_ADAPTIVE_ESTIMATE_SYMBOLS", 0)
        before = encode_state(state, {"seed": seed}, {"t1": "conv"}, gap_bits=gap_bits, structures=structures)
    assert hashlib.sha256(before).hexdigest() == BEFORE_REGISTRY[(seed, gap_bits)]
    data = encode_state(state, {"seed": seed}, {"t1": "conv"}, gap_bits=gap_bits, structures=structures)
    assert len(data) <= len(before)  # with it on, a stream takes the mode only where it is smaller
    _, decoded = decode_state(data)
    for name, tensor in state.items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert to_bytes(decoded[name]) == to_bytes(tensor), name  # bit for bit
    encodings = {row["encoding"] + str(row["section_version"]) for row in inspect_bytes(data)[1:]}
    if gap_bits == "auto":
        assert {"raw1", "shared1", "shared2", "sparse1", "vq1"} <= encodings  # every decision was reached


@pytest.mark.parametrize("gap_bits", [None, 5])
def test_every_offer_predicts_its_exact_size_and_the_smallest_wins(gap_bits):
    """Each type's offer size equals len(build()) for many tensors; the encoder keeps the smallest (ties: raw, else
    the type asked first), i.e. what building every candidate and keeping the smallest chose."""
    state, structures = with_vq(random_tensors(11, 30) | random_tensors(12, 30))
    offered = set()
    for name, tensor in state.items():
        subject = Subject(name, tensor, gap_bits, structures.get(name))
        offers, best, final = [], None, None
        for section in registry.by_rank():
            offer = section.offer(subject, best)
            if offer is None:
                continue
            built = offer.build()
            assert offer.size == len(built), (name, section.type_id)
            offered.add(section.type_id)
            offers.append((offer.size, section.ties(), offer.type_id, built))
            if offer.final:
                final = offers[-1]
                break
            if best is None or (offer.size, section.ties()) < (best.size, registry.TYPES[best.type_id].ties()):
                best = offer
        _, _, type_id, built = final or min(offers, key=lambda found: found[:2])
        section = sections.encode_section(name, tensor, gap_bits, structures.get(name))
        assert section[0] == type_id and section.endswith(built), name
    assert offered == ({1, 2, 3, 4, 5, 6} if gap_bits is None else {1, 2, 3, 4})


def test_stream_sizes_are_exact_and_a_shared_plan_changes_no_byte():
    rng = np.random.default_rng(3)
    cache = PlanCache()
    for _ in range(120):
        n = int(rng.choice([0, 1, 2, 10, 300, 3000]))
        alphabet = int(rng.choice([1, 2, 5, 40, 300, 1500]))
        shape = rng.choice(["uniform", "geometric", "sparse", "two"])
        if shape == "uniform":
            symbols = rng.integers(0, alphabet, n)
        elif shape == "geometric":
            symbols = np.minimum(rng.geometric(rng.uniform(0.01, 0.9), n) - 1, alphabet - 1)
        elif shape == "sparse":  # few used symbols far apart: the bitmap and gap table modes
            used = rng.choice(alphabet, size=min(alphabet, 4), replace=False)
            symbols = used[rng.integers(0, used.size, n)]
        else:
            symbols = np.full(n, alphabet - 1)
        stream = code_symbols(symbols, alphabet)
        alone = stream.to_bytes()
        assert stream.size == len(alone) and alone == encode_symbols(symbols, alphabet)
        if n and alphabet > 1 and symbols.max() < alphabet - 1:  # the same stream shifted: one plan serves both
            assert code_symbols(symbols, alphabet, cache).to_bytes() == alone
            shifted = code_symbols(symbols + 1, alphabet, cache)  # planned from the cache
            assert shifted.to_bytes() == encode_symbols(symbols + 1, alphabet)
            assert len(shifted.to_bytes()) == shifted.size
        gaps = rng.geometric(rng.uniform(0.001, 0.9), n) - 1
        block = code_escaped(gaps, cache=cache)
        assert block.size == len(block.to_bytes()) and block.to_bytes() == encode_escaped(gaps)


def test_format_md_holds_exactly_the_registered_sections():
    text = (STORAGE / "FORMAT.md").read_text(encoding="utf-8")
    assert sections.render_format(text) == text, "FORMAT.md is stale: run python -m complab.storage.sections"
    assert sorted(registry.TYPES) == [1, 2, 3, 4, 5, 6, 7, 8]
    for type_id, section in registry.TYPES.items():
        assert f"### 2.{type_id} {section.title}\n\n{section.doc.strip()}\n" in text
    row = ("| u8 `type` | 1 raw, 2 shared, 3 sparse, 4 vq, 5 shared (version 2), 6 sparse (version 2), 7 int, "
           "8 shared (version 3) (9+ reserved) |")
    assert row in text


def test_every_section_module_registers_and_every_type_lives_in_one():
    modules = {found.name for found in pkgutil.iter_modules([str(STORAGE)]) if found.name.endswith("_section")}
    assert modules == {"raw_section", "shared_section", "sparse_section", "vq_section", "int_section",
                       "context_section"}
    homes = {section.decode.__module__.rsplit(".", 1)[1] for section in registry.TYPES.values()}
    assert homes == modules
    for section in registry.TYPES.values():  # encoder and decoder side by side
        assert section.offer.__module__ == section.decode.__module__


# ----------------------------------------------------------------------------------------------- a new type

TYPE_CONSTANT = 200


def _offer_constant(subject: Subject, best: Offer | None) -> Offer | None:
    bits = subject.bits
    if bits.size < 2 or subject.dtype != torch.float32 or not (bits == bits[0]).all():
        return None
    value = subject.raw[:4]
    return Offer(TYPE_CONSTANT, 4, lambda: value)


def _decode_constant(body, frame: Frame):
    value = torch.frombuffer(bytearray(body.take(4, "value")), dtype=torch.float32)
    if frame.dtype != torch.float32:
        raise damaged(f"tensor '{frame.name}': a constant section holds float32")
    tensor = value.expand(frame.numel).clone().reshape(frame.shape) if frame.want_tensor else None
    return tensor, SectionInfo(n_clusters=1, bytes_codebook=4)


def test_a_new_section_type_is_one_registration(tmp_path):
    """A type registered from anywhere (here: this test) is written, read, inspected and documented."""
    constant = SectionType(TYPE_CONSTANT, "constant", "Type 200, constant (a test's)", "Four bytes: the value.",
                           _decode_constant, _offer_constant, rank=5)
    registry.register(constant)
    try:
        state = {"c": torch.full((40, 40), 0.5), "w": torch.randn(8, 8)}
        size = write_file(tmp_path / "m.clab", state, {})
        _, decoded = read_file(tmp_path / "m.clab")
        assert torch.equal(decoded["c"], state["c"]) and torch.equal(decoded["w"], state["w"])
        rows = inspect_bytes((tmp_path / "m.clab").read_bytes())
        assert [row["encoding"] for row in rows[1:]] == ["constant", "raw"]
        assert sum(row["bytes_total"] for row in rows) == size
        assert "### 2.200 Type 200, constant (a test's)\n\nFour bytes: the value." in sections.format_entries()
        assert "200 constant (201+ reserved)" in sections.type_row()
    finally:
        del registry.TYPES[TYPE_CONSTANT]
    with pytest.raises(FormatError, match="encoding type 200, which this reader does not know"):
        read_file(tmp_path / "m.clab")


def test_a_type_id_cannot_be_registered_twice():
    clash = SectionType(1, "mine", "Type 1, mine", "", _decode_constant, _offer_constant)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(clash)
    assert registry.TYPES[1].encoding == "raw"


def test_reading_a_path_says_the_same_in_the_header_check_and_the_decoder(tmp_path):
    for path in (tmp_path / "missing.clab", tmp_path):
        with pytest.raises(FormatError) as header_error:
            check_file_header(path)
        with pytest.raises(FormatError) as decoder_error:
            read_file(path)
        assert str(header_error.value) == str(decoder_error.value)
        assert "check the path" in str(header_error.value) or "is a folder" in str(header_error.value)
