"""Fuzzing campaign: the compact-file decoder, the recipe parser, uploaded model files and dataset folders.

Every case must end in a CompressionLabError with a one-line message (or succeed): anything else is a
traceback; a case running past its family's timeout is a hang (the worker is killed and replaced); a case
that raises its worker's peak RSS above a bound set from the input's size is a memory blow-up; a marker
file created by a crafted pickle is executed code.

Families:
  decoder   mutated compact files whose CRC and length are recomputed so they reach the parser (bit flips,
            interesting bytes, insertions, deletions, overflowing varints, truncations, field-targeted
            values, section-body edits with the framing kept valid, section splices, meta values of the
            wrong type) and crafted files that declare huge tensors (memory bombs); each decoded with
            decode_state + inspect_bytes, and a decoded file's meta rebuilt into a model
            (models.compact.handle_from_decoded). RSS bound per case: 64 MiB + 8 x the file's decode
            allowance (storage.codec.decode_allowance): decoding holds a few times what it may output.
  recipe    random JSON, random bytes, non-UTF-8, truncated and deeply nested recipes, and schema-shaped
            recipes with one value replaced by a wrong type or value; Plan.from_json, then validate against
            ResNet-18's layer names and resolve every per-layer map (patterns included); RSS bound 256 MiB.
  model     uploaded model files through complab.models.handle.load_model (zero bytes, truncated or
            forged safetensors, pickles whose code would create a marker file, wrong architecture, wrong
            class count, TorchScript refs to non-TorchScript files); RSS bound 2 GiB.
  detector  recorded Ultralytics architectures (the yaml a detector file stores) mutated with payloads that
            would create a marker file if anything eval()ed or called them (activation strings, module names
            from ultralytics.nn.tasks' globals, string arguments, wrong types and sizes), built the way
            models.detector.load_detector_file builds them (allow-list, then a meta-device size check against
            the demo file's tensors, then Ultralytics); RSS bound 1 GiB.
  data      image folders through complab.data.load_data("imagefolder:DIR") and a pass over every split
            (empty, one class, corrupt/truncated images, non-images, huge declared image dimensions);
            RSS bound 2 GiB.

Run from the repo root (bounded: under 10 minutes on 2 cores):
    .venv/bin/python benchmarks/fuzz_campaign.py [--decoder-cases 100000] [--recipe-cases 50000] [--workers 2]
The last line printed is one JSON object: cases (total and per family), tracebacks, hangs, memory_blowups,
max_rss_mb, executed_code, examples of failures (per family), seconds.
`--selftest` runs 8 planted failures instead (an error, a traceback, a two-line message, a 400 MB allocation,
a marker file, a sleep, a worker exit) to show that the zeros above are measured, not assumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

TIMEOUTS = {"decoder": 10.0, "recipe": 10.0, "model": 120.0, "data": 120.0, "detector": 30.0,
            "selftest": 5.0}  # seconds per case
CHUNKS = {"decoder": 500, "recipe": 500, "model": 1, "data": 1, "detector": 20,
          "selftest": 6}  # cases per task sent to a worker
HARD_RSS_MB = 6144  # the parent kills a worker above this (counted as a memory blow-up)
FAMILY_RSS_BOUND_MB = {"recipe": 256, "model": 2048, "data": 2048, "detector": 1024, "selftest": 200}
MAX_EXAMPLES = 5


# ----------------------------------------------------------------------------------------------- helpers


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _seal(payload: bytes) -> bytes:
    from complab.storage.codec import HEADER, MAGIC

    return HEADER.pack(MAGIC, 1, 0, zlib.crc32(payload), len(payload)) + payload


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


INTERESTING = [0, 1, 2, 3, 7, 8, 12, 13, 63, 64, 127, 128, 255, 256, 257, 4095, 65535, 65536, 2**20, 2**31 - 1,
               2**31, 2**32, 2**40, 2**62, 2**63, 2**64 - 1]
EVIL_VALUES = [None, True, False, 0, -1, 1.5, float("nan"), float("inf"), -float("inf"), 10**30, -(10**30), "",
               "x", "auto", "re:(.*.*)*X", "re:[", "re:(a)\\1", "re:" + "a" * 300, "_default", [], [1], {}, {"a": 1},
               {"_default": 0.5}, {"re:.*": 0.5}, "é\u0000\ud800"[:2], "n" * 5000, [[[[[[[[[[0]]]]]]]]]], 2**31,
               0.999, 1e-300, "linear", "kmeans", "pq", "rq", "binary", "none", "in", "out", 256, 4096, 3]
RESNET18_LAYERS = ["conv1"] + [f"layer{i}.{j}.{part}" for i in range(1, 5) for j in range(2)
                               for part in ("conv1", "conv2")] + [
    f"layer{i}.0.downsample.0" for i in range(2, 5)] + ["fc"]


# ----------------------------------------------------------------------------------------------- decoder family


class DecoderCases:
    """Base files (built once per worker) and the seeded mutation of case i."""

    def __init__(self) -> None:
        import numpy as np
        import torch
        from complab.models.handle import load_model
        from complab.storage import encode_state
        from complab.storage.vq_section import Quantized

        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(16, 12, generator=generator)
        codes = torch.randint(0, 4, (64,), generator=generator).numpy()
        kmeans = Quantized("kmeans", (8, 8), 4, np.array([-1.0, -0.5, 0.5, 1.0], dtype=np.float32), codes)
        pq_codes = torch.randint(0, 4, (6, 2), generator=generator).numpy()
        pq = Quantized("pq", (6, 8), 4, torch.randn(2, 4, 4, generator=generator).numpy(), pq_codes, segment_length=4)
        rq_codes = torch.randint(0, 2, (4, 2), generator=generator).numpy()
        rq = Quantized("rq", (4, 3), 2, torch.randn(2, 2, 3, generator=generator).numpy(), rq_codes, stages=2)
        binary = Quantized("binary", (5, 7), 2, np.array([0.25], dtype=np.float32),
                           torch.randint(0, 2, (35,), generator=generator).numpy())
        from complab.storage.vq_section import reconstruct

        structures = {"kmeans": kmeans, "pq": pq, "rq": rq, "binary": binary}
        demo_meta = {"producer": "fuzz", "task": "classify",
                     "architecture": {"kind": "demo", "name": "lenet300", "num_classes": 10},
                     "input_shape": [1, 28, 28], "num_classes": 10, "label": "fuzz", "mean": [0.1], "std": [0.3],
                     "plan": {"schema_version": 1, "steps": []}, "data": "digits"}
        state = {"raw": weight[:2], "zeros": torch.zeros(300), "ones": torch.ones(70),
                 "pruned": torch.where(weight.abs() > 1, weight, torch.zeros(())),
                 "shared": torch.where(weight.abs() > 0.5, weight.sign() * 0.25, torch.zeros(())),
                 "dense": (torch.randint(0, 4, (8, 16), generator=generator).float() + 1) / 4,
                 "zstd": (torch.arange(4096) % 300).float() / 7, "half": weight[:4].half(),
                 "bool": torch.rand(3, 5, generator=generator) > 0.5, "count": torch.tensor(7),
                 **{name: torch.from_numpy(reconstruct(q)) for name, q in structures.items()}}
        # a real model (LeNet-300-100, 95% pruned, 16 shared values) so decoded files reach the model rebuild
        lenet = {}
        for key, value in load_model("demo:lenet300").model.state_dict().items():
            value = value.detach().clone()
            if value.dim() == 2:
                flat = value.view(-1)
                flat[flat.abs() < flat.abs().quantile(0.95)] = 0
                flat.copy_(torch.round(flat * 8) / 8)
            lenet[key] = value
        self.bases = [encode_state(state, demo_meta, structures=structures),
                      encode_state({"big": torch.arange(4096, dtype=torch.float32) % 3}, {"a": [1, 2]}),
                      encode_state(lenet, demo_meta),
                      (ROOT / "tests" / "fixtures" / "format_v1_sections.clab").read_bytes()]  # the v1 reader path
        self.weights = [6, 2, 2, 2]
        self.parsed = [self._split(base) for base in self.bases]

    @staticmethod
    def _split(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
        """(meta bytes, [(section type, body)]) of a well-formed file."""
        payload = data[24:]
        meta_len, pos = _read_varint(payload, 0)
        meta = payload[pos:pos + meta_len]
        pos += meta_len
        count, pos = _read_varint(payload, pos)
        sections = []
        for _ in range(count):
            type_id = payload[pos]
            body_len, pos = _read_varint(payload, pos + 1)
            sections.append((type_id, payload[pos:pos + body_len]))
            pos += body_len
        return meta, sections

    @staticmethod
    def _join(meta: bytes, sections: list[tuple[int, bytes]], count: int | None = None) -> bytes:
        parts = [_varint(len(meta)), meta, _varint(len(sections) if count is None else count)]
        for type_id, body in sections:
            parts += [bytes([type_id]), _varint(len(body)), body]
        return b"".join(parts)

    def _bytes_op(self, payload: bytearray, rng: random.Random) -> str:
        kind = rng.randrange(7)
        at = rng.randrange(len(payload)) if payload else 0
        if kind == 0 and payload:
            for _ in range(rng.randint(1, 4)):
                payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            return "flip"
        if kind == 1 and payload:
            payload[at] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF])
            return "set"
        if kind == 2:
            payload[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            return "insert"
        if kind == 3:
            del payload[at:at + rng.randint(1, 32)]
            return "delete"
        if kind == 4:
            payload[at:at + rng.randint(0, 2)] = _varint(rng.choice(INTERESTING))
            return "varint"
        if kind == 5:
            payload[at:at + 1] = b"\xff" * rng.randint(1, 11) + bytes([rng.randrange(128)])
            return "overflow"
        del payload[rng.randrange(len(payload) + 1):]
        return "truncate"

    def _body_op(self, body: bytes, rng: random.Random) -> bytes:
        """Edit a section body: its name/dtype/rank/shape header or its encoding bytes (framing kept valid)."""
        try:  # an earlier edit may have broken the header: then only byte-level edits apply
            name_len, pos = _read_varint(body, 0)
            head_end = pos + name_len + 2
            rank = body[head_end - 1]
            dims = []
            cursor = head_end
            for _ in range(min(rank, 8)):
                value, cursor = _read_varint(body, cursor)
                dims.append(value)
        except IndexError:
            out = bytearray(body)
            self._bytes_op(out, rng)
            return bytes(out)
        choice = rng.randrange(5)
        if choice == 0:  # a new shape: bigger, smaller, overflowing
            dims = [rng.choice(INTERESTING) if rng.random() < 0.3 else max(0, d + rng.randint(-2, 2)) for d in dims]
            if rng.random() < 0.2:
                dims.append(rng.choice(INTERESTING))
            rank = len(dims) if rng.random() < 0.9 else rng.randrange(256)
            return (body[:head_end - 1] + bytes([rank]) + b"".join(_varint(d) for d in dims) + body[cursor:])
        if choice == 1:  # dtype code
            out = bytearray(body)
            out[head_end - 2] = rng.randrange(20)
            return bytes(out)
        if choice == 2:  # the encoding's first bytes (flags, gap width, k, quantizer fields)
            out = bytearray(body)
            if cursor < len(out):
                at = cursor + rng.randrange(min(6, len(out) - cursor))
                out[at] = rng.choice([0, 1, 2, 3, 4, 5, 7, 12, 13, 64, 128, 255, rng.randrange(256)])
            return bytes(out)
        out = bytearray(body)
        self._bytes_op(out, rng)
        return bytes(out)

    def _meta_op(self, meta: bytes, rng: random.Random) -> bytes:
        try:
            value = json.loads(meta)
        except ValueError:
            return meta
        if not isinstance(value, dict):
            return meta
        keys = ["architecture", "input_shape", "num_classes", "label", "mean", "std", "channel_pruning", "task",
                "plan", "data"]
        key = rng.choice(keys)
        if key == "architecture" and isinstance(value.get(key), dict) and rng.random() < 0.6:
            sub = dict(value[key])
            sub[rng.choice(["kind", "name", "num_classes", "arch", "kwargs", "filename", "sha256"])] = \
                rng.choice(EVIL_VALUES + ["torchvision", "torchscript", "resnet18", "vit_h_14", {"num_classes": 7}])
            value[key] = sub
        elif key == "channel_pruning":
            value[key] = rng.choice([[["fc1", True, [0, 1]]], [["fc1", 1, [10**9]]], [["nope", True, [0]]],
                                     [[1, 2, 3]], "x", [["fc1", True, list(range(300))]]])
        else:
            value[key] = rng.choice(EVIL_VALUES + [[1, 28, 28], [3, 4096, 4096], [1, 0, 28], [0.5] * 17])
        try:
            return json.dumps(value).encode()
        except ValueError:
            return meta

    def bomb(self, rng: random.Random) -> tuple[bytes, str]:
        """A crafted file declaring a huge tensor in few bytes (the issue's memory bombs and relatives)."""
        numel = rng.choice([2**20, 2**24, 2**26, 2**28, 2**29, 2**31, rng.randrange(1, 2**31)])
        kind = rng.randrange(5)
        if kind == 0:  # dense shared, one-symbol index stream
            specific = bytes([0]) + _varint(1) + struct.pack("<f", 1.0) + _varint(numel) + _varint(0) + _varint(1)
            type_id, shape = 2, [numel]
        elif kind == 1:  # shared with positions: every entry a filler
            gap_bits = rng.randrange(2, 13)
            entries = numel >> gap_bits
            specific = (bytes([1, gap_bits]) + _varint(1) + struct.pack("<f", 1.0) + _varint(entries) + _varint(0)
                        + _varint((1 << gap_bits) - 1) + _varint(entries) + _varint(0) + _varint(0))
            type_id, shape = 2, [numel]
        elif kind == 2:  # zstd frame declaring numel bytes (forged header, one RLE block)
            frame = (struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", numel)
                     + (1 | 2 | ((128 << 10) << 3)).to_bytes(3, "little") + b"\0")
            specific, type_id, shape = bytes([1]) + frame, 1, [numel]
        elif kind == 3:  # vq rq: 64 codes per element from a one-symbol stream
            vectors = max(1, numel >> 6)
            specific = (bytes([4, 1]) + _varint(1) + _varint(0) + _varint(64) + b"\0" * 256
                        + _varint(vectors * 64) + _varint(0) + _varint(0))
            type_id, shape = 4, [vectors, 1]
        else:  # raw, declared but absent
            specific, type_id, shape = bytes([0]), 1, [numel]
        name = b"w"
        body = (_varint(len(name)) + name + bytes([1 if type_id != 1 or kind == 4 else 6, len(shape)])
                + b"".join(_varint(d) for d in shape) + specific)
        meta = json.dumps({"architecture": {"kind": "demo", "name": "lenet300", "num_classes": 10}}).encode()
        return _seal(self._join(meta, [(type_id, body)])), f"bomb{kind}:{numel}"

    def case(self, index: int, seed: int) -> tuple[bytes, str]:
        rng = random.Random(seed * 1_000_003 + index)
        if rng.random() < 0.02:
            return self.bomb(rng)
        which = rng.choices(range(len(self.bases)), self.weights)[0]
        base = self.bases[which]
        meta, sections = self.parsed[which]
        ops = []
        roll = rng.random()
        if roll < 0.01:  # header fields themselves (CRC not recomputed: the cheap checks must catch it)
            out = bytearray(base)
            out[rng.randrange(24)] ^= 1 << rng.randrange(8)
            return bytes(out), f"{which}:header"
        if roll < 0.45:  # structure-aware: edit section bodies, keep the framing valid
            sections = list(sections)
            for _ in range(rng.randint(1, 3)):
                if not sections:
                    break
                at = rng.randrange(len(sections))
                sections[at] = (sections[at][0] if rng.random() < 0.9 else rng.randrange(7),
                                self._body_op(sections[at][1], rng))
                ops.append(f"body{at}")
            payload = bytearray(self._join(meta, sections))
        elif roll < 0.55:  # splice sections: drop, duplicate, swap, wrong count
            sections = list(sections)
            choice = rng.randrange(4)
            if choice == 0 and sections:
                del sections[rng.randrange(len(sections))]
            elif choice == 1 and sections:
                sections.insert(rng.randrange(len(sections) + 1), rng.choice(sections))
            elif choice == 2 and len(sections) > 1:
                i, j = rng.sample(range(len(sections)), 2)
                sections[i], sections[j] = sections[j], sections[i]
            count = len(sections) + rng.choice([-1, 1, 2**20]) if choice == 3 else None
            payload = bytearray(self._join(meta, sections, None if count is None or count < 0 else count))
            ops.append(f"splice{choice}")
        elif roll < 0.62:  # meta values of the wrong type or size
            payload = bytearray(self._join(self._meta_op(meta, rng), sections))
            ops.append("meta")
        else:
            payload = bytearray(base[24:])
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3]) if ops else rng.randint(1, 3)):
            ops.append(self._bytes_op(payload, rng))
        return _seal(bytes(payload)), f"{which}:{'+'.join(ops)}"

    def run(self, index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
        """(outcome, detail, input bytes); outcome ok | error | traceback."""
        from complab.models.compact import handle_from_decoded
        from complab.storage import decode_state, inspect_bytes

        data, what = self.case(index, seed)
        try:
            meta, state = decode_state(data)
            inspect_bytes(data)
            if isinstance(meta.get("architecture"), dict):
                handle_from_decoded(meta, state, source="fuzz.clab")
        except Exception as exc:  # noqa: BLE001 - classifying every outcome is the point
            outcome, detail = _classify(exc)
            if outcome != "error":
                path = Path(out_dir) / f"decoder-{seed}-{index}.clab"
                path.write_bytes(data)
                detail = f"{what} ({path}): {detail}"
            return outcome, detail, len(data)
        return "ok", what, len(data)


def _classify(exc: BaseException) -> tuple[str, str]:
    from complab.errors import CompressionLabError

    if isinstance(exc, CompressionLabError):
        message = str(exc)
        if "\n" in message or not message:
            return "traceback", f"multi-line or empty {type(exc).__name__}: {message[:300]!r}"
        return "error", message[:200]
    frames = traceback.extract_tb(exc.__traceback__)
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:])
    return "traceback", f"{type(exc).__name__}: {str(exc)[:200]} at {where}"


