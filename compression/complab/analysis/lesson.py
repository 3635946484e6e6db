"""The classroom lesson: Deep Compression on LeNet-300-100, step by step: each step's plan and what its run measured.

Five steps on the demo LeNet-300-100 and the digits (Han, Mao & Dally, "Deep Compression", ICLR 2016; pruning
from Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NeurIPS 2015):

    1 weights   the original model: its weights' histogram and its measured accuracy (no run)
    2 prune     a run of the plan [prune]: the smallest weights set to zero, fine-tuned with the zeros held
    3 share     a run of the plan [prune, cluster]: the same pruning, then k shared values per layer
    4 code      step 3's file, part by part: positions and indices entropy coded (report.bytes_waterfall)
    5 decode    step 3's file read back by our decoder, classifying test digits

Every number the lesson's text says is read from a run's metrics.json, its compact file or the decoded model:
the functions here turn those into the few plain sentences the page shows. With $COMPRESSION_LAB_LESSON_FAST=1
the runs fine-tune almost nothing (FAST: for tests); the real lesson uses LESSON.
"""

from __future__ import annotations

import base64
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from complab import metrics
from complab.analysis.report import Waterfall, bytes_waterfall, params_removed
from complab.metrics import weight_layers
from complab.models.tasks import read_compact
from complab.plan import ClusterStep, Plan, PruneStep

LESSON_SPEC = {"model": "demo:lenet300", "weights": None, "data": "digits", "input_size": None, "mean": None,
               "std": None}
FAST_ENV = "COMPRESSION_LAB_LESSON_FAST"  # "1": the tests' settings (FAST), so a browser test finishes in a minute


@dataclass(frozen=True)
class LessonSettings:
    """What the lesson's runs do; every number here ends up in the runs' plans (nothing hides elsewhere)."""

    # fraction of each layer's weights removed: Han et al. 2015 (Table 4) kept 8%, 9% and 26% of LeNet-300-100's
    sparsity: tuple[tuple[str, float], ...] = (("fc1", 0.92), ("fc2", 0.91), ("fc3", 0.74))
    prune_iterations: int = 3  # prune-then-fine-tune rounds (iterative pruning recovers more than one cut)
    prune_epochs: int = 2  # fine-tuning epochs after each round (a small budget: the lesson runs in minutes)
    lr: float = 1e-3  # pruning's fine-tuning learning rate (Adam), the demo recipe's
    n_clusters: int = 16  # shared values per layer: few enough that the histogram's spikes can be counted
    cluster_epochs: int = 2  # epochs fine-tuning the shared values
    cluster_lr: float = 2e-4  # the demo recipe's learning rate for the shared values
    label: str = ""  # added to the plans' names (the Runs page shows it)


LESSON = LessonSettings()
FAST = LessonSettings(prune_iterations=1, prune_epochs=1, cluster_epochs=0, label=" (fast test settings)")

STEPS = ("weights", "prune", "share", "code", "decode")
TITLES = {"weights": "The weights", "prune": "Prune", "share": "Share weights", "code": "Code the file",
          "decode": "Load it back"}
RUN_OF = {"prune": "prune", "share": "share", "code": "share", "decode": "share"}  # the run a step shows


def settings() -> LessonSettings:
    """FAST when $COMPRESSION_LAB_LESSON_FAST is 1, else the real lesson's settings."""
    return FAST if os.environ.get(FAST_ENV) == "1" else LESSON


def step_plan(step: str, chosen: LessonSettings | None = None) -> Plan | None:
    """The plan of the run a step shows (steps 3-5 share one run), or None for step 1 (the original model)."""
    chosen = chosen or settings()
    run = RUN_OF.get(step)
    if run is None:
        return None
    prune = PruneStep(sparsity=dict(chosen.sparsity), iterations=chosen.prune_iterations,
                      finetune_epochs=chosen.prune_epochs, lr=chosen.lr)
    if run == "prune":
        return Plan((prune,), name="lesson: prune" + chosen.label).validate()
    cluster = ClusterStep(n_clusters={"_default": chosen.n_clusters}, finetune_epochs=chosen.cluster_epochs,
                          lr=chosen.cluster_lr)
    return Plan((prune, cluster), name="lesson: prune + share" + chosen.label).validate()


def step_job(step: str, chosen: LessonSettings | None = None) -> dict | None:
    """The engine job of a step's run (latency is not measured: the lesson never shows it), or None."""
    plan = step_plan(step, chosen)
    return None if plan is None else {"kind": "compress", **LESSON_SPEC, "plan": plan.to_dict(), "latency": False}


