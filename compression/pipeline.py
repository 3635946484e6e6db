"""compress(handle, plan, data) -> Result: run a plan's steps, write the compact file, measure the decoded model.

What a job runs. Steps run in the plan's order through the handler registry (a new method is one
new file plus one line here). The accuracy after compression is always measured on the model
decoded from the file on disk, never on the in-memory one, so the size and the accuracy shown
belong to the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import compression.methods.vq as vq  # issue 6's handler (own line: others edit the import below)
from compression import metrics
from compression.data import DataBundle
from compression.methods import bn_stats, channels, cluster, distill, fold_bn, prune
from compression.methods.context import StepContext
from compression.models.compact import load_compressed, save_compressed
from compression.models.handle import ModelHandle, check_data_fits
from compression.plan import Plan
from compression.storage import inspect_bytes

HANDLERS: dict[str, Callable] = {"prune": prune.run, "cluster": cluster.run, "channels": channels.run,
                                  "distill": distill.run}
HANDLERS["quantize"] = vq.run  # issue 6: vector quantization (Gong et al. 2014)
HANDLERS["fold_bn"] = fold_bn.run  # detectors: batch norm folded into the convolutions before sharing
COMPRESSED_NAME = "model.clab"


@dataclass
class Result:
    handle: ModelHandle  # the model decoded from the compact file
    metrics: dict
    path: Path  # the compact file
    in_memory: ModelHandle | None = None  # the compressed model before writing (only with keep_in_memory=True)


def _sizes(handle, latency: bool) -> dict:
    """Parameters, FLOPs, fp32 bytes, prunable weights kept and (optionally) CPU latency: any model handle."""
    out = dict(metrics.model_summary(handle.model, handle.input_shape))
    prunable = handle.prunable_layers()
    out["prunable_weights"] = sum(w.numel() for w in prunable.values())
    out["prunable_nonzero"] = sum(int(torch.count_nonzero(w)) for w in prunable.values())
    if latency:
        out["latency_ms"] = metrics.cpu_latency_ms(handle.model, handle.input_shape)
    return out


def measure(handle: ModelHandle, data: DataBundle, split: str, latency: bool = True) -> dict:
    """Accuracy, parameters, FLOPs, fp32 bytes and CPU latency of a model."""
    return {"accuracy": metrics.accuracy(handle.model, data.loader(split)), **_sizes(handle, latency)}


def is_detector(handle) -> bool:
    return type(handle).__name__ == "DetectorHandle"


def measure_detector(handle, data, latency: bool = True) -> dict:
    """mAP50 (reported as `accuracy`, the score every page plots), mAP50-95, P, R, size, FLOPs, latency."""
    from compression.models.detector import evaluate_model

    scores = evaluate_model(handle.model, handle.imgsz, data.yaml_path)
    return {"accuracy": scores["map50"], **scores, **_sizes(handle, latency)}


@dataclass
class _Task:
    """What differs between a classifier and a detector run; everything else in compress is shared."""

    measure: Callable  # handle -> metrics dict (its "accuracy" is the score every page plots)
    score: Callable  # model -> that score, for the in-memory model before writing the file
    save: Callable  # (handle, path, extra meta) -> bytes written
    load: Callable  # path -> decoded handle
    score_name: str
    setup: Callable = lambda ctx: None  # task hooks on the StepContext (a detector's trainer and scorer)


def _task(handle, data, split: str, latency: bool) -> _Task:
    if is_detector(handle):
        from compression.methods.detect_train import detection_hooks
        from compression.models.detector import evaluate_model, load_detector_file, save_detector

        if data.num_classes != len(handle.names):
            from compression.errors import DataLoadError

            raise DataLoadError(f"the detector has {len(handle.names)} classes but {data.ref} has "
                                f"{data.num_classes}: pick the dataset it was trained on")
        # batch norm stays unfused here: fine-tuning a fused copy (no normalisation) recovered mAP50 0.17 where
        # the unfused one reached 0.98 (70% pruned, 2 epochs); a fold_bn step folds it after pruning
        return _Task(lambda h: measure_detector(h, data, latency),
                     lambda model: evaluate_model(model, handle.imgsz, data.yaml_path)["map50"],
                     save_detector, load_detector_file, "mAP50",
                     lambda ctx: detection_hooks(data, handle.imgsz, ctx))
    check_data_fits(handle, data.num_classes)
    return _Task(lambda h: measure(h, data, split, latency),
                 lambda model: metrics.accuracy(model, data.loader(split)),
                 save_compressed, lambda path: load_compressed(path, handle.extra.get("base_file")), "accuracy")


def compress(handle: ModelHandle, plan: Plan, data: DataBundle, out_dir: str | Path, *,
             on_progress: Callable[[str, float, dict], None] | None = None,
             on_log: Callable[[str], None] | None = None,
             cancel_requested: Callable[[], bool] | None = None,
             shift_pixels: int | None = None, latency: bool = True, keep_in_memory: bool = False) -> Result:
    """Run `plan` on a copy of `handle`, write `out_dir/model.clab` and `metrics.json`, return the Result.

    `keep_in_memory` also returns the compressed model as it was before writing (tests compare it with the
    decoded one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = _task(handle, data, plan.eval_split, latency)
    layers = list(handle.prunable_layers())
    plan.validate(layers)
    torch.manual_seed(plan.seed)
    emit = on_progress or (lambda stage, fraction, values: None)
    log = on_log or (lambda message: None)
    started = time.time()

    emit("measure original", 0.0, {})
    before = task.measure(handle)
    log(f"original: {task.score_name} {before['accuracy']:.4f}, {before['fp32_bytes']:,} fp32 bytes")
    work = handle.clone()
    ctx = StepContext(data=data, layers=layers, seed=plan.seed,
                      shift_pixels=(2 if data.ref == "digits" else 0) if shift_pixels is None else shift_pixels,
                      on_progress=emit, on_log=log, cancel_requested=cancel_requested)
    task.setup(ctx)
    ctx.notes["teacher"] = handle.model  # the original model (methods copy it before use; never changed)
    for step in plan.steps:
        if step.type == "distill":  # KD loss for every fine-tuning in the plan, not only the distill step's
            distill.use_teacher(ctx, step, handle.model)
    steps_report = {}
    for step in plan.steps:
        steps_report[step.type] = HANDLERS[step.type](work.model, step, ctx)
        ctx.check_cancelled()
    work.model.eval()
    in_memory_accuracy = task.score(work.model)

    emit("write compact file", 0.0, {})
    path = out_dir / COMPRESSED_NAME
    task.save(work, path, {"plan": plan.to_dict(), "data": data.ref})
    decoded = task.load(path)
    emit("measure compressed", 0.0, {})
    after = task.measure(decoded)
    compressed_bytes = metrics.file_bytes(path)
    rows = inspect_bytes(path.read_bytes())
    result = {
        "model": handle.label,
        "task": "detect" if is_detector(handle) else "classify",
        "score_name": task.score_name,
        "data": data.ref,
        "plan_name": plan.name,
        "eval_split": plan.eval_split,
        "before": before,
        "after": {**after, "compressed_bytes": compressed_bytes, "in_memory_accuracy": in_memory_accuracy},
        "compression_ratio": before["fp32_bytes"] / compressed_bytes,
        "accuracy_drop": before["accuracy"] - after["accuracy"],
        "weights_kept": after["prunable_nonzero"] / max(1, after["prunable_weights"]),
        "steps": steps_report,
        # every step re-estimates batch-norm statistics after it changes weights (methods/bn_stats.py)
        "batch_norm": {"layers": len(bn_stats.batch_norms(work.model)),
                       "reestimations": ctx.notes.get("bn_reestimations", 0)},
        "layers": [_layer_row(row) for row in rows],
        "seconds": round(time.time() - started, 2),
    }
    tmp = out_dir / ".metrics.json.tmp"  # written whole, then renamed: never a half-written result
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out_dir / "metrics.json")
    emit("done", 1.0, {"accuracy": after["accuracy"], "compressed_bytes": compressed_bytes})
    return Result(decoded, result, path, work if keep_in_memory else None)


def _layer_row(row: dict) -> dict:
    keep = ("name", "shape", "encoding", "numel", "nonzeros", "n_clusters", "bytes_positions", "bytes_indices",
            "bytes_codebook", "bytes_raw", "bytes_total", "quantizer", "layout", "formula_bits", "bits_per_weight")
    return {key: row.get(key) for key in keep}