# ----------------------------------------------------------------------------------------------- recipe family


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -1, 2**31, 10**20, rng.randrange(-1000, 1000)])
    if kind == 2:
        return rng.choice([0.5, -0.0, 1e308, float("nan"), float("inf"), rng.random()])
    if kind in (3, 4):
        return rng.choice(["", "prune", "cluster", "re:.*", "_default", "auto", "x" * rng.randrange(50)])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["schema_version", "name", "seed", "eval_split", "steps", "type", "sparsity", "n_clusters", "_default",
            "re:conv.*", "quantizer", "keep_ratio", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _valid_recipe(rng: random.Random) -> dict:
    steps = [{"type": "prune", "sparsity": {"_default": 0.5, "re:layer[12]\\..*": 0.8, "fc": 0.3},
              "iterations": 1, "finetune_epochs": 0},
             {"type": "cluster", "n_clusters": {"_default": 16, "re:.*conv1": "auto"}, "init": "linear"},
             {"type": "quantize", "quantizer": {"re:layer4.*": "kmeans"}, "n_codewords": {"_default": 16}},
             {"type": "channels", "keep_ratio": {"re:layer1\\.0\\.conv1": 0.5}, "selection": "l1"},
             {"type": "distill", "temperature": 4.0, "alpha": 0.7, "epochs": 0},
             {"type": "fold_bn"}]
    chosen = [steps[0], steps[1]] if rng.random() < 0.5 else [steps[3], steps[0], steps[4], steps[2]]
    if rng.random() < 0.3:
        chosen.append(steps[5])
    return {"schema_version": 1, "name": "fuzz", "seed": 0, "eval_split": "test",
            "steps": json.loads(json.dumps(chosen))}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, prefix + (index,))