# ------------------------------------------------------------------------------------------------- measuring


def original_measured(handle, data) -> dict:
    """Step 1's numbers of the original model, measured: test accuracy, parameters, fp32 bytes (as handle.measure
    gives them, without the FLOP count and latency it adds: the lesson shows neither, and they cost the first
    render seconds)."""
    return {"accuracy": metrics.accuracy(handle.model, data.loader("test")),
            "params": metrics.count_params(handle.model)["params"], "fp32_bytes": metrics.fp32_bytes(handle.model)}


def layer_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Each weight layer's weights, flattened (what the histograms draw)."""
    return {name: weight.detach().flatten().cpu().numpy() for name, weight in weight_layers(model).items()}


def weight_facts(weights: dict[str, np.ndarray]) -> dict:
    """Counts the text needs: weights, zeros, distinct non-zero values per layer, median |w| of the non-zero."""
    every = np.concatenate(list(weights.values()))
    kept = every[every != 0]
    return {"weights": int(every.size), "zeros": int(every.size - kept.size),
            "sparsity": float(1 - kept.size / max(1, every.size)),
            "layer_sparsity": {name: float(np.mean(w == 0)) for name, w in weights.items()},
            "distinct": {name: int(np.unique(w[w != 0]).size) for name, w in weights.items()},
            "median_abs": float(np.median(np.abs(kept))) if kept.size else 0.0}


@dataclass
class Coding:
    """Step 4's numbers: the waterfall and the position/index streams at fixed width, coded, and their entropy."""

    waterfall: Waterfall
    fixed_bytes: int  # positions and indices at fixed width (what the entropy coder started from)
    coded_bytes: int  # the same streams in the file
    entropy_bytes: float  # their order-0 entropy (the bound a coder of symbol counts can reach)
    file_bytes: int


def coding(rows: list[dict], metrics: dict) -> Coding:
    """Step 4 from the file's own sections (storage.inspect_bytes rows) and the run's metrics."""
    waterfall = bytes_waterfall(rows, metrics["before"]["fp32_bytes"], "LeNet-300-100", params_removed(metrics))
    streams = [stream for row in rows for stream in row.get("streams") or []]
    coded = sum(row["bytes_positions"] + row["bytes_indices"] for row in rows if row["encoding"] != "header")
    return Coding(waterfall, fixed_bytes=coded - waterfall.steps.get("entropy", 0), coded_bytes=coded,
                  entropy_bytes=float(sum(stream["entropy_bytes"] for stream in streams)), file_bytes=waterfall.end)


def decode_check(path: str | Path, data, per_class: int = 1) -> dict:
    """Decode the compact file (our own reader, nothing unpickled) and classify the test digits with it:
    seconds to decode, test accuracy, and `per_class` test images of each class with the decoded model's answer."""
    started = time.perf_counter()
    handle = read_compact(path)
    seconds = time.perf_counter() - started
    accuracy = metrics.accuracy(handle.model, data.loader("test"))
    images, labels = data.test.tensors
    chosen = [int(i) for c in range(data.num_classes) for i in torch.nonzero(labels == c).flatten()[:per_class]]
    with torch.no_grad():
        predicted = handle.model.eval()(images[chosen]).argmax(1).tolist()
    mean, std = float(np.mean(data.mean)), float(np.mean(data.std))
    samples = [{"image": np.clip(images[i, 0].numpy() * std + mean, 0.0, 1.0), "label": int(labels[i]),
                "predicted": int(p)} for i, p in zip(chosen, predicted, strict=True)]
    return {"seconds": seconds, "accuracy": accuracy, "test_images": len(labels), "samples": samples}


# --------------------------------------------------------------------------------------------- what to say


def percent(value: float) -> str:
    """A fraction as the lesson writes it everywhere (text and figures alike): 0.98611 -> 98.61%."""
    return f"{100 * value:.2f}%"


def _points(after: float, before: float) -> str:
    return f"{100 * (after - before):+.1f} points"


def _layers(values: dict[str, float], fmt=percent) -> str:
    return ", ".join(f"{name} {fmt(value)}" for name, value in values.items())


def index_bits(n_clusters: int) -> int:
    """Bits of one fixed-width index into k shared values (k + 1 symbols: as report.tensor_steps counts them)."""
    return max(1, math.ceil(math.log2(n_clusters + 1)))


