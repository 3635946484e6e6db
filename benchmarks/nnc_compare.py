"""Our compact format vs NNCodec (MPEG NNC, ISO/IEC 15938-17, DeepCABAC) on identical quantized tensors.

Networks (each weight tensor pruned and k-means shared by our code; biases and batch norm left out):
- demo:lenet300, demo:lenet5: the shipped recipes (assets/recipes/lenet300.json, lenet5.json, as they
  are on the branch this runs from) through `complab.pipeline.compress`;
- demo:vgg_small: `compress` with a short recipe (VGG_PLAN: 60% pruned, 30% on the first convolution,
  16 shared values per layer, one fine-tuning epoch after each step);
- ResNet-18: torchvision resnet18 with seeded random weights (no data, no fine-tuning): every conv and
  the fc weight magnitude-pruned (RESNET_SPARSITY) and k-means shared (RESNET_CLUSTERS) with the same
  functions the prune and cluster steps use (`magnitude_mask`, `cluster_weight`).

Identical information: for each network the pruned, shared weights are taken from the model decoded
from our file. Ours: those tensors encoded by our public encoder (`complab.storage.encode_state`,
so the coder on the branch this runs from is what gets measured); bytes = the sum of their sections'
`bytes_total` from `inspect_bytes` (type, length, name, dtype, shape, flags, k, the float32 codebook
and the entropy-coded position and index streams; the file's 24-byte header and meta left out).
NNCodec: the same tensors as int32 quantization indices (0 = pruned zero, -n..-1 and 1..p the sorted
negative and positive shared values: NNC's own zero-offset codebook order) coded losslessly by
NNCodec's integer path into one NNC bitstream per network (its own per-tensor unit headers included;
it picks the smallest of a few of its settings, see nnc_helper.py), plus the float32 values of the
levels, 4 bytes per shared value, exactly what our shared sections store as their codebook (NNC
codebooks hold integer multiples of a QP step, which k-means centroids are not, so we charge NNCodec
our own codebook cost; a tensor our encoder stored as "sparse" pays its values inside its section).
Both decoders produce the same float32 weights bit for bit (checked). Decode time: median of
--repeats runs (ours: that many before and that many after NNCodec's), one thread, from the bytes to
float32 arrays (ours: `decode_state` of a file holding just these tensors; NNCodec:
`nncodec.nnc.decompress` + the level -> value lookup).

NNCodec pins numpy<2 and builds a C++ extension, so it lives in its own environment,
benchmarks/.venv-nnc, which this script creates on first use (python -m venv; pip install with
constraints.txt, torch from this machine's files) and runs nnc_helper.py in. Prints one JSON object
as its last line: `ours_over_nnc_bytes` (ours / NNCodec's total bytes; target <= 1.0),
`decode_ratio` (our total decode wall time / NNCodec's), `decode_cpu_ratio` (the same in CPU time,
steadier on a busy machine) and per-network rows.

    .venv/bin/python benchmarks/nnc_compare.py [--repeats 7] [--fast]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab.data import load_data  # noqa: E402
from complab.methods.cluster import cluster_weight  # noqa: E402
from complab.methods.prune import magnitude_mask  # noqa: E402
from complab.models.handle import load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import Plan  # noqa: E402
from complab.storage import decode_state, encode_state, inspect_bytes, read_file  # noqa: E402

NNCODEC = "nncodec==2.1.3"
VENV = ROOT / "benchmarks" / ".venv-nnc"
HELPER = ROOT / "benchmarks" / "nnc_helper.py"
VGG_PLAN = {
    "schema_version": 1, "name": "nnc-compare-vgg-small", "seed": 0, "eval_split": "test",
    "steps": [
        {"type": "prune", "sparsity": {"_default": 0.6, "features.0": 0.3}, "iterations": 1,
         "finetune_epochs": 1, "lr": 0.0005},
        {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 1, "lr": 0.0002},
    ],
}
RESNET_SPARSITY = 0.7  # every conv and the fc
RESNET_CLUSTERS = 16  # 4-bit shared values per layer
RESNET_SEED = 0


class BenchmarkError(Exception):
    """A problem this benchmark reports in one message instead of a traceback."""


# ----------------------------------------------------------------------------------------------------
# the NNCodec environment


def venv_python() -> Path:
    return VENV / "bin" / "python"


def shell_line(command: list[str]) -> str:
    return " ".join(shown(Path(part)) if part.startswith("/") else part for part in command)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ensure_venv() -> float | None:
    """Create benchmarks/.venv-nnc with nncodec if it is not there; seconds it took (None: already there)."""
    key = hashlib.sha256((ROOT / "constraints.txt").read_bytes() + NNCODEC.encode()).hexdigest()[:16]
    stamp = VENV / f".installed-{key}"
    if stamp.exists() and venv_python().exists():
        return None
    log = VENV / "install.log"
    print(f"nnc_compare: building {shown(VENV)} ({NNCODEC}, torch from constraints.txt; "
          "several minutes: it compiles NNCodec's C++ extension); log in " + str(shown(log)),
          file=sys.stderr, flush=True)
    started = time.time()
    base = sys.executable
    steps = [
        [base, "-m", "venv", str(VENV)],
        [str(venv_python()), "-m", "pip", "install", "-c", str(ROOT / "constraints.txt"), NNCODEC],
    ]
    for command in steps:
        VENV.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            try:
                code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
            except OSError as exc:
                code, out_text = -1, str(exc)
                out.write(out_text + "\n")
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise BenchmarkError(
                f"could not make the NNCodec environment {shown(VENV)}: `{shell_line(command)}` "
                f"exited with {code}. Last lines of {shown(log)}:\n  " + "\n  ".join(tail)
                + "\nFix the cause (NNCodec needs a C++17 compiler and Python headers to build), then delete "
                  f"{shown(VENV)} and run again.")
    probe = "from nncodec import nnc; from nncodec.extensions import deepCABAC"
    check = subprocess.run([str(venv_python()), "-c", probe], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchmarkError(f"{NNCODEC} installed in {shown(VENV)} but does not import: "
                             + (check.stderr.strip().splitlines() or ["(no message)"])[-1])
    stamp.touch()
    return time.time() - started


# ----------------------------------------------------------------------------------------------------
# the tensors


def demo_tensors(name: str, plan: Plan, out_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Run `plan` on demo:`name` through compress; the prunable weights decoded from the compact file."""
    handle = load_model(f"demo:{name}")
    data = load_data("digits", input_size=handle.input_shape[-1])
    started = time.time()
    result = compress(handle, plan, data, out_dir / name, latency=False)
    _, state = read_file(result.path)
    names = [f"{layer}.weight" for layer in handle.prunable_layers()]
    m = result.metrics
    info = {"source": f"compress(demo:{name}, {plan.name})", "file_bytes": m["after"]["compressed_bytes"],
            "accuracy_before": m["before"]["accuracy"], "accuracy_after": m["after"]["accuracy"],
            "compress_s": round(time.time() - started, 1),
            "file_section_bytes": sum(row["bytes_total"] for row in inspect_bytes(result.path.read_bytes())
                                      if row["name"] in names)}
    return {n: state[n] for n in names}, info


