"""Did compression change what a classifier does? Two models on the same split, image by image (issue 28).

`classifier_diff(before, after, data)` runs each model once over the split (batched softmax) and compares them
image by image: agreement (Wilson interval), flips right->wrong, wrong->right and wrong->other-wrong (each a
Wilson interval of its share of the split), the paired 95% interval of the net accuracy change (Newcombe 1998,
"Improved confidence intervals for the difference between binomial proportions based on paired data", method
10: Wilson intervals of both accuracies combined with the phi correlation of the paired outcomes, the interval
McNemar's test goes with), per-class accuracy before/after with Wilson intervals and the paired interval of the
difference, the confusion matrices and their difference, calibration (ECE over 15 equal-width confidence bins,
Guo et al. 2017, "On Calibration of Modern Neural Networks") with the reliability bins, a gallery of the
flipped images with both models' top-3 probabilities, and the layer the flips trace back to
(analysis/behaviour_trace.py). The result is the JSON-able dict of schema "behaviour/1" (shared vocabulary of
issue 28); `diff_files` makes it from two compact files (or one against the original) and caches it
(analysis/behaviour_cache.py); a detector's diff is analysis/behaviour_detect.py.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np
import torch

from complab import intervals
from complab.analysis.behaviour_cache import (  # noqa: F401 - the API's names
    SCHEMA,
    cache_key,
    file_side,
    handle_side,
    read_cached,
    state_sha256,
    write_cached,
)
from complab.analysis.behaviour_trace import trace_flips
from complab.errors import CompressionLabError

ECE_BINS = 15  # Guo et al. 2017's equal-width confidence bins
GALLERY = 48  # flipped images shown at most
THUMBNAIL_SIDE = 64  # pixels: an 8x8 digit drawn 8 times larger (nearest), a 32x32 image twice
BATCH = 256
KINDS = ("right_to_wrong", "wrong_to_right", "wrong_to_other_wrong")


@torch.no_grad()
def probabilities(model: torch.nn.Module, dataset, batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities [n, classes], labels [n]) of `model` on every image of `dataset`, in order."""
    from torch.utils.data import DataLoader

    from complab.metrics import device_for

    model.eval()
    device = device_for(model)
    probs, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(images.to(device)).float()
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(np.asarray(targets))
    if not probs:
        raise CompressionLabError("the split holds no images: choose a split with images (test or val)")
    return np.concatenate(probs).astype(np.float64), np.concatenate(labels).astype(np.int64)


