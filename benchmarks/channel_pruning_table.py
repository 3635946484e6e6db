"""Channel pruning (Hu et al. 2018) on the demo VGG-style net and a ResNet-18: GA vs L1 vs random, with and without KD.

For each net, the same per-layer keep ratios are reached three ways (GA with the two-step fitness,
Li et al.'s L1 norm, random channels), each followed by the same fine-tuning, once with the plain
cross-entropy and once with knowledge distillation from the original model. Channels are removed for
real (Torch-Pruning's dependency graph), so the ratios are of parameters, FLOPs and CPU time actually
measured: latency is the median of interleaved runs (original and pruned alternate, so load on the
machine hits both alike) at batch 1 and batch 32. The headline model (GA + KD) is written to the compact
file and its accuracy is measured on the model decoded from that file.

The ResNet-18 is torchvision's, trained here briefly on the digits (32x32, grey repeated to RGB), so the
benchmark needs nothing downloaded. Prints one JSON object as its last line.

    .venv/bin/python benchmarks/channel_pruning_table.py
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab import metrics  # noqa: E402
from complab.data import DataBundle, load_data  # noqa: E402
from complab.methods import channels, distill  # noqa: E402
from complab.methods.context import StepContext  # noqa: E402
from complab.methods.finetune import TrainConfig, train  # noqa: E402
from complab.models.compact import load_compressed, save_compressed  # noqa: E402
from complab.models.handle import ModelHandle, load_model  # noqa: E402
from complab.plan import ChannelStep, DistillStep  # noqa: E402

# Later layers hold most parameters, early ones most FLOPs per parameter: keep more of the early
# layers (the paper's VGG result is 8x fewer parameters for 3x fewer FLOPs).
VGG_KEEP = {"features.0": 0.6, "features.3": 0.5, "features.7": 0.5, "features.10": 0.45, "features.14": 0.35,
            "features.17": 0.3, "features.21": 0.25}
RESNET_KEEP = {"_default": 0.5}
GA = dict(population=10, generations=5, survivors=2, elite=2, screen_size=64, fitness_size=128)
FINETUNE_EPOCHS = 4  # the same for every selection, with and without KD
FINETUNE_LR = 1e-3
KD = DistillStep(temperature=4.0, alpha=0.7, epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@torch.no_grad()
def paired_latency(original: torch.nn.Module, pruned: torch.nn.Module, shape: tuple[int, ...], batch: int,
                   repeats: int, threads: int) -> dict[str, float]:
    """Median ms per forward pass of each model and the median of the per-pair ratios: the two models take
    turns, so a burst of background load hits both members of a pair alike."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn((batch, *shape))
    for model in (original, pruned):
        model.eval()
        for _ in range(3):
            model(x)
    times = {"original": [], "pruned": []}
    for _ in range(repeats):
        for name, model in (("original", original), ("pruned", pruned)):
            start = time.perf_counter()
            model(x)
            times[name].append((time.perf_counter() - start) * 1000.0)
    torch.set_num_threads(previous)
    ratios = [a / b for a, b in zip(times["original"], times["pruned"], strict=True)]
    return {"original_ms": round(statistics.median(times["original"]), 3),
            "pruned_ms": round(statistics.median(times["pruned"]), 3), "ratio": statistics.median(ratios)}


def rgb_digits() -> DataBundle:
    """The demo digits at 32x32 with the grey channel repeated to RGB (torchvision models read 3 channels)."""
    from torch.utils.data import TensorDataset

    data = load_data("digits", input_size=32)
    splits = {}
    for name in ("train", "val", "test"):
        images, labels = data.split(name)[:]
        splits[name] = TensorDataset(images.repeat(1, 3, 1, 1), labels)
    return DataBundle("digits", splits["train"], splits["val"], splits["test"], 10, (3, 32, 32), data.mean * 3,
                      data.std * 3, data.class_names, shift_pixels=data.shift_pixels)


