"""Fuzzing campaign: the compact-file decoder, the recipe parser, uploaded model files, dataset folders, and every
door a received file or link comes through (issue 24): TorchScript, run folders, dataset yamls, image folders, app
links, sensitivity reports and recipe automata.

Every case must end in a CompressionLabError with a one-line message (or succeed): anything else is a
traceback; a case running past its family's timeout is a hang (the worker is killed and replaced); a case
that raises its worker's peak RSS above a bound set from the input's size is a memory blow-up. Every case runs
with its cwd in the campaign's work folder (temporary files and the data home inside it); crafted payloads aim at
a sentinel folder next to it (OUTSIDE, never inside the work folder): a file created or changed there is a file
written outside, and a marker under OUTSIDE/markers is executed code. A case that accepts what it must refuse
(a link opening a folder outside the data home, a report solved from non-finite numbers, a run's text inside the
report's <script>, a deleted run still listed as present) is an unsafe accept.

Families:
  int       compact files with integer sections (type 7): LeNet-5 with every layer on 2-8-bit levels (per channel
            and per tensor, a pruned layer in the positions layout) and its 8-bit activation table in the meta, and
            small synthetic int sections, mutated where the int encoding lives (bits out of range, unknown flags,
            scale counts, NaN / infinite / zero / negative scales, truncated and bit-flipped levels, one-symbol
            streams claiming 2**31 levels, positions blocks past the tensor, dtype and shape) and in the activation
            table (wrong types, NaN, zero points past 255, names that are no module, 100,001 entries), plus crafted
            files declaring a huge int tensor in a few bytes; through decode_state (structures handed back),
            inspect_bytes and models.compact.handle_from_decoded (hooks installed). An accepted file whose levels
            are out of range, whose tensor is not scales x levels, or whose hooks hold a bad (scale, zero point) is
            an unsafe accept. RSS bound as for decoder.
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
  The doors (issue 24; 10 s per case; each reaches the library through one adapter, door_<family>, to re-point
  when a door's entry point changes):
  torchscript  scripted modules whose forward or __setstate__ writes a file with torch.from_file(shared=True)
            (absolute and cwd-relative paths, a victim file), loaded without trust; the benign archive and its
            mutations (zip bytes, code text edited or injected with a writer, members edited, removed,
            resized, duplicated) with and without trust; through sources.check + sources.load_model
            (`run --model torchscript:FILE [--trust]`). Untrusted files must be refused before loading; with
            trust a file's code running is what trust means, so the archives that write files are only ever
            given without trust (a marker or file written by them is counted); the app's worker-process loading
            (complab.codeload) is not fuzzed. RSS bound 1 GiB.
  runfolder a finished engine run folder (real model.clab) received with a pickled original and trust in its
            job.json (relative and absolute), a script in metrics.json, wrong types in metrics.json/job.json,
            and mutated job/metrics/state/plan/events files, deleted after a first listing; each through one
            door: `complab runs`, `complab report FOLDER`, the Compare page's loading
            functions headless, or the Runs and Compare pages themselves (AppTest, every 10th case and the
            reproductions). RSS bound 1 GiB.
  yaml      YOLO data yamls: download: scripts (Python and bash) with a missing split entry, splits as lists,
            ints, mappings, files, paths outside, 100,000 names, nc disagreeing, 10,000-deep nesting, a billion
            laughs, python tags, 1 MB, non-UTF-8; through load_detection_data and Ultralytics' validation
            (`eval FILE --data yolo:data.yaml`). RSS bound 2 GiB.
  clab      compact files of a few hundred bytes naming a big architecture (regnet_y_128gf, vgg19, vit_h_14,
            convnext_large with a million classes) or a big recorded input (squeezenet1_0 with a channel-pruning
            record at 3x2048x2048, resnet18 at 4096, mobilenet_v3_small at 8192), 300 bytes of garbage, and those
            metas with one value changed; through sources.load_file and `complab export FILE OUT.onnx`.
            RSS bound 1 GiB (the parent kills a worker past 3 GiB).
  folders   image folders with symlink cycles (parent, self, mutual, deep, the split root), a link outside,
            /dev/zero and a FIFO as images, tens of thousands of files or class folders, 120-deep folders,
            missing or mismatched splits, odd names, CIFAR batches that run code or hold 2 million labels;
            through load_data and a pass over every split. RSS bound 2 GiB.
  links     URL query dicts (model, data, arch, size, present, image, run) with unicode digits ('²', '٣٢'),
            huge numbers, paths (/etc, /root, ../.., ~, the sentinel folder, a root the owner shares with
            --data-root), uploads that exist or not; through complab.ui.links (link_int, link_image_index,
            link_run_id, link_presenting, data_roots, link_data_problem), complab.ui.state.spec_from_link and the
            checks before loading. A spec whose data lies outside the data home and the owner's roots is an unsafe
            accept. RSS bound 256 MiB.
  sensitivity  a LeNet-300-100 sensitivity report mutated (wrong types, non-finite and out-of-range numbers,
            odd grid keys, missing keys, random JSON/bytes, deep nesting) plus a few huge ones; through the
            schema reader (complab.analysis.sensitivity_report.read_report, check_report), the solver's plan for
            ratio 10 and the accuracy prediction. RSS bound 256 MiB.
  keys      complab.engine.keys.data_fingerprint (the reuse key's data part) on crafted folders and yamls: link
            cycles, links out, a FIFO and /dev/zero as image, yaml and split, billion-laugh and nested aliases,
            20,000-deep nesting, NUL bytes, ~nosuchuser, 120,000-line image lists, non-string references, and
            random mixes of them; it must return a sha256 hex string or None, never raise. RSS bound 256 MiB.
  automaton recipes whose re: keys compile to big automata ((.*){900}(.?){300}..., 20 keys, 8 KB and 1 MiB
            of them, nested counts) and random keys from densenet121's name parts; Plan validation and
            resolution against densenet121's 121 layer names (the Plan page's Load recipe). RSS bound 256 MiB.
  lineage   the Compare page's map (issue 28): listed runs whose job origins loop, name themselves, unknown or later
            runs, huge strings or wrong types, rows and sweeps of the wrong shape, 5,000-run chains and a 3,000-run
            cycle, through analysis.lineage.experiment_graph; two recipes of assets/recipes mutated (or hostile JSON)
            through recipe_diff with LeNet-5's, ResNet-18's or hostile layer names. A graph that loops, leaves
            itself, or follows an origin that is not an earlier listed run of the model is an unsafe accept.
            RSS bound 256 MiB.
  behaviour cached behaviour diffs (issue 28; <data folder>/behaviour/KEY.json): a real classifier diff and a
            detector diff mutated (wrong types, non-finite and out-of-range numbers, counts past the split, missing
            keys, random JSON/bytes, deep nesting) plus a 40 MB file and 1,000-class matrices; through the cache's
            one reader (complab.analysis.behaviour_cache.read_cached) and `complab diff`'s summary of a dict it
            returns. A damaged file must read as None (recomputed), never raise. RSS bound 512 MiB.

Run from the repo root (bounded: under 10 minutes on 2 cores):
    .venv/bin/python benchmarks/fuzz_campaign.py [--decoder-cases 100000] [--recipe-cases 50000] [--workers 2]
        [--families links,sensitivity,...] [--keep]
The slow families run first and stop --reserve-s (150 s) before the budget (540 s) ends; the cheap ones
(sensitivity, drafts, links, recipe, int, decoder) carry the case count. The last line printed is one JSON object: cases
(total and per family), tracebacks, hangs, memory_blowups, executed_code, files_written_outside (files created or
changed outside the work folder: OUTSIDE, the repository, new .pth files in site-packages),
worst_rss_growth_per_kb_mb (the largest per-case peak-RSS growth of an input under 4 KB; Linux's VmHWM is reset
before each case), small_inputs_over_256mb, unsafe_accepts, max_rss_mb, outcomes and failure_kinds per family,
examples (one per kind of failure), seconds.
Each worker imports the heavy modules a family's door uses (WARM_MODULES: torch, torchvision, torch_pruning,
Ultralytics, Streamlit...) before the family's first case, so a case's RSS growth is what its input costs.
`--selftest` runs 11 planted failures instead (an error, a traceback, a two-line message, a 400 MB allocation, a
marker file, a sleep, a worker exit, a file written outside, 300 MB from a 100-byte input, an unsafe accept) to show
that the zeros above are measured, not assumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import random
import re
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

# issue 24's families
DOORS = ("torchscript", "runfolder", "yaml", "folders", "clab", "links", "sensitivity", "automaton", "keys",
         "drafts",
         "lineage")  # issue 28's map of the experiments
TIMEOUTS = {"decoder": 10.0, "int": 10.0, "ctx": 10.0, "recipe": 10.0, "model": 120.0, "data": 120.0,
            "detector": 30.0, **{family: 10.0 for family in DOORS}, "selftest": 5.0}  # seconds per case
CHUNKS = {"decoder": 500, "int": 200, "ctx": 200, "recipe": 500, "model": 1, "data": 1, "detector": 20,
          "torchscript": 20, "runfolder": 1, "clab": 1,
          "yaml": 1, "folders": 1, "links": 500, "sensitivity": 200, "automaton": 50, "keys": 20,
          "drafts": 200, "selftest": 6,
          "lineage": 50}  # cases per task sent to a worker
HARD_RSS_MB = 6144  # the parent kills a worker above this (counted as a memory blow-up)
HARD_RSS_FAMILY_MB = {"clab": 3072}  # these cases may try to build a 2.6 GB model: stop them sooner
FAMILY_RSS_BOUND_MB = {"recipe": 256, "model": 2048, "data": 2048, "detector": 1024, "torchscript": 1024,
                       "runfolder": 1024, "yaml": 2048, "folders": 2048, "clab": 1024, "links": 256, "sensitivity": 256,
                       "automaton": 256, "keys": 256, "drafts": 256, "selftest": 350,
                       "lineage": 256}
SMALL_INPUT_BYTES = 4096  # worst_rss_growth_per_kb_mb: the largest per-case peak growth of inputs under this size
SMALL_INPUT_BOUND_MB = 256
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
        if "\x1b[" in str(exc):  # terminal colour codes in a message: not one plain line
            return "traceback", f"colour codes in {type(exc).__name__}: {str(exc)[:300]!r}"
        message = str(exc)
        if "\n" in message or not message:
            return "traceback", f"multi-line or empty {type(exc).__name__}: {message[:300]!r}"
        return "error", message[:200]
    frames = traceback.extract_tb(exc.__traceback__)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-3:])
    return "traceback", f"{type(exc).__name__}: {text[:200]} at {where}"


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
    given = weights or (ref[len("torchscript:"):] if ref.startswith("torchscript:") else None)
    size = Path(given).stat().st_size if given and Path(given).is_file() else None
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
    size = _tree_bytes(Path(path)) if Path(path).is_dir() else None
    try:
        data = load_data(f"imagefolder:{path}", input_size=28)
        for split in ("train", "val", "test"):
            for _ in data.loader(split, batch_size=16):
                pass
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{description} [load_data('imagefolder:{path}', input_size=28)]: {detail}", size
    return "ok", description, size


# ----------------------------------------------------------------------------------------------- self-test


_HOLD = []


def run_selftest(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    """--selftest: one case of each failure the campaign must see (ok, error, traceback, multi-line, memory,
    executed code, hang, worker death, a file written outside, a small input's big peak, an unsafe accept), so its
    zeros are known to mean something."""
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
            _HOLD.append(bytearray(400 << 20))  # 400 MB kept: over the selftest's 350 MB bound
            _HOLD[-1][::4096] = b"x" * len(range(0, 400 << 20, 4096))
            return "ok", "allocated", None
        if index == 5:
            (OUTSIDE / "markers" / "selftest").touch()
            return "ok", "marker", 0
        if index == 6:
            time.sleep(3600)
        if index == 8:
            (OUTSIDE / "planted.txt").write_text("written outside the work folder")
            return "ok", "wrote outside", 10
        if index == 9:  # 300 MB touched and freed: under the family bound, over the small-input bound
            block = bytearray(300 << 20)
            block[::4096] = b"x" * len(range(0, 300 << 20, 4096))
            del block
            return "ok", "transient 300 MB from 100 bytes", 100
        if index == 10:
            return "accepted", "a planted unsafe accept", 10
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

    marker = OUTSIDE / "markers" / f"detector-{seed}-{index}"
    arch, what = _detector_case(index, seed, marker)
    size = len(json.dumps(arch, default=str))
    try:
        build_detector(arch, max_elements=2 * _DETECTOR["stored"] + 100_000)  # what load_detector_file allows
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome != "error":
            detail = f"{what}: {detail}"
        return outcome, detail, size
    return "ok", what, size


# ----------------------------------------------------------------------------------------------- the doors (issue 24)
#
# Every family below reaches the library through one small adapter, door_<family>(...): the only function that
# names a library entry point. When a door is fixed elsewhere (a new trust argument, a schema reader), re-point its
# adapter and nothing else. Each case runs with its cwd in the campaign's work folder; crafted payloads aim at
# OUTSIDE (a sentinel folder next to the work folder, never inside it), so a file written there is a file written
# outside, and a marker under OUTSIDE/markers is executed code.

WORK = Path(".")  # set by the worker: the campaign's work folder (every case's cwd)
OUTSIDE = Path(".")  # set by the worker: the sentinel folder outside the work folder
VICTIM_TEXT = b"nothing may change this file\n"
TAG = "########"  # in a prepared payload's marker name: replaced by the case's number
XSS = "</script><script>alert(1)</script>"
SECRET = "secret_"  # class-folder names under OUTSIDE/images: a message naming one has listed a folder outside


def _home() -> Path:
    return Path(os.environ["COMPRESSION_LAB_HOME"])


def _case_dir(family: str, index: int) -> Path:
    """A fresh folder for one case's inputs, under the work folder (removed by the next case of this worker)."""
    folder = WORK / f"{family}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / str(index)).mkdir(parents=True)
    return folder / str(index)


def _tree_bytes(root: Path) -> int:
    """Bytes of the regular files under root (symlinks not followed): an input folder's size."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                stat = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += stat.st_size if not os.path.islink(os.path.join(dirpath, name)) else len(name)
    return total


def _nonfinite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_nonfinite(v) for v in value)
    return False


def _mutate_json(value, rng: random.Random, extra: list) -> tuple[object, str]:
    """1-3 edits of a JSON document: a value replaced by a hostile one, a key removed, a new key."""
    value = copy.deepcopy(value)
    ops = []
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(value))[1:]
        if not paths:
            break
        path = rng.choice(paths)
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        roll = rng.random()
        if isinstance(parent, dict) and roll < 0.15:
            parent.pop(path[-1], None)
            ops.append(f"del {path[-1]!s:.20}")
        elif isinstance(parent, dict) and roll < 0.3:
            parent[rng.choice(["x", "", "²", "nan", "-1", "1e400", "layers", "after", "0.5", "\u0000"])] = \
                copy.deepcopy(rng.choice(EVIL_VALUES + extra))
            ops.append("new key")
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(EVIL_VALUES + extra))
            ops.append(f"set {'/'.join(str(p)[:12] for p in path)}")
    return value, "+".join(ops)


def _json_text(value, rng: random.Random) -> str:
    try:
        return json.dumps(value)
    except (ValueError, TypeError):
        return "{}"


def _hostile_text(rng: random.Random, base: str) -> tuple[str | bytes, str]:
    """Not a mutation of a document but a whole hostile text: random JSON, bytes, truncation, deep nesting, huge."""
    roll = rng.randrange(6)
    if roll == 0:
        return json.dumps(_random_json(rng)), "random-json"
    if roll == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), "random-bytes"
    if roll == 2:
        return base[:rng.randrange(len(base) + 1)], "truncated"
    if roll == 3:
        depth = rng.choice([200, 1000, 100_000])
        return ("[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth), "deep"
    if roll == 4:
        return base.encode() + b"\xff\xfe\x00", "non-utf8"
    return '{"base_accuracy": 0.9, "layers": {' + ",".join(f'"l{i}": {{}}' for i in range(20_000)) + "}}", "wide"


# --- links: URL query dicts through the app's link parsing (compression/complab/ui/state.py, the present-mode parsers)

LINK_NUMBERS = ["28", "32", "0", "-1", "²", "³", "١٢", "٣٢", "𝟐𝟖", "28.0", "1e3", " 28", "28 ", "0x1c", "",
                "9" * 30, "9" * 5000, "2048", "4096", "65536", "NaN", "inf", "+28", "٠", "߂"]


def _links_setup() -> dict:
    uploads = _home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "0123456789ab-model.safetensors").write_bytes(b"not really weights")
    allowed = _home() / "data" / "imgs"
    allowed.mkdir(parents=True, exist_ok=True)
    shared = WORK / "shared-data" / "imgs"  # a root the owner allowed with `--data-root DIR`
    shared.mkdir(parents=True, exist_ok=True)
    return {"uploads": uploads, "allowed": allowed, "shared": shared,
            "argv": ["app.py", "--data-root", str(shared.parent)]}


def _links_case(index: int, seed: int, ctx: dict) -> dict:
    rng = random.Random(seed * 1_000_003 + index)
    outside = str(OUTSIDE)
    models = ["demo:lenet5", "demo:lenet300", "demo:vgg_small", "detector:demo", "upload:0123456789ab",
              "upload:0123456789AB", "upload:../../etc", "upload:" + "0" * 12, "upload:", "torchscript:/etc/passwd",
              f"torchscript:{outside}/victim.txt", "detector:" + outside + "/evil.pt", "demo:" + "x" * 300,
              "upload:0123456789ab\u0000", "upload:٠١٢٣٤٥٦٧٨٩ab", None, "", "demo:lenet5\n"]
    datas = ["digits", "shapes", "imagefolder:/etc", "cifar10:/root", "cifar100:/proc/self", f"imagefolder:{outside}",
             f"imagefolder:{outside}/images", "imagefolder:../outside/images", "imagefolder:~",
             f"imagefolder:{ctx['allowed']}", f"imagefolder:{ctx['allowed']}/../../..", "yolo:/etc/hosts",
             f"imagefolder:{ctx['shared']}", f"imagefolder:{ctx['shared']}/../..", f"cifar10:{ctx['shared']}/../../..",
             "imagefolder:", "imagefolder:/dev/zero", "digits\u0000", "x" * 5000, None]
    archs = ["resnet18", "mobilenet_v3_small", "", "../../x", "a" * 65, "resnet18;rm", "ｒｅｓｎｅｔ18", None]
    params = {}
    if rng.random() < 0.3:  # random strings for every key
        alphabet = "abc019²٣:/._-%\u0000 \n" + outside[:5]
        for key in ("model", "data", "arch", "size", "image", "present", "run"):
            if rng.random() < 0.7:
                params[key] = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
    else:
        params["model"] = rng.choice(models)
        params["data"] = rng.choice(datas)
        if rng.random() < 0.7:
            params["arch"] = rng.choice(archs)
        if rng.random() < 0.7:
            params["size"] = rng.choice(LINK_NUMBERS)
        if rng.random() < 0.5:
            params["present"] = rng.choice(["1", "0", "²", "true", ""])
            params["image"] = rng.choice(LINK_NUMBERS)
            params["run"] = rng.choice(["20261201-101500-ab12", "../..", "x" * 500, "", "²"])
    return {k: v for k, v in params.items() if v is not None}


def door_links(params: dict, ctx: dict) -> tuple[dict | None, str | None]:
    """What the app does with a link's query: the library's link parsers (complab.ui.links: the presentation mode's
    image index, run id and switch, the numbers), spec_from_link with the data roots this server shares, then (for a
    spec) the checks before loading it."""
    from complab import sources
    from complab.ui import links
    from complab.ui.state import spec_from_link

    for key in ("image", "size", "run", "present"):
        links.link_int(params.get(key), 0, 99_999)
    links.link_image_index(params.get("image"), 48)
    links.link_image_index(params.get("image"), 0)
    links.link_run_id(params.get("run"))
    links.link_presenting(params.get("present"))
    roots = links.data_roots(_home(), argv=ctx["argv"], env=os.environ)
    if "data" in params:
        links.link_data_problem(params["data"], roots)
    spec, problem = spec_from_link(params, ctx["uploads"], roots)
    if spec is not None:
        sources.check(spec)
        data = str(spec.get("data") or "")
        if ":" in data and Path(data.split(":", 1)[1]).expanduser().resolve() == (OUTSIDE / "images").resolve():
            from complab.data import load_data  # the app's next step opens the folder: its messages too

            load_data(data, input_size=28)
    return spec, problem


def _allowed_data(data: str, ctx: dict) -> bool:
    """A link may name the demo data or a folder under the data home (COMPRESSION_LAB_HOME, COMPRESSION_LAB_DATA) or
    a root the server's owner allowed (`--data-root DIR`, $COMPRESSION_LAB_DATA_ROOTS; complab.ui.links.data_roots):
    the issue's rule."""
    if ":" not in data:
        return True
    from complab.paths import data_home
    from complab.ui.links import data_roots

    folder = Path(data.split(":", 1)[1]).expanduser().resolve()
    roots = [_home(), data_home(), *data_roots(_home(), argv=ctx["argv"], env=os.environ)]
    return any(folder.is_relative_to(root.resolve()) for root in roots)


def run_links(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    ctx = _STATE["links"]
    params = _links_case(index, seed, ctx)
    size = len(json.dumps(params))
    try:
        spec, problem = door_links(params, ctx)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome == "error" and SECRET in str(exc):
            return "accepted", f"{params}: the message lists a folder outside the data home: {detail}", size
        return outcome, f"{params}: {detail}", size
    if problem is not None and ("\n" in problem or SECRET in problem):
        return "accepted", f"{params}: link message lists a folder or spans lines: {problem[:200]!r}", size
    if spec is not None and not _allowed_data(str(spec.get("data") or ""), ctx):
        return "accepted", f"{params}: a link opened data outside the data home: {spec.get('data')!r}", size
    return "ok", "link", size


# --- sensitivity: crafted sensitivity reports through the CLI's reader and the solver


def _sensitivity_base(layers: list[str]) -> dict:
    sparsities = [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95]
    clusters = [256, 64, 16, 8, 4, 2]
    return {"base_accuracy": 0.97,
            "layers": {name: {"params": 1000 * (i + 1),
                              "sparsity": {str(s): round(0.97 - 0.3 * s ** 3 * (i + 1) / len(layers), 4)
                                           for s in sparsities},
                              "clusters": {str(k): round(0.97 - 0.4 / k, 4) for k in clusters}}
                       for i, name in enumerate(layers)},
            "config": {"sparsities": sparsities, "clusters": clusters, "mode": "estimate"}}


def _sensitivity_setup() -> dict:
    from complab.analysis.estimate import model_stats
    from complab.models.handle import load_model

    handle = load_model("demo:lenet300")
    layers = list(handle.prunable_layers())
    return {"handle": handle, "stats": model_stats(handle), "base": _sensitivity_base(layers), "layers": layers}


def _sensitivity_case(index: int, seed: int, ctx: dict) -> tuple[str | bytes, str, object]:
    rng = random.Random(seed * 1_000_003 + index)
    base = ctx["base"]
    extra = [float("nan"), -0.5, 1.5, "0.9", {"0.5": "x"}, {"nan": 0.5}, {"1e400": 0.5}, {"-3": 0.5}, {"²": 0.5},
             {"0": float("nan")}, {str(2**70): 0.5}, {"0.5": 1e308}, list(range(5)), {"x" * 300: {}}]
    if index < SENSITIVITY_HEAVY:  # a few big reports (each may take seconds unbounded): the first cases only
        value = copy.deepcopy(base)
        layer = ctx["layers"][0]
        if index == 0:
            value["layers"][layer]["sparsity"] = {str(i / 100_000): 0.5 for i in range(10_000)}
            what = "10,000 sparsity points"
        elif index == 1:
            value["layers"][layer]["clusters"] = {str(k): 0.5 for k in range(2, 5_000)}
            what = "5,000 cluster counts"
        elif index == 2:
            value["layers"].update({f"l{i}": value["layers"][layer] for i in range(20_000)})
            what = "20,000 layers"
        else:
            return '{"a":' * 100_000 + "1" + "}" * 100_000, "nested 100,000 deep", None
        return json.dumps(value), what, value
    roll = rng.random()
    if roll < 0.15:
        text, what = _hostile_text(rng, json.dumps(base))
        if what != "wide":
            return text, what, None
    value, what = _mutate_json(base, rng, extra)
    if roll < 0.2:
        value["base_accuracy"] = rng.choice([float("nan"), float("inf"), -1.0, 2.0, "0.9", None])
        what += "+base"
    return _json_text(value, rng), what, value


def door_sensitivity(path: Path, ctx: dict) -> dict:
    """`sweep --targets ratio:10 --sensitivity FILE`'s path without submitting: the schema reader
    (complab.analysis.sensitivity_report: read_report = the file's bound + parse_report + check_report), then the
    solver's plan for one target and the accuracy prediction."""
    from complab.analysis.predict import predict
    from complab.analysis.sensitivity_report import check_report, read_report
    from complab.analysis.targets import target_plan

    report = read_report(path)
    check_report(report)  # a checked report passes its own check again (normalized keys stay canonical)
    member = target_plan(ctx["stats"], report, "ratio", 10.0)
    return predict(report, member.settings, None, [])


def run_sensitivity(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    ctx = _STATE["sensitivity"]
    text, what, value = _sensitivity_case(index, seed, ctx)
    path = WORK / f"sensitivity-{os.getpid()}.json"
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    _input_bytes(len(data), what)
    try:
        predicted = door_sensitivity(path, ctx)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome != "error":
            keep = Path(out_dir) / f"sensitivity-{seed}-{index}.json"
            keep.write_bytes(data)
            detail = f"{what} ({keep}): {detail}"
        return outcome, detail, len(data)
    if (isinstance(value, dict) and (_nonfinite(value.get("base_accuracy")) or _nonfinite(value.get("layers")))
            or _nonfinite(predicted)):
        keep = Path(out_dir) / f"sensitivity-{seed}-{index}.json"
        keep.write_bytes(data)
        return "accepted", f"{what} ({keep}): a report with non-finite numbers was solved silently", len(data)
    return "ok", what, len(data)


# --- drafts: crafted Plan-page drafts (<data folder>/drafts/*.json) through the page's one reader


def _drafts_setup() -> dict:
    from complab.models.handle import load_model
    from complab.ui.plan_draft import make_draft
    from complab.ui.plan_page import option_fields
    from complab.ui.plan_rows import step_fields

    layers = list(load_model("demo:lenet300").prunable_layers())
    fields, options = [f for _, f in step_fields()], [f for _, f in option_fields()]
    rows = {layer: {"sp": 0.5, "k": 16, "q": "none", "qa": "in", "qk": 16, "qs": 4} for layer in layers}
    base = make_draft("spec", "report", {"kind": "ratio", "value": 40.0}, rows,
                      {f.key: f.choices[0] if f.choices else f.low for f in options})  # a select box: a choice
    return {"layers": layers, "fields": fields, "options": options, "base": base}


def _drafts_case(index: int, seed: int, ctx: dict) -> tuple[str | bytes, str]:
    rng = random.Random(seed * 1_000_003 + index)
    extra = [float("nan"), float("inf"), -1.0, 1e308, "0.5", None, True, [0.5], {"sp": 2.0}, "x" * 300,
             {"kind": "ratio", "value": float("nan")}, 2**70]
    if index == 0:
        return '{"a":' * 100_000 + "1" + "}" * 100_000, "nested 100,000 deep"
    if index == 1:
        value = copy.deepcopy(ctx["base"])
        value["rows"].update({f"l{i}": value["rows"][ctx["layers"][0]] for i in range(50_000)})
        return json.dumps(value), "50,000 unknown layers"
    if rng.random() < 0.15:
        text, what = _hostile_text(rng, json.dumps(ctx["base"]))
        if what != "wide":
            return text, what
    value, what = _mutate_json(ctx["base"], rng, extra)
    return _json_text(value, rng), what


def door_drafts(path: Path, ctx: dict) -> tuple[dict | None, str | None]:
    """What the Plan page does with a draft file: complab.ui.plan_draft.read_draft (size bound, runfolder's checked
    JSON reader, the schema and every value checked against the widget that shows it)."""
    from complab.ui.plan_draft import read_draft

    return read_draft(path, "spec", "report", ctx["layers"], ctx["fields"], ctx["options"])


def _option_shown(field, item) -> bool:
    """A kept option is one its widget can show: one of a select box's choices (same type), else a number in range."""
    if field.choices:
        return any(item == choice and type(item) is type(choice) for choice in field.choices)
    return not isinstance(item, (bool, str)) and field.low <= item <= field.high


def run_drafts(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    from complab.ui.plan_draft import check_target, field_value

    ctx = _STATE["drafts"]
    text, what = _drafts_case(index, seed, ctx)
    path = WORK / f"draft-{os.getpid()}.json"
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    _input_bytes(len(data), what)

    def keep() -> str:
        kept = Path(out_dir) / f"drafts-{seed}-{index}.json"
        kept.write_bytes(data)
        return str(kept)

    try:
        draft, note = door_drafts(path, ctx)
    except Exception as exc:  # noqa: BLE001 - read_draft never raises: any exception is a finding
        outcome, detail = _classify(exc)
        return ("traceback" if outcome == "error" else outcome), f"{what} ({keep()}): {detail}", len(data)
    if draft is None:
        return "ok", f"{what}: ignored ({(note or 'none')[:60]})", len(data)
    by_name, by_key = {f.name: f for f in ctx["fields"]}, {f.key: f for f in ctx["options"]}
    unsafe = (set(draft["rows"]) - set(ctx["layers"])
              or any(field_value(by_name[name], item) != item for row in draft["rows"].values()
                     for name, item in row.items())
              or any(not _option_shown(by_key[key], item) for key, item in draft["options"].items())
              or (draft["target"] is not None and check_target(draft["target"]) != draft["target"])
              or _nonfinite(draft.get("saved")))
    if unsafe:
        return "accepted", f"{what} ({keep()}): a value no widget can show was kept", len(data)
    return "ok", f"{what}: kept", len(data)


# --- int: compact files with integer sections (type 7) and 8-bit activation tables, mutated and crafted


def _int_setup() -> dict:
    """Two base files: LeNet-5 with every layer on integer levels (2, 4 and 8 bits, per channel and per tensor, one
    pruned layer in the positions layout) and an activation table in its meta; and small synthetic int sections."""
    import torch
    from complab.methods.int_quant import dequantize, quantize_weight
    from complab.models import actquant
    from complab.models.handle import load_model
    from complab.storage import encode_state
    from complab.storage.int_section import IntWeights

    handle = load_model("demo:lenet5").clone()
    structures = {}
    choices = {"conv1": (8, "channel", 0.0), "conv2": (4, "tensor", 0.0), "fc1": (8, "channel", 0.9),
               "fc2": (2, "channel", 0.0)}
    with torch.no_grad():
        for layer, weight in handle.prunable_layers().items():
            bits, granularity, zeros = choices[layer]
            if zeros:
                weight.copy_(torch.where(weight.abs() <= weight.abs().flatten().quantile(zeros), 0.0, weight))
            levels, scales = quantize_weight(weight, bits, granularity)
            weight.copy_(dequantize(levels, scales))
            structures[f"{layer}.weight"] = IntWeights(levels, scales, bits)
    table = {layer: (0.05 * (i + 1), 10 * i) for i, layer in enumerate(handle.prunable_layers())}
    actquant.install(handle.model, table)
    meta = {"producer": "fuzz", "task": "classify", **handle.compact_meta(), "int_quant": actquant.to_meta(table)}
    state = {k: v.detach() + 0.0 for k, v in handle.model.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    small = {}
    small_structures = {}
    for i, (shape, bits, granularity) in enumerate([((6, 4), 3, "channel"), ((1, 70), 8, "tensor"),
                                                   ((8, 2, 3, 3), 5, "channel")]):
        levels, scales = quantize_weight(torch.randn(shape, generator=generator), bits, granularity)
        small[f"s{i}"], small_structures[f"s{i}"] = dequantize(levels, scales), IntWeights(levels, scales, bits)
    bases = [encode_state(state, meta, structures=structures),
             encode_state(small, {"a": 1}, structures=small_structures)]
    parsed = [DecoderCases._split(base) for base in bases]
    return {"bases": bases, "parsed": parsed, "meta": meta}


def _int_body_parts(body: bytes) -> tuple[int, int] | None:
    """(offset of the int encoding's first byte (bits), offset of its levels/positions data) in a section body."""
    try:
        name_len, pos = _read_varint(body, 0)
        head_end = pos + name_len + 2
        cursor = head_end
        for _ in range(body[head_end - 1]):
            _, cursor = _read_varint(body, cursor)
        count, data = _read_varint(body, cursor + 2)
        return cursor, data + 4 * count
    except IndexError:
        return None


def _int_body_op(body: bytes, rng: random.Random) -> tuple[bytes, str]:
    parts = _int_body_parts(body)
    if parts is None:
        out = bytearray(body)
        del out[rng.randrange(len(out) + 1):]
        return bytes(out), "cut"
    start, data = parts
    out = bytearray(body)
    kind = rng.randrange(10)
    if kind == 0:  # bits
        out[start] = rng.choice([0, 1, 9, 16, 255, rng.randrange(2, 9)])
        return bytes(out), "bits"
    if kind == 1:  # flags
        out[start + 1] = rng.choice([1, 2, 3, 128, 255, out[start + 1] ^ 1])
        return bytes(out), "flags"
    if kind == 2:  # scale count
        _, after = _read_varint(body, start + 2)
        return bytes(out[:start + 2]) + _varint(rng.choice(INTERESTING)) + bytes(out[after:]), "scale count"
    if kind == 3 and data > start + 3:  # a scale: NaN, infinities, zero, negative, denormal, huge
        _, first = _read_varint(body, start + 2)
        at = first + 4 * rng.randrange(max(1, (data - first) // 4))
        value = rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 1e-45, 3.4e38])
        out[at:at + 4] = struct.pack("<f", value)
        return bytes(out), "scale value"
    if kind == 4:  # the levels or positions data cut short
        del out[rng.randrange(min(data, len(out)), len(out) + 1):]
        return bytes(out), "truncated"
    if kind == 5:  # a stream claiming a huge count of one symbol (costs no payload)
        count = rng.choice([2**20, 2**24, 2**31 - 1, 2**31, rng.randrange(1, 2**31)])
        return bytes(out[:data]) + _varint(count) + _varint(0) + _varint(rng.randrange(300)), "huge stream"
    if kind == 6:  # positions block: a kept count past the tensor, gaps past its end
        out[start + 1] = 1
        return bytes(out[:data]) + _varint(rng.choice(INTERESTING)) + _varint(rng.choice([0, 1, 6, 4096, 4097])) + \
            bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))), "positions"
    if kind == 7:  # dtype or shape
        name_len, pos = _read_varint(body, 0)
        if rng.random() < 0.5:
            out[pos + name_len] = rng.choice([2, 3, 4, 5, 9, 40])
            return bytes(out), "dtype"
        dims = [rng.choice(INTERESTING) for _ in range(rng.randrange(4))]
        return (bytes(out[:pos + name_len + 1]) + bytes([len(dims)]) + b"".join(_varint(d) for d in dims)
                + bytes(out[start:])), "shape"
    for _ in range(rng.randint(1, 4)):  # bit flips in the levels
        if len(out) > data:
            out[rng.randrange(data, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out), "flip"


def _int_meta_op(meta: dict, rng: random.Random) -> tuple[dict, str]:
    meta = copy.deepcopy(meta)
    record = meta["int_quant"]
    activations = record["activations"]
    name = rng.choice(list(activations))
    kind = rng.randrange(6)
    if kind == 0:
        activations[name] = rng.choice(EVIL_VALUES + [[float("nan"), 3], [0.1, 256], [0.1, -1], [-0.1, 3], [0, 0],
                                                       [0.1, 3.5], [0.1], [0.1, 3, 4], [True, 3], [1e308, 0]])
    elif kind == 1:
        activations[rng.choice(["", "nope", "conv1.weight", "features", "x" * 2000, "fc1.0", "0"])] = [0.1, 3]
    elif kind == 2:
        meta["int_quant"] = rng.choice(EVIL_VALUES)
    elif kind == 3:
        record["activations"] = {("conv1" if i == 0 else f"n{i}"): [0.1, 3] for i in range(100_001)}
    elif kind == 4:
        record["activations"] = rng.choice(EVIL_VALUES)
    else:
        record["activation_bits"] = rng.choice(EVIL_VALUES)
    return meta, f"meta{kind}"


def _int_case(index: int, seed: int, ctx: dict) -> tuple[bytes, str]:
    rng = random.Random(seed * 1_000_003 + index)
    if rng.random() < 0.03:  # a crafted file: one int section declaring a huge tensor in a few bytes
        numel = rng.choice([2**20, 2**26, 2**29, 2**31, rng.randrange(1, 2**31)])
        specific = (bytes([8, 0]) + _varint(1) + struct.pack("<f", 0.5) + _varint(numel) + _varint(0)
                    + _varint(127))
        body = _varint(1) + b"w" + bytes([1, 1]) + _varint(numel) + specific
        meta = json.dumps({"a": 1}).encode()
        return _seal(DecoderCases._join(meta, [(7, body)])), f"bomb:{numel}"
    which = 0 if rng.random() < 0.6 else 1
    meta, sections = ctx["parsed"][which]
    sections = list(sections)
    ops = []
    if which == 0 and rng.random() < 0.2:
        value, op = _int_meta_op(ctx["meta"], rng)
        try:
            meta = json.dumps(value, allow_nan=True).encode()
        except ValueError:
            pass
        ops.append(op)
    targets = [i for i, (type_id, _) in enumerate(sections) if type_id == 7]
    for _ in range(rng.choice([0, 1, 1, 1, 2]) if ops else rng.randint(1, 2)):
        at = rng.choice(targets)
        body, op = _int_body_op(sections[at][1], rng)
        sections[at] = (7, body)
        ops.append(f"{op}@{at}")
    if rng.random() < 0.05:  # an int section relabelled as another type, or another section as int
        at = rng.randrange(len(sections))
        sections[at] = (rng.choice([4, 5, 7]), sections[at][1])
        ops.append(f"retype@{at}")
    return _seal(DecoderCases._join(meta, sections)), f"{which}:{'+'.join(ops)}"


# --- ctx: compact files with shared version 3 sections (type 8: indices in contexts of the row's previous level)


def _ctx_setup() -> dict:
    """Base files whose weights are stored as type 8: rows of different scale (so the previous level pays), pruned
    and dense, conv-shaped and 1-D, with large and small codebooks; the encoder is checked to have chosen type 8."""
    import torch
    from complab.storage import encode_state

    generator = torch.Generator().manual_seed(8)
    state = {}
    for name, shape, k, keep in [("fc", (60, 200), 8, 0.15), ("conv", (24, 6, 3, 3), 16, 0.5),
                                 ("dense", (40, 64), 4, 1.0), ("flat", (4000,), 6, 0.3)]:
        rows = shape[0] if len(shape) > 1 else 1
        scale = torch.rand(rows, generator=generator) ** 3 * 10 + 0.1
        raw = torch.randn(shape, generator=generator).reshape(rows, -1) * scale[:, None]
        levels = torch.clamp(torch.round(raw), -(k // 2), k // 2 - 1)
        levels = torch.where(levels >= 0, levels + 1, levels)  # no zero level
        mask = torch.rand(levels.shape, generator=generator) < keep
        state[name] = (levels * mask * 0.125).reshape(shape).float()
    # a convolution whose kept weights sit on the centre tap: its positions are stored per tap (flag bit 1)
    centre = torch.where(torch.arange(9) == 4, 0.85, 0.05).reshape(1, 1, 3, 3)
    middle = torch.randint(3, 7, (48, 48, 3, 3), generator=generator).float()
    outer = torch.tensor([1.0, 2.0, 7.0, 8.0])[torch.randint(0, 4, (48, 48, 3, 3), generator=generator)]
    levels = torch.where(centre > 0.5, middle, outer)  # the taps differ in levels too: tap classes (flag bit 2)
    state["taps"] = levels * (torch.rand(levels.shape, generator=generator) < centre) * 0.125
    base = encode_state(state, {"a": 1})
    meta, sections = DecoderCases._split(base)
    if sum(type_id == 8 for type_id, _ in sections) < 3:
        raise RuntimeError("the ctx family's base file holds fewer than 3 type-8 sections")
    if not any(type_id == 8 and _ctx_flags(body) & 6 == 6 for type_id, body in sections):
        raise RuntimeError("the ctx family's base file holds no type-8 section with per-tap positions and classes")
    return {"state": state, "parsed": (meta, sections)}


def _ctx_flags(body: bytes) -> int:
    """The flags byte of a well-formed type-8 section body."""
    name_len, pos = _read_varint(body, 0)
    cursor = pos + name_len + 2
    for _ in range(body[cursor - 1]):
        _, cursor = _read_varint(body, cursor)
    return body[cursor]


def _ctx_index_start(body: bytes) -> int | None:
    """Offset of the u8 G (the index part) in a type-8 section body, or None when the body is not well formed."""
    try:
        name_len, pos = _read_varint(body, 0)
        head_end = pos + name_len + 2
        cursor = head_end
        dims = []
        for _ in range(body[head_end - 1]):
            dim, cursor = _read_varint(body, cursor)
            dims.append(dim)
        dtype_size = 4
        flags = body[cursor]
        k, cursor = _read_varint(body, cursor + 1)
        cursor += k * dtype_size
        if flags & 1:
            from complab.storage._bits import ByteReader
            from complab.storage.escape import decode_escaped

            taps = math.prod(dims[2:]) if flags & 2 else 1  # per-tap positions: one gap block per kernel tap
            for _ in range(taps):
                count, cursor = _read_varint(body, cursor)
                if count or not flags & 2:
                    reader = ByteReader(body, cursor)
                    decode_escaped(reader, count, "gaps")
                    cursor = reader.pos
        return cursor
    except Exception:  # noqa: BLE001 - a mutated body: no landmarks
        return None


def _ctx_case(index: int, seed: int, ctx: dict) -> tuple[bytes, str]:
    rng = random.Random(seed * 1_000_033 + index)
    meta, sections = ctx["parsed"]
    sections = list(sections)
    if rng.random() < 0.05:  # crafted: a huge dense tensor claimed in a few bytes (one stream of one symbol)
        numel = rng.choice([2**20, 2**26, 2**31, rng.randrange(257, 2**31)])
        specific = bytes([0]) + _varint(2) + struct.pack("<ff", -0.5, 0.5) + bytes([1, 1]) + _varint(numel) + \
            _varint(0) + _varint(rng.randrange(2))
        body = _varint(1) + b"w" + bytes([1, 2]) + _varint(numel // 256 or 1) + _varint(256) + specific
        return _seal(DecoderCases._join(meta, [(8, body)])), f"bomb:{numel}"
    targets = [i for i, (type_id, _) in enumerate(sections) if type_id == 8]
    ops = []
    for _ in range(rng.randint(1, 2)):
        at = rng.choice(targets)
        body = bytearray(sections[at][1])
        start = _ctx_index_start(bytes(body))
        kind = rng.randrange(9)
        if start is None or kind == 0:  # bit flips anywhere
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
            op = "flip"
        elif kind == 1:  # G
            body[start] = rng.choice([0, 2, 3, 4, 5, 255])
            op = "G"
        elif kind == 2:  # C
            body[start + 1] = rng.choice([0, 1, 2, 15, 16, 17, 255])
            op = "C"
        elif kind == 3 and len(body) > start + 2:  # the level map
            body[start + 2 + rng.randrange(min(4, len(body) - start - 2))] = rng.randrange(256)
            op = "map"
        elif kind == 4:  # a stream claiming a huge count of one symbol
            count = rng.choice([2**20, 2**31 - 1, 2**31, rng.randrange(1, 2**31)])
            cut = start + 2 + rng.randrange(max(1, len(body) - start - 2))
            body = bytearray(bytes(body[:cut]) + _varint(count) + _varint(0) + _varint(rng.randrange(300)))
            op = "huge stream"
        elif kind == 5:  # cut short
            del body[rng.randrange(start, len(body) + 1):]
            op = "cut"
        elif kind == 6:  # shape: the rows change, so the round order changes
            name_len, pos = _read_varint(bytes(body), 0)
            dims = [rng.choice([1, 2, 3, 60, 200, 12000, 2**20]) for _ in range(rng.randrange(4))]
            rank_at = pos + name_len + 1
            cursor = rank_at + 1
            for _ in range(body[rank_at]):
                _, cursor = _read_varint(bytes(body), cursor)
            body = bytearray(bytes(body[:rank_at]) + bytes([len(dims)]) + b"".join(_varint(d) for d in dims)
                             + bytes(body[cursor:]))
            op = "shape"
        elif kind == 7:  # a table-free adaptive stream (table mode 6) with a hostile count, range or payload
            count = rng.choice([2, 5, 300, 2**20, 2**31 - 1, rng.randrange(1, 5000)])
            span = rng.choice([1, 3, 15, 255, 4095, 65535, rng.randrange(1, 70000)])
            table = 6 | rng.randrange(4) << 3 | rng.randrange(4) << 5
            payload = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 9, 64])))
            stream = (_varint(count) + _varint(rng.randrange(min(span, count) + 2)) + _varint(rng.randrange(4))
                      + _varint(span) + bytes([table]) + _varint(len(payload) + rng.choice([0, 0, 1])) + payload)
            cut = start + 2 + rng.randrange(max(1, len(body) - start - 2))
            body = bytearray(bytes(body[:cut]) + stream + bytes(body[cut:]) * rng.randrange(2))
            op = "adaptive stream"
        else:  # flips in the index streams
            for _ in range(rng.randint(1, 4)):
                if len(body) > start:
                    body[rng.randrange(start, len(body))] ^= 1 << rng.randrange(8)
            op = "stream flip"
        sections[at] = (8, bytes(body))
        ops.append(f"{op}@{at}")
    if rng.random() < 0.05:  # a type-8 body relabelled as version 2, or a version-2-like body as type 8
        at = rng.randrange(len(sections))
        sections[at] = (rng.choice([5, 8]), sections[at][1])
        ops.append(f"retype@{at}")
    return _seal(DecoderCases._join(meta, sections)), "+".join(ops)


def run_ctx(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    from complab.storage import decode_state, inspect_bytes

    data, what = _ctx_case(index, seed, _STATE["ctx"])
    try:
        _, state = decode_state(data)
        rows = inspect_bytes(data)
    except Exception as exc:  # noqa: BLE001 - classifying every outcome is the point
        outcome, detail = _classify(exc)
        if outcome != "error":
            path = Path(out_dir) / f"ctx-{seed}-{index}.clab"
            path.write_bytes(data)
            detail = f"{what} ({path}): {detail}"
        return outcome, detail, len(data)
    described = {row["name"]: row for row in rows}
    for name, tensor in state.items():
        row = described.get(name)
        if row is None or list(tensor.shape) != row["shape"] or tensor.numel() != row["numel"]:
            return "accepted", f"{what}: tensor {name[:40]!r} does not match its inspect row", len(data)
    return "ok", f"{what}: decoded", len(data)


def door_int(data: bytes) -> tuple[dict, dict, dict, object]:
    """What reading a compact file does (models.tasks.read_compact without the path): decode with the structures
    handed back, inspect, and rebuild the model (activation hooks from the meta, int_weights from the sections)."""
    from complab.models.compact import handle_from_decoded
    from complab.storage import decode_state, inspect_bytes

    structures: dict = {}
    meta, state = decode_state(data, structures=structures)
    inspect_bytes(data)
    handle = None
    if isinstance(meta.get("architecture"), dict):
        handle = handle_from_decoded(meta, state, source="fuzz.clab", structures=structures)
    return meta, state, structures, handle


def _int_unsafe(state: dict, structures: dict, handle) -> str | None:
    """Why an accepted file breaks what a decoded integer model promises, or None."""
    import math

    import torch
    from complab.models import actquant
    from complab.storage.int_section import IntWeights, dequantize, level_range

    for name, structure in structures.items():
        if not isinstance(structure, IntWeights) or name not in state:
            return f"structure for {name[:40]!r} is not an IntWeights of a decoded tensor"
        levels, scales, bits = structure.levels, structure.scales, structure.bits
        if not 2 <= bits <= 8 or levels.dtype != torch.int8 or int(levels.abs().max()) > level_range(bits):
            return f"{name[:40]}: levels outside {bits} bits"
        if not (torch.isfinite(scales).all() and (scales > 0).all()) or scales.numel() not in (1, levels.shape[0]):
            return f"{name[:40]}: scales not finite and positive, or not one per channel"
        if not torch.equal(dequantize(levels, scales).view(torch.int32), state[name].view(torch.int32)):
            return f"{name[:40]}: the tensor is not its levels times its scales"
    if handle is not None:
        if set(handle.int_weights) != set(structures):
            return "the handle's int_weights differ from the file's int sections"
        for scale, zero_point in actquant.table_of(handle.model).values():
            if not (math.isfinite(scale) and scale > 0 and 0 <= zero_point <= 255):
                return f"an activation hook with scale {scale!r} and zero point {zero_point!r}"
    return None


def run_int(index: int, seed: int, out_dir: str) -> tuple[str, str, int]:
    data, what = _int_case(index, seed, _STATE["int"])

    def keep() -> str:
        path = Path(out_dir) / f"int-{seed}-{index}.clab"
        path.write_bytes(data)
        return str(path)

    try:
        meta, state, structures, handle = door_int(data)
    except Exception as exc:  # noqa: BLE001 - classifying every outcome is the point
        outcome, detail = _classify(exc)
        if outcome != "error":
            detail = f"{what} ({keep()}): {detail}"
        return outcome, detail, len(data)
    reason = _int_unsafe(state, structures, handle)
    if reason:
        return "accepted", f"{what} ({keep()}): {reason}", len(data)
    return "ok", f"{what}: decoded ({len(structures)} int sections)", len(data)


# --- automaton: recipes whose re: keys compile to big automata, validated against densenet121's layer names

SENSITIVITY_HEAVY = 4  # the first cases of the sensitivity family: big reports
AUTOMATON_HEAVY = 10  # the first cases of the family: the issue's crafted keys (each may take seconds unbounded)


def _automaton_setup() -> dict:
    import torch
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.densenet121(weights=None)
    layers = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)]
    return {"layers": layers}


def _random_regex(rng: random.Random, depth: int = 0) -> str:
    """A pattern built from densenet121's name parts, so most match some layer and validation visits every key."""
    atoms = ["features", "denseblock\\d", "denselayer\\d+", "transition\\d", "conv[012]", "conv", "classifier",
             "norm", "\\.", ".", "\\d", "[0-9]", "[a-z]+"]
    parts = []
    for _ in range(rng.randint(1, 4)):
        if depth < 2 and rng.random() < 0.3:
            atom = "(?:" + "|".join(_random_regex(rng, depth + 1) for _ in range(rng.randint(1, 3))) + ")"
            quant = rng.choice(["", "", "?", "*", "+", "{1,3}", "{2}", "{0,9}"])
        else:
            atom = rng.choice(atoms)
            quant = rng.choice(["", "", "", "?", "*"]) if atom in (".", "\\d", "[0-9]") else ""
        parts.append(atom + quant)
    body = "\\.?".join(parts) if rng.random() < 0.5 else "".join(parts)
    return body if depth else rng.choice(["", ".*"]) + body + rng.choice(["", ".*", ".*\\d"])


def _automaton_case(index: int, seed: int) -> tuple[str, str]:
    rng = random.Random(seed * 1_000_003 + index)
    if index < AUTOMATON_HEAVY:
        # each key matches a layer (a key matching none stops validation at once): every automaton is built
        heavy = [f"re:(.*){{{900 - i}}}(.?){{{300 + i}}}conv0" for i in range(40)]
        shapes = [(1, "one key"), (5, "5 keys"), (20, "20 keys"), (8 << 10, "8 KB of keys"), (1 << 20, "1 MiB of keys"),
                  (1, "(.*){2000}"), (3, "nested counts"), (50, "50 small keys"), (2, "alternation blow-up"),
                  (20, "20 keys, cluster step")]
        count, what = shapes[index]
        if count >= 1024:  # a byte budget: as many keys as fit
            keys, size = [], 0
            while size < count - 200:
                keys.append(f"re:(.*){{{900 - len(keys) % 500}}}(.?){{{300 + len(keys) // 500}}}conv0")
                size += len(keys[-1]) + 8
        elif what == "(.*){2000}":
            keys = ["re:(.*){2000}classifier"]
        elif what == "nested counts":
            keys = ["re:((.?){30}){30}conv0", "re:(((.*){10}){10}){10}classifier", "re:((a|.){50}){20}"]
        elif what == "alternation blow-up":
            keys = ["re:(.|..|...){300}conv0", "re:(" + "|".join(f"(.?){{{i}}}0" for i in range(1, 60)) + ")"]
        elif what == "50 small keys":
            keys = [f"re:(.*){{{60 + i}}}conv0" for i in range(50)]
        else:
            keys = heavy[:count]
        per_layer = {key: 0.5 for key in keys}
        step = {"type": "prune", "sparsity": per_layer} if "cluster" not in what else \
            {"type": "cluster", "n_clusters": {key: 16 for key in keys}}
        return json.dumps({"schema_version": 1, "name": "automaton", "steps": [step]}), what
    keys = {"re:" + _random_regex(rng): rng.choice([0.1, 0.5, 0.9]) for _ in range(rng.randint(1, 4))}
    if rng.random() < 0.3:
        keys["_default"] = 0.5
    kind = rng.randrange(3)
    step = ({"type": "prune", "sparsity": keys} if kind == 0 else
            {"type": "cluster", "n_clusters": {k: 16 for k in keys}} if kind == 1 else
            {"type": "quantize", "quantizer": {k: "kmeans" for k in keys}})
    return json.dumps({"schema_version": 1, "name": "automaton", "steps": [step]}), "random keys"


def door_automaton(text: str, layers: list[str]) -> None:
    """The recipe loader (CLI --recipe, the Plan page's Load recipe): parse, validate against the model's layers,
    resolve every per-layer map."""
    from complab.plan import Plan, resolve_all

    plan = Plan.from_json(text)
    plan.validate(layers)
    for step in plan.steps:
        for name in step.per_layer:
            resolve_all(getattr(step, name), layers)


def run_automaton(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    text, what = _automaton_case(index, seed)
    _input_bytes(len(text), what)
    started = time.monotonic()
    try:
        door_automaton(text, _STATE["automaton"]["layers"])
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{what} ({len(text)} B, {time.monotonic() - started:.1f} s): {detail}", len(text)
    return "ok", f"{what} ({time.monotonic() - started:.2f} s)", len(text)


# --- torchscript: scripted modules that write files (forward, __setstate__), with and without trust; mutated zips


def _torchscript_sources() -> str:
    """The module definitions the fixtures script (torch.jit.script reads their source from a file)."""
    return '''
from typing import Tuple

import torch


class Benign(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 28).flatten(1))


class Writer(torch.nn.Module):
    """forward maps `path` with torch.from_file(shared=True) and writes into it: creates or overwrites any file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x):
        t = torch.from_file(self.path, True, 16, dtype=torch.uint8)
        t.fill_(65)
        out = self.fc(torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 28).flatten(1))
        return out + t[0].float() * 0


class Loader(torch.nn.Module):
    """__setstate__ runs when the archive is loaded: the write happens before any forward."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.weight = torch.zeros(10, 784)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, torch.Tensor]:
        return (self.path, self.training, self.weight)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, torch.Tensor]) -> None:
        self.path = state[0]
        self.training = state[1]
        t = torch.from_file(self.path, True, 16, dtype=torch.uint8)
        t.fill_(66)
        self.weight = state[2] + t[0].float() * 0

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), 28).flatten(1) @ self.weight.t()
'''


def _prepare_torchscript(folder: Path, outside: Path) -> dict[str, bytes]:
    """Scripted archives (built once by the parent): benign, and writers aimed outside the work folder."""
    import importlib.util
    import io
    import warnings

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "ts_modules.py"
    source.write_text(_torchscript_sources())
    spec = importlib.util.spec_from_file_location("ts_modules", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    archives = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, obj in (("benign", module.Benign()),
                          ("forward-abs", module.Writer(str(outside / "markers" / f"ts-forward-abs-{TAG}"))),
                          ("forward-rel", module.Writer(f"../outside/markers/ts-forward-rel-{TAG}")),
                          ("forward-victim", module.Writer(str(outside / "victim.txt"))),
                          ("setstate-abs", module.Loader(str(outside / "markers" / f"ts-setstate-abs-{TAG}"))),
                          ("setstate-rel", module.Loader(f"../outside/markers/ts-setstate-rel-{TAG}"))):
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.script(obj), buffer)
            archives[name] = buffer.getvalue()
    return archives


def _zip_members(data: bytes) -> list[tuple[str, bytes]]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


def _zip_of(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return out.getvalue()


def _torchscript_setup() -> dict:
    folder = WORK / "fixtures" / "torchscript"
    return {"archives": {path.stem: path.read_bytes() for path in folder.glob("*.pt")}}


def _torchscript_case(index: int, seed: int, ctx: dict) -> tuple[bytes, str, bool]:
    """(archive bytes, description, trust). Archives that carry a writer run only without trust: with trust a
    person has accepted that the file's code runs, so trusted cases are the benign archive and its mutations."""
    rng = random.Random(seed * 1_000_003 + index)
    archives = ctx["archives"]
    writers = [name for name in archives if name != "benign"]
    roll = rng.random()
    if roll < 0.25:  # the marker's name gets the case's number (same length: the pickled strings stay valid)
        name = writers[index % len(writers)]
        tag = f"{index:0{len(TAG)}d}"[-len(TAG):].encode()
        members = [(member, data.replace(TAG.encode(), tag)) for member, data in _zip_members(archives[name])]
        return _zip_of(members), f"scripted {name}", False
    trust = rng.random() < 0.5
    base = archives["benign"]
    if roll < 0.5:  # bytes of the zip itself
        out = bytearray(base)
        ops = []
        for _ in range(rng.randint(1, 4)):
            ops.append(DecoderCases._bytes_op(None, out, rng))
        return bytes(out), f"benign zip bytes {'+'.join(ops)}", trust
    members = _zip_members(base)
    at = rng.randrange(len(members))
    name, data = members[at]
    choice = rng.randrange(6)
    if choice == 0 and name.endswith(".py"):  # code text: a call that writes outside injected into forward
        text = data.decode()
        target = str(OUTSIDE / "markers" / f"ts-injected-{index}")
        injected = text.replace("    x: Tensor) -> Tensor:\n",
                                "    x: Tensor) -> Tensor:\n"
                                f"    _w = torch.fill_(torch.from_file(\"{target}\", True, 8, dtype=0), 65)\n", 1)
        if injected != text:
            members[at] = (name, injected.encode())
            return _zip_of(members), f"code injected into {name}", False
        choice = 1
    if choice == 1 and name.endswith(".py"):
        text = data.decode()
        edits = [("784", rng.choice(["7840000000", "-1", "0", "784.5"])), ("10", "100000000"),
                 ("forward", "forwarded"), ("Tensor", "int"), ("\n", "\n" * 2), ("(", "((")]
        old, new = rng.choice(edits)
        members[at] = (name, text.replace(old, new, rng.randint(1, 3)).encode())
        return _zip_of(members), f"code edit {old!r}->{new!r} in {name}", trust
    if choice == 2:  # a member's bytes
        out = bytearray(data)
        ops = [DecoderCases._bytes_op(None, out, rng) for _ in range(rng.randint(1, 3))]
        members[at] = (name, bytes(out))
        return _zip_of(members), f"{name} bytes {'+'.join(ops)}", trust
    if choice == 3:
        del members[at]
        return _zip_of(members), f"{name} removed", trust
    if choice == 4 and "data/" in name:  # a storage shorter or longer than its tensor says
        members[at] = (name, data[:rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data * 1000)
        return _zip_of(members), f"{name} resized", trust
    members.insert(rng.randrange(len(members) + 1), (name, data))
    return _zip_of(members), f"{name} duplicated", trust


def door_torchscript(path: Path, trust: bool):
    """`run --model torchscript:FILE [--trust]` up to the model: the source check (which keeps the spec's trust
    only when it is True), then the loader. Without trust both refuse before a byte of the file is read."""
    from complab import sources

    spec = {"model": f"torchscript:{path}", "weights": None, "data": "digits", "input_size": 28, "mean": None,
            "std": None, "trust": trust}
    checked = sources.check(spec)
    return sources.load_model({**checked, "trust": trust})


def run_torchscript(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    data, what, trust = _torchscript_case(index, seed, _STATE["torchscript"])
    path = _case_dir("torchscript", index) / "model.pt"
    path.write_bytes(data)
    what = f"{what}, trust={trust}"
    try:
        door_torchscript(path, trust)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        if outcome != "error":
            keep = Path(out_dir) / f"torchscript-{seed}-{index}.pt"
            keep.write_bytes(data)
            detail = f"{what} ({keep}): {detail}"
        return outcome, f"{what}: {detail}" if outcome == "error" else detail, len(data)
    if not trust:
        return "accepted", f"{what}: a TorchScript file was loaded without trust", len(data)
    return "ok", what, len(data)


# --- runfolder: received run folders (mutated job.json, metrics.json, events.jsonl, state.json) through `runs`,
#     `report` and the Runs and Compare pages

RUN_ID = "20261201-101500-ab12"


def _evil_pickle(marker: Path) -> bytes:
    """A checkpoint-looking pickle whose loading runs `touch marker`."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"model": Evil()}, protocol=2)


def _prepare_runfolder(folder: Path, outside: Path) -> None:
    """A finished LeNet-5 compression run (the pipeline's own files) with the engine's job/state/events files."""

    from complab import sources
    from complab.pipeline import compress
    from complab.plan import Plan

    plan = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0
    source = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None,
              "std": None}
    handle, data = sources.load(source)
    run = folder / "run"
    compress(handle, Plan.from_json(json.dumps(plan)), data, run, latency=False)
    now = time.time()
    (run / "job.json").write_text(json.dumps({"kind": "compress", **source, "plan": plan, "latency": False},
                                             indent=2))
    (run / "plan.json").write_text(json.dumps(plan, indent=2))
    (run / "state.json").write_text(json.dumps({"state": "succeeded", "created": now - 60, "started": now - 50,
                                                "finished": now - 5, "pid": 1, "error": None, "cancel": None}))
    (run / "events.jsonl").write_text("".join(json.dumps({"time": now - 50 + i, "stage": stage, "progress": i / 3})
                                              + "\n" for i, stage in enumerate(["load", "prune", "cluster", "done"])))
    (run / "log.txt").write_text("started\nfinished\n")

    (folder / "original.pt").write_bytes(_evil_pickle(outside / "markers" / "runfolder-original"))


def _runfolder_setup() -> dict:
    fixtures = WORK / "fixtures" / "runfolder"
    base = fixtures / "run"
    return {"files": {p.name: p.read_bytes() for p in base.iterdir()}, "original": (fixtures / "original.pt")}


def _runfolder_case(index: int, seed: int, ctx: dict) -> tuple[dict[str, bytes | None], str, bool]:
    """(files of the run folder: name -> bytes, None = absent; description; whether the folder is deleted after a
    first listing). Index 0-5 are the issue's reproductions; the rest mutate one or two files."""
    rng = random.Random(seed * 1_000_003 + index)
    files: dict[str, bytes | None] = dict(ctx["files"])
    job = json.loads(files["job.json"])
    metrics = json.loads(files["metrics.json"])
    original = ctx["original"].read_bytes()
    detect = {**metrics, "task": "detect"}  # the report rebuilds a detector's original for its image grid
    crafted = [
        ("a pickled original with trust in job.json (path relative to the cwd)",
         {"job.json": {**job, "model": "detector:{REL}", "trust": True, "data": "shapes"}, "original.pt": original,
          "metrics.json": detect}),
        ("a pickled original with trust in job.json (absolute path)",
         {"job.json": {**job, "model": f"detector:{OUTSIDE / 'evil.pt'}", "trust": True, "data": "shapes"},
          "metrics.json": detect}),
        ("a torchvision original whose weights are a code pickle",
         {"job.json": {**job, "model": "torchvision:resnet18", "weights": "{REL}"}, "original.pt": original}),
        ("script in metrics.json (before.latency_ms, plan_name, model)",
         {"metrics.json": {**metrics, "plan_name": XSS, "model": XSS,
                           "before": {**metrics["before"], "latency_ms": XSS}}}),
        ("after.accuracy: 'oops'", {"metrics.json": {**metrics, "after": {**metrics["after"], "accuracy": "oops"}}}),
        ("job.json model: 5", {"job.json": {**job, "model": 5}}),
    ]
    deleted = False
    if index < len(crafted):
        what, edits = crafted[index]
    else:
        edits, ops = {}, []
        for _ in range(rng.randint(1, 2)):
            target = rng.choice(["metrics.json", "metrics.json", "job.json", "state.json", "events.jsonl", "plan.json",
                                 "model.clab", "delete"])
            if target == "delete":
                name = rng.choice(["metrics.json", "job.json", "state.json", "model.clab", "plan.json",
                                   "events.jsonl"])
                edits[name] = None
                ops.append(f"no {name}")
            elif target == "events.jsonl":
                lines = [json.dumps(rng.choice([{"stage": 5, "progress": "x"}, {"progress": float("nan")},
                                                {"stage": XSS, "progress": 2.0}, [1, 2], {"progress": 1e308},
                                                {"stage": "x" * 100_000}])) for _ in range(rng.randint(1, 5))]
                edits[target] = ("\n".join(lines) + rng.choice(["\n", "", "\n\xff\xfe"])).encode("utf-8",
                                                                                              "surrogateescape")
                ops.append("events")
            elif target == "model.clab":
                out = bytearray(files["model.clab"])
                DecoderCases._bytes_op(None, out, rng)
                edits[target] = bytes(out)
                ops.append("clab bytes")
            elif rng.random() < 0.15:
                edits[target], what = _hostile_text(rng, files[target].decode())
                ops.append(f"{target} {what}")
            else:
                doc = json.loads(files[target]) if target != "metrics.json" else metrics
                extra = [XSS, "oops", {"accuracy": "x"}, 5, {"state": "succeeded"}, "succeeded", "running",
                         "detector:original.pt", "../../outside", -1e308]
                edits[target], what = _mutate_json(doc, rng, extra)
                ops.append(f"{target} {what}")
        deleted = rng.random() < 0.05
        what = "+".join(ops) + (" then deleted" if deleted else "")
    for name, value in edits.items():
        if value is None or isinstance(value, bytes):
            files[name] = value
        elif isinstance(value, str):
            files[name] = value.encode("utf-8", "surrogatepass")
        else:
            files[name] = _json_text(value, rng).encode()
    return files, what, deleted


def _quiet_main(argv: list[str]) -> tuple[int, str]:
    """complab.cli.main with its output captured; a bug raises (COMPRESSION_LAB_DEBUG is set in the workers)."""
    import contextlib
    import io

    from complab import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue() + err.getvalue()


RUNFOLDER_DOORS = ("runs", "report", "compare", "pages")


def door_runfolder(door: str, home: Path, run_dir: Path, report: Path, deleted: bool) -> list[str]:
    """One door a received run folder goes through: `complab runs` (twice, the folder deleted in between
    when `deleted`), `complab report FOLDER`, the Compare page's loading functions headless (the list,
    sweeps, table, headline, decoded file, waterfalls), or the Runs and Compare pages themselves (door_pages).
    Returns the one-line errors the door printed or showed; raises on a bug."""
    from complab import engine
    from complab.analysis import report as analysis
    from complab.analysis.pareto import prediction_error, runs_table
    from complab.analysis.report import headline_numbers
    from complab.sources import load_file

    said = []
    if door == "runs":
        code, text = _quiet_main(["runs", "--home", str(home)])
        if code != 0:
            said.append(text.strip())
        if deleted:
            shutil.rmtree(run_dir)
            code, text = _quiet_main(["runs", "--home", str(home)])
            if RUN_ID in text and not any(word in text for word in ("missing", "gone", "deleted", "damaged")):
                said.append(f"GHOST: a deleted run is still listed as if present: {text.strip().splitlines()[-1]}")
    elif door == "report":
        code, text = _quiet_main(["report", str(run_dir), "--out", str(report), "--force"])
        if code != 0:
            said.append(text.strip())
    elif door == "compare":
        runs = engine.list_runs(root=home, kind="compress")
        sweeps = engine.list_sweeps(root=home, runs=runs)
        table = runs_table(runs, sweeps)
        if not table.empty:
            prediction_error(table)
            for run in runs:
                if run["state"] == "succeeded" and run.get("metrics"):
                    headline_numbers(run["metrics"])
                    load_file(engine.run_dir(run["id"], root=home) / "model.clab")
                    rows = analysis.file_rows(engine.run_dir(run["id"], root=home))
                    analysis.bytes_waterfall(rows, run["metrics"]["before"]["fp32_bytes"], f"run {run['id']}",
                                             analysis.params_removed(run["metrics"]))
                    analysis.layer_waterfalls(rows)
    else:
        said += door_pages(home)
    return said


class PageError(Exception):
    """A page ended in an exception (Streamlit draws it with its traceback)."""


def door_pages(home: Path) -> list[str]:
    """The Runs and Compare pages themselves (Streamlit's AppTest, no browser) on the data folder: their
    exceptions, and the errors they show."""
    from streamlit.testing.v1 import AppTest

    shown = []
    old = os.environ["COMPRESSION_LAB_HOME"]
    os.environ["COMPRESSION_LAB_HOME"] = str(home)
    try:
        for page in ("pages/runs.py", "pages/compare.py"):
            at = AppTest.from_file(str(ROOT / page), default_timeout=8)
            at.run()
            if at.exception:
                raise PageError(f"{page} raised: {at.exception[0].value}"[:300])
            shown += [f"{page}: {e.value}" for e in at.error]
    finally:
        os.environ["COMPRESSION_LAB_HOME"] = old
    return shown


def run_runfolder(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    """Cases 0-23: the six reproductions, each through the four doors; then mutated folders, one door each (the
    pages every 10th case: an AppTest run costs seconds)."""
    ctx = _STATE["runfolder"]
    crafted = 6 * len(RUNFOLDER_DOORS)
    if index < crafted:
        files, what, deleted = _runfolder_case(index // len(RUNFOLDER_DOORS), seed, ctx)
        door = RUNFOLDER_DOORS[index % len(RUNFOLDER_DOORS)]
    else:
        files, what, deleted = _runfolder_case(index - crafted + 6, seed, ctx)
        door = "pages" if index % 10 == 0 else RUNFOLDER_DOORS[index % 3]
    deleted = deleted and door == "runs"
    what = f"[{door}] {what}"
    folder = _case_dir("runfolder", index)
    home = folder / "home"
    run_dir = home / "runs" / RUN_ID
    run_dir.mkdir(parents=True)
    size = 0
    relative = os.path.relpath(run_dir / "original.pt", WORK).encode()  # a mailed folder, unpacked here
    if files.get("original.pt") is not None:  # the pickle's marker named for this case
        files["original.pt"] = _evil_pickle(OUTSIDE / "markers" / f"runfolder-original-{index}")
    for name, data in files.items():
        if data is not None:
            (run_dir / name).write_bytes(data.replace(b"{REL}", relative))
            size += len(data) if name != "model.clab" else 0  # the received bytes an attacker chose
    report = folder / "report.html"
    _input_bytes(size, what)
    try:
        said = door_runfolder(door, home, run_dir, report, deleted)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{what}: {detail}", size
    lines = [line for text in said for line in text.splitlines()[-1:]]
    if any("error: unexpected " in line or "Traceback (most recent" in line for line in said):
        return "traceback", f"{what}: {[s[:200] for s in said]}", size
    if any(line.startswith("GHOST") for line in lines):
        return "accepted", f"{what}: {lines[0]}", size
    if report.is_file() and "<script>alert(1)</script>" in report.read_text(errors="replace"):
        return "accepted", f"{what}: the report embeds the run's text unescaped inside <script>", size
    return ("error" if said else "ok"), f"{what}: {said[:1]}" if said else what, size


# --- yaml: YOLO dataset yamls (download: scripts, split lists with a missing entry, huge/deep yaml, paths outside)


def _prepare_yolo(folder: Path) -> None:
    """A two-image YOLO dataset (images/{train,val}, labels) the yamls point at."""
    import io

    from PIL import Image

    for split in ("train", "val"):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        (folder / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            image = Image.new("RGB", (64, 64), (40 * i, 90, 200))
            out = io.BytesIO()
            image.save(out, format="PNG")
            (folder / "images" / split / f"{i}.png").write_bytes(out.getvalue())
            (folder / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.3\n")


def _yaml_setup() -> dict:
    from complab.models.detector import load_detector

    return {"model": load_detector().model, "dataset": WORK / "fixtures" / "yolo"}


def _yaml_case(index: int, seed: int, ctx: dict) -> tuple[str | bytes, str]:
    rng = random.Random(seed * 1_000_003 + index)
    root = ctx["dataset"]
    marker = OUTSIDE / "markers" / f"yaml-download-{index}"
    script = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"
    shell = WORK / f"yaml-{os.getpid()}-download.sh"
    shell.write_text(f"touch {marker}\n")
    names = "names: {0: shape}\n"
    base = f"path: {root}\ntrain: images/train\n"
    crafted = [
        ("download: with a missing second val entry (the issue's reproduction)",
         base + f"val: [images/val, images/val_missing]\n{names}download: {json.dumps(script)}\n"),
        ("download: with val missing", base + f"val: images/nope\n{names}download: {json.dumps(script)}\n"),
        ("download: bash with a missing val entry",
         base + f"val: [images/val, images/gone]\n{names}download: {json.dumps('bash ' + str(shell))}\n"),
        ("download: with every split present", base + f"val: images/val\n{names}download: {json.dumps(script)}\n"),
        ("test: split missing with download:",
         base + f"val: images/val\ntest: images/test_missing\n{names}download: {json.dumps(script)}\n"),
        ("train list with a missing entry", f"path: {root}\ntrain: [images/train, gone]\nval: images/val\n{names}"),
        ("val as a list of lists", base + f"val: [[images/val]]\n{names}"),
        ("val an int", base + f"val: 5\n{names}"),
        ("val a mapping", base + f"val: {{a: 1}}\n{names}"),
        ("val empty list", base + f"val: []\n{names}"),
        ("path outside (/etc)", f"path: /etc\ntrain: .\nval: .\n{names}"),
        ("val escaping the root", base + f"val: ../../../../../../{OUTSIDE.relative_to('/')}/images\n{names}"),
        ("val a file (/etc/passwd)", base + f"val: /etc/passwd\n{names}"),
        ("val a txt list naming files outside", base + f"val: list.txt\n{names}"),
        ("names missing", base + "val: images/val\n"),
        ("names a string", base + "val: images/val\nnames: shape\n"),
        ("names 100,000 classes", base + "val: images/val\nnames: [" + ",".join(["c"] * 100_000) + "]\n"),
        ("nc disagrees with names", base + f"val: images/val\nnc: 1000000\n{names}"),
        ("deep yaml (10,000 nested lists)", base + "val: " + "[" * 10_000 + "]" * 10_000 + f"\n{names}"),
        ("billion laughs",
         "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
         "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n" + base + "val: images/val\n"
         "names: *h\n"),
        ("python tag", base + f"val: !!python/object/apply:os.system ['touch {marker}']\n{names}"),
        ("huge yaml (1 MB of keys)",
         base + f"val: images/val\n{names}" + "".join(f"k{i}: {i}\n" for i in range(80_000))),
        ("not UTF-8", (base + f"val: images/val\n{names}").encode() + b"\xff\xfe: \x00\n"),
        ("empty", ""),
        ("a list at the top", "- a\n- b\n"),
    ]
    if index < len(crafted):
        what, text = crafted[index]
    else:
        what, text = crafted[rng.randrange(len(crafted))]
        if isinstance(text, str) and rng.random() < 0.7:
            lines = text.splitlines()
            at = rng.randrange(len(lines)) if lines else 0
            edit = rng.choice(["dup", "del", "swap", "indent", "char"])
            if lines and edit == "dup":
                lines.insert(at, lines[at])
            elif lines and edit == "del":
                del lines[at]
            elif len(lines) > 1 and edit == "swap":
                lines[0], lines[at] = lines[at], lines[0]
            elif lines and edit == "indent":
                lines[at] = "  " + lines[at]
            elif lines:
                pos = rng.randrange(len(lines[at]) + 1)
                char = rng.choice([":", "[", "{", "&", "*", "!", "'", "\t", "#"])
                lines[at] = lines[at][:pos] + char + lines[at][pos:]
            text = "\n".join(lines) + "\n"
            what = f"{what} + line {edit}"
    if what == "val a txt list naming files outside":
        (root / "list.txt").write_text(f"{OUTSIDE}/images/{SECRET}a/0.png\n/etc/passwd\n")
    return text, what


def door_yaml(path: Path, model) -> None:
    """`eval FILE --data yolo:data.yaml` for a detector: our reader, then Ultralytics' validation on it."""
    from complab.data.detection import load_detection_data
    from complab.models.detector import evaluate_model

    data = load_detection_data(f"yolo:{path}")
    evaluate_model(model, 64, data.yaml_path, batch=2)


def run_yaml(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    ctx = _STATE["yaml"]
    text, what = _yaml_case(index, seed, ctx)
    data = text if isinstance(text, bytes) else text.encode()
    path = _case_dir("yaml", index) / "data.yaml"
    path.write_bytes(data)
    _input_bytes(len(data), what)
    try:
        door_yaml(path, ctx["model"])
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{what}: {detail}", len(data)
    return "ok", what, len(data)


# --- folders: image folders (symlink cycles, missing splits, many files, special files) and CIFAR folders


def _folder_case(index: int, seed: int, root: Path) -> tuple[str, str]:
    """Build case `index`'s folder under root; (description, data reference)."""
    rng = random.Random(seed * 1_000_003 + index)
    png = _png(12, 12, rng)

    def images(folder: Path, classes=("a", "b"), per_class=3) -> None:
        for c in classes:
            (folder / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / c / f"{i}.png").write_bytes(png)

    builders = []

    def case(fn):
        builders.append(fn)
        return fn

    @case
    def cycle_parent():
        images(root)
        (root / "a" / "loop").symlink_to("..")
        return "symlink cycle a/loop -> .. (the issue's reproduction)"

    @case
    def cycle_self():
        images(root)
        (root / "a" / "self").symlink_to(".")
        return "symlink cycle a/self -> ."

    @case
    def cycle_mutual():
        images(root)
        (root / "a" / "to_b").symlink_to("../b")
        (root / "b" / "to_a").symlink_to("../a")
        return "mutual symlinks a/to_b <-> b/to_a"

    @case
    def cycle_deep():
        images(root)
        deep = root / "a" / "x" / "y" / "z"
        deep.mkdir(parents=True)
        (deep / "up").symlink_to("../../../..")
        return "symlink cycle three levels down"

    @case
    def cycle_split():
        images(root / "train")
        images(root / "val")
        (root / "train" / "a" / "root").symlink_to("../../..")
        return "train/a/root -> the dataset root"

    @case
    def link_outside():
        images(root)
        (root / "c").symlink_to(OUTSIDE / "images")
        return "a class folder linked to a folder outside"

    @case
    def dev_zero():
        images(root)
        (root / "a" / "zero.png").symlink_to("/dev/zero")
        return "an image that is /dev/zero"

    @case
    def fifo():
        images(root)
        os.mkfifo(root / "b" / "pipe.png")
        return "an image that is a FIFO"

    @case
    def many_files():
        images(root)
        for i in range(rng.choice([20_000, 60_000])):
            (root / "a" / f"e{i}.png").touch()
        return "tens of thousands of empty .png files"

    @case
    def many_dirs():
        images(root)
        for i in range(5_000):
            (root / f"c{i}").mkdir()
        return "5,000 empty class folders"

    @case
    def deep_dirs():
        images(root)
        path = root / "a"
        for _ in range(120):
            path = path / "d"
        path.mkdir(parents=True)
        (path / "0.png").write_bytes(png)
        return "an image 120 folders deep"

    @case
    def train_only():
        images(root / "train")
        return "train/ without val/"

    @case
    def val_only():
        images(root / "val")
        return "val/ without train/"

    @case
    def splits_differ():
        images(root / "train", ("a", "b"))
        images(root / "val", ("a", "c", "d"))
        return "train/ and val/ with different classes"

    @case
    def test_empty():
        images(root / "train")
        images(root / "val")
        (root / "test").mkdir()
        return "an empty test/"

    @case
    def split_is_file():
        images(root / "train")
        (root / "val").write_bytes(b"x")
        return "val is a file"

    @case
    def odd_names():
        images(root)
        (root / "a" / "new\nline.png").write_bytes(png)
        (root / os.fsdecode(b"\xff\xfe")).mkdir()
        (root / os.fsdecode(b"\xff\xfe") / "0.png").write_bytes(png)
        return "names with a newline and non-UTF-8 bytes"

    @case
    def cifar_pickle():
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {OUTSIDE / 'markers' / f'cifar-batch-{index}'}",))

        base = root / "cifar-10-batches-py"
        base.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            (base / name).write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2))
        return "CIFAR batches whose pickles run code"

    @case
    def cifar_huge():
        import pickle

        import numpy as np

        base = root / "cifar-10-batches-py"
        base.mkdir()
        big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (1, 3072), (0, 0))
        (base / "data_batch_1").write_bytes(pickle.dumps({"data": big, "labels": list(range(10)) * 200_000},
                                                         protocol=4))
        for name in [f"data_batch_{i}" for i in range(2, 6)] + ["test_batch", "batches.meta"]:
            os.link(base / "data_batch_1", base / name)
        return "CIFAR batches with 2 million labels for one image"

    assert len(builders) == FOLDER_CASES
    which = index % len(builders)
    what = builders[which]()
    kind = "cifar10" if builders[which].__name__.startswith("cifar") else "imagefolder"
    return what, f"{kind}:{root}"


def door_folders(ref: str) -> int:
    """The dataset loader and one pass over every split (what a run does before it measures); returns the number
    of images the splits hold."""
    from complab.data import load_data

    data = load_data(ref, input_size=28)
    for split in ("train", "val", "test"):
        for _ in data.loader(split, batch_size=16):
            pass
    return sum(len(data.split(split)) for split in ("train", "val", "test"))


def run_folders(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    root = _case_dir("folders", index) / "data"
    root.mkdir()
    what, ref = _folder_case(index, seed, root)
    size = _tree_bytes(root)
    _input_bytes(size, what)
    try:
        found = door_folders(ref)
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{what}: {detail}", size
    real = sum(1 for dirpath, _, names in os.walk(root) for name in names
               if name.endswith(".png") and not os.path.islink(os.path.join(dirpath, name)))
    if ("cycle" in what or "<->" in what or "dataset root" in what) and found > real:
        return "accepted", f"{what}: the loader went round the loop: {found} images from {real} files", size
    return "ok", what, size


# --- clab: small compact files that name a big architecture or a big input (issue 24's memory reproductions)


def _clab_meta(arch: str, input_shape: list, history: list | None = None, classes: int = 1000) -> dict:
    meta = {"producer": "fuzz", "task": "classify", "label": "fuzz",
            "architecture": {"kind": "torchvision", "arch": arch, "kwargs": {"num_classes": classes}},
            "input_shape": input_shape, "num_classes": classes, "mean": None, "std": None}
    if history is not None:
        meta["channel_pruning"] = history
    return meta


def _clab_case(index: int, seed: int) -> tuple[bytes, str, str]:
    """(file bytes, description, door). Cases 0-15: the crafted files, each through both doors; then their metas
    with one value changed."""
    import torch
    from complab.storage import encode_state

    rng = random.Random(seed * 1_000_003 + index)
    one = {"fc.weight": torch.zeros(2, 2)}
    crafted = [
        ("300 bytes of garbage", None),
        ("regnet_y_128gf, one tensor", (one, _clab_meta("regnet_y_128gf", [3, 224, 224]))),
        ("vgg19, one tensor", (one, _clab_meta("vgg19", [3, 224, 224]))),
        ("squeezenet1_0, a channel-pruning record, input 3x2048x2048",
         ({"features.0.weight": torch.zeros(48, 3, 7, 7)},
          _clab_meta("squeezenet1_0", [3, 2048, 2048], [["features.0", True, list(range(48))]]))),
        ("vit_h_14, one tensor", (one, _clab_meta("vit_h_14", [3, 224, 224]))),
        ("resnet18, one tensor, input 3x4096x4096", (one, _clab_meta("resnet18", [3, 4096, 4096]))),
        ("convnext_large, one tensor, a million classes", (one, _clab_meta("convnext_large", [3, 224, 224],
                                                                            classes=1_000_000))),
        ("mobilenet_v3_small, a channel-pruning record, input 3x8192x8192",
         (one, _clab_meta("mobilenet_v3_small", [3, 8192, 8192], [["features.0.0", True, list(range(8))]]))),
    ]
    doors = ("load", "export")
    what, spec = crafted[(index // len(doors)) % len(crafted)]
    door = doors[index % len(doors)]
    if spec is None:
        return random.Random(index).randbytes(300), what, door
    state, meta = spec
    if index >= len(crafted) * len(doors):
        meta = copy.deepcopy(meta)
        key = rng.choice(["input_shape", "num_classes", "architecture"])
        if key == "architecture":
            meta[key]["arch"] = rng.choice(["regnet_y_32gf", "vit_l_16", "efficientnet_v2_l", "wide_resnet101_2",
                                            "maxvit_t", "swin_v2_b", "resnet152"])
        elif key == "input_shape":
            meta[key] = [3, rng.choice([32, 1024, 2048, 4096, 16384]), rng.choice([32, 1024, 2048, 4096, 16384])]
        else:
            meta[key] = meta["architecture"]["kwargs"]["num_classes"] = rng.choice([10**5, 10**6, 10**7])
        what = f"{what}; {key} {meta[key] if key != 'architecture' else meta[key]['arch']}"
    return encode_state(state, meta), what, door


def door_clab(path: Path, door: str, out: Path) -> None:
    """`eval`/`inspect`/the app's decode of a compact file (sources.load_file), or `complab export FILE
    OUT.onnx` (decode, then trace at the recorded input size)."""
    from complab import sources

    if door == "load":
        sources.load_file(path)
        return
    code, text = _quiet_main(["export", str(path), str(out), "--force"])
    if code != 0 and not text.strip().splitlines()[-1].startswith("error: "):
        raise RuntimeError(f"export printed: {text.strip()[-300:]}")


def run_clab(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    data, what, door = _clab_case(index, seed)
    folder = _case_dir("clab", index)
    path = folder / "model.clab"
    path.write_bytes(data)
    what = f"[{door}] {what} ({len(data)} B)"
    _input_bytes(len(data), what)
    try:
        door_clab(path, door, folder / "model.onnx")
    except Exception as exc:  # noqa: BLE001
        outcome, detail = _classify(exc)
        return outcome, f"{what}: {detail}", len(data)
    return "ok", what, len(data)


# The heavy modules each family's door imports, imported before the family's first case is measured: a case's RSS
# growth is then what the input costs, not the first import of torchvision, Ultralytics or Streamlit.
_BASE_MODULES = ("torch", "torchvision", "numpy", "PIL.Image", "complab.errors", "complab.storage",
                 "complab.storage.codec", "complab.models.handle", "complab.models.compact", "complab.sources")
WARM_MODULES = {
    "decoder": ("torch_pruning", "complab.storage.vq_section"),
    "int": ("torch_pruning", "complab.storage.int_section", "complab.models.actquant", "complab.methods.int_quant"),
    "ctx": ("complab.storage.context_section",),
    "recipe": ("complab.plan",),
    "model": ("safetensors.torch",),
    "detector": ("ultralytics", "ultralytics.nn.tasks", "complab.models.yolo_arch", "complab.models.yolo_env",
                 "complab.models.detector"),
    "data": ("complab.data", "complab.data.folders", "complab.data.walk"),
    "torchscript": ("torch.jit", "complab.codeload"),
    "runfolder": ("complab.cli", "complab.engine", "complab.runfolder", "complab.analysis.report",
                  "complab.analysis.pareto", "complab.ui.report", "streamlit", "streamlit.testing.v1"),
    "yaml": ("yaml", "ultralytics", "ultralytics.nn.tasks", "ultralytics.data.utils", "complab.data.detection",
             "complab.models.detector"),
    "folders": ("complab.data", "complab.data.folders", "complab.data.walk"),
    "clab": ("onnx", "complab.export", "complab.cli", "torch_pruning"),
    "links": ("streamlit", "complab.ui.links", "complab.ui.state", "complab.data"),
    "sensitivity": ("complab.analysis.sensitivity_report", "complab.analysis.targets", "complab.analysis.predict",
                    "complab.analysis.estimate"),
    "automaton": ("complab.plan",),
    "drafts": ("streamlit", "complab.ui.plan_draft", "complab.ui.plan_page"),
    "lineage": ("complab.analysis.lineage", "complab.plan"),
    "keys": ("complab.engine.keys", "complab.data.detection", "yaml"),
    "behaviour": ("complab.analysis.behaviour", "complab.analysis.behaviour_cache", "complab.cli"),
}


def _warm(family: str) -> None:
    """Import the family's heavy modules (a module that is missing here is the door's problem, not the warm-up's)."""
    import importlib

    if family == "selftest":
        return
    if any(name.startswith("ultralytics") for name in WARM_MODULES.get(family, ())):
        from complab.models.yolo_env import offline_ultralytics

        offline_ultralytics()  # as the library does before its first import of ultralytics
    for name in (*_BASE_MODULES, *WARM_MODULES.get(family, ())):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112
            continue


# --- keys: data_fingerprint (the reuse key's data part) on crafted folders, yamls and references


KEYS_HEAVY = 2  # the first cases: 120,000-line image lists (one walk each)


def _keys_setup() -> dict:
    """Crafted datasets (built once per worker): folders with link cycles and links out, a FIFO and /dev/zero as
    images and as the yaml, yamls with billion-laugh aliases, deep nesting, NUL bytes, splits outside, a huge image
    list; and their references."""
    root = WORK / f"keys-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    png = _png(8, 8, random.Random(0))
    for c in ("a", "b"):
        (root / "good" / c).mkdir(parents=True)
        for i in range(3):
            (root / "good" / c / f"{i}.png").write_bytes(png)
    shutil.copytree(root / "good", root / "cycles", symlinks=True)
    (root / "cycles" / "a" / "up").symlink_to("..")
    (root / "cycles" / "b" / "self").symlink_to(".")
    (root / "cycles" / "a" / "mutual").symlink_to("../b")
    (root / "cycles" / "b" / "mutual").symlink_to("../a")
    (root / "cycles" / "root").symlink_to(root / "cycles")
    (root / "cycles" / "out").symlink_to(OUTSIDE / "images")
    (root / "cycles" / "etc").symlink_to("/etc")
    (root / "cycles" / "a" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(root / "cycles" / "b" / "pipe.png")
    (root / "cycles" / "dangling").symlink_to(root / "nothing")
    deep = root / "deep"
    for _ in range(60):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "top").symlink_to(root / "deep")
    os.mkfifo(root / "fifo.yaml")
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "images" / "train").mkdir(parents=True)
    (root / "images" / "val").symlink_to(root / "images")  # a split linked to its parent
    (root / "images" / "train" / "0.png").write_bytes(png)
    lines = [f"{root}/images/train/{i}.png" for i in range(120_000)]
    (root / "huge.txt").write_text("\n".join(lines))
    (root / "nul.txt").write_bytes(b"a\x00b.png\n\x00\n" * 1000)
    (root / "bytes.txt").write_bytes(random.Random(1).randbytes(50_000))
    laughs = "a: &a [\"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\", \"x\"]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9))
    yamls = {
        "good": f"path: {root}\ntrain: images/train\nval: images/val\nnames: [a]\n",
        "laughs": laughs + "train: *j\nval: *j\ntest: *j\n",
        "aliases": "x: &x images/train\ntrain: [*x, *x, *x]\nval: &v [*x]\ntest: [*v, *v]\n",
        "deep": "train: " + "[" * 20_000 + "]" * 20_000 + "\n",
        "nul": "train: \"a\\0b\"\nval: [\"\\0\", \"\\0/x\"]\n",
        "outside": f"train: {OUTSIDE}/images\nval: ../../../../../../..\ntest: /etc\n",
        "fifo_splits": f"train: {root}/fifo.yaml\nval: {root}/cycles/b/pipe.png\ntest: /dev/zero\n",
        "huge_list": f"train: {root}/huge.txt\nval: {root}/huge.txt\n",
        "nul_list": f"train: {root}/nul.txt\nval: {root}/bytes.txt\n",
        "cycles": f"path: {root}/cycles\ntrain: .\nval: a/up\ntest: root/root/root\n",
        "home": "path: ~nosuchuser-fuzz\ntrain: ~nosuchuser-fuzz/x\nval: ~\n",
        "python": "train: !!python/object/apply:os.system [\"touch " + str(OUTSIDE / "markers" / "keys") + "\"]\n",
        "types": "train: 7\nval: {a: b}\ntest: [1, null, true, [x]]\npath: [1]\n",
        "many": "train: [" + ", ".join(f"images/{i}" for i in range(5000)) + "]\n",
        "nonutf8": b"train: \xff\xfe\x00images\n",
    }
    refs = []
    for name, text in yamls.items():
        path = root / f"{name}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        refs.append((f"yaml {name}", f"yolo:{path}"))
    for name in ("good", "cycles", "deep", "images"):
        for kind in ("imagefolder", "cifar10", "cifar100"):
            refs.append((f"{kind} {name}", f"{kind}:{root / name}"))
    refs += [("a yaml that is a FIFO", f"yolo:{root}/fifo.yaml"),
             ("a yaml linked to /dev/zero", f"yolo:{root}/zero.yaml"),
             ("yolo:/dev/zero", "yolo:/dev/zero"), ("imagefolder:/dev/zero", "imagefolder:/dev/zero"),
             ("a FIFO folder", f"imagefolder:{root}/cycles/b/pipe.png"),
             ("~nosuchuser", "imagefolder:~nosuchuser-x/a"), ("yolo ~nosuchuser", "yolo:~nosuchuser-x/d.yaml"),
             ("NUL", "imagefolder:a\x00b"), ("yolo NUL", "yolo:\x00"),
             ("the outside folder", f"imagefolder:{OUTSIDE}/images"), ("/proc", "cifar10:/proc/self/fd"),
             ("a folder as yaml", f"yolo:{root}/good"), ("builtin", "digits"), ("empty", "imagefolder:"),
             ("non-string", None), ("a list", ["imagefolder:/etc", {"a": [1.5, float("nan")]}]), ("bytes", b"yolo:x")]
    return {"root": root, "refs": refs, "good": (root / "good.yaml").read_text()}


def _keys_case(index: int, seed: int, ctx: dict) -> tuple[object, str, int]:
    """(reference, description, input bytes)."""
    rng = random.Random(seed * 1_000_003 + index)
    root = ctx["root"]
    if index < KEYS_HEAVY:
        return f"yolo:{root}/huge_list.yaml", "120,000-line image lists", 3_000_000
    refs = ctx["refs"]
    if index < KEYS_HEAVY + len(refs):
        what, ref = refs[index - KEYS_HEAVY]
        return ref, what, len(str(ref))
    roll = rng.random()
    if roll < 0.5:  # a yaml mixing the crafted splits, mutated
        keys = ("train", "val", "test", "path", "names", "nc")
        values = [f"{root}/cycles", "cycles/a/up", f"{OUTSIDE}/images", "/dev/zero", f"{root}/fifo.yaml",
                  f"{root}/nul.txt", "~nosuchuser-x", "\0", ".", "..", "/", "images", "images/val/val/val", 7, None,
                  [f"{root}/good", f"{root}/deep"], {"a": "b"}, "x" * 5000, f"{root}/cycles/b/pipe.png"]
        doc = {key: rng.choice(values) for key in rng.sample(keys, rng.randint(1, len(keys)))}
        text = json.dumps(doc)
        if rng.random() < 0.3:
            text, _ = _hostile_text(rng, text)
        path = _case_dir("keys", index) / "data.yaml"
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        path.write_bytes(data)
        return f"yolo:{path}", "mixed yaml", len(data)
    if roll < 0.8:  # a crafted reference with a prefix, suffix or unicode changed
        _, ref = rng.choice(refs)
        ref = str(ref)
        edit = rng.choice([lambda r: r + "/", lambda r: r + "/..", lambda r: r.replace(":", "::", 1),
                           lambda r: r + "\x00", lambda r: r.upper(), lambda r: r + "/a/up/up/up",
                           lambda r: "yolo:" + r.split(":", 1)[-1], lambda r: "imagefolder:" + r.split(":", 1)[-1],
                           lambda r: r.replace("/", "//"), lambda r: r + "/" + "x" * 300])
        ref = edit(ref)
        return ref, "edited reference", len(ref)
    ref = rng.choice(["yolo:", "imagefolder:", "cifar10:", "cifar100:", "", "shapes:", "digits:"]) + "".join(
        rng.choice("abc/.~:\x00²٣ \n*?") for _ in range(rng.randrange(30)))
    return ref, "random reference", len(ref)


def door_keys(ref) -> object:
    """complab.engine.keys.data_fingerprint: what a submission's content key reads of its data."""
    from complab.engine.keys import data_fingerprint

    return data_fingerprint(ref)


def run_keys(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    ref, what, size = _keys_case(index, seed, _STATE["keys"])
    _input_bytes(size, what)
    started = time.monotonic()
    try:
        key = door_keys(ref)
    except Exception as exc:  # noqa: BLE001 - data_fingerprint must never raise, not even a CompressionLabError
        outcome, detail = _classify(exc)
        return "traceback", f"{what} {str(ref)[:120]!r}: data_fingerprint raised: {detail}", size
    took = time.monotonic() - started
    if not (key is None or (isinstance(key, str) and re.fullmatch(r"[0-9a-f]{64}", key))):
        return "traceback", f"{what} {str(ref)[:120]!r}: data_fingerprint returned {key!r:.80}", size
    return "ok", f"{what}: {'no key' if key is None else 'key'} ({took:.2f} s)", size


# === lineage family (issue 28, the map of the experiments) ===========================================================
# Run rows as engine.list_runs gives them (job.json's origin, sweep tag and plan; metrics; created) and sweeps as
# engine.list_sweeps gives them, mutated (origins that loop, name themselves, unknown or later runs, huge strings,
# wrong types; rows and sweeps of the wrong shape; 5,000-run chains and cycles) into analysis.lineage.experiment_graph,
# and two recipes from assets/recipes mutated (or hostile JSON) into recipe_diff with LeNet-5's or ResNet-18's layer
# names (or hostile ones). A graph whose edges leave it, loop, or reach a run through an origin that is not an earlier
# listed run of the same model, more runs than MAX_RUNS, or a diff longer than MAX_DIFF_ROWS + 1 is an unsafe accept.


def _lineage_setup() -> dict:
    recipes = [json.loads(path.read_text()) for path in sorted((ROOT / "assets" / "recipes").glob("*.json"))]
    plans = [recipe for recipe in recipes if isinstance(recipe, dict)]
    runs, sweeps = [], [{"id": "sw1", "label": "sweep sw1 (ratio)", "members": []}]
    for i in range(24):
        plan = copy.deepcopy(plans[i % len(plans)])
        plan["name"] = ("lesson: prune" if i == 5 else "lesson: prune + share" if i == 6 else plan["name"])
        job = {"kind": "compress", "model": "demo:lenet5" if i % 5 else "demo:vgg_small", "plan": plan}
        if i % 4 == 1:
            job["origin"] = {"kind": "rerun" if i % 8 == 1 else "recipe", "run": f"r{i - 1}"}
        if i % 6 == 3:
            job["sweep"] = {"id": "sw1", "index": i, "target": "ratio:10"}
            sweeps[0]["members"].append({"run": f"r{i}", "reused": False})
        runs.append({"id": f"r{i}", "state": "succeeded", "created": 1000.0 + i, "job": job, "model": job["model"],
                     "metrics": {"after": {"accuracy": 0.9 - i / 100, "compressed_bytes": 1000 + i},
                                 "before": {"accuracy": 0.99, "fp32_bytes": 100_000}, "task": "classify"}})
    return {"runs": runs, "sweeps": sweeps, "plans": plans,
            "layers": [["conv1", "conv2", "fc1", "fc2"], RESNET18_LAYERS]}


def _lineage_case(index: int, seed: int, ctx: dict) -> tuple[dict, str]:
    """(the door's arguments, what they are): runs, sweeps, plan_a, plan_b, layers."""
    rng = random.Random(seed * 1_000_003 + index)
    runs, sweeps = copy.deepcopy(ctx["runs"]), copy.deepcopy(ctx["sweeps"])
    ids = [run["id"] for run in runs]
    origin_values = [{"kind": "rerun", "run": "x" * 100_000}, {"kind": "rerun", "run": "nosuchrun"},
                     {"kind": "recipe", "run": None}, ["rerun", "r1"], "r1", 7, {"kind": "rerun", "run": "r1", "x": 1},
                     {"kind": {"a": 1}, "run": "r1"}, {"kind": "rerun", "run": "../../etc/passwd"}]
    what = []
    if index == 0:  # a 5,000-run chain, each a re-run of the one before
        runs = [{"id": f"c{i}", "state": "succeeded", "created": float(i),
                 "job": {"model": "m", "origin": {"kind": "rerun", "run": f"c{i - 1}"}}} for i in range(5000)]
        what.append("5,000-run chain")
    elif index == 1:  # 3,000 runs in one cycle, created at the same second
        runs = [{"id": f"c{i}", "state": "succeeded", "created": 0.0,
                 "job": {"model": "m", "origin": {"kind": "rerun", "run": f"c{(i + 1) % 3000}"}}} for i in range(3000)]
        what.append("3,000-run cycle")
    else:
        for _ in range(rng.randint(1, 6)):
            run = rng.choice(runs)
            if not isinstance(run, dict) or not isinstance(run.get("job"), dict):
                continue
            roll = rng.random()
            if roll < 0.35:
                run["job"]["origin"] = {"kind": rng.choice(["rerun", "recipe"]), "run": rng.choice(ids)}  # loops too
                what.append("origin to any run")
            elif roll < 0.45:
                run["job"]["origin"] = {"kind": "rerun", "run": run.get("id")}
                what.append("self-loop")
            elif roll < 0.65:
                run["job"]["origin"] = copy.deepcopy(rng.choice(origin_values))
                what.append("bad origin")
            elif roll < 0.85:
                runs[runs.index(run)], op = _mutate_json(run, rng, origin_values)
                what.append(f"row {op}")
            else:
                sweeps, op = _mutate_json(sweeps, rng, [{"run": rng.choice(ids)}, [{"run": "r1"}] * 3])
                what.append(f"sweeps {op}")
    plan_a, plan_b = (copy.deepcopy(rng.choice(ctx["plans"])) for _ in range(2))
    roll = rng.random()
    if roll < 0.5:
        plan_b, op = _mutate_json(plan_b, rng, [{"_default": 0.5, "re:(a|a)*b": 0.1}, {"re:" + ".*" * 90: 1}])
        what.append(f"plan {op}")
    elif roll < 0.6:
        text, kind = _hostile_text(rng, json.dumps(plan_a))
        try:
            plan_a = json.loads(text)
        except (ValueError, RecursionError, TypeError):
            plan_a = text if isinstance(text, str) else text.decode("latin-1")
        what.append(f"plan {kind}")
    layers = rng.choice(ctx["layers"] + [None])
    if rng.random() < 0.1:
        layers = rng.choice([[f"l{i}" for i in range(200_000)], ["conv1", 3, None, "x" * 5000], "conv1", {"a": 1}])
        what.append("hostile layers")
    return {"runs": runs, "sweeps": sweeps, "plan_a": plan_a, "plan_b": plan_b, "layers": layers}, \
        "+".join(what) or "unchanged"


def door_lineage(case: dict) -> tuple[object, list | None, str | None]:
    """What the Compare page's map does with the listed runs (analysis.lineage.experiment_graph) and with two runs'
    recipes (recipe_diff): (graph, diff rows or None, the diff's one-line refusal or None)."""
    from complab.analysis.lineage import experiment_graph, recipe_diff
    from complab.errors import CompressionLabError

    graph = experiment_graph(case["runs"], case["sweeps"])
    try:
        return graph, recipe_diff(case["plan_a"], case["plan_b"], case["layers"]), None
    except CompressionLabError as exc:
        return graph, None, str(exc)


def _lineage_unsafe(graph, rows, case: dict) -> str | None:
    """Why an accepted graph or diff breaks what the map promises, or None."""
    from complab.analysis.lineage import MAX_DEPTH, MAX_DIFF_ROWS, MAX_RUNS
    from complab.runfolder import RUN_ID

    nodes = {node["id"]: node for node in graph.nodes}
    if len(graph.runs()) > MAX_RUNS:
        return f"{len(graph.runs())} runs drawn, more than {MAX_RUNS}"
    listed = {run["id"]: run for run in case["runs"] if isinstance(run, dict) and isinstance(run.get("id"), str)}
    for edge in graph.edges:
        if edge["source"] not in nodes or edge["target"] not in nodes:
            return "an edge leaves the graph"
    for node in graph.nodes:
        if node["kind"] == "run" and (not RUN_ID.fullmatch(node["run"]) or node["run"] not in listed):
            return "a node is no listed run"
        if node["generation"] > MAX_DEPTH:
            return "a generation past MAX_DEPTH"
        seen, at = set(), node
        while at["parent"] is not None:  # every chain ends at an original model
            if at["id"] in seen:
                return "the parents loop"
            seen.add(at["id"])
            at = nodes[at["parent"]]
        if node["edge"] in ("rerun", "recipe"):
            parent = nodes[node["parent"]]
            origin = listed[node["run"]]["job"].get("origin") if isinstance(listed[node["run"]].get("job"), dict) \
                else None
            if not isinstance(origin, dict) or origin.get("run") != parent["run"] or \
                    (parent["created"], parent["run"]) >= (node["created"], node["run"]) or \
                    parent["model"] != node["model"]:
                return "an origin edge that is not an earlier listed run of the same model"
    if rows is not None and len(rows) > MAX_DIFF_ROWS + 1:
        return f"a diff of {len(rows)} rows"
    return None


def run_lineage(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    case, what = _lineage_case(index, seed, _STATE["lineage"])
    size = len(_json_text(case, random.Random(0)))
    started = time.monotonic()
    try:
        graph, rows, refusal = door_lineage(case)
    except Exception as exc:  # noqa: BLE001 - experiment_graph never raises; recipe_diff only CompressionLabError
        return "traceback", f"{what}: {_classify(exc)[1]}", size
    took = time.monotonic() - started
    unsafe = _lineage_unsafe(graph, rows, case)
    if unsafe:
        return "accepted", f"{what}: {unsafe}", size
    if refusal is not None:  # recipe_diff's CompressionLabError: one plain line
        if "\n" in refusal or not refusal:
            return "traceback", f"{what}: multi-line or empty refusal {refusal[:300]!r}", size
        return "error", f"{what} ({took:.2f} s): {refusal[:200]}", size
    return "ok", f"{what}: {len(graph.nodes)} nodes, {len(rows)} diff rows ({took:.2f} s)", size

# === end of the lineage family =======================================================================================


_STATE: dict = {}
_SETUPS = {"links": _links_setup, "sensitivity": _sensitivity_setup, "automaton": _automaton_setup,
           "torchscript": _torchscript_setup, "runfolder": _runfolder_setup, "yaml": _yaml_setup, "keys": _keys_setup,
           "drafts": _drafts_setup, "int": _int_setup, "ctx": _ctx_setup,
           "lineage": _lineage_setup}
FOLDER_CASES = 19  # builders in _folder_case


# ==================================================================================================================
# --- behaviour (issue 28): cached behaviour diffs (<data folder>/behaviour/KEY.json) through their one reader ------
# A cache file is untrusted: complab.analysis.behaviour_cache.read_cached bounds its size, parses it without NaN,
# Infinity or deep nesting, and checks the "behaviour/1" schema; a damaged file reads as None (the diff is
# recomputed). Each case writes a mutated diff (of a real classifier diff of the demo LeNet-5 against a planted copy,
# or a detector diff's shape) and reads it back; a dict it returns goes through `complab diff`'s summary printer. A
# returned dict with a non-finite number, a count past its split or a class past its table is an unsafe accept.
BEHAVIOUR_HEAVY = 3  # the first cases: a 40 MB file, 100,000-deep nesting, 1,000 classes of confusion matrices
BEHAVIOUR_KEY = "b" * 64


def _behaviour_setup() -> dict:
    import torch
    from complab import sources
    from complab.analysis.behaviour import classifier_diff

    original, digits = sources.load({"model": "demo:lenet5", "data": "digits"})
    planted = original.clone()
    with torch.no_grad():
        planted.model.fc2.bias[3] -= 100.0
    classify = json.loads(json.dumps(classifier_diff(original, planted, digits, gallery=4)))
    side = {"label": "run", "file": "model.clab", "bytes": 1000, "sha256": "0" * 64}
    detect = {"schema": "behaviour/1", "task": "detect", "a": side, "b": side, "split": "val", "n": 200,
              "seconds": 3.0, "map50_a": 0.99, "map50_b": 0.9, "map50_95_a": 0.9, "map50_95_b": 0.8,
              "per_class": [{"class": c, "name": f"c{c}", "ap50_a": 0.99, "ap50_b": 0.9, "ap50_95_a": 0.9,
                             "ap50_95_b": 0.8, "n_boxes": 100} for c in range(4)],
              "images": [{"path": f"{i:05d}.png", "vanished": 1, "new": 0, "moved": 1, "kept": 2, "moved_shift": 0.2,
                          "change": 1.2, "boxes_a": [[1.0, 2.0, 30.0, 40.0, 1, 0.9]], "boxes_b": []}
                         for i in range(3)]}
    return {"bases": [classify, detect]}


def _behaviour_case(index: int, seed: int, ctx: dict) -> tuple[str | bytes, str]:
    rng = random.Random(seed * 1_000_003 + index)
    base = ctx["bases"][index % 2]
    extra = [float("nan"), float("inf"), -1, 10**9, 2**70, "0.5", None, [0.5, 0.1], [[1, 2]], {"x": 1}, "x" * 5000,
             [[0, 0.5]] * 4, -0.0]
    if index == 0:
        return "[" + "0," * 20_000_000 + "0]", "40 MB list"
    if index == 1:
        return '{"a":' * 100_000 + "1" + "}" * 100_000, "nested 100,000 deep"
    if index == 2:
        value = copy.deepcopy(ctx["bases"][0])
        value["confusion_a"] = [[0] * 1000 for _ in range(1000)]
        return json.dumps(value), "1,000 x 1,000 confusion with 10 classes"
    if rng.random() < 0.15:
        text, what = _hostile_text(rng, json.dumps(base))
        return text, what
    value, what = _mutate_json(base, rng, extra)
    return _json_text(value, rng), f"{base['task']}: {what}"


def _behaviour_unsafe(diff: dict) -> str | None:
    """Why a diff the reader returned may not be shown (None: it is sound)."""
    if _nonfinite(diff):
        return "a diff with non-finite numbers was read back"
    n = diff["n"]
    if diff["task"] == "classify":
        if any(count > n for key, count in diff["flips"].items() if not key.endswith("_ci")):
            return "a flip count past the split was read back"
        if any(item["label"] >= len(diff["per_class"]) for item in diff["gallery"]):
            return "a gallery label past the class table was read back"
    return None


def door_behaviour(folder: Path) -> dict | None:
    """The cache's one reader (complab.analysis.behaviour_cache.read_cached) and, for a dict it returns, the CLI's
    summary of it (complab.cli._diff_summary: what `complab diff` prints)."""
    from complab.analysis.behaviour_cache import read_cached
    from complab.cli import _diff_summary

    diff = read_cached(folder, BEHAVIOUR_KEY)
    if diff is not None:
        _diff_summary(diff)
    return diff


def run_behaviour(index: int, seed: int, out_dir: str) -> tuple[str, str, int | None]:
    text, what = _behaviour_case(index, seed, _STATE["behaviour"])
    folder = WORK / f"behaviour-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    (folder / f"{BEHAVIOUR_KEY}.json").write_bytes(data)
    _input_bytes(len(data), what)
    try:
        diff = door_behaviour(folder)
    except Exception as exc:  # noqa: BLE001 - the reader never raises: even a CompressionLabError is a bug here
        outcome, detail = _classify(exc)
        keep = Path(out_dir) / f"behaviour-{seed}-{index}.json"
        keep.write_bytes(data)
        return "traceback", f"{what} ({keep}): {detail}", len(data)
    problem = _behaviour_unsafe(diff) if diff is not None else None
    if problem:
        keep = Path(out_dir) / f"behaviour-{seed}-{index}.json"
        keep.write_bytes(data)
        return "accepted", f"{what} ({keep}): {problem}", len(data)
    return "ok", f"{what}: {'read back' if diff is not None else 'ignored (recomputed)'}", len(data)


DOORS += ("behaviour",)
TIMEOUTS["behaviour"] = 10.0
CHUNKS["behaviour"] = 200
FAMILY_RSS_BOUND_MB["behaviour"] = 512  # the 40 MB case is refused by size before it is read
_SETUPS["behaviour"] = _behaviour_setup
# --- end of the behaviour family -----------------------------------------------------------------------------------
# ==================================================================================================================


def prepare_bait(outside: Path) -> None:
    """OUTSIDE's bait: the markers folder, a victim file no case may change, image folders whose class names say
    they were listed."""
    (outside / "markers").mkdir(parents=True, exist_ok=True)
    (outside / "victim.txt").write_bytes(VICTIM_TEXT)
    (outside / ".lock").touch()
    for c in ("a", "b"):
        (outside / "images" / f"{SECRET}{c}").mkdir(parents=True, exist_ok=True)
        (outside / "images" / f"{SECRET}{c}" / "0.png").write_bytes(_png(12, 12, random.Random(0)))


def prepare_fixtures(work: Path, outside: Path) -> None:
    """What the workers read (built once here): TorchScript archives, a finished run folder, a YOLO dataset."""
    fixtures = work / "fixtures"
    os.environ["COMPRESSION_LAB_DATA"] = str(work / "data")  # the workers' too: the demo detection data, made once
    from complab.data.detection import shapes_dataset

    shapes_dataset()
    for name, data in _prepare_torchscript(work / "scratch-ts", outside).items():
        (fixtures / "torchscript").mkdir(parents=True, exist_ok=True)
        (fixtures / "torchscript" / f"{name}.pt").write_bytes(data)
    shutil.rmtree(work / "scratch-ts", ignore_errors=True)
    _prepare_runfolder(fixtures / "runfolder", outside)
    shutil.copy(fixtures / "runfolder" / "original.pt", outside / "evil.pt")
    _prepare_yolo(fixtures / "yolo")


# ----------------------------------------------------------------------------------------------- workers


_MODEL_CASES: list = []
_WARMED: set = set()
_DATA_CASES: list = []


def _bound_mb(family: str, size: int) -> float:
    if family in ("decoder", "int", "ctx"):
        from complab.storage.codec import decode_allowance

        return 64 + 8 * decode_allowance(size) / 2**20
    return FAMILY_RSS_BOUND_MB[family]


_STATUS_FD: list[int] = []


def _status_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process, in kB (one pread of /proc/self/status: ~15 us, twice per case)."""
    if not _STATUS_FD:
        _STATUS_FD.append(os.open("/proc/self/status", os.O_RDONLY))
    data = os.pread(_STATUS_FD[0], 16384, 0)
    out = {}
    for key in (b"VmRSS:", b"VmHWM:"):
        at = data.index(key) + len(key)
        out[key[:5].decode()] = int(data[at:data.index(b"kB", at)])
    return out


def _can_reset_peak() -> bool:
    """Linux resets a process's VmHWM when "5" is written to /proc/self/clear_refs: a per-case peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class OutsideWatch:
    """Files created or changed in OUTSIDE (the sentinel folder next to the work folder) since the last look.

    A cheap stamp (the folders' mtimes and the victim file's bytes) is taken after every case; only when it moves is
    the folder walked. A new marker is renamed to case-<family>-<index>-<name>, so the next case that runs the same
    payload is seen again, and the victim file is restored."""

    def __init__(self, outside: Path) -> None:
        self.outside = outside
        self.victim = outside / "victim.txt"
        self.victim_text = VICTIM_TEXT
        self.files = self._walk()
        self.stamp = self._stamp()

    def _stamp(self) -> tuple:
        stamps = []
        for path in (self.outside, self.outside / "markers", self.outside / "images"):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except OSError:
                stamps.append(None)
        try:  # a write through a shared mapping updates the file's mtime too
            stat = os.stat(self.victim)
            stamps.append((stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
        return tuple(stamps)

    def _walk(self) -> dict[str, tuple]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.outside):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                path = os.path.join(dirpath, name)
                try:
                    stat = os.lstat(path)
                except OSError:
                    continue
                found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def check(self, family: str, index: int) -> list[str]:
        stamp = self._stamp()
        if stamp == self.stamp:
            return []
        import fcntl

        with open(self.outside / ".lock", "a") as lock:  # the workers look one at a time: nothing counted twice
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._claim(family, index)

    @staticmethod
    def _others(path: str, index: int) -> bool:
        """A fresh marker named for another case number: the other worker's case wrote it, and reports it."""
        found = re.search(r"-(\d+)$", os.path.basename(path))
        try:
            fresh = time.time() - os.lstat(path).st_mtime < 60
        except OSError:
            return True
        return bool(found) and int(found.group(1)) != index and fresh and "/markers/" in path

    def resync(self) -> None:
        """Take the folder as it is now (before a task: another worker's case is that worker's to report)."""
        self.files = self._walk()
        self.stamp = self._stamp()

    def _claim(self, family: str, index: int) -> list[str]:
        now = self._walk()
        changed = sorted(path for path, value in now.items()  # case-*: found (and counted) by another worker
                         if self.files.get(path) != value and not os.path.basename(path).startswith("case-")
                         and path != str(self.victim))
        try:
            if self.victim.read_bytes() != self.victim_text:
                changed = sorted(set(changed) | {str(self.victim)})
        except OSError:
            changed = sorted(set(changed) | {str(self.victim)})
        changed = [path for path in changed if not self._others(path, index)]
        wrote = [os.path.relpath(path, self.outside) for path in changed]
        markers = str(self.outside / "markers")
        for path in changed:
            name = os.path.basename(path)
            if os.path.dirname(path) == markers:
                try:
                    os.replace(path, os.path.join(markers, f"case-{family}-{index}-{name}"))
                except OSError:  # the other worker renamed it first
                    pass
        if str(self.victim) in changed:
            self.victim.write_bytes(self.victim_text)
        self.files = self._walk()
        self.stamp = self._stamp()
        return wrote


_PROGRESS: list = []


def _input_bytes(size: int, what: str) -> None:
    """Tell the parent this case's input size and what it is before the door runs: a case killed for a hang or
    its memory is still charged to its size and named (the slow families only: a small file write per case)."""
    if _PROGRESS:
        _PROGRESS[0][2] = float(size)
        (WORK / f"case-{os.getpid()}.txt").write_text(what[:300], errors="replace")


def _worker(conn, progress, work: str, outside: str) -> None:
    """Runs tasks (family, seed, [indices]) and answers [(index, outcome, detail, growth_mb, bound_mb, input_bytes,
    files written outside)]. Every case runs with its cwd in the work folder, temporary files and the data home
    inside it."""
    global WORK, OUTSIDE, _MODEL_CASES, _DATA_CASES
    WORK, OUTSIDE = Path(work), Path(outside)
    _PROGRESS.append(progress)
    os.chdir(WORK)
    for name, value in (("TMPDIR", WORK / "tmp"), ("COMPRESSION_LAB_HOME", WORK / "home"),
                        ("COMPRESSION_LAB_DATA", WORK / "data")):
        value.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(value)
    os.environ["COMPRESSION_LAB_DEBUG"] = "1"  # cli.main raises a bug instead of printing "unexpected ..."
    tempfile.tempdir = None
    import logging
    import warnings

    warnings.filterwarnings("ignore")  # numpy's and torch's warnings on hostile values: the outcome says enough
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    decoder = None
    runners = {"recipe": run_recipe, "model": run_model, "data": run_data, "detector": run_detector,
               "selftest": run_selftest, "links": run_links, "sensitivity": run_sensitivity,
               "automaton": run_automaton, "torchscript": run_torchscript, "runfolder": run_runfolder,
               "yaml": run_yaml, "folders": run_folders, "clab": run_clab, "keys": run_keys,
               "drafts": run_drafts, "int": run_int, "ctx": run_ctx,
               "lineage": run_lineage, "behaviour": run_behaviour}
    watch = OutsideWatch(OUTSIDE)
    per_case_peak = _can_reset_peak()
    baseline = None
    while True:
        task = conn.recv()
        if task is None:
            return
        family, seed, indices = task
        if family == "decoder" and decoder is None:
            decoder = DecoderCases()
        if family == "model" and not _MODEL_CASES:  # each worker writes its own copy of the inputs
            _MODEL_CASES = _model_cases(WORK / f"models-{os.getpid()}", OUTSIDE / "markers")
        if family == "data" and not _DATA_CASES:
            _DATA_CASES = _data_cases(WORK / f"data-{os.getpid()}")
        if family not in _WARMED:
            _warm(family)
            _WARMED.add(family)
        if family in _SETUPS and family not in _STATE:
            try:
                _STATE[family] = _SETUPS[family]()
            except Exception as exc:  # noqa: BLE001 - the harness's own setup failed: every case says so
                for index in indices:
                    conn.send(("case", (index, "harness", f"setup: {_classify(exc)[1]}", 0.0, 0.0, None, [])))
                conn.send(("done", _peak_mb()))
                continue
        watch.resync()
        if baseline is None:
            baseline = _peak_mb()
        for index in indices:
            progress[0] = index
            progress[1] = time.monotonic()
            progress[2] = -1.0
            before = _status_kb()
            if per_case_peak and before["VmHWM"] > before["VmRSS"] + 1024:
                _can_reset_peak()
            try:
                if family == "decoder":
                    outcome, detail, size = decoder.run(index, seed, str(WORK / "failures"))
                else:
                    outcome, detail, size = runners[family](index, seed, str(WORK / "failures"))
            except Exception as exc:  # noqa: BLE001 - a bug in this script's case generation, not in the target
                outcome, detail, size = "harness", _classify(exc)[1], None
            if per_case_peak:
                growth = max(0.0, (_status_kb()["VmHWM"] - before["VmRSS"]) / 1024)
            else:  # ru_maxrss only rises: a case is charged when it raised the worker's peak
                after = _peak_mb()
                growth = after - baseline if after > before["VmHWM"] / 1024 else 0.0
            wrote = watch.check(family, index)
            conn.send(("case", (index, outcome, detail, growth, _bound_mb(family, size or 0), size, wrote)))
        progress[1] = 0.0
        conn.send(("done", _peak_mb()))


class Pool:
    """Worker processes with a per-case watchdog: a case past its timeout is a hang, its worker is replaced."""

    def __init__(self, workers: int, work: Path, outside: Path) -> None:
        self.context = mp.get_context("spawn")
        self.work = work
        self.outside = outside
        self.slots = [self._start() for _ in range(workers)]
        self.peak_mb = 0.0

    def _start(self):
        parent, child = self.context.Pipe()
        progress = self.context.Array("d", [-1.0, 0.0, -1.0], lock=False)  # case, its start, its input bytes
        process = self.context.Process(target=_worker, args=(child, progress, str(self.work), str(self.outside)),
                                            daemon=True)
        process.start()
        return {"process": process, "conn": parent, "progress": progress, "task": None, "sent": 0.0,
                "reported": set()}

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
        """Run the cases (chunked); calls on_result(index, outcome, detail, growth, bound, size, wrote) for each;
        returns the number done."""
        pending = [indices[i:i + CHUNKS[family]] for i in range(0, len(indices), CHUNKS[family])]
        done = 0
        while pending or any(slot["task"] for slot in self.slots):
            if time.monotonic() > deadline:
                pending.clear()
            for number, slot in enumerate(self.slots):
                if slot["task"] is None and pending and time.monotonic() < deadline:
                    slot["task"] = pending.pop(0)
                    slot["progress"][0], slot["progress"][1] = -1.0, 0.0
                    slot["conn"].send((family, seed, slot["task"]))
                    slot["sent"] = time.monotonic()
                    slot["reported"] = set()
                if slot["task"] is None:
                    continue
                finished = False
                while slot["conn"].poll(0.02 if not finished else 0):  # each case is sent as it ends
                    try:
                        kind, payload = slot["conn"].recv()
                    except (EOFError, OSError):
                        break
                    if kind == "case":
                        on_result(*payload)
                        slot["reported"].add(payload[0])
                        done += 1
                    else:
                        self.peak_mb = max(self.peak_mb, payload)
                        slot["task"] = None
                        finished = True
                        break
                if finished:
                    continue
                started = slot["progress"][1]
                rss = self._rss_mb(slot["process"].pid)
                self.peak_mb = max(self.peak_mb, rss)
                stuck = started and time.monotonic() - started > TIMEOUTS[family]
                dead = not slot["process"].is_alive()
                hard = HARD_RSS_FAMILY_MB.get(family, HARD_RSS_MB)
                if stuck or dead or rss > hard:
                    index = int(slot["progress"][0])
                    kind = "hang" if stuck else "memory" if rss > hard else "traceback"
                    detail = {"hang": f"no answer after {TIMEOUTS[family]} s",
                              "memory": f"worker RSS {rss:.0f} MB > {hard} MB",
                              "traceback": f"worker died (exit code {slot['process'].exitcode})"}[kind]
                    said = self.work / f"case-{slot['process'].pid}.txt"
                    if slot["progress"][2] >= 0 and said.is_file():  # what the case was (the slow families)
                        detail += f": {said.read_text(errors='replace')}"
                    if index in slot["task"] and index not in slot["reported"]:
                        size = int(slot["progress"][2]) if slot["progress"][2] >= 0 else None
                        on_result(index, kind, detail, rss if kind == "memory" else 0.0, hard, size, [])
                        done += 1
                    rest = [i for i in slot["task"] if i not in slot["reported"] and i != index]
                    if rest:  # the chunk's cases not run yet go back in the queue
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


WATCH_SKIP = {".git", ".venv", "__pycache__", ".ruff_cache", ".pytest_cache", "node_modules"}


def _watched() -> dict[str, tuple]:
    """The places outside the work folder a case could write to and this script can watch cheaply: the repository
    (every file) and the interpreter's site-packages (a new .pth runs at every Python start-up)."""
    import site
    import sysconfig

    found = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in WATCH_SKIP]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                stat = os.lstat(path)
            except OSError:
                continue
            found[path] = (stat.st_mtime_ns, stat.st_size)
    for folder in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}:
        try:
            found.update({os.path.join(folder, name): ("pth",) for name in os.listdir(folder) if name.endswith(".pth")})
        except OSError:
            pass
    return found


CHEAP_FAMILIES = ("lineage", "behaviour", "sensitivity", "drafts", "links", "recipe", "int", "ctx", "decoder")
PLAN_ORDER = ("model", "data", "detector", "torchscript", "runfolder", "yaml", "folders", "clab", "keys", "automaton",
              "lineage", "behaviour", "sensitivity", "drafts", "links", "recipe", "int", "ctx", "decoder")


def _signature(outcome: str, detail: str) -> str:
    """A failure's kind, for counting and for one example per kind: the exception type and where it was raised
    (a traceback), the reason (an unsafe accept), else the outcome and the detail's start."""
    import re

    found = re.search(r"([A-Za-z_]+(?:Error|Exception|Interrupt|Exit))\b.*? at (\S+:\d+ \S+(?:; \S+:\d+ \S+)*)$",
                      detail)
    page = re.search(r"PageError: (pages/\S+ raised: .{0,50})", detail)
    if outcome == "traceback" and page:
        return f"traceback: {re.sub(r'[0-9]+', 'N', page.group(1))}"
    if outcome == "traceback" and found:  # where it was raised: the innermost frame
        return f"traceback: {found.group(1)} at {found.group(2).split('; ')[-1]}"
    if outcome in ("accepted", "outside"):
        if outcome == "accepted":
            return f"accepted: {detail.rsplit(': ', 1)[-1][:80]}"
        return "outside: " + ", ".join(sorted({re.sub(r"case-[a-z]+-\d+-|-\d+$", "", name)
                                                for name in re.findall(r"'([^']+)'", detail.split("]", 1)[0])}))
    return f"{outcome}: {re.sub(r'[0-9]+', 'N', detail)[:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder-cases", type=int, default=100_000)
    parser.add_argument("--recipe-cases", type=int, default=50_000)
    parser.add_argument("--detector-cases", type=int, default=1_000)
    parser.add_argument("--torchscript-cases", type=int, default=400)
    parser.add_argument("--runfolder-cases", type=int, default=100)
    parser.add_argument("--yaml-cases", type=int, default=50)
    parser.add_argument("--folders-cases", type=int, default=FOLDER_CASES)
    parser.add_argument("--clab-cases", type=int, default=24)
    parser.add_argument("--automaton-cases", type=int, default=1_500)
    parser.add_argument("--keys-cases", type=int, default=600)
    parser.add_argument("--sensitivity-cases", type=int, default=10_000)
    parser.add_argument("--drafts-cases", type=int, default=5_000)
    parser.add_argument("--lineage-cases", type=int, default=1_000)
    parser.add_argument("--links-cases", type=int, default=20_000)
    parser.add_argument("--int-cases", type=int, default=5_000)
    parser.add_argument("--ctx-cases", type=int, default=3_000)
    parser.add_argument("--behaviour-cases", type=int, default=3_000)
    parser.add_argument("--families", default=",".join(PLAN_ORDER),
                        help=f"comma-separated subset of {','.join(PLAN_ORDER)} (default all)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting new cases after this")
    parser.add_argument("--reserve-s", type=float, default=150.0,
                        help="the slow families stop this long before the budget ends: the cheap ones (sensitivity, "
                             "links, recipe, int, decoder) carry the case count")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (failing inputs) afterwards")
    parser.add_argument("--list", action="store_true", help="print every model and data case's outcome (stderr)")
    parser.add_argument("--selftest", action="store_true",
                        help="only check the harness: 11 planted cases that must count as 1 ok + 1 error, "
                             "3 tracebacks (one a worker death), 1 memory blow-up, 1 executed code, 2 files written "
                             "outside, 1 hang, 1 unsafe accept and a small input's growth over 256 MB")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget_s
    base = Path(tempfile.mkdtemp(prefix="clab-fuzz-"))
    work, outside = base / "work", base / "outside"  # cases run in work/; outside/ is bait no case may write to
    (work / "failures").mkdir(parents=True)
    prepare_bait(outside)
    chosen = [f for f in args.families.split(",") if f]
    unknown = set(chosen) - set(PLAN_ORDER)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}: choose from {','.join(PLAN_ORDER)}")
    families = ("selftest",) if args.selftest else tuple(f for f in PLAN_ORDER if f in chosen)
    stats = {family: {"cases": 0, "ok": 0, "error": 0, "traceback": 0, "hang": 0, "memory": 0, "accepted": 0,
                      "harness": 0} for family in families}
    examples: dict[str, list[str]] = {family: [] for family in stats}
    kinds: dict[str, dict[str, int]] = {family: {} for family in stats}  # failure signature -> cases
    worst_growth = {family: 0.0 for family in stats}
    small = {"worst": 0.0, "case": None, "over": {family: 0 for family in stats}}
    outside_files = {family: [] for family in stats}

    def record(family: str):
        def on_result(index, outcome, detail, growth, bound, size, wrote):
            entry = stats[family]
            worst_growth[family] = max(worst_growth[family], growth)
            if size is not None and size < SMALL_INPUT_BYTES:
                if growth > small["worst"]:
                    small["worst"], small["case"] = growth, f"{family} case {index} ({size} B): {detail}"[:300]
                if growth > SMALL_INPUT_BOUND_MB:
                    small["over"][family] += 1
                    key = f"small input over {SMALL_INPUT_BOUND_MB} MB: {re.sub(r'[0-9]+', 'N', detail)[:50]}"
                    kinds[family][key] = kinds[family].get(key, 0) + 1
                    if kinds[family][key] == 1 and len(examples[family]) < MAX_EXAMPLES:
                        examples[family].append(f"case {index}: {size} B input, peak RSS +{growth:.0f} MB: {detail}")
            if outcome in ("ok", "error") and growth > bound:
                outcome, detail = "memory", f"peak RSS grew {growth:.0f} MB > bound {bound:.0f} MB: {detail}"
            entry["cases"] += 1
            entry[outcome] += 1
            if wrote:
                outside_files[family] += wrote
                detail = f"wrote outside the work folder {wrote}: {detail}"
                print(f"[{family}] case {index}: {detail}", file=sys.stderr, flush=True)
            if outcome not in ("ok", "error") or wrote:
                key = _signature("outside" if wrote else outcome, detail)
                kinds[family][key] = kinds[family].get(key, 0) + 1
                if kinds[family][key] == 1 and len(examples[family]) < MAX_EXAMPLES:  # one example per kind
                    examples[family].append(f"case {index}: {outcome}: {detail}"[:600])
            if outcome in ("traceback", "hang", "memory", "harness", "accepted") or (
                    args.list and family in ("model", "data", "yaml", "folders", "runfolder")):
                print(f"[{family}] case {index}: {outcome}: {detail}"[:1000], file=sys.stderr, flush=True)
        return on_result

    counts = {"decoder": args.decoder_cases, "recipe": args.recipe_cases, "detector": args.detector_cases,
              "torchscript": args.torchscript_cases, "runfolder": args.runfolder_cases, "yaml": args.yaml_cases,
              "folders": args.folders_cases, "clab": args.clab_cases, "automaton": args.automaton_cases,
              "sensitivity": args.sensitivity_cases, "links": args.links_cases, "keys": args.keys_cases,
              "drafts": args.drafts_cases, "int": args.int_cases, "ctx": args.ctx_cases,
              "lineage": args.lineage_cases, "behaviour": args.behaviour_cases,
              "selftest": 11}
    if not args.selftest:
        from complab.data import folders  # noqa: F401 - fail here, not in a worker, if imports break

        prepare_fixtures(work, outside)
    before = _watched()
    initial_outside = OutsideWatch(outside).files
    pool = Pool(args.workers, work, outside)
    try:
        # the slow families first (few cases), then the cheap ones; the decoder fills the budget
        for family in families:
            family_start = time.monotonic()
            count = _count_cases(work, family) if family in ("model", "data") else counts[family]
            cheap = family in CHEAP_FAMILIES or not set(families) & set(CHEAP_FAMILIES)
            pool.run(family, args.seed, list(range(count)), deadline if cheap else deadline - args.reserve_s,
                     record(family))
            print(f"[{family}] {stats[family]['cases']} cases in {time.monotonic() - family_start:.0f} s: "
                  f"{stats[family]}", file=sys.stderr, flush=True)
    finally:
        pool.close()
    after = _watched()
    changed = sorted(path for path, value in after.items() if before.get(path) != value)
    reported = {path for paths in outside_files.values() for path in paths}
    final = OutsideWatch(outside).files
    unattributed = sorted(os.path.relpath(path, outside) for path, value in final.items()
                          if initial_outside.get(path) != value and "/case-" not in path
                          and os.path.relpath(path, outside) not in reported)
    markers = sorted(p.name for p in (outside / "markers").iterdir())
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    total = {key: sum(entry[key] for entry in stats.values())
             for key in ("cases", "traceback", "hang", "memory", "accepted")}
    written = sum(len(paths) for paths in outside_files.values()) + len(unattributed) + len(changed)
    result = {
        "cases": {"total": total["cases"], **{family: entry["cases"] for family, entry in stats.items()}},
        "tracebacks": {"total": total["traceback"], **{f: e["traceback"] for f, e in stats.items()}},
        "hangs": {"total": total["hang"], **{f: e["hang"] for f, e in stats.items()}},
        "memory_blowups": {"total": total["memory"], **{f: e["memory"] for f, e in stats.items()}},
        "executed_code": len(markers),
        "executed_markers": markers[:50],
        "files_written_outside": written,
        "files_written_outside_by_family": {f: len(p) for f, p in outside_files.items() if p},
        "files_written_outside_paths": sorted(set(reported))[:30] + unattributed[:10] + changed[:10],
        "worst_rss_growth_per_kb_mb": round(small["worst"], 1),
        "worst_small_input_case": small["case"],
        "small_inputs_over_256mb": {"total": sum(small["over"].values()), **small["over"]},
        "unsafe_accepts": {"total": total["accepted"], **{f: e["accepted"] for f, e in stats.items()}},
        "harness_errors": sum(e["harness"] for e in stats.values()),
        "max_rss_mb": round(max(pool.peak_mb, children_peak), 1),
        "worst_case_rss_growth_mb": {f: round(g, 1) for f, g in worst_growth.items()},
        "outcomes": stats,
        "examples": {family: items for family, items in examples.items() if items},
        "failure_kinds": {family: dict(sorted(found.items(), key=lambda item: -item[1])[:12])
                          for family, found in kinds.items() if found},
        "timeouts_s": {f: TIMEOUTS[f] for f in families},
        "seconds": round(time.monotonic() - start, 1),
        "work_folder": str(base) if args.keep else None,
    }
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))


def _count_cases(work: Path, family: str) -> int:
    """Number of model / data cases (the lists are built in the workers; this builds them once here to count)."""
    scratch = work / f"count-{family}"
    if family == "model":  # (the pickles are written, never loaded, here)
        return len(_model_cases(scratch, scratch / "markers"))
    return len(_data_cases(scratch))


if __name__ == "__main__":
    main()
