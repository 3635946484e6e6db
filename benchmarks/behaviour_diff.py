"""The behaviour diff (issue 28) on the demo models: original against compressed, both read from compact files.

Per model: the original saved as a compact file (fp32, our format) and the quick recipe (assets/recipes/quick.json:
90% pruned, 16 shared values, 3 + 1 fine-tuning epochs) run with `complab run` into
benchmarks/.cache-behaviour_diff/ (kept between runs of this script; --fresh reruns them); for the demo detector
a fast recipe written here (50% pruned, batch norm folded, 16 shared values, no fine-tuning: the shipped
detector.json fine-tunes 10 epochs, ~4 minutes here) on its shapes data. Then `analysis.behaviour.diff_files`
on the two files, cache off, timed whole (decoding both files, loading the split, both passes, the trace).

Prints per model: agreement, flips_right_to_wrong, flips_wrong_to_right, ece_before, ece_after, diff_seconds (the
whole diff from two files, no cache, in a process that has made one diff before: what the app and a second CLI
call pay), cold_seconds (that first diff, imports included), cached_seconds (the same diff read back from its
cache; it still decodes both files to find its key) and flips_consistent:
the flip counts equal (accuracy_after - accuracy_before) x images, AND each accuracy equals what `complab eval FILE`
prints for that file. Last line: one JSON object with those keys prefixed per model (`lenet5_agreement`, ...),
the LeNet-5's unprefixed, `diff_seconds` the slowest classifier's and `flips_consistent` all classifiers'.

    .venv/bin/python benchmarks/behaviour_diff.py [--fresh] [--skip-detector]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))
CACHE = ROOT / "benchmarks" / ".cache-behaviour_diff"
QUICK = ROOT / "assets" / "recipes" / "quick.json"
FAST_DETECTOR = {"schema_version": 1, "name": "detector-fast-behaviour", "seed": 0, "eval_split": "val",
                 "steps": [{"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 0},
                           {"type": "fold_bn"},
                           {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 0}]}
CLASSIFIERS = ("lenet5", "vgg_small")
KEYS = ("agreement", "flips_right_to_wrong", "flips_wrong_to_right", "ece_before", "ece_after", "diff_seconds",
        "cold_seconds", "cached_seconds", "flips_consistent")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "compression")}
    done = subprocess.run([sys.executable, "-m", "complab.cli", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"complab {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def compressed_run(model: str, data: str, recipe_text: str, fresh: bool) -> Path:
    """The run folder of `recipe_text` on `model`, from the cache unless --fresh."""
    key = hashlib.sha256(f"{model}\0{data}\0{recipe_text}".encode()).hexdigest()[:16]
    folder = CACHE / f"{model.replace(':', '_')}-{key}"
    if not fresh and (folder / "model.clab").is_file() and (folder / "metrics.json").is_file():
        log(f"{model}: reusing the run in {folder.relative_to(ROOT)}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        recipe = Path(scratch) / "recipe.json"
        recipe.write_text(recipe_text)
        started = time.time()
        _cli("run", str(recipe), "--model", model, "--data", data, "--out", str(folder), "--no-latency", "--force")
    log(f"{model}: recipe run in {time.time() - started:.0f} s")
    return folder


def original_file(model: str, data: str, folder: Path) -> Path:
    """The original model as a compact file (fp32), beside the run: both sides of the diff are files."""
    from complab import sources

    path = folder / "original.clab"
    if not path.is_file():
        handle = sources.load_model(sources.check({"model": model, "data": data}))
        handle.save(path, {"data": data})
    return path


def evaluated(path: Path) -> float:
    return float(json.loads(_cli("eval", str(path)).strip().splitlines()[-1])["accuracy"])


def classifier_row(name: str, fresh: bool) -> dict:
    from complab.analysis.behaviour import diff_files

    model = f"demo:{name}"
    folder = compressed_run(model, "digits", QUICK.read_text(), fresh)
    original = original_file(model, "digits", folder)
    compressed = folder / "model.clab"
    started = time.perf_counter()
    diff_files(original, compressed)  # the first in this process: its imports and first passes included
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    diff = diff_files(original, compressed)  # no cache: the whole diff from two files, as a warm app computes it
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as cache:
        diff_files(original, compressed, cache_dir=cache)
        started = time.perf_counter()
        again = diff_files(original, compressed, cache_dir=cache)
        cached_seconds = time.perf_counter() - started
    flips, n = diff["flips"], diff["n"]
    eval_before, eval_after = evaluated(original), evaluated(compressed)
    counted = flips["wrong_to_right"] - flips["right_to_wrong"]
    consistent = (counted == round((diff["accuracy_b"] - diff["accuracy_a"]) * n)
                  and diff["accuracy_a"] == eval_before and diff["accuracy_b"] == eval_after
                  and again["flips"] == flips)
    row = {"agreement": diff["agreement"], "flips_right_to_wrong": flips["right_to_wrong"],
           "flips_wrong_to_right": flips["wrong_to_right"], "ece_before": diff["calibration"]["ece_a"],
           "ece_after": diff["calibration"]["ece_b"], "diff_seconds": round(seconds, 3),
           "cold_seconds": round(cold_seconds, 3),
           "cached_seconds": round(cached_seconds, 4), "flips_consistent": bool(consistent)}
    noisy = [row_["name"] for row_ in diff["per_class"] if not row_["within_noise"]]
    top = diff["trace"]["layers"][:1]
    log(f"{name}: {n} test images, accuracy {diff['accuracy_a']:.4f} -> {diff['accuracy_b']:.4f} (complab eval "
        f"{eval_before:.4f} -> {eval_after:.4f}), net interval {flips['net_ci']}, classes beyond noise {noisy}, "
        f"trace {diff['trace']['method']} {top}")
    print(f"{name}: " + ", ".join(f"{key} {row[key]}" for key in KEYS), flush=True)
    return row


def detector_row(fresh: bool) -> dict:
    from complab.analysis.behaviour import diff_files

    folder = compressed_run("detector:demo", "shapes", json.dumps(FAST_DETECTOR), fresh)
    original = original_file("detector:demo", "shapes", folder)
    started = time.perf_counter()
    diff = diff_files(original, folder / "model.clab")  # the first detector diff in this process (cold)
    seconds = time.perf_counter() - started
    changed = sum(image["change"] > 0 for image in diff["images"])
    row = {"map50_before": diff["map50_a"], "map50_after": diff["map50_b"], "map50_95_before": diff["map50_95_a"],
           "map50_95_after": diff["map50_95_b"], "images_changed": changed, "images_ranked": len(diff["images"]),
           "diff_seconds": round(seconds, 3)}
    print("detector: " + ", ".join(f"{key} {value}" for key, value in row.items()), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="rerun the recipes instead of reusing the cached runs")
    parser.add_argument("--skip-detector", action="store_true")
    args = parser.parse_args()
    started = time.time()
    rows = {name: classifier_row(name, args.fresh) for name in CLASSIFIERS}
    result = {f"{name}_{key}": value for name, row in rows.items() for key, value in row.items()}
    result.update({key: rows["lenet5"][key] for key in KEYS})  # the LeNet-5's, unprefixed
    result["diff_seconds"] = max(row["diff_seconds"] for row in rows.values())
    result["flips_consistent"] = all(row["flips_consistent"] for row in rows.values())
    if not args.skip_detector:
        result.update({f"detector_{key}": value for key, value in detector_row(args.fresh).items()})
    result["detector_recipe"] = None if args.skip_detector else FAST_DETECTOR["name"]
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