def weights_text(measured: dict, facts: dict, test_images: int) -> str:
    """Step 1's text. Parameters are the weights and the biases; compression works on the weights (the biases
    stay 32-bit numbers in these runs), so the later steps count weights: the text says both counts."""
    biases = measured["params"] - facts["weights"]
    return (f"LeNet-300-100 has {measured['params']:,} parameters in three fully connected layers: "
            f"{facts['weights']:,} weights (one per connection between two neurons) and {biases:,} biases (one "
            f"per neuron), {measured['fp32_bytes']:,} bytes as 32-bit floats. Pruning and sharing below work on "
            f"the {facts['weights']:,} weights; the {biases:,} biases stay as they are, 32-bit numbers. It "
            f"classifies {percent(measured['accuracy'])} of "
            f"{test_images:,} test digits correctly (measured now). Most weights are small: half of them lie "
            f"between -{facts['median_abs']:.3f} and +{facts['median_abs']:.3f}, the peak around zero in the "
            f"histogram.")


def prune_text(metrics: dict, facts: dict, plan: dict) -> str:
    prune = next(step for step in plan["steps"] if step["type"] == "prune")
    before, after = metrics["before"]["accuracy"], metrics["after"]["accuracy"]
    return (f"Pruning (Han et al. 2015) set the smallest weights to zero: {facts['zeros']:,} of the "
            f"{facts['weights']:,} weights ({percent(facts['sparsity'])}; {_layers(facts['layer_sparsity'])}; the "
            f"biases are kept), in "
            f"{prune['iterations']} round(s), each followed by {prune['finetune_epochs']} epoch(s) of fine-tuning "
            f"with the zeros held at zero. Accuracy: {percent(before)} -> {percent(after)} "
            f"({_points(after, before)}), measured on the model decoded from the file. The histogram now has a "
            f"spike at zero, where the small weights were. The file stores only the kept weights and where they "
            f"are: {metrics['after']['compressed_bytes']:,} bytes, {metrics['compression_ratio']:.1f}x smaller than "
            f"the fp32 model.")


def share_text(metrics: dict, facts: dict, plan: dict, pruned_accuracy: float | None = None) -> str:
    cluster = next(step for step in plan["steps"] if step["type"] == "cluster")
    k_values = sorted(set(metrics["steps"]["cluster"]["n_clusters"].values()))
    history = f"{percent(metrics['before']['accuracy'])} originally"
    if pruned_accuracy is not None:
        history += f", {percent(pruned_accuracy)} pruned"
    return (f"Weight sharing (Deep Compression) groups each layer's kept weights into k = "
            f"{', '.join(map(str, k_values))} clusters (k-means) and replaces each weight by its cluster's "
            f"centre; the centres were then fine-tuned for {cluster['finetune_epochs']} epoch(s). Distinct non-zero "
            f"values per layer now: {_layers(facts['distinct'], str)}: the histogram collapsed to k spikes. "
            f"This run repeated step 2's pruning (same plan, same seed) before sharing. Each kept weight is now "
            f"a {index_bits(max(k_values))}-bit index (k values and one filler symbol) instead of a 32-bit number. "
            f"Accuracy: {history}, {percent(metrics['after']['accuracy'])} pruned and shared. File: "
            f"{metrics['after']['compressed_bytes']:,} bytes, {metrics['compression_ratio']:.1f}x smaller.")


def coding_text(coded: Coding) -> str:
    saved = 1 - coded.coded_bytes / max(1, coded.fixed_bytes)
    above = coded.coded_bytes / max(1e-9, coded.entropy_bytes) - 1
    ratio = coded.waterfall.start / max(1, coded.file_bytes)
    return (f"Two streams fill most of the file: the positions of the kept weights (the gaps between them) and "
            f"their cluster indices. Deep Compression Huffman-coded them; we use an ANS coder, which gets closer "
            f"to the entropy. At fixed width they would take {coded.fixed_bytes:,} bytes; coded they take "
            f"{coded.coded_bytes:,} ({percent(saved)} less), " + _against_entropy(above, coded.entropy_bytes)
            + f" The chart follows every byte from the {coded.waterfall.start:,}-byte fp32 "
            f"model to the {coded.file_bytes:,}-byte file ({ratio:.1f}x).")


def _against_entropy(above: float, entropy_bytes: float) -> str:
    """The coded streams against their order-0 entropy: above it by the tables' cost, or below it where the coder
    codes an index in the context of its row's previous index (a bound on symbol counts alone does not see that)."""
    if above >= 0:
        return (f"{percent(above)} above their order-0 entropy of {entropy_bytes:,.0f} bytes (the difference: each "
                f"stream's table of symbol counts, and the rounding of those counts).")
    return (f"{percent(-above)} below their order-0 entropy of {entropy_bytes:,.0f} bytes, the limit for a coder "
            f"that sees only how often each symbol occurs: ours codes an index in the context of the previous "
            f"index in the same row, and neighbouring weights are alike.")


