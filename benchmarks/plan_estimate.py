"""How fast and how right is the plan page's live size estimate?

- `lenet5_estimate_ms`, `resnet50_estimate_ms`: median time of one estimate after a slider change
  (the per-model statistics are computed once, as the page caches them), on LeNet-5 and on a
  torchvision ResNet-50 structure with random weights. Target for ResNet-50: <= 100 ms.
- `estimate_vs_file_error`: the largest relative difference between the estimated and the real
  compressed bytes (the file written by a real run, after fine-tuning) over a set of demo runs.
  Target: <= 0.05.
Prints one JSON object as its last line.

    .venv/bin/python benchmarks/plan_estimate.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab.analysis.estimate import estimate, model_stats  # noqa: E402
from complab.data import load_data  # noqa: E402
from complab.models.handle import ModelHandle, load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import ClusterStep, Plan, PruneStep  # noqa: E402

# (model, sparsity, clusters or None) — a spread of the settings a user drags to
DEMO_RUNS = [
    ("lenet300", 0.9, 16), ("lenet300", 0.95, 32), ("lenet300", 0.8, 8), ("lenet300", 0.9, None),
    ("lenet300", 0.0, 16), ("lenet5", 0.9, 16), ("lenet5", 0.95, 64), ("lenet5", 0.7, 4),
]


def time_estimates(stats, layers: list[str], repeats: int = 30) -> float:
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats):
        settings = {name: (float(rng.choice([0.0, 0.5, 0.8, 0.9, 0.95])), int(rng.choice([4, 16, 32, 256])))
                    for name in layers}
        start = time.perf_counter()
        estimate(stats, settings)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(2)
    lenet5 = load_model("demo:lenet5")
    stats5 = model_stats(lenet5)
    lenet5_ms = time_estimates(stats5, list(stats5.layers))

    import torchvision

    resnet = torchvision.models.resnet50(weights=None).eval()
    handle = ModelHandle(resnet, {"kind": "torchvision", "arch": "resnet50", "kwargs": {}}, (3, 224, 224), 1000,
                         "resnet50 (random weights)")
    start = time.perf_counter()
    stats50 = model_stats(handle)
    resnet_stats_s = time.perf_counter() - start
    resnet_ms = time_estimates(stats50, list(stats50.layers), repeats=10)

    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, sparsity, clusters) in enumerate(DEMO_RUNS):
            handle = load_model(f"demo:{name}")
            data = load_data("digits", input_size=handle.input_shape[-1])
            steps = []
            if sparsity > 0:
                steps.append(PruneStep(sparsity={"_default": sparsity}, iterations=1, finetune_epochs=1))
            if clusters:
                steps.append(ClusterStep(n_clusters={"_default": clusters}, finetune_epochs=1))
            plan = Plan(steps=tuple(steps), name=f"{name}-{sparsity}-{clusters}")
            stats = stats5 if name == "lenet5" else model_stats(handle)
            predicted = estimate(stats, {layer: (sparsity, clusters) for layer in stats.layers})["compressed_bytes"]
            result = compress(handle, plan, data, Path(tmp) / str(index), latency=False)
            real = result.metrics["after"]["compressed_bytes"]
            errors.append({"run": plan.name, "estimated": predicted, "real": real,
                           "relative_error": (predicted - real) / real})
            print(f"{plan.name:24} estimated {predicted:>8,}  real {real:>8,}  {100 * (predicted - real) / real:+.1f}%",
                  file=sys.stderr)
    print(json.dumps({
        "lenet5_estimate_ms": round(lenet5_ms, 3),
        "resnet50_estimate_ms": round(resnet_ms, 2),
        "resnet50_stats_seconds": round(resnet_stats_s, 2),
        "estimate_vs_file_error": round(max(abs(e["relative_error"]) for e in errors), 4),
        "runs": errors,
    }))


if __name__ == "__main__":
    main()
