"""Pareto fronts over runs: which runs no other run beats on both accuracy and cost (bytes, FLOPs, latency)."""

from __future__ import annotations

import pandas as pd

from complab.intervals import noise_floor


def pareto_mask(costs: list[float], accuracies: list[float]) -> list[bool]:
    """True for each point not dominated (another point with cost <= and accuracy >=, one strictly)."""
    points = list(zip(costs, accuracies, strict=True))
    mask = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(
            (c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i
        )
        mask.append(not dominated)
    return mask


def method_family(step_types: list[str]) -> str:
    """The Pareto series a run belongs to, from its plan's steps: vq (Gong et al.'s quantizers, with or
    without pruning), channels (Hu et al.'s channel pruning), prune+cluster (Deep Compression / the
    dynamical-clustering paper)."""
    if "quantize" in step_types:
        return "vq"
    if "channels" in step_types:
        return "channels"
    if "prune" in step_types or "cluster" in step_types:
        return "prune+cluster"
    return "+".join(step_types) if step_types else "none"


def _points(fraction) -> float | None:
    return None if fraction is None else 100 * float(fraction)


def prediction_error(table: pd.DataFrame) -> dict | None:
    """How far the predicted accuracy drops were from the measured ones (points), over the runs that carried one."""
    if table.empty or "predicted_drop_pts" not in table:
        return None
    rows = table.dropna(subset=["predicted_drop_pts"])
    if rows.empty:
        return None
    error = rows["accuracy_drop_pts"] - rows["predicted_drop_pts"]
    inside = ((rows["accuracy_drop_pts"] >= rows["predicted_low_pts"])
              & (rows["accuracy_drop_pts"] <= rows["predicted_high_pts"]))
    return {"runs": len(rows), "mae_pts": float(error.abs().mean()), "bias_pts": float(error.mean()),
            "within_range": float(inside.mean())}


def sweep_labels(sweeps: list[dict] | None) -> dict[str, str]:
    """{run id: the labels of the sweeps it belongs to, comma-separated} (a reused run can be in several)."""
    out: dict[str, list[str]] = {}
    for sweep in sweeps or []:
        for member in sweep.get("members") or []:
            labels = out.setdefault(member["run"], [])
            if sweep["label"] not in labels:
                labels.append(sweep["label"])
    return {run: ", ".join(labels) for run, labels in out.items()}


def sweep_curve(table: pd.DataFrame, sweep: dict, cost: str = "compressed_bytes") -> pd.DataFrame:
    """The rows of a sweep's finished members (each run once), sorted by `cost`: the sweep's curve so far."""
    if table.empty:
        return table
    runs = list(dict.fromkeys(member["run"] for member in sweep.get("members") or []))
    targets = {}
    for member in sweep.get("members") or []:
        targets.setdefault(member["run"], member["target"])
    rows = table[table["run"].isin(runs)].dropna(subset=[cost]).copy()
    rows["target"] = rows["run"].map(targets)
    return rows.sort_values(cost)


def runs_table(runs: list[dict], sweeps: list[dict] | None = None) -> pd.DataFrame:
    """One row per succeeded compression run with the measured figures the compare page plots (and the sweeps
    each belongs to, when `sweeps` (engine.list_sweeps()) is given)."""
    in_sweeps = sweep_labels(sweeps)
    rows = []
    for run in runs:
        m = run.get("metrics") or {}
        if run.get("state") != "succeeded" or "after" not in m:
            continue
        after, before = m["after"], m["before"]
        steps = m.get("steps", {})
        family = method_family(list(steps))
        predicted = (run.get("job") or {}).get("predicted") or {}
        rows.append({
            "run": run["id"],
            "model": m.get("model", run.get("model")),
            "task": m.get("task", "classify"),
            "plan": m.get("plan_name", ""),
            "method": family,
            "steps": "+".join(steps) if steps else "none",
            "accuracy": after["accuracy"],
            "accuracy_before": before["accuracy"],
            # images of the split each score was measured on (None for runs from before it was recorded)
            "images": after.get("images"),
            "images_before": before.get("images"),
            "accuracy_drop_pts": 100 * (before["accuracy"] - after["accuracy"]),
            "compressed_bytes": after["compressed_bytes"],
            "fp32_bytes": before["fp32_bytes"],
            "ratio": m.get("compression_ratio"),
            "sparse_flops": after.get("sparse_flops"),
            "flops": after.get("flops"),
            "latency_ms": after.get("latency_ms"),
            "weights_kept_pct": 100 * m.get("weights_kept", 1.0),
            # the plan page's prediction at launch (None for runs launched without one, e.g. from the CLI)
            "predicted_drop_pts": _points(predicted.get("drop")),
            "predicted_low_pts": _points(predicted.get("low")),
            "predicted_high_pts": _points(predicted.get("high")),
            "sweep": in_sweeps.get(run["id"], ""),
        })
    return pd.DataFrame(rows)


def best_run(table: pd.DataFrame, cost: str = "compressed_bytes") -> dict | None:
    """The run Compare opens on (its headline, downloads, report button and presentation view): a run on the
    accuracy-vs-`cost` Pareto front, never a dominated one, and of the front the smallest file whose accuracy is
    within noise of the most accurate front run's.

    Why not simply the most accurate run: on a sweep it is usually the least compressed, and a bigger file that
    scores higher by less than the split can resolve has bought nothing measurable. Runs of one model are scored
    on the same split, so the tolerance is the noise floor of the best accuracy on that split's n images
    (complab.intervals.noise_floor: the half width of its 95% interval, never under one image). Where n is not
    recorded (runs from before metrics.json carried it) or the score is not an accuracy (a detector's mAP has no
    Wilson interval), nothing can be called within noise: the most accurate front run is chosen (the smaller file
    on a tie).

    `table` holds one model's rows (runs_table). Returns None for an empty table, else {"run", "accuracy",
    "best_run", "best_accuracy", "tolerance" (fraction, 0 when not judged), "images" (n or None), "front" (the
    front's run ids, smallest file first), "runs" (how many rows were weighed)}."""
    if table.empty:
        return None
    rows = table.dropna(subset=[cost, "accuracy"])
    if rows.empty:
        return None
    rows = rows[pareto_mask(list(rows[cost]), list(rows["accuracy"]))].sort_values([cost, "accuracy"],
                                                                                  ascending=[True, False])
    top = rows.sort_values(["accuracy", cost], ascending=[False, True]).iloc[0]
    images = _count(top.get("images"))
    scored_as_accuracy = str(top.get("task", "classify")) == "classify"
    tolerance = noise_floor(float(top["accuracy"]), images) if images and scored_as_accuracy else 0.0
    chosen = rows[rows["accuracy"] >= float(top["accuracy"]) - tolerance - 1e-12].iloc[0]
    return {"run": str(chosen["run"]), "accuracy": float(chosen["accuracy"]), "best_run": str(top["run"]),
            "best_accuracy": float(top["accuracy"]), "tolerance": float(tolerance),
            "images": images if tolerance else None, "front": [str(run) for run in rows["run"]], "runs": len(table)}


def _count(value) -> int | None:
    """A recorded image count, or None (absent, NaN in a table of old and new runs, or not a positive number)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
