"""How long does a sensitivity analysis take on a real model, before and after the prefix cache?

A torchvision ResNet-50 at 224 px (random weights: timing only) on a generated ImageFolder of 256
images (10 classes; 64 training images for batch norm, 192 validation images), on the CPU threads
torch uses here (2 on the reference machine).

- `old_point_s`: seconds per exact point with the whole model run at every point
  (`ExactScorer(prefix_cache=False)`, what every point cost before), measured on two points of each of
  three layers spread over the network (early, middle, late), alternating with the new path; the least
  of the two times counts for each path (other programs on a shared machine only add time).
- `new_point_s`: the same points with the prefix cache, plus each layer's one-off prefix (the inputs
  of the rest of the network, computed once per layer) spread over the default grid's 20 points.
- `exact_point_speedup`: old_point_s / new_point_s (means over the same sample: what the sample's points
  cost in all, before over after); `mean_layer_speedup`: the mean of the per-layer ratios (late layers
  weigh heavily there); `per_layer` has each. A whole ResNet-50 grid lands near exact_point_speedup:
  an early layer's points still run almost the whole network.
- `resnet50_old_hours`: old_point_s x 54 layers x 20 points, scaled linearly from the images measured
  per point to the default ones (512 validation + 4 x 64 batch-norm images).
- `resnet50_estimate_s`: the estimate mode over the full default grid, when this version has it.

The validation subset and batch-norm images are chosen from a quick forward timing so the whole script
stays under 10 minutes on a loaded 2-core machine; the JSON says what was used. Prints one JSON
object as its last line.

    .venv/bin/python benchmarks/sensitivity_scale.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab.analysis import sensitivity  # noqa: E402
from complab.analysis.sensitivity import ExactScorer, SensitivityConfig, grid_weight  # noqa: E402
from complab.data import IMAGENET_MEAN, IMAGENET_STD, load_data  # noqa: E402
from complab.models.handle import ModelHandle  # noqa: E402

SIZE = 224
CLASSES = 10
TRAIN_IMAGES, VAL_IMAGES = 64, 192  # 256 in all
SAMPLE = ("layer1.0.conv2", "layer3.0.conv2", "layer4.2.conv3")  # early, middle, late
DEFAULT_LAYERS, DEFAULT_POINTS = 54, 20  # ResNet-50's prunable layers; 12 sparsities + 8 cluster counts
DEFAULT_IMAGES = 512 + 4 * 64  # validation + batch-norm images per point with the default settings
TIME_BUDGET_S = 420  # the exact measurements; leaves room for set-up under 10 minutes


def make_imagefolder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        for index in range(count):
            label = index % CLASSES
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            tint = np.array([25 * label, 255 - 25 * label, 128], dtype=np.float32)
            pixels = np.clip(rng.normal(tint, 60, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")


def resnet50() -> ModelHandle:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=CLASSES).eval()
    return ModelHandle(model, {"kind": "torchvision", "arch": "resnet50", "kwargs": {"num_classes": CLASSES}},
                       (3, SIZE, SIZE), CLASSES, "torchvision:resnet50 (random weights)", IMAGENET_MEAN, IMAGENET_STD)


def timed(call, *args) -> tuple[float, float]:
    started = time.perf_counter()
    value = call(*args)
    return value, time.perf_counter() - started


def main() -> None:
    started = time.perf_counter()
    handle = resnet50()
    with tempfile.TemporaryDirectory() as folder:
        make_imagefolder(Path(folder))
        data = load_data(f"imagefolder:{folder}", input_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        with torch.no_grad():
            handle.model(torch.zeros(2, 3, SIZE, SIZE))
            _, seconds = timed(lambda: handle.model(torch.zeros(8, 3, SIZE, SIZE)))
        per_image = seconds / 8
        # forwards of the exact measurements, in units of (validation + batch-norm images): two scorers'
        # set-up (~2 each), 6 old points, 3 prefixes (~0.6) and 9 suffix points (~0.5)
        units = 2 * 2 + 6 + 3 * 0.6 + 9 * 0.5
        bn_batch = 32
        val_size = next((v for v in (128, 64, 32, 16) if units * (v + bn_batch) * per_image <= TIME_BUDGET_S), 16)
        sensitivity.BN_BATCH_SIZE = bn_batch  # one batch-norm batch of 32 images (default: 4 of 64)
        config = SensitivityConfig(val_size=val_size, bn_batches=1)
        print(f"forward {per_image:.3f} s/image: val_size {val_size}, {bn_batch} batch-norm images per point",
              file=sys.stderr)
        images_per_point = val_size + bn_batch
        old, old_setup = timed(lambda: ExactScorer(handle, data, config, prefix_cache=False))
        new, new_setup = timed(lambda: ExactScorer(handle, data, config))
        rows = {}
        for layer in SAMPLE:
            original = new.layers[layer].detach().clone()
            weights = [grid_weight(original, kind, value) for kind, value in
                       (("sparsity", 0.5), ("sparsity", 0.9), ("clusters", 16))]
            # old and new alternate, each timed twice after the layer's prefix; the least time of each
            # path counts (other programs on the machine only ever add time)
            first_score, first_s = timed(new.score, layer, weights[0])
            old_score, old_a = timed(old.score, layer, weights[0])
            new_a = timed(new.score, layer, weights[1])[1]
            old_b = timed(old.score, layer, weights[1])[1]
            new_b = timed(new.score, layer, weights[2])[1]
            old_s, point_s = min(old_a, old_b), min(new_a, new_b)
            prefix_s = max(0.0, first_s - point_s)
            new_point_s = point_s + prefix_s / DEFAULT_POINTS
            rows[layer] = {"old_point_s": round(old_s, 2), "new_point_s": round(new_point_s, 2),
                           "suffix_point_s": round(point_s, 2), "prefix_s": round(prefix_s, 2),
                           "speedup": round(old_s / new_point_s, 2), "same_score": old_score == first_score}
            print(layer, rows[layer], file=sys.stderr)
        old_point_s = sum(r["old_point_s"] for r in rows.values()) / len(rows)
        new_point_s = sum(r["new_point_s"] for r in rows.values()) / len(rows)
        old_hours = old_point_s * DEFAULT_IMAGES / images_per_point * DEFAULT_LAYERS * DEFAULT_POINTS / 3600
        estimate_s, estimate = None, "not available"
        if importlib.util.find_spec("complab.analysis.fisher") and "mode" in {
                f.name for f in fields(SensitivityConfig)}:
            from complab.analysis.sensitivity import analyze

            sensitivity.BN_BATCH_SIZE = 64
            _, estimate_s = timed(lambda: analyze(handle, data, SensitivityConfig(mode="estimate")))
            estimate = "measured: the full default grid, default settings (the validation split has 192 images)"
        print(json.dumps({
            "model": "torchvision resnet50, random weights, 224 px, 10 classes",
            "threads": torch.get_num_threads(),
            "forward_s_per_image": round(per_image, 3),
            "val_size": val_size, "bn_images": bn_batch,
            "subset_note": f"validation subset {val_size} (not 256) and {bn_batch} batch-norm images per point so "
                           "the script stays under 10 minutes on this machine",
            "sample_layers": list(SAMPLE),
            "old_point_s": round(old_point_s, 2), "new_point_s": round(new_point_s, 2),
            "exact_point_speedup": round(old_point_s / new_point_s, 2),
            "mean_layer_speedup": round(sum(r["speedup"] for r in rows.values()) / len(rows), 2),
            "per_layer": rows,
            "setup_s": {"old": round(old_setup, 1), "new": round(new_setup, 1)},
            "prefix_cache": new.cache_report()["used"],
            "resnet50_old_hours": round(old_hours, 1),
            "resnet50_estimate_s": None if estimate_s is None else round(estimate_s, 1),
            "estimate": estimate,
            "total_s": round(time.perf_counter() - started, 1),
        }))


if __name__ == "__main__":
    main()