def train_resnet18(data: DataBundle, epochs: int) -> ModelHandle:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    train(model, data.train, TrainConfig(epochs=epochs, lr=2e-3, weight_decay=1e-4, shift_pixels=2, seed=0))
    return ModelHandle(model.eval(), {"kind": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 10}},
                       (3, 32, 32), 10, "torchvision:resnet18 (trained here on the digits)")


def table(handle: ModelHandle, data: DataBundle, keep: dict, ga: dict, epochs: int, out_dir: Path,
          tag: str) -> dict:
    """Prune with each selection, fine-tune with and without KD, measure; the GA + KD model goes through the file."""
    test = data.loader("test")
    before = {"accuracy": metrics.accuracy(handle.model, test), **metrics.model_summary(handle.model,
                                                                                       handle.input_shape)}
    log(f"{tag}: original accuracy {before['accuracy']:.4f}, {before['params']:,} params, {before['flops']:,} FLOPs")
    rows, pruned_models, products = {}, {}, {}
    for selection in ("ga", "l1", "random"):
        work = handle.clone()
        ctx = StepContext(data=data, layers=list(handle.prunable_layers()), shift_pixels=2, on_log=log)
        step = ChannelStep(keep_ratio=keep, selection=selection, finetune_epochs=0, final_epochs=0,
                           **(ga if selection == "ga" else {}))
        started = time.time()
        outcome = channels.run(work.model, step, ctx)
        report = outcome.report
        search_seconds = time.time() - started
        after = metrics.model_summary(work.model, handle.input_shape)
        no_finetune = metrics.accuracy(work.model, test)
        for use_kd in (False, True):
            tuned = copy.deepcopy(work)
            tune_ctx = StepContext(data=data, layers=list(handle.prunable_layers()), shift_pixels=2)
            if use_kd:
                distill.use_teacher(tune_ctx, KD, handle.model)
            started = time.time()
            tune_ctx.finetune(tuned.model, epochs, FINETUNE_LR, 1, "fine-tune")
            name = f"{selection}{'+kd' if use_kd else ''}"
            rows[name] = {
                "accuracy": metrics.accuracy(tuned.model, test),
                "accuracy_before_finetune": no_finetune,
                "params_ratio": before["params"] / after["params"],
                "flops_ratio": before["flops"] / after["flops"],
                "search_seconds": round(search_seconds, 1),
                "finetune_seconds": round(time.time() - started, 1),
            }
            if selection == "ga":
                rows[name]["ga_fitness_vs_l1"] = {k: [round(v["ga_fitness"], 4), round(v["l1_fitness"], 4)]
                                                  for k, v in report["layers"].items()}
            pruned_models[name], products[name] = tuned, outcome.products  # the file replays its history
            log(f"{tag} {name}: accuracy {rows[name]['accuracy']:.4f} (before fine-tuning {no_finetune:.4f}), "
                f"search {search_seconds:.0f} s")
    path = out_dir / f"{tag}.clab"
    save_compressed(pruned_models["ga+kd"], path, products=products["ga+kd"])
    decoded = load_compressed(path)
    x = data.test[:32][0]
    with torch.no_grad():
        identical = bool(torch.equal(decoded.model(x), pruned_models["ga+kd"].model(x)))
    original_file = out_dir / f"{tag}-original.clab"
    save_compressed(handle, original_file)
    latency = {}
    for threads in (2, 1):
        for batch, repeats in ((1, 60), (32, 15)):
            suffix = "" if threads == 2 else "_1thread"
            latency[f"batch{batch}{suffix}"] = paired_latency(handle.model, decoded.model, handle.input_shape,
                                                              batch, repeats, threads)
    decoded_accuracy = metrics.accuracy(decoded.model, test)
    return {
        "before": before,
        "after": metrics.model_summary(decoded.model, handle.input_shape),
        "decoded_accuracy": decoded_accuracy,
        "decoded_identical_outputs": identical,
        "file_bytes": {"original": metrics.file_bytes(original_file), "pruned": metrics.file_bytes(path)},
        "latency": latency,
        "runs": rows,
    }


