"""compress(handle, plan, data) -> Result: run a plan's steps, write the compact file, measure the decoded model.

What a job runs. Steps run in the plan's order through the handler registry (methods/registry.py: each
method file registers its own). Each handler returns what it made (codebooks, channel history, folded
batch norm) in a StepResult; compress collects them and hands them to the one compact-file writer.
The accuracy after compression is always measured on the model decoded from the file on disk, never on
the in-memory one, so the size and the accuracy shown belong to the same bytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from complab import deploy, metrics
from complab.data import DataBundle
from complab.errors import ModelLoadError
from complab.methods import bn_stats, distill
from complab.methods.context import StepContext
from complab.methods.registry import handler_for
from complab.methods.tasks import task_for
from complab.models.compact import Products
from complab.models.handle import EVALUATION_ONLY, check_data_fits
from complab.models.tasks import read_compact
from complab.plan import Plan
from complab.storage import inspect_bytes

COMPRESSED_NAME = "model.clab"


@dataclass
class Result:
    handle: object  # the model decoded from the compact file (a ModelHandle or DetectorHandle)
    metrics: dict
    path: Path  # the compact file
    in_memory: object | None = None  # the compressed handle before writing (only with keep_in_memory=True)
    products: Products | None = None  # what the steps made for the file (codebooks, channel history)


def compress(handle, plan: Plan, data: DataBundle, out_dir: str | Path, *,
             on_progress: Callable[[str, float, dict], None] | None = None,
             on_log: Callable[[str], None] | None = None,
             cancel_requested: Callable[[], bool] | None = None,
             shift_pixels: int | None = None, latency: bool = True, keep_in_memory: bool = False,
             make_out_dir: bool = True) -> Result:
    """Run `plan` on a copy of `handle`, write `out_dir/model.clab` and `metrics.json`, return the Result.

    `keep_in_memory` also returns the compressed model as it was before writing (tests compare it with the
    decoded one). `make_out_dir=False` (the engine: the run's folder exists) never creates it: a folder the user
    deleted is not brought back half-empty under the run's id."""
    if handle.architecture.get("kind") == "torchscript":  # sources.check(compress=True) says so before a run queues
        raise ModelLoadError(EVALUATION_ONLY)
    out_dir = Path(out_dir)
    if make_out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    elif not out_dir.is_dir():
        raise FileNotFoundError(f"the output folder {out_dir} was deleted")
    check_data_fits(handle, data.num_classes)  # sources.load_data checks it too; a caller may bring its own data
    split = plan.eval_split
    layers = list(handle.prunable_layers())
    plan.validate(layers)
    torch.manual_seed(plan.seed)
    emit = on_progress or (lambda stage, fraction, values: None)
    log = on_log or (lambda message: None)
    started = time.time()

    emit("measure original", 0.0, {})
    before = handle.measure(data, split, latency=False)  # its latency is timed at the end, paired with the file's
    log(f"original: {handle.score_name} {before['accuracy']:.4f}, {before['fp32_bytes']:,} fp32 bytes")
    work = handle.clone()
    if shift_pixels is None:
        shift_pixels = data.shift_pixels  # the dataset's own fine-tuning augmentation
    # the original model is the teacher (methods copy it before use; never changed)
    ctx = StepContext(data=data, layers=layers, task=task_for(handle, data, shift_pixels=shift_pixels),
                      seed=plan.seed, on_progress=emit, on_log=log, cancel_requested=cancel_requested,
                      teacher=handle.model)
    for step in plan.steps:
        if step.type == "distill":  # KD loss for every fine-tuning in the plan, not only the distill step's
            distill.use_teacher(ctx, step, handle.model)
    steps_report = {}
    products = Products()
    for step in plan.steps:
        outcome = handler_for(step.type)(work.model, step, ctx)
        steps_report[step.type] = outcome.report
        products.merge(outcome.products)
        ctx.check_cancelled()
    work.model.eval()
    in_memory_accuracy = handle.score(work.model, data, split)

    emit("write compact file", 0.0, {})
    path = out_dir / COMPRESSED_NAME
    work.save(path, {"plan": plan.to_dict(), "data": data.ref, **_normalization(handle, data)}, products)
    decoded = read_compact(path)
    emit("measure compressed", 0.0, {})
    after = decoded.measure(data, split, latency=False)
    if latency:  # both again, paired: measured minutes apart on a shared CPU, the two figures saw different loads
        before["latency_ms"], after["latency_ms"] = metrics.cpu_latencies_ms(
            [handle.deployed_model(), decoded.deployed_model()], tuple(handle.input_shape))
    ort_info = None
    if latency:  # the runtime a model ships in: ONNX Runtime, the original's fp32 and the compressed (QDQ if int8)
        emit("measure ONNX Runtime latency", 0.0, {})
        ort_before, ort_after, ort_info = deploy.ort_metrics(handle, decoded, handle.input_shape,
                                                             calibration=_calibration(decoded, data, log))
        if ort_info["error"]:  # no figure rather than a made-up one: the pages read these keys with .get()
            log(f"no ONNX Runtime latency: {ort_info['error']}")
        else:
            before["ort_latency_ms"], after["ort_latency_ms"] = ort_before, ort_after
    compressed_bytes = metrics.file_bytes(path)
    rows = inspect_bytes(path.read_bytes())
    result = {
        "model": handle.label,
        "task": handle.task,
        "score_name": handle.score_name,
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
                       "reestimations": ctx.bn_reestimations},
        "layers": [_layer_row(row) for row in rows],
        "seconds": round(time.time() - started, 2),
        "machine": metrics.machine(),  # what the latency and the report's "on this CPU" refer to
    }
    if ort_info is not None:
        result["ort"] = ort_info
    tmp = out_dir / ".metrics.json.tmp"  # written whole, then renamed: never a half-written result
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out_dir / "metrics.json")
    emit("done", 1.0, {"accuracy": after["accuracy"], "compressed_bytes": compressed_bytes})
    return Result(decoded, result, path, work if keep_in_memory else None, products)