def paired_difference(right_a: np.ndarray, right_b: np.ndarray, z: float = intervals.Z95) -> tuple[float, float]:
    """The 95% interval (fractions) of accuracy_b - accuracy_a measured on the same images (paired): Newcombe's
    method 10 (see the module docstring), its phi taken as 0 where a margin is empty (Newcombe's convention)."""
    n = len(right_a)
    if n == 0:
        return -1.0, 1.0
    both = int(np.sum(right_a & right_b))
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    neither = n - both - only_a - only_b
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = intervals.wilson(p_a, n, z)
    low_b, high_b = intervals.wilson(p_b, n, z)
    denominator = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(denominator) if denominator > 0 else 0.0
    # Newcombe's interval of p_a - p_b, then turned round to p_b - p_a
    delta = p_a - p_b
    below = math.sqrt(max(0.0, (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2))
    above = math.sqrt(max(0.0, (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2))
    return max(-1.0, -(delta + above)), min(1.0, -(delta - below))


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """(ECE, bins): ECE = sum over equal-width confidence bins of |bin| / n * |accuracy - mean confidence|, where
    confidence is the top probability; bin i holds confidences in (i/n_bins, (i+1)/n_bins], the first also 0."""
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece, bins = 0.0, []
    for index in range(n_bins):
        inside = which == index
        count = int(inside.sum())
        mean_confidence = float(confidence[inside].mean()) if count else None
        accuracy = float(right[inside].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        bins.append({"lo": index / n_bins, "hi": (index + 1) / n_bins, "count": count, "confidence": mean_confidence,
                     "accuracy": accuracy})
    return float(ece), bins


def calibration_direction(diff: dict) -> tuple[float, float, str] | None:
    """Which way the second model's calibration errs: (its mean top-1 confidence from the reliability bins, its
    accuracy, "under-confident" | "over-confident"); None when the bins hold nothing or the two are within half a
    point. An ECE says how far a model's confidence is from its accuracy, not which way."""
    bins = diff.get("calibration", {}).get("bins") or []
    count = sum(b.get("count_b") or 0 for b in bins)
    if not count:
        return None
    confidence = sum((b.get("count_b") or 0) * (b.get("confidence_b") or 0.0) for b in bins) / count
    accuracy = diff["accuracy_b"]
    if abs(confidence - accuracy) < 0.005:
        return None
    return confidence, accuracy, "under-confident" if confidence < accuracy else "over-confident"


def _confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Rows: the true class; columns: the predicted class."""
    return np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def _per_class(labels, right_a, right_b, classes: int, names: list[str]) -> list[dict]:
    rows = []
    for cls in range(classes):
        mine = labels == cls
        n = int(mine.sum())
        accuracy_a = float(right_a[mine].mean()) if n else 0.0
        accuracy_b = float(right_b[mine].mean()) if n else 0.0
        diff = accuracy_b - accuracy_a
        diff_ci = paired_difference(right_a[mine], right_b[mine])
        one_image = 1.0 / n if n else 1.0
        within = bool(n == 0 or diff_ci[0] <= 0.0 <= diff_ci[1] or abs(diff) < one_image - 1e-12)
        rows.append({"class": cls, "name": names[cls] if cls < len(names) else str(cls), "n": n,
                     "accuracy_a": accuracy_a, "accuracy_b": accuracy_b,
                     "ci_a": list(intervals.wilson(accuracy_a, n)), "ci_b": list(intervals.wilson(accuracy_b, n)),
                     "diff": diff, "diff_ci": list(diff_ci), "within_noise": within})
    return rows


def thumbnail_png(image: torch.Tensor, mean, std, side: int = THUMBNAIL_SIDE) -> str:
    """A normalised CHW image, un-normalised to pixels, enlarged (nearest) to about `side` or, past 2 x side,
    shrunk to fit it, as base64 PNG."""
    from PIL import Image

    array = image.detach().cpu().float().numpy()
    channels = array.shape[0]
    mean = np.asarray(mean if mean is not None else [0.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std if std is not None else [1.0] * channels, dtype=np.float32).reshape(-1, 1, 1)
    pixels = np.clip((array * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0], "L") if channels == 1 else Image.fromarray(pixels[:3].transpose(1, 2, 0))
    largest = max(picture.width, picture.height)
    if largest > 2 * side:  # a big image (224 px) shrinks to 2 x side: 48 of them stay small in the cache
        picture.thumbnail((2 * side, 2 * side), Image.BILINEAR)
    else:  # a small one (8 or 32 px) is enlarged, pixels kept square
        scale = max(1, side // largest)
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _top3(row: np.ndarray) -> list[list]:
    order = np.argsort(-row, kind="stable")[:3]
    return [[int(cls), float(row[cls])] for cls in order]


def _gallery(dataset, data, probs_a, probs_b, labels, kinds: np.ndarray, limit: int) -> list[dict]:
    """The flipped images, the compressed model's confidence in a wrong answer (its largest probability on a class
    other than the label: its answer where it is wrong, its runner-up where it is right) highest first."""
    flipped = np.flatnonzero(kinds >= 0)
    wrong_b = probs_b.copy()
    wrong_b[np.arange(len(labels)), labels] = -1.0
    confidence_wrong = wrong_b.max(axis=1)
    order = sorted(flipped.tolist(), key=lambda i: (-confidence_wrong[i], i))[:max(0, int(limit))]
    items = []
    for index in order:
        image = dataset[index][0]
        items.append({"index": int(index), "label": int(labels[index]), "kind": KINDS[int(kinds[index])],
                      "top3_a": _top3(probs_a[index]), "top3_b": _top3(probs_b[index]),
                      "confidence_wrong": float(confidence_wrong[index]),
                      "image_png_b64": thumbnail_png(image, data.mean, data.std)})
    return items


def classifier_diff(before, after, data, split: str = "test", sensitivity: dict | None = None,
                    gallery: int = GALLERY) -> dict:
    """The behaviour diff (schema "behaviour/1") of two classifier handles on a split of `data` (a DataBundle);
    `sensitivity`: a checked sensitivity report of `before` (used by the trace when the architectures differ)."""
    if before.kind.finds_boxes or after.kind.finds_boxes:
        raise CompressionLabError("classifier_diff compares two classifiers: use detector_diff for detectors")
    if before.num_classes != after.num_classes:
        raise CompressionLabError(f"the models have {before.num_classes} and {after.num_classes} classes: compare "
                                  "two runs of the same model")
    started = time.perf_counter()
    dataset = data.split(split)
    probs_a, labels = probabilities(before.model, dataset)
    probs_b, _ = probabilities(after.model, dataset)
    classes = int(max(before.num_classes, labels.max() + 1))
    predicted_a, predicted_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    right_a, right_b = predicted_a == labels, predicted_b == labels
    n = len(labels)
    kinds = np.full(n, -1)
    kinds[right_a & ~right_b] = 0
    kinds[~right_a & right_b] = 1
    kinds[~right_a & ~right_b & (predicted_a != predicted_b)] = 2
    counts = {kind: int(np.sum(kinds == index)) for index, kind in enumerate(KINDS)}
    agreement = float(np.mean(predicted_a == predicted_b))
    confusion_a, confusion_b = _confusion(labels, predicted_a, classes), _confusion(labels, predicted_b, classes)
    ece_a, bins_a = calibration(probs_a, labels)
    ece_b, bins_b = calibration(probs_b, labels)
    names = list(getattr(data, "class_names", None) or [])
    result = {
        "schema": SCHEMA, "task": "classify", "a": handle_side(before), "b": handle_side(after), "split": split,
        "n": n, "accuracy_a": float(right_a.mean()), "accuracy_b": float(right_b.mean()),
        "agreement": agreement, "agreement_ci": list(intervals.wilson(agreement, n)),
        "flips": {**counts, "right_to_wrong_ci": list(intervals.wilson(counts["right_to_wrong"] / n, n)),
                  "wrong_to_right_ci": list(intervals.wilson(counts["wrong_to_right"] / n, n)),
                  "net_ci": list(paired_difference(right_a, right_b))},
        "per_class": _per_class(labels, right_a, right_b, classes, names),
        "confusion_a": confusion_a.tolist(), "confusion_b": confusion_b.tolist(),
        "confusion_diff": (confusion_b - confusion_a).tolist(),
        "calibration": {"ece_a": ece_a, "ece_b": ece_b, "bins": [
            {"lo": a["lo"], "hi": a["hi"], "count_a": a["count"], "confidence_a": a["confidence"],
             "accuracy_a": a["accuracy"], "count_b": b["count"], "confidence_b": b["confidence"],
             "accuracy_b": b["accuracy"]} for a, b in zip(bins_a, bins_b, strict=True)]},
        "gallery": _gallery(dataset, data, probs_a, probs_b, labels, kinds, gallery),
        "trace": trace_flips(before, after, dataset, np.flatnonzero(predicted_a != predicted_b),
                             predicted_b, sensitivity),
    }
    result["seconds"] = time.perf_counter() - started
    return result


def detector_diff(before, after, data, n_images: int = 32, ap_images: int | None = None) -> dict:
    """The behaviour diff of two detector handles (analysis/behaviour_detect.py)."""
    from complab.analysis.behaviour_detect import detector_diff as diff

    return diff(before, after, data, n_images, ap_images)


def _same_family(before, after, what_a: str, what_b: str) -> None:
    """A CompressionLabError unless both models are of one task, model and class count."""
    if before.kind != after.kind:
        raise CompressionLabError(f"{what_a} is a {before.task} model and {what_b} a {after.task} model: compare "
                                  "two runs of the same model")
    if before.label != after.label or before.num_classes != after.num_classes:
        raise CompressionLabError(f"{what_a} is {before.label} ({before.num_classes} classes) and {what_b} is "
                                  f"{after.label} ({after.num_classes} classes): compare two runs of the same model")


def split_identity(data, split: str) -> dict:
    """What identifies the images a diff was measured on (part of the cache key)."""
    dataset = data.split(split) if hasattr(data, "split") and callable(data.split) else None
    return {"ref": str(getattr(data, "ref", "")), "split": split, "images": len(dataset) if dataset is not None
            else None, "input_shape": list(getattr(data, "input_shape", []) or []),
            "mean": list(getattr(data, "mean", None) or []), "std": list(getattr(data, "std", None) or [])}


def diff_files(path_a: str | Path, path_b: str | Path | None = None, original=None, data=None,
               cache_dir: str | Path | None = None, sensitivity: dict | None = None, gallery: int = GALLERY,
               n_images: int = 32, compute: bool = True) -> dict | None:
    """The behaviour diff of two compact files (a = before, b = after), or of file `path_a` against `original`
    (a handle the caller loaded: the app's active model or the person's --model; never named by a run folder)
    when `path_b` is None. Both are decoded here through our parser (never an in-memory model). `data`: the
    dataset to measure on, loaded or a reference (default: the one the compressed file records). With `cache_dir`
    a diff is read from and written to cache_dir/KEY.json (behaviour_cache). `compute=False`: only the cached diff
    (None when there is none), no model is run: the Compare page shows a cached pair at once, computes on a click."""
    from complab import sources

    started = time.perf_counter()
    if path_b is None:
        if original is None:
            raise CompressionLabError(f"no original model to compare {Path(path_a).name} with: give a second run, "
                                      "or the original (--model, or make it the app's active model)")
        after = sources.load_file(path_a)
        before = original
        _same_family(before, after, "the original", Path(path_a).name)
        side_a, side_b = handle_side(before), file_side(path_a)
    else:
        before, after = sources.load_file(path_a), sources.load_file(path_b)
        _same_family(before, after, Path(path_a).name, Path(path_b).name)
        side_a, side_b = file_side(path_a), file_side(path_b)
    if data is None or isinstance(data, str):
        data = sources.data_for_file(after, data)
    boxes = after.kind.finds_boxes
    split = "val" if boxes else "test"
    options = ({"gallery": int(gallery), "sensitivity": hashlib.sha256(
        repr(sorted(sensitivity.items())).encode()).hexdigest() if sensitivity else None}
        if not boxes else {"n_images": int(n_images)})
    key = cache_key(side_a["sha256"], side_b["sha256"], split_identity(data, split) if not boxes
                    else {"ref": str(getattr(data, "ref", "")), "n_images": int(n_images)}, options)
    cached = read_cached(cache_dir, key) if cache_dir is not None else None
    if cached is not None or not compute:
        return cached
    if not boxes:
        result = classifier_diff(before, after, data, split, sensitivity, gallery)
    else:
        result = detector_diff(before, after, data, n_images)
    result["a"], result["b"] = side_a, side_b
    result["seconds"] = time.perf_counter() - started
    if cache_dir is not None:
        try:
            write_cached(cache_dir, key, result)
        except OSError:  # a read-only or full disk: the diff is still right, only not kept
            pass
    return result