def _recipe_case(index: int, seed: int) -> tuple[bytes | str, str]:
    rng = random.Random(seed * 1_000_003 + index)
    roll = rng.random()
    if roll < 0.15:
        return json.dumps(_random_json(rng)), "random-json"
    if roll < 0.2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), "random-bytes"
    recipe = _valid_recipe(rng)
    if roll < 0.25:
        text = json.dumps(recipe).encode()
        return text[:rng.randrange(len(text))] + (b"\xff\xfe" if rng.random() < 0.5 else b""), "truncated/non-utf8"
    if roll < 0.27:
        depth = rng.choice([50, 1000, 100_000])
        return "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth, "deep"
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(recipe))[1:]
        path = rng.choice(paths)
        parent = recipe
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.2:  # a new key (layer name, pattern, unknown setting)
            parent[rng.choice(["re:(.*.*)*X", "re:(a|a)*b", "re:[", "re:(?=x)", "nope", "fc", "x" * 2000,
                               "re:" + ".*" * 60, "re:(?:(?:a{100}){100})", "re:" + "x" * 201])] = 0.5
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(EVIL_VALUES))
    if rng.random() < 0.01:
        recipe["name"] = "n" * rng.choice([201, 10**6, 2 * 10**6])
    try:
        return json.dumps(recipe), "schema"
    except ValueError:
        return json.dumps(_valid_recipe(rng)), "schema"


