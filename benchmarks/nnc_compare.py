"""Our compact format vs NNCodec (MPEG NNC, ISO/IEC 15938-17, DeepCABAC), two ways in one run.

Networks. Four trained on the digits, each taken to its *starting point*: the pruned, fine-tuned float
model, the state just before weight sharing (the prune step of its recipe run through
`complab.pipeline.compress`; cached under benchmarks/.cache-nnc_compare/, keyed by the network's weights
and the prune step, so a second run skips it):
- demo:lenet300, demo:lenet5: the prune steps of the shipped recipes (assets/recipes/lenet300.json,
  lenet5.json, as they are on the branch this runs from);
- demo:vgg_small: VGG_PLAN's prune step (60% pruned, 30% on the first convolution, one fine-tuning epoch);
- resnet18_digits: torchvision resnet18 (num_classes 10, the grey digits at 32x32 repeated to 3 channels,
  which is how complab feeds a torchvision model the digits), trained here seeded (RESNET_DIGITS_TRAIN,
  cached), then RESNET_DIGITS_PLAN's prune step (85% pruned, 50% on conv1, three fine-tuning epochs).
Plus, in the same-levels mode only, ResNet-18 with seeded random weights (no data, no fine-tuning): every
conv and the fc weight magnitude-pruned (RESNET_SPARSITY) and k-means shared (RESNET_CLUSTERS) with the
same functions the prune and cluster steps use (`magnitude_mask`, `cluster_weight`).

Mode 1, same levels (`ours_over_nnc_bytes`, `worst_network_over_nnc`). Each trained network's starting
model goes through the cluster step of its recipe (`compress`; the LeNets' recipe cluster steps, VGG_PLAN's
and RESNET_DIGITS_PLAN's k=16 with one epoch); the shared weights are taken from the model decoded from our
file. Ours: those tensors encoded by our public encoder (`complab.storage.encode_state`, so the coder on the
branch this runs from is what gets measured); bytes = the sum of their sections' `bytes_total` from
`inspect_bytes` (type, length, name, dtype, shape, flags, k, the float32 codebook and the entropy-coded
position and index streams; the file's 24-byte header and meta left out). NNCodec: the same tensors as
int32 quantization indices (0 = pruned zero, -n..-1 and 1..p the sorted negative and positive shared
values: NNC's own zero-offset codebook order) coded losslessly by NNCodec's integer path into one NNC
bitstream per network (its own per-tensor unit headers included; it picks the smallest of a few of its
settings, see nnc_helper.py), plus the float32 values of the levels, 4 bytes per shared value, exactly what
our shared sections store as their codebook (NNC codebooks hold integer multiples of a QP step, which
k-means centroids are not, so we charge NNCodec our own codebook cost; a tensor our encoder stored as
"sparse" pays its values inside its section). Both decoders produce the same float32 weights bit for bit
(checked). `ours_over_nnc_bytes` is ours / NNCodec's total bytes over the four trained networks; the
random ResNet-18 row is reported beside it (`random_resnet18_over_nnc_bytes`) and counts in
`worst_network_over_nnc`, the largest per-network ratio over all five rows (the byte total is dominated
by the digits ResNet-18's 1.4 MB; `ours_over_nnc_bytes_geomean` counts each trained network once).
Decode time: median of --repeats runs (ours: that many before and that many after NNCodec's), one
thread, from the bytes to float32 arrays (ours: `decode_state` of a file holding just these tensors; NNCodec:
`nncodec.nnc.decompress` + the level -> value lookup); `decode_ratio` ours / NNCodec's wall time,
`decode_cpu_ratio` the same in CPU time (steadier on a busy machine).

Mode 2, equal accuracy (`ours_over_nnc_at_equal_accuracy`), curves not points: both sides start from the
same starting model. NNCodec quantizes it itself: a QP sweep (QPS, step size 2^(qp/4), one QP for every
tensor, as its opt_qp and lambda_scale defaults leave it), refined to every QP between the coarsest one within
0.3 points and the next, with dependent quantization (trellis-coded, use_dq: it may give a pruned zero a
nonzero level where that codes cheaper, and a coarse step zeroes small weights), its default row skipping and
CABAC parameter optimisation, one bitstream per network (nnc_helper.py --sweep, in its own process beside our
sweep); its bytes are the bitstream's (its step sizes are in it: no codebook to add); the decoded float32 weights
are loaded into the starting model, whose batch-norm statistics are then re-estimated exactly as our cluster
step does after sharing (the step's `ctx.finetune` with 0 epochs, same seed; no bytes, no-op without batch
norm), and scored on the test split by our side. Ours: the cluster step alone on the starting model through
`compress`: plain k-means for each k in KS (and, where ClusterStep has the field `objective`, rate-aware
sharing: objective "rate", joint_prune, at most RATE_MAX_K values, RATE_LAMBDAS: scale-free per-layer lambdas
with Fisher importance, and one model-wide lambda scaled per layer: `rate_step`), each once with
the shared values fine-tuned (the network's cluster-step finetune_epochs) and once with finetune_epochs 0;
bytes = the weight sections'
`bytes_total` of the written file (as mode 1), accuracy = the decoded file's on the test split. Both
sides count the prunable layers' weights only. Biases (and batch norm) are excluded from both sides'
bytes: NNCodec's model keeps the starting model's float biases; ours keeps them as float too
(bias_clusters 0), and where our step fine-tunes the shared values its fine-tuning also updates the
biases (with finetune_epochs 0 both sides' biases are identical). The reference accuracy is the starting
model's; each side's point is its fewest bytes among points within EQUAL_POINTS (0.3 accuracy points) of
the reference (null, with the side named in `equal_accuracy_missing`, if it never gets there); per network
`ours_over_nnc_at_equal_accuracy` = ours / NNCodec's, and the headline key is the worst (largest) of the
four networks; `..._no_finetune` the same with our fine-tuning off; `..._plain` our plain k-means points
only. The curves (bytes vs accuracy, both sides) go to benchmarks/out/nnc_curves.html (plotly.js inline).

NNCodec pins numpy<2 and builds a C++ extension, so it lives in its own environment,
benchmarks/.venv-nnc, which this script creates on first use (python -m venv; pip install with
constraints.txt, torch from this machine's files) and runs nnc_helper.py in. Prints one JSON object
as its last line.

    .venv/bin/python benchmarks/nnc_compare.py [--mode both|same-levels|equal-accuracy] [--repeats 7]
        [--fast] [--networks lenet300,...] [--ks 4,8,16] [--qps=-40,-36] [--rate-lambdas 0.01,0.03]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
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

from complab.data import DataBundle, load_data  # noqa: E402
from complab.methods.cluster import SHARED_VALUE_FINETUNE_SEED, cluster_weight  # noqa: E402
from complab.methods.context import StepContext, layer_weight  # noqa: E402
from complab.methods.finetune import TrainConfig, train  # noqa: E402
from complab.methods.prune import magnitude_mask  # noqa: E402
from complab.methods.tasks import task_for  # noqa: E402
from complab.models.handle import ModelHandle, load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import ClusterStep, Plan  # noqa: E402
from complab.storage import decode_state, encode_state, inspect_bytes, read_file  # noqa: E402

NNCODEC = "nncodec==2.1.3"
VENV = ROOT / "benchmarks" / ".venv-nnc"
HELPER = ROOT / "benchmarks" / "nnc_helper.py"
CACHE = ROOT / "benchmarks" / ".cache-nnc_compare"
CURVES_HTML = ROOT / "benchmarks" / "out" / "nnc_curves.html"
VGG_PLAN = {
    "schema_version": 1, "name": "nnc-compare-vgg-small", "seed": 0, "eval_split": "test",
    "steps": [
        {"type": "prune", "sparsity": {"_default": 0.6, "features.0": 0.3}, "iterations": 1,
         "finetune_epochs": 1, "lr": 0.0005},
        {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 1, "lr": 0.0002},
    ],
}
# the digits ResNet-18: trained here (complab.methods.finetune.train, Adam, cosine), then this plan
RESNET_DIGITS_TRAIN = {"epochs": 4, "lr": 2e-3, "weight_decay": 1e-4, "shift_pixels": 2, "seed": 0, "size": 32}
RESNET_DIGITS_PLAN = {
    "schema_version": 1, "name": "nnc-compare-resnet18-digits", "seed": 0, "eval_split": "test",
    "steps": [
        {"type": "prune", "sparsity": {"_default": 0.85, "conv1": 0.5}, "iterations": 1,
         "finetune_epochs": 3, "lr": 0.0005},
        {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 1, "lr": 0.0002},
    ],
}
RESNET_SPARSITY = 0.7  # the random ResNet-18 (same-levels mode): every conv and the fc
RESNET_CLUSTERS = 16  # 4-bit shared values per layer
RESNET_SEED = 0
TRAINED = ("lenet300", "lenet5", "vgg_small", "resnet18_digits")
# the equal-accuracy sweeps
EQUAL_POINTS = 0.003  # "equal accuracy": within 0.3 accuracy points of the starting model's
KS = (3, 4, 8, 16)  # plain k-means: shared values per layer (k=2 was 72-92% on all four: far below)
# NNCodec: step sizes 2^(qp/4) from 9.8e-4 to 0.25, every fourth QP (a factor 2 in step size), then every QP
# between the coarsest one within EQUAL_POINTS and the next (`refine`)
QPS = tuple(range(-40, -7, 4))
RATE_MAX_K = 64  # rate-aware sharing: the most shared values a layer may use
# rate-aware: one lambda for the model, as NNCodec has one step size for every tensor: each layer's rate_lambda
# (the share of that layer's mean square kept weight one saved bit is worth) is lambda x the model's mean square
# kept weight / the layer's (`model_lambdas`), so a bit costs the same squared error in every layer. Per-layer
# scale-free lambdas with Fisher importance (the first sweep, 0.003-0.03) never beat plain k=3 on the demo VGG
# (0.1 left 64% accuracy); the model-scaled ones without Fisher reach 76,960 B at 99.17% there (lambda 0.3, one
# epoch). A sweep of lambdas, not of target_bytes (a byte target bisects on lambda, rerunning the sharing each trial)
# "fisher:L": the scale-free lambda L on every layer with Fisher importance (the first sweep's kind: it made the
# digits ResNet-18's and LeNet-5's best points, 0.74 and 0.79 of NNCodec's bytes, in the helper's preview run);
# a plain number: the model-wide lambda (`model_lambdas`), which made the VGG's best point. Both kinds, few points
# each: the ResNet-18's Fisher points take 40-180 s each and the run must stay under 10 minutes. Measured with
# fisher:0.01/0.03 and 0.3 alone (345 s): the ResNet-18's fisher:0.01 point was 741,457 B at 98.33%, one image
# short of equal accuracy, and the VGG's 0.3 point 76,960 B at 99.17%, two short: hence 0.005 and 0.15.
RATE_LAMBDAS = ("fisher:0.005", "fisher:0.01", "fisher:0.03", "0.15", "0.3")


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


@dataclasses.dataclass
class Network:
    """One trained network at its starting point (the pruned, fine-tuned float model) and what shares it."""

    name: str
    start: ModelHandle
    data: DataBundle
    cluster: dict  # the cluster step of its recipe (same-levels mode; its finetune_epochs and lr: the sweep's)
    info: dict

    @property
    def weight_names(self) -> list[str]:
        return [f"{layer}.weight" for layer in self.start.prunable_layers()]


def content_key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def save_state(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # whole or not at all: a cache file cut short by a kill is never read


def load_state(handle: ModelHandle, path: Path) -> ModelHandle:
    from safetensors.torch import load_file

    work = handle.clone()
    work.model.load_state_dict(load_file(str(path)), strict=True)
    work.model.eval()
    return work


def rgb_digits(size: int) -> DataBundle:
    """The demo digits at size x size with the grey channel repeated to RGB (a torchvision model reads 3)."""
    from torch.utils.data import TensorDataset

    data = load_data("digits", input_size=size)
    splits = {}
    for split in ("train", "val", "test"):
        images, labels = data.split(split)[:]
        splits[split] = TensorDataset(images.repeat(1, 3, 1, 1), labels)
    return DataBundle("digits", splits["train"], splits["val"], splits["test"], 10, (3, size, size),
                      data.mean * 3, data.std * 3, data.class_names, shift_pixels=data.shift_pixels)


def base_model(name: str) -> tuple[ModelHandle, DataBundle, dict, bytes | dict]:
    """(the trained model, its data, its plan as a dict, what its weights are keyed by)."""
    if name == "resnet18_digits":
        import torchvision

        config = RESNET_DIGITS_TRAIN
        data = rgb_digits(config["size"])
        architecture = {"kind": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 10}}
        torch.manual_seed(config["seed"])
        handle = ModelHandle(torchvision.models.resnet18(num_classes=10).eval(), architecture,
                             (3, config["size"], config["size"]), 10, "torchvision:resnet18 (trained on the digits)")
        key = {"train": config, "torch": torch.__version__.split("+")[0]}
        path = CACHE / f"trained-resnet18_digits-{content_key(key)}.safetensors"
        if path.exists():
            return load_state(handle, path), data, RESNET_DIGITS_PLAN, key
        log(f"training resnet18 on the digits ({config['epochs']} epochs; cached in {shown(path)})")
        train(handle.model, data.train, TrainConfig(epochs=config["epochs"], lr=config["lr"],
                                                    weight_decay=config["weight_decay"],
                                                    shift_pixels=config["shift_pixels"], seed=config["seed"]))
        handle.model.eval()
        save_state(handle.model, path)
        return load_state(handle, path), data, RESNET_DIGITS_PLAN, key
    handle = load_model(f"demo:{name}")
    data = load_data("digits", input_size=handle.input_shape[-1])
    if name == "vgg_small":
        plan = VGG_PLAN
    else:
        plan = json.loads((ROOT / "assets" / "recipes" / f"{name}.json").read_text())
    weights = hashlib.sha256()
    for key, value in handle.model.state_dict().items():
        weights.update(key.encode() + b"\0" + value.detach().cpu().contiguous().numpy().tobytes())
    return handle, data, plan, weights.digest()


def network(name: str, fast: bool, tmp: Path) -> Network:
    """The network's starting model: its plan's steps before the cluster step, through compress (cached)."""
    handle, data, plan, weights_key = base_model(name)
    steps = plan["steps"]
    at = next((i for i, step in enumerate(steps) if step["type"] == "cluster"), None)
    if at is None:
        raise BenchmarkError(f"{name}'s plan has no cluster step: the comparison shares weights")
    before = [dict(step) for step in steps[:at]]
    if fast:
        before = [_no_finetuning_step(step) for step in before]
    prune_plan = {**{k: v for k, v in plan.items() if k != "steps"}, "name": f"{plan['name']}-prune", "steps": before}
    path = CACHE / f"start-{name}-{content_key(weights_key, prune_plan, torch.__version__.split('+')[0])}.safetensors"
    started = time.time()
    cached = path.exists()
    if not cached:
        log(f"{name}: running its prune step (cached in {shown(path)})")
        result = compress(handle, Plan.from_json(json.dumps(prune_plan)), data, tmp / f"{name}-start", latency=False)
        save_state(result.handle.model, path)
    start = load_state(handle, path)
    cluster = dict(steps[at])
    return Network(name, start, data, cluster,
                   {"source": f"{handle.label}, {plan['name']} steps before cluster: "
                              + json.dumps(before, separators=(",", ":")),
                    "start_cached": cached, "start_s": round(time.time() - started, 1),
                    "accuracy_trained": handle.score(handle.model, data, "test"),
                    "accuracy_start": start.score(start.model, data, "test")})


def one_step_plan(net: Network, step: dict) -> Plan:
    return Plan.from_json(json.dumps({"schema_version": 1, "name": f"nnc-compare-{net.name}-{step['type']}",
                                      "seed": 0, "eval_split": "test", "steps": [step]}))


def share(net: Network, step: dict, out_dir: Path) -> tuple[dict, Path]:
    """The cluster `step` on the starting model through compress: our point (weight bytes, decoded accuracy)."""
    started = time.time()
    result = compress(net.start, one_step_plan(net, step), net.data, out_dir, latency=False)
    rows = [row for row in inspect_bytes(result.path.read_bytes()) if row["name"] in net.weight_names]
    point = {"bytes": sum(row["bytes_total"] for row in rows), "accuracy": result.metrics["after"]["accuracy"],
             "file_bytes": result.metrics["after"]["compressed_bytes"],
             "nonzeros": result.metrics["after"]["prunable_nonzero"],
             "seconds": round(time.time() - started, 1),
             "step": {k: v for k, v in step.items() if k != "type"}}
    return point, result.path


def shared_tensors(net: Network, path: Path) -> dict[str, torch.Tensor]:
    _, state = read_file(path)
    return {n: state[n] for n in net.weight_names}


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


# ----------------------------------------------------------------------------------------------------
# mode 2: equal accuracy


def rate_aware_available() -> bool:
    """Whether the cluster step on this branch has the rate-aware options (objective "rate" etc.)."""
    return "objective" in {f.name for f in dataclasses.fields(ClusterStep)}


def start_nnc_sweep(net: Network, qps: list[int], tmp: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    """Start NNCodec's own quantization of the starting model at each QP (nnc_helper.py --sweep, its own
    process, one thread: it runs beside our side's sweep on the second core)."""
    state = net.start.model.state_dict()
    arrays = {"names": np.array(net.weight_names)}
    for i, name in enumerate(net.weight_names):
        arrays[f"weights_{i}"] = state[name].detach().cpu().numpy().astype(np.float32)
    source, out = tmp / f"{net.name}-float.npz", tmp / f"{net.name}-nnc-{tag}"
    np.savez(source, **arrays)
    command = [str(venv_python()), str(HELPER), "--sweep", str(source), "--out", str(out),
               "--qps=" + ",".join(str(q) for q in qps)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return process, out


def finish_nnc_sweep(net: Network, process: subprocess.Popen, out: Path) -> tuple[list[dict], dict]:
    """NNCodec's points: bitstream bytes and the test accuracy of the model holding its decoded weights."""
    stdout, stderr = process.communicate()
    lines = stdout.strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = "\n  ".join((stderr or stdout).strip().splitlines()[-12:])
        raise BenchmarkError(f"the NNCodec helper's sweep failed on {net.name} (exit {process.returncode}):\n  {tail}")
    answer = json.loads(lines[-1])
    points = []
    layers = list(net.start.prunable_layers())
    for row in answer["points"]:
        decoded = out / f"qp{row['qp']}.npz"
        model = copy.deepcopy(net.start.model)
        with np.load(decoded) as npz, torch.no_grad():
            params = dict(model.named_parameters())
            for i, name in enumerate(str(n) for n in npz["names"]):
                params[name].copy_(torch.from_numpy(npz[f"weights_{i}"]).view_as(params[name]))
        decoded.unlink()
        # what our cluster step does after sharing with finetune_epochs 0: batch-norm statistics re-estimated
        # on the same training batches (same seed); nothing happens to a model without batch norm
        ctx = StepContext(data=net.data, layers=layers, seed=0,
                          task=task_for(net.start, net.data, shift_pixels=net.data.shift_pixels))
        ctx.finetune(model, 0, 0.0, ctx.seed + SHARED_VALUE_FINETUNE_SEED, "NNCodec decoded")
        model.eval()
        points.append({**row, "accuracy": net.start.score(model, net.data, "test")})
    shutil.rmtree(out, ignore_errors=True)
    return points, {"nncodec": answer.get("nncodec"), "setting": answer.get("setting")}


def refine(points: list[dict], reference: float) -> list[int]:
    """The QPs between the coarsest one within EQUAL_POINTS of `reference` and the next one swept (NNCodec's
    grid is coarse where it does not matter; one QP step is 2^(1/4), 19% of step size)."""
    qps = sorted(p["qp"] for p in points)
    near = [p["qp"] for p in points if p["accuracy"] >= reference - EQUAL_POINTS - 1e-9]
    if not near or max(near) == qps[-1]:
        return []
    coarsest = max(near)
    following = qps[qps.index(coarsest) + 1]
    return list(range(coarsest + 1, following))


def fewest_at(points: list[dict], reference: float) -> dict | None:
    """The point with the fewest bytes among those within EQUAL_POINTS of `reference` (None: no such point)."""
    near = [p for p in points if p["accuracy"] >= reference - EQUAL_POINTS - 1e-9]
    return min(near, key=lambda p: p["bytes"]) if near else None


def ratio(ours_point: dict | None, nnc_point: dict | None) -> float | None:
    if ours_point is None or nnc_point is None:
        return None
    return round(ours_point["bytes"] / nnc_point["bytes"], 4)


_WORKER_NET: Network | None = None  # the network the sharing workers work on (set before they fork)


def model_lambdas(net: Network, lam: float) -> dict[str, float]:
    """Per-layer rate_lambda for one model-wide lambda: lam x (mean square of the model's kept weights) / (the
    layer's), rounded to 6 significant digits (the plan is part of a cache key)."""
    squares, counts = {}, {}
    for layer in net.start.prunable_layers():
        weight = layer_weight(net.start.model, layer).detach().double().flatten()
        kept = weight[weight != 0]
        squares[layer], counts[layer] = float((kept * kept).sum()), max(1, kept.numel())
    overall = sum(squares.values()) / sum(counts.values())
    return {layer: float(f"{lam * overall / max(squares[layer] / counts[layer], 1e-30):.6g}") for layer in squares}


def _share_job(step: dict, out_dir: str) -> dict:
    """One of our points, in a worker process (one thread, like the main process)."""
    torch.set_num_threads(1)
    log(f"{_WORKER_NET.name}: ours, {json.dumps({k: v for k, v in step.items() if k not in ('type', 'lr')})}")
    return share(_WORKER_NET, step, Path(out_dir))[0]


def rate_step(net: Network, point: str) -> dict:
    """The rate-aware settings of one sweep point: "fisher:L" (scale-free L per layer, Fisher importance) or "L"
    (one model-wide lambda, `model_lambdas`)."""
    if point.startswith("fisher:"):
        return {"rate_lambda": {"_default": float(point.split(":", 1)[1])}, "importance": "fisher"}
    return {"rate_lambda": model_lambdas(net, float(point))}


def equal_accuracy(net: Network, ks: list[int], qps: list[int], rate_lambdas: list[str], fast: bool, tmp: Path,
                   reuse: dict[str, tuple[dict, Path]], workers: int) -> dict:
    """Both sides' curves from the starting model; each side's fewest bytes at equal accuracy."""
    reference = net.info["accuracy_start"]
    started = time.time()
    epochs = 0 if fast else int(net.cluster.get("finetune_epochs", ClusterStep.finetune_epochs))
    lr = net.cluster.get("lr", ClusterStep.lr)
    steps: dict[str, list[dict]] = {}
    for finetune, tag in ((epochs, "finetune"), (0, "no_finetune")):
        steps[f"plain_{tag}"] = [{"type": "cluster", "n_clusters": {"_default": k}, "finetune_epochs": finetune,
                                  "lr": lr} for k in ks]
        if rate_aware_available():
            steps[f"rate_{tag}"] = [{"type": "cluster", "n_clusters": {"_default": RATE_MAX_K}, "objective": "rate",
                                     **rate_step(net, point), "joint_prune": True,
                                     "finetune_epochs": finetune, "lr": lr} for point in rate_lambdas]
    todo = {json.dumps(step, sort_keys=True): step for curve in steps.values() for step in curve}
    todo = {key: step for key, step in todo.items() if key not in reuse}
    log(f"{net.name}: NNCodec's QP sweep ({len(qps)} points) beside our {len(todo)} sharing runs "
        f"({workers} worker{'s' if workers != 1 else ''})")
    nnc_run = start_nnc_sweep(net, qps, tmp, "grid")
    global _WORKER_NET
    _WORKER_NET = net  # (the forked workers inherit it: the model is not pickled once per run)
    context = multiprocessing.get_context("fork")
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = {key: pool.submit(_share_job, step, str(tmp / f"{net.name}-ours-{i}"))
                    for i, (key, step) in enumerate(todo.items())}
            # meanwhile, here: NNCodec's sweep, its evaluation and its refinement
            nnc_points, nnc_info = finish_nnc_sweep(net, *nnc_run)
            finer = refine(nnc_points, reference)
            if finer:
                log(f"{net.name}: NNCodec's QP sweep refined near equal accuracy: QP {', '.join(map(str, finer))}")
                nnc_points = sorted(nnc_points + finish_nnc_sweep(net, *start_nnc_sweep(net, finer, tmp, "fine"))[0],
                                    key=lambda p: p["qp"])
            nnc_seconds = time.time() - started
            for key, job in jobs.items():
                reuse[key] = (job.result(), Path())
    except BaseException:
        if nnc_run[0].poll() is None:
            nnc_run[0].kill()  # ours failed or was interrupted: NNCodec's sweep is not left running
            nnc_run[0].wait()
        raise
    finally:
        _WORKER_NET = None
    curves: dict[str, list[dict]] = {"nnc": nnc_points}
    for curve, curve_steps in steps.items():
        curves[curve] = [reuse[json.dumps(step, sort_keys=True)][0] for step in curve_steps]
    ours_seconds = time.time() - started  # (NNCodec's side ran meanwhile: nnc_seconds is its part of it)
    nnc_best = fewest_at(nnc_points, reference)
    best = {side: fewest_at(points, reference) for side, points in curves.items()}
    ours_ft = fewest_at(curves["plain_finetune"] + curves.get("rate_finetune", []), reference)
    ours_no = fewest_at(curves["plain_no_finetune"] + curves.get("rate_no_finetune", []), reference)
    return {
        "reference_accuracy": reference, "within": EQUAL_POINTS,
        "nnc_at_equal_accuracy": nnc_best, "ours_at_equal_accuracy": ours_ft,
        "ours_at_equal_accuracy_no_finetune": ours_no,
        "best_per_curve": best,
        "ours_over_nnc_at_equal_accuracy": ratio(ours_ft, nnc_best),
        "ours_over_nnc_at_equal_accuracy_no_finetune": ratio(ours_no, nnc_best),
        "ours_over_nnc_at_equal_accuracy_plain": ratio(best["plain_finetune"], nnc_best),
        "ours_over_nnc_at_equal_accuracy_plain_no_finetune": ratio(best["plain_no_finetune"], nnc_best),
        "finetune_epochs": epochs, "nncodec": nnc_info,
        "nnc_seconds": round(nnc_seconds, 1), "ours_seconds": round(ours_seconds, 1),
        "curves": curves,
    }


def worst(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


CURVE_STYLE = {  # name shown, colour, dash
    "nnc": ("NNCodec (QP sweep, dependent quantization)", "#d62728", "solid"),
    "plain_finetune": ("ours: k-means, shared values fine-tuned", "#1f77b4", "solid"),
    "plain_no_finetune": ("ours: k-means, no fine-tuning", "#1f77b4", "dot"),
    "rate_finetune": ("ours: rate-aware, fine-tuned", "#2ca02c", "solid"),
    "rate_no_finetune": ("ours: rate-aware, no fine-tuning", "#2ca02c", "dot"),
}


def write_curves(results: dict[str, dict], path: Path) -> Path:
    """Bytes vs accuracy for every network and side, one HTML file with plotly.js inside (works offline)."""
    from plotly.subplots import make_subplots

    names = list(results)
    columns = 2 if len(names) > 1 else 1
    rows = (len(names) + columns - 1) // columns
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[
        f"{name} (reference {100 * results[name]['reference_accuracy']:.2f}%)" for name in names])
    for index, name in enumerate(names):
        result = results[name]
        row, col = index // columns + 1, index % columns + 1
        for curve, points in result["curves"].items():
            label, colour, dash = CURVE_STYLE[curve]
            ordered = sorted(points, key=lambda p: p["bytes"])
            hover = [json.dumps({k: v for k, v in p.items() if k in ("qp", "step", "seconds")})[:160]
                     for p in ordered]
            figure.add_scatter(x=[p["bytes"] for p in ordered], y=[100 * p["accuracy"] for p in ordered],
                               mode="lines+markers", name=label, legendgroup=curve, showlegend=index == 0,
                               line={"color": colour, "dash": dash}, text=hover, row=row, col=col)
        reference = 100 * result["reference_accuracy"]
        for level, dash in ((reference, "solid"), (reference - 100 * EQUAL_POINTS, "dash")):
            figure.add_hline(y=level, line={"color": "grey", "dash": dash, "width": 1}, row=row, col=col)
        figure.update_xaxes(type="log", title_text="weight bytes", row=row, col=col)
        figure.update_yaxes(title_text="test accuracy (%)", range=[max(0.0, reference - 8), min(100.0, reference + 2)],
                            row=row, col=col)
    figure.update_layout(title="Bytes vs accuracy from the same pruned float model: NNCodec vs ours "
                               "(grey: the starting model's accuracy and 0.3 points below it)",
                         height=450 * rows, width=1200)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


# ----------------------------------------------------------------------------------------------------
# mode 1: same levels


def same_levels(networks: dict[str, tuple[dict, dict]], repeats: int, tmp: Path) -> dict:
    """Our coder and NNCodec's lossless integer path on identical shared tensors: rows and the summary keys."""
    rows, npz_files = {}, []
    for name, (tensors, info) in networks.items():
        arrays = {"names": np.array(list(tensors))}
        for i, weight in enumerate(tensors.values()):
            arrays[f"levels_{i}"], arrays[f"values_{i}"] = levels_of(weight)
        npz_files.append(tmp / f"{name}.npz")
        np.savez(npz_files[-1], **arrays)
        log(f"our coder on {name}")
        rows[name] = {**info, "tensors": len(tensors), "weights": sum(t.numel() for t in tensors.values()),
                      "nonzeros": sum(int((t != 0).sum()) for t in tensors.values()),
                      "shared_values": {n: int(np.unique(t[t != 0].numpy()).size) for n, t in tensors.items()},
                      "ours": ours(tensors, repeats)}
    log("NNCodec on the same levels")
    nnc = run_nncodec(npz_files, repeats)
    # our decode timed again after NNCodec's, so both sides' runs bracket the same stretch of a busy machine
    for row in rows.values():
        runs = row["ours"]["decode_runs_s"] + decode_times(row["ours"].pop("blob"), repeats)
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
        print(f"{name:16} {row['weights']:>10,} weights {row['nonzeros']:>9,} kept | ours {row['ours']['bytes']:>9,} B "
              f"| NNCodec {row['nnc']['bytes']:>9,} B ({row['nnc']['bitstream_bytes']:,} bitstream + "
              f"{row['nnc']['codebook_bytes']:,} codebook) | ratio {row['ours_over_nnc_bytes']:.3f} "
              f"| decode ours {1e3 * row['ours']['decode_s']:.1f} ms, NNCodec {1e3 * row['nnc']['decode_s']:.1f} ms "
              f"(CPU {1e3 * row['ours']['decode_cpu_s']:.1f} / {1e3 * row['nnc']['decode_cpu_s']:.1f} ms)",
              file=sys.stderr)
        for tensor, size in row["ours"]["tensor_bytes"].items():
            print(f"    {tensor:30} k={row['shared_values'][tensor]:<4} {row['ours']['encodings'][tensor]:7} "
                  f"ours {size:>9,} B  NNCodec alone {row['nnc']['tensor_bytes'][tensor]:>9,} B", file=sys.stderr)
    trained = [name for name in rows if name != "resnet18_random"]
    ours_bytes = sum(rows[name]["ours"]["bytes"] for name in trained)
    nnc_bytes = sum(rows[name]["nnc"]["bytes"] for name in trained)
    summary = {
        "ours_over_nnc_bytes": round(ours_bytes / nnc_bytes, 4) if nnc_bytes else None,
        "worst_network_over_nnc": max(row["ours_over_nnc_bytes"] for row in rows.values()),
        # the byte total above is dominated by the largest network; each network counted once:
        "ours_over_nnc_bytes_geomean": round(float(np.exp(np.mean(
            [np.log(rows[name]["ours_over_nnc_bytes"]) for name in trained]))), 4) if trained else None,
        "random_resnet18_over_nnc_bytes": rows["resnet18_random"]["ours_over_nnc_bytes"]
        if "resnet18_random" in rows else None,
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
        "networks": rows,
    }
    return summary


def log(message: str) -> None:
    print(f"nnc_compare: {message}", file=sys.stderr, flush=True)


def int_list(text: str | None, default: tuple[int, ...]) -> list[int]:
    if text is None:
        return list(default)
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BenchmarkError(f"{text!r} is not a comma-separated list of whole numbers, e.g. 4,8,16") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("both", "same-levels", "equal-accuracy"), default="both")
    parser.add_argument("--repeats", type=int, default=7, help="decode timings per network (median)")
    parser.add_argument("--fast", action="store_true",
                        help="quick check: no fine-tuning at all, 3 k and 5 QP values before refining")
    parser.add_argument("--networks", help=f"comma-separated subset of {','.join(TRAINED)} (default: all four)")
    parser.add_argument("--ks", help=f"plain k-means sweep (default {','.join(map(str, KS))})")
    parser.add_argument("--qps", help="NNCodec's QP sweep before refining (default every fourth QP, -40 to -8)")
    parser.add_argument("--rate-lambdas", help="rate-aware rate_lambda sweep (default "
                        f"{','.join(RATE_LAMBDAS)}: fisher:L per layer with Fisher importance, L one model-wide "
                        "lambda; run only where ClusterStep has `objective`)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes sharing our points at once (one thread each; default 2, the machine's cores)")
    parser.add_argument("--html", type=Path, default=CURVES_HTML, help="where the curves go")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    names = TRAINED if args.networks is None else tuple(n.strip() for n in args.networks.split(",") if n.strip())
    unknown = [n for n in names if n not in TRAINED]
    if unknown:
        raise BenchmarkError(f"unknown network(s) {unknown}: choose from {', '.join(TRAINED)}")
    ks = int_list(args.ks, (4, 8, 16) if args.fast else KS)
    qps = int_list(args.qps, QPS[::2] if args.fast else QPS)
    try:
        rate_lambdas = [v for v in (args.rate_lambdas or ",".join(RATE_LAMBDAS)).split(",") if v]
        [float(v.removeprefix("fisher:")) for v in rate_lambdas]  # each a number, or fisher: and a number
    except ValueError:
        raise BenchmarkError(f"--rate-lambdas {args.rate_lambdas!r} is not a comma-separated list of numbers") from None
    venv_seconds = ensure_venv()
    summary: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nets = {}
        for name in names:
            nets[name] = network(name, args.fast, tmp)
            log(f"{name}: starting model accuracy {nets[name].info['accuracy_start']:.4f} "
                f"(trained {nets[name].info['accuracy_trained']:.4f}), {nets[name].info['start_s']} s")
        reuse: dict[str, dict[str, tuple[dict, Path]]] = {name: {} for name in names}
        if args.mode in ("both", "same-levels"):
            tensors = {}
            for name, net in nets.items():
                step = _no_finetuning_step(net.cluster) if args.fast else dict(net.cluster)
                key = json.dumps(step, sort_keys=True)
                if key not in reuse[name]:
                    log(f"{name}: its cluster step {json.dumps(step)}")
                    reuse[name][key] = share(net, step, tmp / f"{name}-levels")
                point, path = reuse[name][key]
                tensors[name] = (shared_tensors(net, path),
                                 {**net.info, "cluster_step": point["step"], "accuracy_after": point["accuracy"],
                                  "file_bytes": point["file_bytes"]})
            log("pruning and sharing the random resnet18")
            tensors["resnet18_random"] = resnet_tensors()
            summary.update(same_levels(tensors, args.repeats, tmp))
        if args.mode in ("both", "equal-accuracy"):
            results = {name: equal_accuracy(net, ks, qps, rate_lambdas, args.fast, tmp, reuse[name], args.workers)
                       for name, net in nets.items()}
            missing = [f"{name}: {side}" for name, result in results.items()
                       for side, key in (("NNCodec", "nnc_at_equal_accuracy"), ("ours", "ours_at_equal_accuracy"),
                                         ("ours without fine-tuning", "ours_at_equal_accuracy_no_finetune"))
                       if result[key] is None]
            for name, result in results.items():
                n, o, z = (result[k] for k in ("nnc_at_equal_accuracy", "ours_at_equal_accuracy",
                                               "ours_at_equal_accuracy_no_finetune"))

                def show(point):
                    return "never within 0.3" if point is None else \
                        f"{point['bytes']:,} B at {100 * point['accuracy']:.2f}%"
                log(f"{name}: reference {100 * result['reference_accuracy']:.2f}% | NNCodec {show(n)} | ours {show(o)} "
                    f"(ratio {result['ours_over_nnc_at_equal_accuracy']}) | ours without fine-tuning {show(z)} "
                    f"(ratio {result['ours_over_nnc_at_equal_accuracy_no_finetune']})")
            html = write_curves(results, args.html)
            log(f"curves: {html}")
            summary.update({
                "ours_over_nnc_at_equal_accuracy": worst([r["ours_over_nnc_at_equal_accuracy"]
                                                          for r in results.values()]),
                "ours_over_nnc_at_equal_accuracy_no_finetune": worst(
                    [r["ours_over_nnc_at_equal_accuracy_no_finetune"] for r in results.values()]),
                "ours_over_nnc_at_equal_accuracy_plain": worst([r["ours_over_nnc_at_equal_accuracy_plain"]
                                                                for r in results.values()]),
                "equal_accuracy_per_network": {name: {k: r[k] for k in (
                    "ours_over_nnc_at_equal_accuracy", "ours_over_nnc_at_equal_accuracy_no_finetune",
                    "ours_over_nnc_at_equal_accuracy_plain", "ours_over_nnc_at_equal_accuracy_plain_no_finetune")}
                    for name, r in results.items()},
                "equal_accuracy_missing": missing,
                "rate_aware": rate_aware_available(),
                "curves_html": str(html),
                "equal_accuracy": results,
            })
    summary.update({"fast": args.fast, "mode": args.mode,
                    "venv_build_s": None if venv_seconds is None else round(venv_seconds, 1),
                    "seconds": round(time.time() - started, 1)})
    print(json.dumps(summary))


def _no_finetuning_step(step: dict) -> dict:
    step = dict(step)
    if "finetune_epochs" in step:
        step["finetune_epochs"] = 0
    if "iterations" in step:
        step["iterations"] = 1
    return step



if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as exc:
        print(f"nnc_compare: {exc}", file=sys.stderr)
        sys.exit(2)