def _many(count: int, thing: str) -> str:
    return f"{count:,} {thing}" + ("" if count == 1 else "s")


def flips_text(diff: dict, model: str) -> str:
    """What the compressed model answers differently from the original on the test digits, in plain sentences for
    a class, from a behaviour diff (complab.analysis.behaviour.classifier_diff's dict, schema "behaviour/1", the
    original as side a). `model`: "pruned" or "pruned and shared"."""
    n, flips = diff["n"], diff["flips"]
    worse, better, other = flips["right_to_wrong"], flips["wrong_to_right"], flips["wrong_to_other_wrong"]
    changed = worse + better + other
    low, high = flips["net_ci"]
    if not changed:
        return (f"Did its answers change? Not on the test digits: the {model} model gives the original's answer "
                f"on all {n:,} of them.")
    text = (f"Did its answers change? Of the {n:,} test digits, the {model} model gives the original's answer on "
            f"{n - changed:,} ({percent((n - changed) / n)}) and a different one on {changed:,}: "
            f"{_many(worse, 'digit')} the original got right {'is' if worse == 1 else 'are'} now wrong, "
            f"{better:,} it got wrong {'is' if better == 1 else 'are'} now right"
            + (f", and {_many(other, 'wrong answer')} became another wrong answer" if other else "") + ". "
            f"Accuracy went {percent(diff['accuracy_a'])} -> {percent(diff['accuracy_b'])} "
            f"({_points(diff['accuracy_b'], diff['accuracy_a'])}): it counts {worse:,} lost minus {better:,} gained")
    hidden = changed - abs(worse - better)
    if hidden:
        text += (f", so {_many(hidden, 'changed answer')} of the {changed:,} cannot be seen in it (flips both ways "
                 f"cancel out; a wrong answer that changes stays wrong)")
    text += (f". One digit is {100 / n:.2f} points here; the 95% interval of the change is {100 * low:+.1f} to "
             f"{100 * high:+.1f} points, ")
    text += ("so it is within noise: on other test digits the change could be nothing." if low <= 0 <= high
             else "so it is beyond noise: not chance.")
    trace = diff.get("trace") or {}
    if trace.get("method") == "ablation" and trace.get("layers"):
        top = trace["layers"][0]
        text += (f" Where do the changed answers come from? Putting only {top['layer']}'s {model} weights into the "
                 f"original reproduces {top['flips_reproduced']:,} of the {changed:,}.")
    return text


def flip_examples(diff: dict, limit: int = 6, right_to_wrong: int = 4) -> list[dict]:
    """Up to `limit` flipped test digits to draw: up to `right_to_wrong` that the compressed model now gets wrong
    (its most confident wrong answers first, as the diff orders them), then those it now gets right, then the rest,
    filling up to `limit`; each {"png": bytes, "label", "original", "compressed", "kind"} (each model's answer is
    its top class)."""
    gallery = list(diff.get("gallery") or [])
    kinds = ("right_to_wrong", "wrong_to_right", "wrong_to_other_wrong")
    by_kind = {kind: [item for item in gallery if item["kind"] == kind] for kind in kinds}
    chosen = by_kind["right_to_wrong"][:right_to_wrong] + by_kind["wrong_to_right"] + by_kind["wrong_to_other_wrong"]
    chosen = chosen[:limit]
    chosen += [item for item in by_kind["right_to_wrong"][right_to_wrong:]][:max(0, limit - len(chosen))]
    return [{"png": base64.b64decode(item["image_png_b64"]), "label": int(item["label"]),
             "original": int(item["top3_a"][0][0]), "compressed": int(item["top3_b"][0][0]), "kind": item["kind"]}
            for item in chosen]


def decode_text(check: dict, metrics: dict, file_bytes: int) -> str:
    measured = metrics["after"]["accuracy"]
    same = ("the accuracy the run measured on its own decoded copy" if abs(check["accuracy"] - measured) < 1e-9
            else f"the run measured {percent(measured)}")
    right = sum(sample["label"] == sample["predicted"] for sample in check["samples"])
    return (f"The {file_bytes:,}-byte file was read back by our own decoder in {1000 * check['seconds']:.0f} ms "
            f"(nothing is unpickled) into a working LeNet-300-100. It classifies {percent(check['accuracy'])} of the "
            f"{check['test_images']:,} test digits correctly ({same}). Below: one test digit of each class and the "
            f"decoded model's answer ({right} of {len(check['samples'])} right).")
