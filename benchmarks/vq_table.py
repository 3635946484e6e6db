"""Gong et al.'s comparison, reproduced in shape on the demo LeNet-300-100: ratio vs accuracy per quantizer.

For each of the paper's quantizers and a sweep of its parameters, one real compression run
(`complab.pipeline.compress`: quantize every layer, fine-tune the codebooks, write the compact
file, decode it, measure test accuracy on the decoded model) of demo:lenet300 on the built-in
digits data (28x28). The ratio is the whole model's fp32 bytes over the compact file's bytes (biases,
meta and headers included); `formula_ratio` is the same with each quantized layer counted by the
paper's formula (codes log2 k bits, 32-bit codebooks) instead of its bytes in the file.

Sweeps (every layer gets the method; where a layer is too small for a setting, k drops to the
largest power of two it has vectors for and s to its vector length, as the CSV's notes say):
- binary (one configuration);
- scalar k-means, k = 2, 4, 8, 16, 32 (codes ANS-coded in the file where that is smaller);
- PQ along axis "out" (vectors = columns: LeNet's layers have fewer outputs than inputs, so that
  axis gives more, shorter vectors), s = 4, 8, 12, 16 x k = 8, 16, 32, and along the paper's axis "in"
  for s = 4, 8 x k = 16;
- RQ along axis "out", t = 2, 4, 8 stages of k = 16.
Every run fine-tunes the codebooks for --epochs epochs (default 16, lr 1e-3). Each configuration runs
with --seeds plan seeds (default 3: k-means initialisation and fine-tuning order); the table holds the
mean ratio and mean accuracy over them (the test split has 360 images: one image is 0.28 points, so
single runs of close configurations differ by noise).

Writes test-output/vq_table.csv and vq_table.html (plotly: accuracy vs ratio, one series per
method) or to --out. Prints one JSON object as its last line: `best_ratio_at_1pt_loss` (highest file
ratio whose mean accuracy drop <= 1.0 point; target >= 24), `best_config`, `pq_beats_kmeans` (for every
k-means configuration, the best PQ configuration with at least its file ratio is at least as accurate;
`pq_beats_kmeans_at` counts them), `pq_beats_kmeans_formula` (the same with the paper's formula
ratios, which do not credit our entropy coding of k-means indices), `base_accuracy`, `runs`, `seconds`.

    .venv/bin/python benchmarks/vq_table.py [--out DIR] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compression"))

from complab.data import load_data  # noqa: E402
from complab.models.handle import load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import Plan  # noqa: E402


def sweep() -> list[tuple[str, dict]]:
    configs = [("binary", {"quantizer": "binary"})]
    configs += [(f"kmeans k={k}", {"quantizer": "kmeans", "n_codewords": k}) for k in (2, 4, 8, 16, 32)]
    configs += [(f"pq out s={s} k={k}", {"quantizer": "pq", "n_codewords": k, "segment_length": s, "axis": "out"})
                for s in (4, 8, 12, 16) for k in (8, 16, 32)]
    configs += [(f"pq in s={s} k={k}", {"quantizer": "pq", "n_codewords": k, "segment_length": s, "axis": "in"})
                for s in (4, 8) for k in (16,)]
    configs += [(f"rq out t={t} k=16", {"quantizer": "rq", "n_codewords": 16, "stages": t, "axis": "out"})
                for t in (2, 4, 8)]
    return configs


def per_layer(settings: dict, shapes: dict[str, tuple[int, ...]]) -> tuple[dict, list[str]]:
    """The step's per-layer maps, with k and s clamped where a layer is too small (and notes saying so)."""
    maps = {"quantizer": {}, "n_codewords": {}, "segment_length": {}, "stages": {}, "axis": {}}
    notes = []
    for layer, shape in shapes.items():
        out, fan_in = shape[0], int(torch.tensor(shape[1:]).prod())
        vectors, dim = (out, fan_in) if settings.get("axis", "in") == "in" else (fan_in, out)
        k = settings.get("n_codewords", 2)
        if settings["quantizer"] in ("pq", "rq") and k > vectors:
            k = 1 << (vectors.bit_length() - 1)
            notes.append(f"{layer} k={k}")
        s = settings.get("segment_length", 4)
        if settings["quantizer"] == "pq" and s > dim:
            s = dim
            notes.append(f"{layer} s={s}")
        maps["quantizer"][layer] = settings["quantizer"]
        maps["n_codewords"][layer] = k
        maps["segment_length"][layer] = s
        maps["stages"][layer] = settings.get("stages", 2)
        maps["axis"][layer] = settings.get("axis", "in")
    return maps, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("test-output"))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.time()
    handle = load_model("demo:lenet300")
    data = load_data("digits", input_size=28)
    shapes = {name: tuple(w.shape) for name, w in handle.prunable_layers().items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, settings) in enumerate(sweep()):
            maps, notes = per_layer(settings, shapes)
            runs = []
            for seed in range(args.seeds):
                plan = Plan.from_dict({"schema_version": 1, "name": name, "seed": seed, "steps": [
                    {"type": "quantize", **maps, "finetune_epochs": args.epochs, "lr": args.lr}]})
                result = compress(handle, plan, data, Path(tmp) / f"{index}-{seed}", latency=False).metrics
                file_bytes = result["after"]["compressed_bytes"]
                formula_bytes = file_bytes + sum(row["formula_bits"] / 8 - row["bytes_total"]
                                                 for row in result["layers"] if row.get("formula_bits"))
                runs.append({"ratio": result["compression_ratio"],
                             "formula_ratio": result["before"]["fp32_bytes"] / formula_bytes,
                             "accuracy": result["after"]["accuracy"], "drop": 100 * result["accuracy_drop"],
                             "bytes": file_bytes})
            accuracies = [run["accuracy"] for run in runs]
            rows.append({"config": name, "method": settings["quantizer"] + (
                f" ({settings['axis']})" if settings["quantizer"] == "pq" else ""),
                "quantizer": settings["quantizer"], "ratio": sum(run["ratio"] for run in runs) / len(runs),
                "formula_ratio": sum(run["formula_ratio"] for run in runs) / len(runs),
                "accuracy": sum(accuracies) / len(runs), "accuracy_min": min(accuracies),
                "accuracy_max": max(accuracies),
                "accuracy_drop_pts": sum(run["drop"] for run in runs) / len(runs),
                "compressed_bytes": sum(run["bytes"] for run in runs) / len(runs), "seeds": len(runs),
                "notes": "; ".join(notes)})
            row = rows[-1]
            print(f"{name:22} {row['ratio']:6.1f}x (formula {row['formula_ratio']:5.1f}x) "
                  f"accuracy {100 * row['accuracy']:.2f}% (drop {row['accuracy_drop_pts']:+.2f})", flush=True)
            base = result["before"]["accuracy"]
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "vq_table.csv", index=False)
    fig = go.Figure()
    for method, group in table.groupby("method"):
        group = group.sort_values("ratio")
        fig.add_trace(go.Scatter(x=group["ratio"], y=100 * group["accuracy"], mode="lines+markers", name=method,
                                 text=group["config"], hovertemplate="%{text}<br>%{x:.1f}x<br>%{y:.2f}%"))
    fig.add_hline(y=100 * base, line_dash="dot", annotation_text="original")
    fig.add_hline(y=100 * base - 1.0, line_dash="dash", annotation_text="1 point loss")
    fig.update_layout(title="Gong et al.'s quantizers on LeNet-300-100 (digits), whole-model ratio of the file",
                      xaxis_title="compression ratio (fp32 bytes / file bytes)", yaxis_title="test accuracy (%)")
    fig.update_xaxes(type="log")
    fig.write_html(args.out / "vq_table.html")
    within = table[table["accuracy_drop_pts"] <= 1.0 + 1e-9]
    best = within.loc[within["ratio"].idxmax()] if not within.empty else None
    pq = table[table["quantizer"] == "pq"]
    kmeans = table[table["quantizer"] == "kmeans"]

    def compare(ratio: str) -> list[bool]:
        out = []
        for _, row in kmeans.iterrows():
            rivals = pq[pq[ratio] >= row[ratio]]
            if not rivals.empty:
                out.append(bool(rivals["accuracy"].max() >= row["accuracy"] - 1e-9))
        return out

    comparisons, formula_comparisons = compare("ratio"), compare("formula_ratio")
    print(json.dumps({
        "best_ratio_at_1pt_loss": round(float(best["ratio"]), 2) if best is not None else None,
        "best_config": None if best is None else best["config"],
        "best_drop_pts": None if best is None else round(float(best["accuracy_drop_pts"]), 2),
        "pq_beats_kmeans": bool(comparisons) and all(comparisons),
        "pq_beats_kmeans_at": f"{sum(comparisons)} of {len(comparisons)} k-means ratios",
        "pq_beats_kmeans_formula": bool(formula_comparisons) and all(formula_comparisons),
        "pq_beats_kmeans_formula_at": f"{sum(formula_comparisons)} of {len(formula_comparisons)} k-means ratios",
        "base_accuracy": round(base, 4), "runs": len(rows) * args.seeds, "configs": len(rows),
        "seeds": args.seeds, "epochs": args.epochs,
        "csv": str(args.out / "vq_table.csv"), "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
