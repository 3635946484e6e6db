"""Channel pruning of YOLO detectors (C2f made prunable, L1, keep 0.5 and 0.25): params, FLOPs, ONNX bytes, CPU latency.

For the demo detector (trained, assets/detector.pt) and an untrained YOLOv8n built from Ultralytics' own
yaml (nothing downloaded), every channel group except the Detect head's prediction outputs keeps a share of
its channels by L1 norm (methods/channels/detector.prune_detector). Latency is the median of paired runs
(original and pruned alternate, so load on the machine hits both alike: channel_pruning_table.paired_latency),
batch 1, the same thread count for both, at 320 px on the models as trained (batch norm) and fused (batch norm
folded, what Ultralytics runs at inference), and at 640 px fused. ONNX bytes are of complab/export.onnx_bytes
at 640 px. No fine-tuning: this measures size and speed, not accuracy. Prints one JSON object as its last line.
`yolov8n_ratios` is the YOLOv8n row benchmarks/yolo_table.py reports.

Kept channels are rounded to a multiple of 16 (prune_detector's default for detectors); `--round-to-effect` measures
instead whether that pays on this CPU (round_to_effect: YOLOv8n at keep 0.3 and 0.6, rounded to 8 and 16 against
unrounded, latency per FLOP).

    .venv/bin/python benchmarks/detector_channels.py [--repeats 30] [--threads 1] [--round-to-effect]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from channel_pruning_table import paired_latency  # noqa: E402
from complab import metrics  # noqa: E402
from complab.export import onnx_bytes  # noqa: E402
from complab.methods.channels.detector import DETECTOR_ROUND_TO, prune_detector  # noqa: E402
from complab.models.detector import DetectorHandle, fuse, load_detector, own_activations  # noqa: E402
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics  # noqa: E402

KEEP_RATIOS = (0.5, 0.25)
SIZES = (320, 640)  # latency and FLOPs at both; the pruning itself does not depend on the image size
PRUNE_SHAPE = (3, 320, 320)  # the input the dependency graph is traced on


def yolov8n(nc: int = 80) -> torch.nn.Module:
    """Untrained YOLOv8n from Ultralytics' yaml, with its own in-place activations as Ultralytics' loader deploys a
    .pt model (models.detector.own_activations; both sides of every comparison here are built by this)."""
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet_ultralytics():
        return own_activations(DetectionModel("yolov8n.yaml", nc=nc, verbose=False).float().eval())


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_size(model: torch.nn.Module, size: int) -> int:
    """Bytes of the detector's ONNX export (compression/complab/export.py: one predictions tensor, dynamic batch)."""
    handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)}, size,
                            "benchmark")
    return len(onnx_bytes(handle))


def pruned_copy(model: torch.nn.Module, keep_ratio: float, round_to: int = DETECTOR_ROUND_TO):
    """A pruned deep copy of `model` (which stays as it was) and what pruning did."""
    pruned = copy.deepcopy(model).eval()
    return pruned, prune_detector(pruned, keep_ratio, PRUNE_SHAPE, round_to=round_to)


def flops(model: torch.nn.Module, size: int) -> int:
    return metrics.flops(model, (3, size, size))["flops"]


@torch.no_grad()
def fused_latency(original: torch.nn.Module, pruned: torch.nn.Module, size: int, repeats: int, threads: int) -> dict:
    """Paired latency of the two models with batch norm folded (copies: the arguments stay as they were)."""
    with quiet_ultralytics():
        fused_original, fused_pruned = fuse(copy.deepcopy(original)), fuse(copy.deepcopy(pruned))
    return paired_latency(fused_original, fused_pruned, (3, size, size), 1, repeats, threads)


@torch.no_grad()
def paired_rounds(original: torch.nn.Module, compressed: torch.nn.Module, shape: tuple[int, ...], repeats: int,
                  threads: int, rounds: int) -> dict:
    """`rounds` runs of paired_latency (batch 1, `threads` threads for both, no autograd) on two models as they are:
    the median of the rounds' ratios (each a median of `repeats` paired ratios) and their spread (min, max)."""
    runs = [paired_latency(original, compressed, shape, 1, repeats, threads) for _ in range(rounds)]
    ratios = sorted(run["ratio"] for run in runs)
    return {"original_ms": statistics.median(run["original_ms"] for run in runs),
            "pruned_ms": statistics.median(run["pruned_ms"] for run in runs),
            "ratio": statistics.median(ratios), "ratio_spread": [round(ratios[0], 3), round(ratios[-1], 3)]}