def run_recipe(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    from complab.plan import Plan, resolve_all

    text, what = _recipe_case(index, seed)
    try:
        plan = Plan.from_json(text)
        plan.validate(RESNET18_LAYERS)
        for step in plan.steps:
            for name in step.per_layer:
                resolve_all(getattr(step, name), RESNET18_LAYERS)
        again = Plan.from_json(plan.to_json())
        if again != plan:
            return "traceback", f"{what}: the plan does not round-trip through JSON", len(text)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome != "error":
            path = Path(out_dir) / f"recipe-{seed}-{index}.json"
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
            detail = f"{what} ({path}): {detail}"
        return outcome, detail, len(text)
    return "ok", what, len(text)


# ----------------------------------------------------------------------------------------------- model family


def _marker_pickle(marker: Path) -> bytes:
    """A pickle whose loading would create `marker` (os.system touch)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"fc.weight": Evil()}, protocol=2)


def _model_cases(work: Path, markers: Path) -> list[tuple[str, str, str | None, int | None]]:
    """(description, model ref, weights path or None, input_size): files written into work/."""
    import io
    import zipfile

    import torch
    import torchvision
    from safetensors.torch import save_file

    work.mkdir(parents=True, exist_ok=True)
    cases = []

    def write(name: str, data: bytes) -> str:
        path = work / name
        path.write_bytes(data)
        return str(path)

    model = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(work / "good.safetensors"))
    good = (work / "good.safetensors").read_bytes()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    good_pt = buffer.getvalue()
    tv = "torchvision:mobilenet_v3_small"
    for suffix in (".pt", ".pth", ".safetensors", ".bin"):
        cases.append((f"zero bytes {suffix}", tv, write(f"empty{suffix}", b""), None))
    for fraction in (0.0001, 0.001, 0.01, 0.3, 0.9, 0.999):
        cut = max(1, int(len(good) * fraction))
        cases.append((f"safetensors truncated at {cut}", tv, write(f"trunc{cut}.safetensors", good[:cut]), None))
        cut_pt = max(1, int(len(good_pt) * fraction))
        cases.append((f".pt truncated at {cut_pt}", tv, write(f"trunc{cut_pt}.pt", good_pt[:cut_pt]), None))
    header_len = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + header_len])
    forged = [("header length 2**63", struct.pack("<Q", 2**63) + good[8:]),
              ("header not JSON", struct.pack("<Q", 16) + b"{not json......." + good[24:]),
              ("header length past end", struct.pack("<Q", len(good)) + good[8:])]
    for key, edit in (("dtype", {"dtype": "F99"}), ("shape", {"shape": [10**6, 10**6]}),
                      ("offsets", {"data_offsets": [0, 2**40]}), ("negative", {"shape": [-1]})):
        bad = json.loads(json.dumps(header))
        first = next(k for k in bad if k != "__metadata__")
        bad[first].update(edit)
        text = json.dumps(bad).encode()
        forged.append((f"safetensors header {key}", struct.pack("<Q", len(text)) + text + good[8 + header_len:]))
    for name, data in forged:
        cases.append((name, tv, write(f"forged-{name.replace(' ', '_')}.safetensors", data), None))
    # pickles with code: plain, inside a torch zip, as a TorchScript archive, behind a state_dict key
    plain = _marker_pickle(markers / "plain")
    cases.append(("pickle with code (.pt)", tv, write("evil.pt", plain), None))
    cases.append(("pickle with code (.pkl)", tv, write("evil.pkl", _marker_pickle(markers / "pkl")), None))
    zipped = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, zipped)
    with zipfile.ZipFile(io.BytesIO(zipped.getvalue())) as source:
        names = source.namelist()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as target:
            for name in names:
                data = source.read(name)
                if name.endswith("data.pkl"):
                    data = _marker_pickle(markers / "zip")
                target.writestr(name, data)
    cases.append(("torch zip whose data.pkl runs code", tv, write("evil-zip.pt", out.getvalue()), None))
    evil_ts = write("evil-ts.pt", _marker_pickle(markers / "ts"))
    cases.append(("torchscript ref to a code pickle", f"torchscript:{evil_ts}", None, 28))
    cases.append(("torchscript ref to a torch zip with code", f"torchscript:{work / 'evil-zip.pt'}", None, 28))
    cases.append(("torchscript ref to zero bytes", f"torchscript:{write('empty-ts.pt', b'')}", None, 28))
    cases.append(("torchscript ref to safetensors", f"torchscript:{work / 'good.safetensors'}", None, 28))
    cases.append(("torchscript ref to a folder", f"torchscript:{work}", None, 28))
    # wrong architecture, wrong class count, odd contents
    cases.append(("mobilenet weights as resnet18", "torchvision:resnet18", str(work / "good.safetensors"), None))
    cases.append(("mobilenet weights as an unknown architecture", "torchvision:not_a_model",
                  str(work / "good.safetensors"), None))
    cases.append(("demo weights as torchvision", "torchvision:resnet18", str(ROOT / "assets" / "lenet5.safetensors"),
                  None))
    head = [k for k in state if k.endswith("weight") and state[k].dim() == 2][-1]
    for name, edit in (("0 classes", lambda s: {**s, head: s[head][:0], head[:-6] + "bias": s[head[:-6] + "bias"][:0]}),
                       ("bias/weight class counts differ",
                        lambda s: {**s, head[:-6] + "bias": torch.zeros(9)}),
                       ("head of 1-D weight", lambda s: {**s, head: torch.zeros(7)}),
                       ("int tensors", lambda s: {k: v.to(torch.int64) for k, v in s.items()}),
                       ("missing tensors", lambda s: dict(list(s.items())[:5])),
                       ("extra tensors", lambda s: {**s, "extra.weight": torch.zeros(3)})):
        edited = {k: v.contiguous() for k, v in edit(state).items()}
        save_file(edited, str(work / f"{name.replace(' ', '_').replace('/', '_')}.safetensors"))
        cases.append((f"wrong class count/contents: {name}", tv,
                      str(work / f"{name.replace(' ', '_').replace('/', '_')}.safetensors"), None))
    for name, obj in (("a list", [1, 2]), ("nested non-tensors", {"state_dict": {"a": 1}}),
                      ("a tensor", torch.zeros(3)), ("empty dict", {})):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        cases.append((f".pt holding {name}", tv, write(f"odd-{name.replace(' ', '_')}.pt", buffer.getvalue()), None))
    cases.append(("random bytes .pt", tv, write("random.pt", random.Random(1).randbytes(4096)), None))
    cases.append(("a zip that is not torch", tv, write("notorch.pt", _zip_bytes()), None))
    cases.append(("weights path is a folder", tv, str(work), None))
    cases.append(("weights path missing", tv, str(work / "missing.pt"), None))
    cases.append(("no weights", tv, None, None))
    cases.append(("input size 0", tv, str(work / "good.safetensors"), 0))
    cases.append(("input size -5", tv, str(work / "good.safetensors"), -5))
    cases.append(("demo unknown", "demo:nope", None, None))
    cases.append(("ref without kind", "resnet18", None, None))
    return cases


def _zip_bytes() -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        target.writestr("hello.txt", "not a model")
    return out.getvalue()


def run_model(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    from complab.models.handle import load_model

    description, ref, weights, input_size = _MODEL_CASES[index]
    size = Path(weights).stat().st_size if weights and Path(weights).is_file() else 0
    try:
        load_model(ref, weights, input_size=input_size)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{description} [load_model({ref!r}, {weights!r}, input_size={input_size})]: {detail}", size
    return "ok", description, size


# ----------------------------------------------------------------------------------------------- data family


def _png(width: int, height: int, rng: random.Random, mode: str = "RGB") -> bytes:
    import io

    from PIL import Image

    image = Image.new(mode, (width, height), color=tuple(rng.randrange(256) for _ in range(len(mode)))
                      if len(mode) > 1 else rng.randrange(256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _data_cases(work: Path) -> list[tuple[str, str]]:
    """(description, folder): folders written into work/."""
    rng = random.Random(5)
    cases = []

    def folder(name: str, files: dict[str, bytes]) -> str:
        root = work / name
        root.mkdir(parents=True, exist_ok=True)
        for relative, data in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return str(root)

    def good(classes=("a", "b"), per_class=5, prefix=""):
        return {f"{prefix}{c}/{i}.png": _png(12, 12, rng) for c in classes for i in range(per_class)}

    cases.append(("empty folder", folder("empty", {})))
    cases.append(("only files, no class folders", folder("flat", {"0.png": _png(8, 8, rng), "1.png": _png(8, 8, rng)})))
    cases.append(("one class", folder("one-class", good(classes=("a",)))))
    cases.append(("empty class folders", folder("empty-classes", {"a/.keep": b"", "b/.keep": b""})))
    cases.append(("two images in total", folder("two-images", good(per_class=1))))
    corrupt = good()
    corrupt["a/bad.png"] = rng.randbytes(200)
    cases.append(("a corrupt .png", folder("corrupt", corrupt)))
    truncated = good()
    truncated["b/trunc.png"] = _png(64, 64, rng)[:60]
    cases.append(("a truncated .png", folder("truncated", truncated)))
    text = good()
    text["a/notes.txt"] = b"hello"
    text["b/readme.png"] = b"this is text, not an image"
    cases.append(("non-image files", folder("non-images", text)))
    cases.append(("only non-images", folder("only-text", {"a/x.txt": b"x", "b/y.csv": b"1,2"})))
    huge = good()
    huge["a/huge.png"] = _png_declaring(100_000, 100_000)
    cases.append(("huge declared dimensions (1e10 px)", folder("huge", huge)))
    wide = good()
    wide["b/wide.png"] = _png_declaring(2**31 - 1, 1)
    cases.append(("2**31-1 x 1 declared", folder("wide", wide)))
    real_big = good()
    real_big["a/big.png"] = _png(6000, 6000, rng)
    cases.append(("a real 6000x6000 image", folder("big-real", real_big)))
    modes = good()
    modes["a/gray.png"] = _png(12, 12, rng, "L")
    modes["b/rgba.png"] = _png(12, 12, rng, "RGBA")
    modes["b/one.png"] = _png(1, 1, rng)
    cases.append(("grayscale, RGBA and 1x1 images", folder("modes", modes)))
    split = {**good(prefix="train/"), **good(classes=("a", "c"), prefix="val/")}
    cases.append(("train/val with different classes", folder("split-mismatch", split)))
    cases.append(("train without val", folder("train-only", good(prefix="train/"))))
    cases.append(("val empty", folder("val-empty", {**good(prefix="train/"), "val/a/.keep": b"", "val/b/.keep": b""})))
    corrupt_val = {**good(prefix="train/"), **good(prefix="val/")}
    corrupt_val["val/a/bad.png"] = b"\x89PNG\r\n\x1a\n" + rng.randbytes(40)
    cases.append(("corrupt image in val split", folder("corrupt-val", corrupt_val)))
    link_root = Path(folder("symlink-loop", good()))
    try:
        (link_root / "a" / "loop").symlink_to(link_root, target_is_directory=True)
    except OSError:
        pass
    cases.append(("symlink loop", str(link_root)))
    cases.append(("missing folder", str(work / "missing")))
    (work / "a-file").write_bytes(b"x")
    cases.append(("a file, not a folder", str(work / "a-file")))
    return cases


def run_data(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    from complab.data import load_data

    description, path = _DATA_CASES[index]
    try:
        data = load_data(f"imagefolder:{path}", input_size=28)
        for split in ("train", "val", "test"):
            for _ in data.loader(split, batch_size=16):
                pass
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{description} [load_data('imagefolder:{path}', input_size=28)]: {detail}", 0
    return "ok", description, 0


# ----------------------------------------------------------------------------------------------- self-test


_HOLD = []


def run_selftest(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    """--selftest: one case of each failure the campaign must see (ok, error, traceback, multi-line, memory,
    executed code, hang, worker death), so its zeros are known to mean something."""
    from complab.errors import FormatError

    if index == 0:
        return "ok", "nothing", 0
    try:
        if index == 1:
            raise FormatError("one line")
        if index == 2:
            raise ValueError("a plain traceback")
        if index == 3:
            raise FormatError("two\nlines")
        if index == 4:
            _HOLD.append(bytearray(400 << 20))  # 400 MB kept: over the 200 MB bound
            return "ok", "allocated", 0
        if index == 5:
            (Path(out_dir).parent / "markers" / "selftest").touch()
            return "ok", "marker", 0
        if index == 6:
            time.sleep(3600)
        os._exit(3)
    except Exception as exc:  # noqa: BLE001
        return (*_classify(exc), 0)


# ----------------------------------------------------------------------------------------------- detector family


_DETECTOR: dict = {}


def _detector_case(index: int, seed: int, marker: Path) -> tuple[dict, str]:
    """The demo detector's recorded architecture with 1-3 hostile or malformed edits."""
    from complab.models.yolo_arch import MODULES

    if not _DETECTOR:
        from complab.models.detector import load_detector
        from complab.models.yolo_env import offline_ultralytics

        offline_ultralytics()
        import ultralytics.nn.tasks as tasks

        handle = load_detector()
        _DETECTOR.update(arch=handle.architecture, stored=sum(t.numel() for t in handle.model.state_dict().values()),
                         globals=sorted(vars(tasks)))
    rng = random.Random(seed * 1_000_003 + index)
    arch = copy.deepcopy(_DETECTOR["arch"])
    evil = f"__import__('os').system('touch {marker}') or __import__('torch').nn.SiLU()"
    values = [evil, f"exec({evil!r})", "nc", "None", "nearest", -1, 0, 1, 3, 2**31, 2**70, 1e308, float("nan"),
              float("inf"), [evil], [1, [2, [3]]], {"a": 1}, None, True, "x" * 10_000, 0.5, [], "ch", "d", "__class__"]
    names = _DETECTOR["globals"] + sorted(MODULES) + ["nn.Module", "nn.functional", "torchvision.ops.nms",
                                                       "nn.Upsample", "eval", "exec", "__import__", "os.system"]
    edits = []
    for _ in range(rng.randint(1, 3)):
        yaml = arch.get("yaml")
        if not isinstance(yaml, dict):  # an earlier edit replaced the whole yaml: only the record itself is left
            yaml = {}
        rows = [r for part in ("backbone", "head") if isinstance(yaml.get(part), list) for r in yaml[part]]
        rows = [r for r in rows if isinstance(r, list) and len(r) == 4]
        op = rng.randrange(10)
        if op == 0:
            yaml["activation"] = rng.choice([evil, "nn.SiLU()", "nn.LeakyReLU(0.1)", "nn.ReLU(inplace=True)",
                                             "nn.SiLU() or 1", "torch.nn.Hardswish()", rng.choice(values)])
        elif op in (1, 2) and rows:
            rng.choice(rows)[2] = rng.choice(names)
        elif op == 3 and rows:
            row = rng.choice(rows)
            if isinstance(row[3], list) and row[3]:
                row[3][rng.randrange(len(row[3]))] = rng.choice(values)
        elif op == 4 and rows:
            rng.choice(rows)[rng.randrange(4)] = rng.choice(values)
        elif op == 5:
            key = rng.choice(["nc", "scales", "scale", "channels", "reg_max", "depth_multiple", "width_multiple",
                              "backbone", "head", "end2end", "yaml_file", "__init__", "kpt_shape"])
            yaml[key] = rng.choice(values + [{"n": [1, 4.0, 65536]}, {"n": [evil, 1, 1]}])
        elif op == 6:
            arch["names"] = rng.choice([{0: evil}, {"x": "a"}, [1, 2], {str(i): "c" for i in range(3)}, None,
                                        {i: "c" for i in range(200_000)}])
        elif op == 7 and rows:
            rng.choice(rows)[0] = rng.choice([-100, 10**6, [-1, 99], "-1", [], [-1] * 40, [evil]])
        elif op == 8 and isinstance(yaml.get("head"), list):
            yaml["head"] = yaml["head"] * rng.choice([0, 2, 60])
        elif op == 9:
            arch[rng.choice(["kind", "yaml"])] = rng.choice(values)
        edits.append(op)
    return arch, f"edits {edits}"


def run_detector(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    from complab.models.detector import build_detector

    marker = Path(out_dir).parent / "markers" / f"detector-{seed}-{index}"
    arch, what = _detector_case(index, seed, marker)
    try:
        build_detector(arch, max_elements=2 * _DETECTOR["stored"] + 100_000)  # what load_detector_file allows
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome != "error":
            detail = f"{what}: {detail}"
        return outcome, detail, 0
    return "ok", what, 0


# ----------------------------------------------------------------------------------------------- workers


_MODEL_CASES: list = []
_DATA_CASES: list = []


def _bound_mb(family: str, size: int) -> float:
    if family == "decoder":
        from complab.storage.codec import decode_allowance

        return 64 + 8 * decode_allowance(size) / 2**20
    return FAMILY_RSS_BOUND_MB[family]


def _worker(conn, progress, work: str) -> None:
    """Runs tasks (family, seed, [indices]) and answers [(index, outcome, detail, rss_growth_mb, bound_mb)]."""
    import torch

    torch.set_num_threads(1)
    global _MODEL_CASES, _DATA_CASES
    decoder = None
    runners = {"recipe": run_recipe, "model": run_model, "data": run_data, "detector": run_detector,
               "selftest": run_selftest}
    baseline = None
    while True:
        task = conn.recv()
        if task is None:
            return
        family, seed, indices = task
        if family == "decoder" and decoder is None:
            decoder = DecoderCases()
        if family == "model" and not _MODEL_CASES:  # each worker writes its own copy of the inputs
            _MODEL_CASES = _model_cases(Path(work) / f"models-{os.getpid()}", Path(work) / "markers")
        if family == "data" and not _DATA_CASES:
            _DATA_CASES = _data_cases(Path(work) / f"data-{os.getpid()}")
        if baseline is None:
            baseline = _peak_mb()
        results = []
        for index in indices:
            progress[0] = index
            progress[1] = time.monotonic()
            before = _peak_mb()
            try:
                if family == "decoder":
                    outcome, detail, size = decoder.run(index, seed, str(Path(work) / "failures"))
                else:
                    outcome, detail, size = runners[family](index, seed, str(Path(work) / "failures"))
            except Exception as exc:  # noqa: BLE001 - a bug in this script's case generation, not in the target
                outcome, detail, size = "harness", _classify(exc)[1], 0
            after = _peak_mb()
            growth = after - baseline if after > before else 0.0
            results.append((index, outcome, detail, growth, _bound_mb(family, size)))
        progress[1] = 0.0
        conn.send((results, _peak_mb()))


class Pool:
    """Worker processes with a per-case watchdog: a case past its timeout is a hang, its worker is replaced."""

    def __init__(self, workers: int, work: Path) -> None:
        self.context = mp.get_context("spawn")
        self.work = work
        self.slots = [self._start() for _ in range(workers)]
        self.peak_mb = 0.0

    def _start(self):
        parent, child = self.context.Pipe()
        progress = self.context.Array("d", [-1.0, 0.0], lock=False)
        process = self.context.Process(target=_worker, args=(child, progress, str(self.work)), daemon=True)
        process.start()
        return {"process": process, "conn": parent, "progress": progress, "task": None, "sent": 0.0}

    @staticmethod
    def _rss_mb(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def run(self, family: str, seed: int, indices: list[int], deadline: float, on_result) -> int:
        """Run the cases (chunked); calls on_result(index, outcome, detail, growth, bound) for each; returns done."""
        pending = [indices[i:i + CHUNKS[family]] for i in range(0, len(indices), CHUNKS[family])]
        done = 0
        while pending or any(slot["task"] for slot in self.slots):
            if time.monotonic() > deadline:
                pending.clear()
            for number, slot in enumerate(self.slots):
                if slot["task"] is None and pending and time.monotonic() < deadline:
                    slot["task"] = pending.pop(0)
                    slot["progress"][1] = 0.0
                    slot["conn"].send((family, seed, slot["task"]))
                    slot["sent"] = time.monotonic()
                if slot["task"] is None:
                    continue
                if slot["conn"].poll(0.02):
                    try:
                        results, peak = slot["conn"].recv()
                    except EOFError:
                        results, peak = None, 0.0
                    if results is not None:
                        self.peak_mb = max(self.peak_mb, peak)
                        for result in results:
                            on_result(*result)
                        done += len(results)
                        slot["task"] = None
                        continue
                started = slot["progress"][1]
                rss = self._rss_mb(slot["process"].pid)
                self.peak_mb = max(self.peak_mb, rss)
                stuck = started and time.monotonic() - started > TIMEOUTS[family]
                dead = not slot["process"].is_alive()
                if stuck or dead or rss > HARD_RSS_MB:
                    index = int(slot["progress"][0])
                    kind = "hang" if stuck else "memory" if rss > HARD_RSS_MB else "traceback"
                    detail = {"hang": f"no answer after {TIMEOUTS[family]} s",
                              "memory": f"worker RSS {rss:.0f} MB > {HARD_RSS_MB} MB",
                              "traceback": f"worker died (exit code {slot['process'].exitcode})"}[kind]
                    if index in slot["task"]:
                        on_result(index, kind, detail, 0.0, HARD_RSS_MB)
                        done += 1
                        rest = slot["task"][slot["task"].index(index) + 1:]
                        if rest:
                            pending.insert(0, rest)
                    slot["process"].kill()
                    slot["process"].join()
                    self.slots[number] = self._start()
            if time.monotonic() > deadline + max(TIMEOUTS.values()) + 60:
                break
        return done

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot["conn"].send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot["process"].join(timeout=10)
            if slot["process"].is_alive():
                slot["process"].kill()


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-cases", type=int, default=100_000)
    parser.add_argument("--recipe-cases", type=int, default=50_000)
    parser.add_argument("--detector-cases", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting new cases after this")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (failing inputs) afterwards")
    parser.add_argument("--list", action="store_true", help="print every model and data case's outcome (stderr)")
    parser.add_argument("--selftest", action="store_true",
                        help="only check the harness: 8 cases that must count as 1 ok + 1 error, 2 tracebacks, "
                             "1 memory blow-up, 1 executed code, 1 hang and 1 worker death (a traceback)")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="clab-fuzz-"))
    (work / "failures").mkdir()
    (work / "markers").mkdir()
    families = ("selftest",) if args.selftest else ("decoder", "recipe", "model", "data", "detector")
    stats = {family: {"cases": 0, "ok": 0, "error": 0, "traceback": 0, "hang": 0, "memory": 0, "harness": 0}
             for family in families}
    examples: dict[str, list[str]] = {family: [] for family in stats}
    over_bound = {family: 0 for family in stats}
    worst_growth = {family: 0.0 for family in stats}

    def record(family: str):
        def on_result(index, outcome, detail, growth, bound):
            entry = stats[family]
            worst_growth[family] = max(worst_growth[family], growth)
            if outcome in ("ok", "error") and growth > bound:
                over_bound[family] += 1
                outcome, detail = "memory", f"peak RSS grew {growth:.0f} MB > bound {bound:.0f} MB: {detail}"
            entry["cases"] += 1
            entry[outcome] += 1
            if outcome not in ("ok", "error") and len(examples[family]) < MAX_EXAMPLES:
                examples[family].append(f"case {index}: {outcome}: {detail}")
            if outcome in ("traceback", "hang", "memory", "harness") or (args.list and family in ("model", "data")):
                print(f"[{family}] case {index}: {outcome}: {detail}", file=sys.stderr, flush=True)
        return on_result

    pool = Pool(args.workers, work)
    try:
        # the slow families first (few cases), then the recipe parser, then the decoder fills the budget
        from complab.data import folders  # noqa: F401 - fail here, not in a worker, if imports break

        plan = [("model", 0, None), ("data", 0, None), ("detector", args.detector_cases, None),
                ("recipe", args.recipe_cases, None), ("decoder", args.decoder_cases, None)]
        if args.selftest:
            plan = [("selftest", 8, None)]
        for family, count, _ in plan:
            family_start = time.monotonic()
            if family == "model":
                count = _count_cases(work, "model")
            elif family == "data":
                count = _count_cases(work, "data")
            pool.run(family, args.seed, list(range(count)), deadline, record(family))
            print(f"[{family}] {stats[family]['cases']} cases in {time.monotonic() - family_start:.0f} s: "
                  f"{stats[family]}", file=sys.stderr, flush=True)
    finally:
        pool.close()
    executed = sorted(p.name for p in (work / "markers").iterdir())
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    total = {key: sum(entry[key] for entry in stats.values()) for key in ("cases", "traceback", "hang", "memory")}
    result = {
        "cases": {"total": total["cases"], **{family: entry["cases"] for family, entry in stats.items()}},
        "tracebacks": {"total": total["traceback"], **{f: e["traceback"] for f, e in stats.items()}},
        "hangs": {"total": total["hang"], **{f: e["hang"] for f, e in stats.items()}},
        "memory_blowups": {"total": total["memory"], **{f: e["memory"] for f, e in stats.items()}},
        "harness_errors": sum(e["harness"] for e in stats.values()),
        "max_rss_mb": round(max(pool.peak_mb, children_peak), 1),
        "worst_case_rss_growth_mb": {f: round(g, 1) for f, g in worst_growth.items()},
        "executed_code": len(executed),
        "executed_markers": executed,
        "outcomes": stats,
        "examples": {family: items for family, items in examples.items() if items},
        "timeouts_s": TIMEOUTS,
        "seconds": round(time.monotonic() - start, 1),
        "work_folder": str(work) if args.keep else None,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def _count_cases(work: Path, family: str) -> int:
    """Number of model / data cases (the lists are built in the workers; this builds them once here to count)."""
    scratch = work / f"count-{family}"
    if family == "model":
        return len(_model_cases(scratch, scratch / "markers"))
    return len(_data_cases(scratch))


if __name__ == "__main__":
    main()
