"""How well the Plan page's predicted accuracy matches the measured one: 6 plans on the demo classifiers.

For LeNet-300-100 and LeNet-5 on the digits: the sensitivity analysis (exact mode, default grid), then
three plans from the target solver (30x and 50x file ratio, a 5-point accuracy budget: targets the
prediction's prior was NOT fitted on; that used 20/40/60x and 1/3/10 points), each run through the
pipeline with the plan page's default fine-tuning. Per run: the predicted drop (compression/complab/analysis/predict.py,
the prior calibration, as a first-time user sees it), the raw additive drop (no fine-tuning), and the
drop predicted with the calibration refitted on the other five runs (leave-one-out: what a user with a
history of runs on these models sees). Measured: accuracy before and after on the test split, the
model decoded from the file.

    .venv/bin/python benchmarks/predicted_accuracy.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab import sources  # noqa: E402
from complab.analysis.estimate import model_stats  # noqa: E402
from complab.analysis.predict import predict  # noqa: E402
from complab.analysis.sensitivity import SensitivityConfig, analyze  # noqa: E402
from complab.analysis.solver import grids_from_report, solve  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.ui.plan_form import plan_from_settings  # noqa: E402

TARGETS = (("compressed_bytes", 30.0), ("compressed_bytes", 50.0), ("accuracy_drop", 0.05))


def main() -> None:
    torch.set_num_threads(2)
    started = time.time()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("lenet300", "lenet5"):
            handle, data = sources.load({"model": f"demo:{name}", "data": "digits"})
            report = analyze(handle, data, SensitivityConfig()).to_dict()
            stats, grids = model_stats(handle), grids_from_report(report)
            for kind, value in TARGETS:
                target = stats.fp32_bytes / value if kind == "compressed_bytes" else value
                settings = solve(stats, grids, kind, target)["settings"]
                prediction = predict(report, settings)
                plan = plan_from_settings(settings, f"{name}-{kind}-{value}")
                metrics = compress(handle, plan, data, Path(tmp) / f"{name}-{kind}-{value}", latency=False).metrics
                measured = 100 * (metrics["before"]["accuracy"] - metrics["after"]["accuracy"])
                runs.append({"model": name, "target": f"{kind}:{value}",
                             "ratio": round(metrics["compression_ratio"], 1),
                             "settings": {k: list(v) for k, v in settings.items()}, "report": report,
                             "measured_pts": measured, "predicted_pts": 100 * prediction["drop"],
                             "low_pts": 100 * prediction["low"], "high_pts": 100 * prediction["high"],
                             "raw_pts": 100 * prediction["raw_drop"]})
                print(f"{name} {kind}:{value}: ratio {metrics['compression_ratio']:.1f}x, predicted "
                      f"{100 * prediction['drop']:.2f} pts (raw {100 * prediction['raw_drop']:.2f}), measured "
                      f"{measured:.2f} pts", file=sys.stderr)
    for i, run in enumerate(runs):  # leave-one-out: the calibration refitted on the other runs
        history = [(other["raw_pts"], other["measured_pts"]) for j, other in enumerate(runs) if j != i]
        loo = predict(run["report"], {k: tuple(v) for k, v in run["settings"].items()}, history=history)
        run["loo_pts"] = 100 * loo["drop"]
    measured = np.array([r["measured_pts"] for r in runs])

    def mae(key: str) -> float:
        return round(float(np.abs(measured - np.array([r[key] for r in runs])).mean()), 3)

    inside = np.mean([r["low_pts"] <= r["measured_pts"] <= r["high_pts"] for r in runs])
    print(json.dumps({
        "prediction_mae_pts": mae("predicted_pts"),
        "raw_additive_mae_pts": mae("raw_pts"),
        "leave_one_out_mae_pts": mae("loo_pts"),
        "within_range": round(float(inside), 3),
        "runs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k not in ("report",)}
                 for r in runs],
        "baseline": "raw additive drop of the layers measured alone (no fine-tuning)",
        "seconds": round(time.time() - started, 1),
    }))


if __name__ == "__main__":
    main()
