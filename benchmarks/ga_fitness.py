"""The GA's two-step approximate fitness (Hu et al. 2018) against full fitness, on the demo VGG-style net.

Two-step: every candidate is screened by the cheap reconstruction error of the next layers' outputs
(`screen_size` images) and only the best `survivors` per generation get the accurate score (top-1 on
`fitness_size` validation images). Full: every candidate gets the accurate score (`survivors=0`).
Same seed, same keep ratios, same population and generations; neither is fine-tuned (BatchNorm is
re-estimated after each layer in both), so the test accuracy measures only how good the chosen channels
are. Reports the search time ratio (full / two-step) and the accuracy difference (two-step minus full,
in points). Prints one JSON object as its last line.

    .venv/bin/python benchmarks/ga_fitness.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab import metrics  # noqa: E402
from complab.data import load_data  # noqa: E402
from complab.methods import channels  # noqa: E402
from complab.methods.context import StepContext  # noqa: E402
from complab.models.handle import load_model  # noqa: E402
from complab.plan import ChannelStep  # noqa: E402

KEEP = {"features.0": 0.6, "features.3": 0.5, "features.7": 0.5, "features.10": 0.45, "features.14": 0.35,
        "features.17": 0.3, "features.21": 0.25}
GA = dict(population=10, generations=5, elite=2, screen_size=64, fitness_size=128, finetune_epochs=0)


def main() -> None:
    torch.set_num_threads(2)
    handle = load_model("demo:vgg_small")
    data = load_data("digits", input_size=32)
    test = data.loader("test")
    rows = {}
    for name, survivors in (("two_step", 2), ("full", 0)):
        work = handle.clone()
        ctx = StepContext(data=data, layers=list(handle.prunable_layers()))
        started = time.time()
        report = channels.run(work.model, ChannelStep(keep_ratio=KEEP, survivors=survivors, **GA), ctx).report
        seconds = time.time() - started
        rows[name] = {"seconds": round(seconds, 1), "accuracy": metrics.accuracy(work.model, test),
                      "search_seconds": round(sum(r["search_seconds"] for r in report["layers"].values()), 2),
                      "screened": sum(r["screened"] for r in report["layers"].values()),
                      "scored": sum(r["scored"] for r in report["layers"].values()),
                      "fitness": {k: round(r["ga_fitness"], 4) for k, r in report["layers"].items()}}
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    l1 = handle.clone()
    channels.run(l1.model, ChannelStep(keep_ratio=KEEP, selection="l1", finetune_epochs=0),
                 StepContext(data=data, layers=list(handle.prunable_layers())))
    summary = {
        "time_ratio": round(rows["full"]["search_seconds"] / rows["two_step"]["search_seconds"], 2),
        "step_time_ratio": round(rows["full"]["seconds"] / rows["two_step"]["seconds"], 2),
        "acc_difference": round(100 * (rows["two_step"]["accuracy"] - rows["full"]["accuracy"]), 3),
        "two_step_accuracy": round(rows["two_step"]["accuracy"], 4),
        "full_accuracy": round(rows["full"]["accuracy"], 4),
        "l1_accuracy": round(metrics.accuracy(l1.model, test), 4),
        "original_accuracy": round(metrics.accuracy(handle.model, test), 4),
        "units": "time_ratio = full / two-step seconds inside the GA (step_time_ratio: the whole channels step, "
                 "with the sensitivity pass and BatchNorm re-estimation both share); acc_difference = two-step minus "
                 "full, test points, no fine-tuning",
        "runs": rows,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