CALIBRATION_IMAGES = 64  # training images that calibrate the QDQ export's output quantizers (deploy.py)


def calibration_batches(handle, data) -> list[torch.Tensor]:
    """CALIBRATION_IMAGES training images as the model reads them (float NCHW batches): what calibrates an int8
    model's ONNX export (deploy.onnx_model_bytes)."""
    if handle.kind.finds_boxes:
        from complab.methods.detect_train import detector_batches

        return detector_batches(data, handle.input_shape[-1], CALIBRATION_IMAGES)
    return [images for images, _ in data.loader("train", batch_size=32, size=CALIBRATION_IMAGES)]


def _calibration(decoded, data, log) -> list[torch.Tensor] | None:
    """calibration_batches for an int8 model (None otherwise, or where the images cannot be read)."""
    if not deploy.is_int8(decoded):
        return None
    try:
        return calibration_batches(decoded, data)
    except Exception as exc:  # noqa: BLE001 - without calibration the export quantizes fewer tensors, still valid
        log(f"ONNX export calibration skipped: {exc}")
        return None


def _normalization(handle, data) -> dict:
    """The mean and std the data was normalised with (a classifier's), for the file's meta: `eval` and anything
    else measuring the decoded file use them, so it is measured as the run measured it (issue 24, item 11)."""
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if not handle.kind.normalizes_input or not mean or not std:
        return {}
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _layer_row(row: dict) -> dict:
    keep = ("name", "shape", "encoding", "numel", "nonzeros", "n_clusters", "bytes_positions", "bytes_indices",
            "bytes_codebook", "bytes_raw", "bytes_total", "quantizer", "layout", "formula_bits", "bits_per_weight")
    return {key: row.get(key) for key in keep}