def main() -> None:
    torch.set_num_threads(2)
    started = time.time()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vgg = table(load_model("demo:vgg_small"), load_data("digits", input_size=32), VGG_KEEP, GA,
                    FINETUNE_EPOCHS, tmp, "vgg")
        data = rgb_digits()
        t0 = time.time()
        resnet = train_resnet18(data, epochs=4)
        log(f"resnet18 trained in {time.time() - t0:.0f} s")
        r18 = table(resnet, data, RESNET_KEEP, dict(GA, population=8, generations=3), 2, tmp, "resnet18")
    for name, result in (("vgg", vgg), ("resnet18", r18)):
        out[name] = result
    runs = vgg["runs"]
    summary = {
        "vgg_params_ratio": round(runs["ga+kd"]["params_ratio"], 2),
        "vgg_flops_ratio": round(runs["ga+kd"]["flops_ratio"], 2),
        "vgg_acc_before": round(vgg["before"]["accuracy"], 4),
        "vgg_acc_after": round(vgg["decoded_accuracy"], 4),
        "vgg_acc_drop": round(100 * (vgg["before"]["accuracy"] - vgg["decoded_accuracy"]), 3),
        "vgg_latency_ratio": round(vgg["latency"]["batch32"]["ratio"], 2),
        "vgg_latency_ratio_b1": round(vgg["latency"]["batch1"]["ratio"], 2),
        "vgg_latency_ratio_1thread": round(vgg["latency"]["batch32_1thread"]["ratio"], 2),
        "vgg_latency_ratio_b1_1thread": round(vgg["latency"]["batch1_1thread"]["ratio"], 2),
        "vgg_file_ratio": round(vgg["file_bytes"]["original"] / vgg["file_bytes"]["pruned"], 2),
        "ga_vs_l1_acc": round(100 * (runs["ga+kd"]["accuracy"] - runs["l1+kd"]["accuracy"]), 3),
        "ga_vs_l1_acc_no_kd": round(100 * (runs["ga"]["accuracy"] - runs["l1"]["accuracy"]), 3),
        "ga_vs_random_acc": round(100 * (runs["ga+kd"]["accuracy"] - runs["random+kd"]["accuracy"]), 3),
        # before any fine-tuning (BatchNorm re-estimated only): how good the chosen channels are by themselves
        "ga_vs_l1_acc_before_finetune": round(100 * (runs["ga"]["accuracy_before_finetune"]
                                                     - runs["l1"]["accuracy_before_finetune"]), 3),
        "resnet18_ga_vs_l1_acc": round(100 * (r18["runs"]["ga+kd"]["accuracy"] - r18["runs"]["l1+kd"]["accuracy"]), 3),
        "resnet18_ga_vs_l1_acc_before_finetune": round(100 * (r18["runs"]["ga"]["accuracy_before_finetune"]
                                                              - r18["runs"]["l1"]["accuracy_before_finetune"]), 3),
        "vgg_accuracy": {k: round(v["accuracy"], 4) for k, v in runs.items()},
        "resnet18_ok": bool(r18["decoded_identical_outputs"]
                            and abs(r18["decoded_accuracy"] - r18["runs"]["ga+kd"]["accuracy"]) < 1e-9),
        "resnet18_params_ratio": round(r18["runs"]["ga+kd"]["params_ratio"], 2),
        "resnet18_flops_ratio": round(r18["runs"]["ga+kd"]["flops_ratio"], 2),
        "resnet18_latency_ratio": round(r18["latency"]["batch32"]["ratio"], 2),
        "resnet18_latency_ratio_b1": round(r18["latency"]["batch1"]["ratio"], 2),
        "resnet18_latency_ratio_1thread": round(r18["latency"]["batch32_1thread"]["ratio"], 2),
        "resnet18_acc_before": round(r18["before"]["accuracy"], 4),
        "resnet18_accuracy": {k: round(v["accuracy"], 4) for k, v in r18["runs"].items()},
        "units": "ratios original/pruned; accuracy differences and drops in points; latency ratio = median of "
                 "paired (interleaved) runs, 2 threads unless _1thread; *_latency_ratio at batch 32, _b1 at batch 1",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.time() - started, 1),
        "networks": out,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