def resnet_tensors() -> tuple[dict[str, torch.Tensor], dict]:
    import torchvision

    torch.manual_seed(RESNET_SEED)
    model = torchvision.models.resnet18(weights=None)
    tensors = {}
    for name, param in model.named_parameters():
        if name.endswith(".weight") and param.dim() >= 2:
            weight = param.detach() * magnitude_mask(param.detach(), RESNET_SPARSITY)
            centroids, labels = cluster_weight(weight, RESNET_CLUSTERS, "linear", RESNET_SEED)
            tensors[name] = torch.cat([centroids, weight.new_zeros(1)])[labels].contiguous()
    return tensors, {"source": f"torchvision resnet18, seed {RESNET_SEED}, {RESNET_SPARSITY:.0%} magnitude-pruned, "
                               f"k-means k={RESNET_CLUSTERS} per layer, no fine-tuning"}


def levels_of(weight: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(int32 levels, float32 values of levels -n..p): 0 is zero, negatives below, positives above."""
    flat = weight.detach().cpu().numpy().astype(np.float32, copy=False)
    distinct = np.unique(flat[flat != 0])
    values = np.concatenate([distinct[distinct < 0], np.zeros(1, np.float32), distinct[distinct > 0]])
    negatives = int((distinct < 0).sum())
    levels = (np.searchsorted(values, flat) - negatives).astype(np.int32)
    if not np.array_equal(values[levels.astype(np.int64) + negatives].view(np.uint32), flat.view(np.uint32)):
        raise BenchmarkError("a weight does not map to its level exactly (a -0.0 or NaN weight?)")
    return levels, values


# ----------------------------------------------------------------------------------------------------
# measuring


def ours(tensors: dict[str, torch.Tensor], repeats: int) -> dict:
    blob = encode_state(tensors, {})
    rows = [row for row in inspect_bytes(blob) if row["name"] in tensors]
    _, decoded = decode_state(blob)
    if any(not torch.equal(decoded[n].view(torch.int32), tensors[n].view(torch.int32)) for n in tensors):
        raise BenchmarkError("our decoder did not give back the tensors bit for bit")
    return {"blob": blob, "decode_runs_s": decode_times(blob, repeats),
            "bytes": sum(row["bytes_total"] for row in rows),
            "codebook_bytes": sum(row["bytes_codebook"] or 0 for row in rows),
            "encodings": {row["name"]: row["encoding"] for row in rows},
            "tensor_bytes": {row["name"]: row["bytes_total"] for row in rows},
            "file_bytes": len(blob)}


def decode_times(blob: bytes, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per decode: on a machine shared with other work the wall clock mostly measures
    waiting for a core, the process's CPU time what the decoder itself costs."""
    times = []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        decode_state(blob)
        times.append((time.perf_counter() - started, time.process_time() - cpu_started))
    return times


def run_nncodec(npz_files: list[Path], repeats: int) -> dict:
    command = [str(venv_python()), str(HELPER), *map(str, npz_files), "--repeats", str(repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n  ".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise BenchmarkError(f"the NNCodec helper failed (exit {done.returncode}):\n  {tail}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="decode timings per network (median)")
    parser.add_argument("--fast", action="store_true", help="no fine-tuning in the demo recipes (for a quick check)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    venv_seconds = ensure_venv()

    plans = {name: Plan.from_json((ROOT / "assets" / "recipes" / f"{name}.json").read_text())
             for name in ("lenet300", "lenet5")}
    plans["vgg_small"] = Plan.from_json(json.dumps(VGG_PLAN))
    if args.fast:
        plans = {name: Plan.from_json(json.dumps(_no_finetuning(plan.to_dict()))) for name, plan in plans.items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        networks: dict[str, tuple[dict, dict]] = {}
        for name, plan in plans.items():
            print(f"nnc_compare: compressing demo:{name}", file=sys.stderr, flush=True)
            networks[name] = demo_tensors(name, plan, tmp)
        print("nnc_compare: pruning and sharing resnet18", file=sys.stderr, flush=True)
        networks["resnet18"] = resnet_tensors()

        rows, npz_files = {}, []
        for name, (tensors, info) in networks.items():
            arrays = {"names": np.array(list(tensors))}
            for i, weight in enumerate(tensors.values()):
                arrays[f"levels_{i}"], arrays[f"values_{i}"] = levels_of(weight)
            npz_files.append(tmp / f"{name}.npz")
            np.savez(npz_files[-1], **arrays)
            print(f"nnc_compare: our coder on {name}", file=sys.stderr, flush=True)
            rows[name] = {**info, "tensors": len(tensors), "weights": sum(t.numel() for t in tensors.values()),
                          "nonzeros": sum(int((t != 0).sum()) for t in tensors.values()),
                          "shared_values": {n: int(np.unique(t[t != 0].numpy()).size) for n, t in tensors.items()},
                          "ours": ours(tensors, args.repeats)}
        print("nnc_compare: NNCodec on the same levels", file=sys.stderr, flush=True)
        nnc = run_nncodec(npz_files, args.repeats)
    # our decode timed again after NNCodec's, so both sides' runs bracket the same stretch of a busy machine
    for row in rows.values():
        runs = row["ours"]["decode_runs_s"] + decode_times(row["ours"].pop("blob"), args.repeats)
        row["ours"]["decode_runs_s"] = [round(wall, 5) for wall, _ in runs]
        row["ours"]["decode_s"] = statistics.median(wall for wall, _ in runs)
        row["ours"]["decode_cpu_s"] = statistics.median(cpu for _, cpu in runs)

    for result in nnc["networks"]:
        row = rows[result["network"]]
        if not result["identical"]:
            raise BenchmarkError(f"NNCodec did not give back {result['network']}'s levels exactly")
        # the level values as a float32 table: k x 4 bytes per tensor, what our shared sections store
        # (a tensor our encoder stored as "sparse" pays its values in its section instead)
        tables = {name: 4 * k for name, k in row["shared_values"].items()}
        codebook = sum(tables.values())
        row["nnc"] = {"bitstream_bytes": result["bytes"], "codebook_bytes": codebook,
                      "bytes": result["bytes"] + codebook, "decode_s": result["decode_s"],
                      "decode_cpu_s": result["decode_cpu_s"],
                      "setting": result["setting"], "settings": result["settings"],
                      "tensor_bytes": {name: size + tables[name] for name, size in result["tensor_bytes"].items()}}
        row["ours_over_nnc_bytes"] = round(row["ours"]["bytes"] / row["nnc"]["bytes"], 4)
        row["decode_ratio"] = round(row["ours"]["decode_s"] / result["decode_s"], 4)
        row["decode_cpu_ratio"] = round(row["ours"]["decode_cpu_s"] / result["decode_cpu_s"], 4)

    for name, row in rows.items():
        print(f"{name:9} {row['weights']:>10,} weights {row['nonzeros']:>9,} kept | ours {row['ours']['bytes']:>9,} B "
              f"| NNCodec {row['nnc']['bytes']:>9,} B ({row['nnc']['bitstream_bytes']:,} bitstream + "
              f"{row['nnc']['codebook_bytes']:,} codebook) | ratio {row['ours_over_nnc_bytes']:.3f} "
              f"| decode ours {1e3 * row['ours']['decode_s']:.1f} ms, NNCodec {1e3 * row['nnc']['decode_s']:.1f} ms "
              f"(CPU {1e3 * row['ours']['decode_cpu_s']:.1f} / {1e3 * row['nnc']['decode_cpu_s']:.1f} ms)",
              file=sys.stderr)
        for tensor, size in row["ours"]["tensor_bytes"].items():
            print(f"    {tensor:30} k={row['shared_values'][tensor]:<4} {row['ours']['encodings'][tensor]:7} "
                  f"ours {size:>9,} B  NNCodec alone {row['nnc']['tensor_bytes'][tensor]:>9,} B", file=sys.stderr)
    ours_bytes = sum(row["ours"]["bytes"] for row in rows.values())
    nnc_bytes = sum(row["nnc"]["bytes"] for row in rows.values())
    summary = {
        "ours_over_nnc_bytes": round(ours_bytes / nnc_bytes, 4),
        "decode_ratio": round(sum(row["ours"]["decode_s"] for row in rows.values())
                              / sum(row["nnc"]["decode_s"] for row in rows.values()), 4),
        "decode_cpu_ratio": round(sum(row["ours"]["decode_cpu_s"] for row in rows.values())
                                  / sum(row["nnc"]["decode_cpu_s"] for row in rows.values()), 4),
        "ours_bytes": ours_bytes,
        "nnc_bytes": nnc_bytes,
        "nncodec": nnc.get("nncodec") or NNCODEC,
        "bytes_include": "weights only (biases, batch norm, file header and meta left out on both sides); ours: "
                         "section bytes (names, shapes, float32 codebook, streams); NNCodec: its whole bitstream "
                         "(unit headers, shapes) + the same float32 codebook bytes",
        "fast": args.fast,
        "venv_build_s": None if venv_seconds is None else round(venv_seconds, 1),
        "seconds": round(time.time() - started, 1),
        "networks": rows,
    }
    print(json.dumps(summary))


def _no_finetuning(plan: dict) -> dict:
    for step in plan["steps"]:
        if "finetune_epochs" in step:
            step["finetune_epochs"] = 0
        if "iterations" in step:
            step["iterations"] = 1
    return plan


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        print(f"nnc_compare: {exc}", file=sys.stderr)
        sys.exit(2)