def yolov8n_ratios(keep_ratio: float = 0.5, size: int = 640, repeats: int = 20, threads: int = 1, rounds: int = 5,
                   round_to: int = DETECTOR_ROUND_TO) -> dict:
    """YOLOv8n (untrained, from yolov8n.yaml) at one keep ratio: original / pruned FLOPs, fused CPU latency
    (batch 1, `rounds` rounds of `repeats` paired runs, `threads` threads for both) and ONNX bytes, at `size` px.
    round_to: kept channels rounded to a multiple of it (prune_detector's default for detectors)."""
    torch.manual_seed(0)
    original = yolov8n()
    pruned, _ = pruned_copy(original, keep_ratio, round_to)
    with quiet_ultralytics():
        fused_original, fused_pruned = fuse(copy.deepcopy(original)), fuse(copy.deepcopy(pruned))
    latency = paired_rounds(fused_original, fused_pruned, (3, size, size), repeats, threads, rounds)
    onnx = {"original": onnx_size(original, size), "pruned": onnx_size(pruned, size)}
    flops_ratio = flops(original, size) / flops(pruned, size)
    return {"v8n_keep_ratio": keep_ratio, "v8n_round_to": round_to, "v8n_input": [1, 3, size, size],
            "v8n_threads": threads, "v8n_params_ratio": round(params(original) / params(pruned), 3),
            "v8n_flops_ratio": round(flops_ratio, 3),
            "v8n_latency_ms": {"original": latency["original_ms"], "pruned": latency["pruned_ms"]},
            "v8n_latency_ratio": round(latency["ratio"], 3), "v8n_latency_ratio_spread": latency["ratio_spread"],
            "v8n_latency_share": round(latency["ratio"] / flops_ratio, 3),
            "v8n_latency": f"median of {rounds} rounds of {repeats} paired runs (each round's ratio the median of its "
                           f"pairs), no autograd, batch norm folded on both",
            "v8n_onnx_bytes": onnx, "v8n_onnx_ratio": round(onnx["original"] / onnx["pruned"], 3)}


def round_to_effect(keep_ratios: tuple[float, ...] = (0.3, 0.6), size: int = 640, repeats: int = 15, threads: int = 1,
                    rounds: int = 3) -> dict:
    """Whether rounding kept channels to a multiple of 8 or 16 pays on this CPU: untrained YOLOv8n pruned by L1 at
    each keep ratio unrounded and rounded (both fused), timed against each other in paired rounds. `per_flop_gain`:
    the latency ratio (unrounded / rounded) over the FLOPs ratio (unrounded / rounded); above 1, a rounded model runs
    more FLOPs per second (the choice of steps/channels.DETECTOR_ROUND_TO)."""
    torch.manual_seed(0)
    original = yolov8n()
    out = {}
    for keep in keep_ratios:
        fused = {}
        for round_to in (1, 8, 16):
            pruned, _ = pruned_copy(original, keep, round_to)
            with quiet_ultralytics():
                fused[round_to] = fuse(pruned)
        counted = {round_to: flops(model, size) for round_to, model in fused.items()}
        row = {"flops": counted}
        for round_to in (8, 16):
            latency = paired_rounds(fused[1], fused[round_to], (3, size, size), repeats, threads, rounds)
            flops_ratio = counted[1] / counted[round_to]
            row[f"round_to_{round_to}"] = {"latency_ratio": round(latency["ratio"], 3),
                                          "latency_ratio_spread": latency["ratio_spread"],
                                          "flops_ratio": round(flops_ratio, 3),
                                          "per_flop_gain": round(latency["ratio"] / flops_ratio, 3)}
        out[str(keep)] = row
        print(f"round_to at keep {keep}: " + ", ".join(
            f"{k}: latency x{v['latency_ratio']} for FLOPs x{v['flops_ratio']}" for k, v in row.items()
            if k.startswith("round_to")), file=sys.stderr, flush=True)
    return {"input": [1, 3, size, size], "threads": threads, "versus": "unrounded (round_to 1)", "keep": out}


@torch.no_grad()
def measure(name: str, model: torch.nn.Module, keep_ratio: float, repeats: int, threads: int) -> dict:
    original = model.eval()
    pruned, result = pruned_copy(original, keep_ratio)
    row = {"replaced_c2f": len(result.replaced), "groups_pruned": len(result.layers),
           "params": {"original": params(original), "pruned": params(pruned)}}
    row["params_ratio"] = round(row["params"]["original"] / row["params"]["pruned"], 2)
    for size in SIZES:
        counted = {"original": flops(original, size), "pruned": flops(pruned, size)}
        row[f"flops_{size}"] = {**counted, "ratio": round(counted["original"] / counted["pruned"], 2)}
    onnx = {"original": onnx_size(original, 640), "pruned": onnx_size(pruned, 640)}
    row["onnx_bytes"] = {**onnx, "ratio": round(onnx["original"] / onnx["pruned"], 2)}
    row["latency_320_bn"] = paired_latency(original, pruned, (3, 320, 320), 1, repeats, threads)
    for size in SIZES:
        row[f"latency_{size}_fused"] = fused_latency(original, pruned, size, repeats, threads)
    print(f"{name} keep {keep_ratio}: params x{row['params_ratio']}, FLOPs x{row['flops_640']['ratio']}, latency "
          + ", ".join(f"x{row[key]['ratio']:.2f} ({key[8:]})" for key in ("latency_320_bn", "latency_320_fused",
                                                                          "latency_640_fused")),
          file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-to-effect", action="store_true",
                        help="only measure whether rounding kept channels to 8 or 16 pays (round_to_effect)")
    args = parser.parse_args()
    if args.round_to_effect:
        print(json.dumps(round_to_effect(threads=args.threads)))
        return
    started = time.time()
    torch.manual_seed(0)
    networks = {"demo_detector": load_detector().model, "yolov8n_untrained": yolov8n()}
    out = {name: {str(keep): measure(name, model, keep, args.repeats, args.threads) for keep in KEEP_RATIOS}
           for name, model in networks.items()}
    print(json.dumps({"keep_ratios": list(KEEP_RATIOS), "sizes": list(SIZES), "batch": 1, "threads": args.threads,
                      "latency": "median of paired (interleaved) runs, batch 1; ratio = original / pruned",
                      "load_average": [round(x, 2) for x in os.getloadavg()],
                      "seconds": round(time.time() - started, 1), "networks": out}))


if __name__ == "__main__":
    main()
