"""What the Runs page shows, in words (pages/runs.py draws it): the list grouped by sweep, a run's result with
its change from the original, a sweep's heading with its counts. No Streamlit here."""

from __future__ import annotations

from complab.analysis import latency
from complab.intervals import difference, recorded
from complab.ui.numbers import count, interval, latency_change, map_score, percent, points

SHOWN = 30  # entries (a run, or a whole sweep) the page draws
COUNTED = ("succeeded", "running", "queued", "failed", "cancelled", "missing")


def grouped(runs: list[dict], sweeps: list[dict], limit: int = SHOWN) -> list[tuple[str, dict, list[dict]]]:
    """The page's entries, newest first: ("sweep", sweep, its members' rows in target order) for each sweep, and
    ("run", row, []) for each run in no sweep. A sweep's place is its newest member's (or its own creation);
    a run reused by a sweep is shown in it, not again on its own. At most `limit` entries."""
    by_id = {row["id"]: row for row in runs}
    in_sweep: set[str] = set()
    entries: list[tuple[float, int, tuple]] = []
    for sweep in sweeps:
        members = [by_id[m["run"]] for m in sweep.get("members") or [] if m.get("run") in by_id]
        in_sweep.update(row["id"] for row in members)
        when = max([float(row.get("created") or 0) for row in members] + [float(sweep.get("created") or 0)])
        entries.append((when, 1, ("sweep", sweep, members)))
    for row in runs:
        if row["id"] not in in_sweep:
            entries.append((float(row.get("created") or 0), 0, ("run", row, [])))
    entries.sort(key=lambda e: (e[0], e[1]), reverse=True)
    return [entry for _, _, entry in entries[:limit]]


def sweep_heading(sweep: dict) -> str:
    """"sweep 3f2a (ratio 20-40) · my-plan · 5 runs: 2 succeeded, 1 running, 2 queued"."""
    counts = sweep.get("counts") or {}
    members = len(sweep.get("members") or [])
    said = ", ".join(f"{counts[state]} {state}" for state in COUNTED if counts.get(state))
    name = f" · {sweep['name']}" if sweep.get("name") else ""
    return f"{sweep.get('label') or 'sweep'}{name} · {members} run{'s' if members != 1 else ''}" + (
        f": {said}" if said else "")


def change_from_original(metrics: dict, boxes: bool = False) -> dict | None:
    """A finished run's score before and after, in words and colour: {"text": "acc 98.6% -> 97.1%", "change":
    "-1.5 pts", "colour": "red" (worse) | "green" (better) | "gray" (no change, or within the noise of the two
    measurements when their split sizes are known; for a detector, when its two 95% bootstrap intervals of mAP50
    overlap), "noise": "within noise" or "", "interval": the after score's 95% interval on its split ("" when its
    size, or a detector's bootstrap interval, is unknown)}. None without both scores."""
    before, after = (metrics.get("before") or {}), (metrics.get("after") or {})
    try:
        old, new = float(before["accuracy"]), float(after["accuracy"])
    except (KeyError, TypeError, ValueError):
        return None
    name = "mAP50" if boxes else "acc"
    shown = (lambda v: f"{v:.3f}") if boxes else percent
    change = points(new - old)
    n_before, n_after = before.get("images"), after.get("images")
    known = all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (n_before, n_after))
    within = False
    if known and not boxes:
        low, high = difference(old, n_before, new, n_after)  # of before - after
        within = low <= 0.0 <= high
    spans = tuple(recorded(side.get("map50_interval")) if boxes else None for side in (before, after))
    if spans[0] and spans[1]:  # a detector's two 95% bootstrap intervals: overlapping is noise (conservative)
        within = max(spans[0][0], spans[1][0]) <= min(spans[0][1], spans[1][1])
    colour = "gray" if change == "no change" or within else ("green" if new > old else "red")
    span = ""
    if known and not boxes:
        span = f"95% CI {interval(new, n_after)} on {count(n_after)} images"
    elif spans[1]:
        span = f"mAP50 {map_score(new, spans[1], n_after if known else None)}"
    return {"text": f"{name} {shown(old)} -> {shown(new)}", "change": change, "colour": colour,
            "noise": "within noise" if within and change != "no change" else "", "interval": span}


def latency_summary(metrics: dict) -> str | None:
    """A finished run's ONNX Runtime latency before -> after for its summary: "ONNX Runtime 8.00 -> 4.20 ms (1.9x
    faster)"; why there is none when the run tried and could not ("ONNX Runtime: not measured (onnxruntime is not
    installed)"); None for a run from before it was measured (the Compare page says so) or with latency off."""
    said = latency.figures(metrics)
    if said["reason"] is None:
        return f"ONNX Runtime {latency_change(said['ort_before'], said['ort_after'])}"
    if said["ort"]["error"]:
        return f"ONNX Runtime: not measured ({said['ort']['error'][:120]})"
    return None


def latency_help(metrics: dict) -> str | None:
    """How the run's latencies were measured, for the summary's help: PyTorch's and ONNX Runtime's with its version,
    threads and the CPU's int8 instruction set; None when neither was measured."""
    said = latency.figures(metrics)
    parts = []
    if said["torch_after"]:
        parts.append(f"PyTorch eager {latency_change(said['torch_before'], said['torch_after'])}")
    if said["reason"] is None:
        parts.append(f"{latency.ort_setting(said['ort'])}, batch 1, paired alternating runs")
    return "; ".join(parts) or None
