"""Channel pruning of YOLO detectors (C2f made prunable, L1, keep ratio 0.5): parameters, FLOPs and CPU latency.

For the demo detector (trained, assets/detector.pt) and an untrained YOLOv8n built from Ultralytics' own
yaml (nothing downloaded), every channel group except the Detect head's prediction outputs keeps half its
channels by L1 norm (methods/channels/detector.prune_detector). Latency is the median of paired runs
(original and pruned alternate, so load on the machine hits both alike: channel_pruning_table.paired_latency)
at 320 px, batch 1, the same thread count for both, on the models as trained (batch norm) and fused (batch
norm folded, what Ultralytics runs at inference). No fine-tuning: this measures speed, not accuracy.
Prints one JSON object as its last line.

    .venv/bin/python benchmarks/detector_channels.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from channel_pruning_table import paired_latency  # noqa: E402

from compression import metrics  # noqa: E402
from compression.methods.channels.detector import prune_detector  # noqa: E402
from compression.models.detector import fuse, load_detector  # noqa: E402
from compression.models.yolo_env import offline_ultralytics, quiet_ultralytics  # noqa: E402

SHAPE = (3, 320, 320)
KEEP_RATIO = 0.5


def yolov8n(nc: int = 80) -> torch.nn.Module:
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet_ultralytics():
        return DetectionModel("yolov8n.yaml", nc=nc, verbose=False).float().eval()


def measure(name: str, model: torch.nn.Module, repeats: int, threads: int) -> dict:
    original = model.eval()
    pruned = copy.deepcopy(original)
    result = prune_detector(pruned, KEEP_RATIO, SHAPE)
    row = {"replaced_c2f": len(result.replaced), "groups_pruned": len(result.layers),
           "params": {"original": sum(p.numel() for p in original.parameters()),
                      "pruned": sum(p.numel() for p in pruned.parameters())}}
    try:
        row["flops"] = {"original": metrics.flops(original, SHAPE)["flops"],
                        "pruned": metrics.flops(pruned, SHAPE)["flops"]}
    except Exception as exc:  # noqa: BLE001 - FLOPs are a side figure here; the latency is the point
        row["flops"] = f"not counted ({type(exc).__name__})"
    row["params_ratio"] = round(row["params"]["original"] / row["params"]["pruned"], 2)
    row["latency_bn"] = paired_latency(original, pruned, SHAPE, 1, repeats, threads)
    with quiet_ultralytics():
        fused_original, fused_pruned = fuse(copy.deepcopy(original)), fuse(copy.deepcopy(pruned))
    row["latency_fused"] = paired_latency(fused_original, fused_pruned, SHAPE, 1, repeats, threads)
    print(f"{name}: params x{row['params_ratio']}, latency x{row['latency_bn']['ratio']:.2f} (bn), "
          f"x{row['latency_fused']['ratio']:.2f} (fused)", file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(0)
    out = {"demo_detector": measure("demo detector", load_detector().model, args.repeats, args.threads),
           "yolov8n_untrained": measure("yolov8n", yolov8n(), args.repeats, args.threads)}
    print(json.dumps({"keep_ratio": KEEP_RATIO, "input": [1, *SHAPE], "threads": args.threads,
                      "latency": "median of paired (interleaved) runs, batch 1; ratio = original / pruned",
                      "load_average": [round(x, 2) for x in os.getloadavg()],
                      "seconds": round(time.time() - started, 1), "networks": out}))


if __name__ == "__main__":
    main()
