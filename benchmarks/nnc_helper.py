"""NNCodec side of benchmarks/nnc_compare.py: code given integer levels with NNCodec, decode them, time it.

Runs inside benchmarks/.venv-nnc (nncodec pins numpy<2 and builds a C++ extension, so it never goes
into the app's .venv); it imports nothing from compression/. Input: one .npz per network written by
nnc_compare.py, holding for tensor i `levels_i` (int32, the quantization indices: 0 is a pruned zero,
-n..-1 and 1..p the sorted negative and positive shared values) and `values_i` (float32, the value of
each level, level -n first). Each network's tensors are coded as one NNC bitstream: int32 tensors take
NNCodec's integer path (approximator "skip": no quantization, the levels go to DeepCABAC as they are),
so the bitstream carries exactly the levels and the decoder returns them exactly. The float values of
the levels are not in the bitstream (NNC codebooks hold integer multiples of a QP step size, which
k-means centroids are not); nnc_compare.py charges them to NNCodec at our codebook's own bytes.

For every setting in SETTINGS the bitstream's size is measured; the smallest is kept, and its decode
(nncodec.nnc.decompress plus the level -> value lookup that gives float32 weights, the same output our
decoder gives) is timed, median of --repeats, one thread: wall-clock and CPU (process) time.
Prints one JSON object as its last line.

    benchmarks/.venv-nnc/bin/python benchmarks/nnc_helper.py NET.npz [NET.npz ...] [--repeats 7]

Sweep mode (nnc_compare.py's equal-accuracy mode): `--sweep FLOAT.npz --out DIR --qps -40,-36,...` takes
one network's float32 weights (`names`, `weights_i`: the pruned, fine-tuned model, zeros as they are) and
lets NNCodec quantize them itself: for each QP, `nnc.compress` with uniform quantization at that QP
(qp_density 2: step size 2^(qp/4)), dependent quantization (use_dq, NNC's trellis-coded quantization with
two quantizers) and its default row skipping / CABAC parameter optimisation, one bitstream for all the
network's weight tensors; then `nnc.decompress` of that bitstream. The decoded float32 weights go to
DIR/qp<QP>.npz (same names) for nnc_compare.py to evaluate; the JSON line lists each QP's bitstream bytes.

    benchmarks/.venv-nnc/bin/python benchmarks/nnc_helper.py --sweep NET.npz --out DIR --qps -40,-36
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"

import numpy as np  # noqa: E402

# row_skipping: NNC's flag that skips all-zero tensor rows (helps pruned layers); param_opt: its
# per-tensor choice of CABAC binarization parameters; scan_order: 0 row-major, 1-4 block scans
# (8x8 .. 64x64) of 2-D matrices. NNCodec's defaults are row_skipping on, param_opt on, scan 0.
SETTINGS = [
    {"row_skipping": True, "param_opt": True, "scan_order": 0},
    {"row_skipping": False, "param_opt": True, "scan_order": 0},
    {"row_skipping": True, "param_opt": True, "scan_order": 1},
]


def load_network(path: Path) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path) as npz:
        names = [str(n) for n in npz["names"]]
        levels = {name: np.ascontiguousarray(npz[f"levels_{i}"], dtype=np.int32) for i, name in enumerate(names)}
        values = {name: np.asarray(npz[f"values_{i}"], dtype=np.float32) for i, name in enumerate(names)}
    return names, levels, values


def encode(nnc, levels: dict[str, np.ndarray], setting: dict, folder: str) -> bytearray:
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        bitstream = nnc.compress({k: v.copy() for k, v in levels.items()},
                                 bitstream_path=os.path.join(folder, "net.nnc"), return_bitstream=True,
                                 verbose=False, use_dq=False, **setting)
    return bytearray(bitstream)


def decode(nnc, bitstream: bytearray, values: dict[str, np.ndarray], negatives: dict[str, int]) -> dict:
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        decoded = nnc.decompress(bytearray(bitstream))
    # the same output as our decoder: float32 weights (level -> its shared value)
    return {name: values[name][decoded[name].astype(np.int64) + negatives[name]] for name in values}


def run_network(nnc, path: Path, repeats: int) -> dict:
    names, levels, values = load_network(path)
    negatives = {name: int((values[name] < 0).sum()) for name in names}
    sizes = []
    best = None
    with tempfile.TemporaryDirectory() as folder:
        for setting in SETTINGS:
            started = time.perf_counter()
            try:
                bitstream = encode(nnc, levels, setting, folder)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a setting NNCodec refuses is reported, not fatal
                sizes.append({**setting, "error": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            seconds = time.perf_counter() - started
            sizes.append({**setting, "bytes": len(bitstream), "encode_s": round(seconds, 3)})
            if best is None or len(bitstream) < len(best[1]):
                best = (setting, bitstream)
        if best is None:
            raise SystemExit(f"NNCodec refused every setting for {path.stem}: {sizes}")
        setting, bitstream = best
        # each tensor alone with the chosen setting (each such stream repeats NNC's start and model
        # parameter set units, so these add up to a little more than the network's one bitstream)
        per_tensor = {name: len(encode(nnc, {name: levels[name]}, setting, folder)) for name in names}
    weights = decode(nnc, bitstream, values, negatives)
    expected = {name: values[name][levels[name].astype(np.int64) + negatives[name]] for name in names}
    identical = all(np.array_equal(weights[name].view(np.uint32), expected[name].view(np.uint32)) for name in names)
    times, cpu_times = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        decode(nnc, bitstream, values, negatives)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return {"network": path.stem, "bytes": len(bitstream), "setting": setting, "settings": sizes,
            "tensor_bytes": per_tensor,
            "decode_s": statistics.median(times), "decode_runs_s": [round(t, 5) for t in times],
            "decode_cpu_s": statistics.median(cpu_times),
            "identical": identical, "tensors": len(names),
            "levels": int(sum(v.size for v in levels.values()))}


# NNCodec's own quantization in the sweep: uniform reconstruction levels (codebook_mode 0), dependent
# quantization on, row skipping and CABAC parameter optimisation on (its recommended encoder settings)
SWEEP_SETTING = {"use_dq": True, "row_skipping": True, "param_opt": True, "scan_order": 0, "codebook_mode": 0}


def sweep(nnc, path: Path, out: Path, qps: list[int]) -> list[dict]:
    """NNCodec quantizes and codes the float weights at each QP; the decoded weights go to out/qp<QP>.npz."""
    with np.load(path) as npz:
        names = [str(n) for n in npz["names"]]
        weights = {name: np.ascontiguousarray(npz[f"weights_{i}"], dtype=np.float32) for i, name in enumerate(names)}
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for qp in qps:
            started = time.perf_counter()
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet):
                bitstream = nnc.compress({k: v.copy() for k, v in weights.items()},
                                         bitstream_path=os.path.join(folder, "net.nnc"), return_bitstream=True,
                                         verbose=False, qp=int(qp), **SWEEP_SETTING)
                encode_s = time.perf_counter() - started
                decoded = nnc.decompress(bytearray(bitstream))
            arrays = {"names": np.array(names)}
            for i, name in enumerate(names):
                arrays[f"weights_{i}"] = np.asarray(decoded[name], dtype=np.float32).reshape(weights[name].shape)
            np.savez(out / f"qp{qp}.npz", **arrays)
            rows.append({"qp": int(qp), "bytes": len(bitstream), "encode_s": round(encode_s, 3),
                         "nonzeros": int(sum(np.count_nonzero(arrays[f"weights_{i}"]) for i in range(len(names))))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sweep", type=Path, help="a float-weights .npz: NNCodec's own quantization, a QP sweep")
    parser.add_argument("--out", type=Path, help="(--sweep) folder for the decoded weights")
    parser.add_argument("--qps", default="-38", help="(--sweep) comma-separated QPs")
    args = parser.parse_args()
    import torch  # nncodec imports it; one thread like our side

    torch.set_num_threads(1)
    from importlib.metadata import version

    from nncodec import nnc
    if args.sweep is not None:
        if args.out is None:
            raise SystemExit("--sweep needs --out DIR")
        points = sweep(nnc, args.sweep, args.out, [int(q) for q in args.qps.split(",") if q.strip()])
        print(json.dumps({"nncodec": version("nncodec"), "setting": SWEEP_SETTING, "points": points}))
        return
    if not args.npz:
        raise SystemExit("give NET.npz files, or --sweep FLOAT.npz --out DIR")
    rows = [run_network(nnc, path, args.repeats) for path in args.npz]
    print(json.dumps({"nncodec": version("nncodec"), "numpy": np.__version__,
                      "networks": rows}))


if __name__ == "__main__":
    sys.exit(main())
