"""Integer quantization (the int step) on three models, beside NNCF, and what ONNX Runtime makes of it on this CPU.

Models and splits:
- demo:vgg_small (assets/vgg_small.safetensors) on the digits at 32x32: accuracy on the test split;
- torchvision's ResNet-18 trained here on the digits (32x32, grey repeated to RGB; channel_pruning_table.
  train_resnet18, 4 epochs, seed 0), its weights cached in benchmarks/.cache-int_quant/ (delete to retrain):
  accuracy on the test split;
- the demo detector (assets/detector.pt, YOLOv8n at width 0.125, 160 px) on the shapes data: mAP50-95 on its val
  split (the split its recipes evaluate on).
Every quantized model comes out of `complab.pipeline.compress` with a one-step int plan (so the accuracy is the
model decoded from our compact file) and every ONNX file out of `complab.deploy.onnx_model_bytes`. Calibration:
CALIBRATION training images, no labels, drawn by the int step itself.

Keys (drops in points, i.e. percent of accuracy or of mAP, before minus after):
- `w8a8_drop_pts`: worst classifier, 8-bit weights (per channel, mse observer, nearest) and static 8-bit
  activations, post-training, no fine-tuning (target <= 0.5); `det_w8a8_map50_95_drop` the same on the detector
  (target <= 1.0);
- `w4_drop_pts`: worst classifier, 4-bit weights by GPTQ rounding (calibration images only), no fine-tuning
  (target <= 1.5);
- `ours_minus_nncf_pts`: worst classifier, our W8A8 model's accuracy minus NNCF's, both as int8 QDQ ONNX run by
  ONNX Runtime on the same test split; NNCF (`nncf.quantize`, its ONNX backend, CPU defaults: nncf_helper.py) is
  given our fp32 ONNX export and exactly the images our int step calibrated on (target >= -0.1). NNCF runs in
  its own environment, benchmarks/.cache-int_quant/venv-nncf (pip install nncf onnx onnxruntime; no torch),
  created on first use; the ORT latency of both quantized models is measured paired;
- `mixed_vs_uniform_pts`: worst classifier, accuracy of the solver's mixed-precision plan (bits per layer chosen
  from the sensitivity analysis's bits axis) minus every layer at 3 bits, the mixed file no larger than uniform's
  (re-solved while it is), both rounded to nearest (mixed_vs_uniform's docstring says why) (target >= 0.5);
- `ort_int8_speedup`: the W8A8 ResNet-18 as int8 QDQ over its fp32 export, both at 224x224 px, batch 1, 2 threads,
  ONNX Runtime's CPU provider, median of paired alternating runs (target >= 2.0); `ort_isa` names the int8
  instructions ONNX Runtime can use here (deploy.int8_isa);
- `ort_channels_latency_over_flops`: an untrained torchvision ResNet-18 at 224 px, channels kept 0.5 per group by
  L1 norm, kept counts rounded to 8 (the channels step's round_to): its ONNX Runtime fp32 speed-up over its
  FLOPs reduction (both original / pruned; 1.0 = the latency falls as the FLOPs do; target >= 0.8). Beside it
  the same without rounding and at keep 0.3, where rounding changes the widths (19, 38, 77, 154 -> 16, 40, 80, 152);
- `int_file_vs_onnx`: our compact file of the W8A8 ResNet-18 over the bytes of its int8 QDQ ONNX export
  (target <= 0.8).
Latencies are medians on a shared machine: noisy; the ratios come from paired runs, which keeps load off them.
Run time: the first run also trains the ResNet-18 (574 s here) and builds the NNCF environment (~20 s from the
local wheels); with both cached the two sensitivity analyses (bits axis, exact) dominate. On this 2-core machine
at a load average of 12 (five other sessions) the VGG part alone took 13.5 minutes; on an idle machine expect a
fraction of that. Prints one JSON object as its last line.

    .venv/bin/python benchmarks/int_quant.py [--rounds 30] [--skip-nncf] [--skip-detector]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from channel_pruning_table import rgb_digits, train_resnet18  # noqa: E402  (benchmarks/ is this script's folder)
from complab import metrics  # noqa: E402
from complab.data import load_data  # noqa: E402
from complab.methods.channels.graph import channel_groups, keep_count, l1_scores, remove_channels, top_mask  # noqa: E402
from complab.models.channel_replay import build_graph  # noqa: E402
from complab.models.handle import ModelHandle, load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import Plan  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache-int_quant"
VENV = CACHE / "venv-nncf"
HELPER = ROOT / "benchmarks" / "nncf_helper.py"
NNCF_PACKAGES = ("nncf", "onnx", "onnxruntime")
CALIBRATION = 256  # training images every int plan calibrates on (the step's default)
THREADS = 2
DEPLOY_SHAPE = (3, 224, 224)
RESNET_EPOCHS = 4


class BenchmarkError(Exception):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def int_plan(name: str, eval_split: str, **step) -> Plan:
    return Plan.from_dict({"schema_version": 1, "name": name, "seed": 0, "eval_split": eval_split,
                           "steps": [{"type": "int", "calibration_images": CALIBRATION, **step}]})


W8A8 = dict(bits={"_default": 8}, activation_bits=8, rounding="nearest")
W4 = dict(bits={"_default": 4}, rounding="gptq")


def run(handle, plan: Plan, data, out: Path):
    result = compress(handle, plan, data, out / plan.name, latency=False)
    return result


def drop_pts(metrics_: dict, key: str = "accuracy") -> float:
    return round(100 * (metrics_["before"][key] - metrics_["after"][key]), 3)


def at_shape(handle, shape: tuple[int, int, int]):
    """A shallow copy of a handle that exports at another input size (the model and its int weights shared)."""
    other = copy.copy(handle)
    object.__setattr__(other, "input_shape", tuple(shape))
    return other


# ----------------------------------------------------------------------------------------------------
# ONNX Runtime


def ort_accuracy(model_bytes: bytes, data, split: str = "test") -> float:
    """Top-1 of an ONNX classifier in ONNX Runtime (CPU, 2 threads) on a split, one image at a time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images, labels = data.split(split)[:]
    correct = 0
    for image, label in zip(images.numpy().astype(np.float32), labels.tolist(), strict=True):
        logits = session.run(None, {name: image[None]})[0]
        correct += int(int(np.argmax(logits[0])) == int(label))
    return correct / len(labels)


def calibration_images(handle, data) -> np.ndarray:
    """The training images our int step calibrates on (methods.int_quant.calibration_batches with the pipeline's
    context at plan seed 0 and step seed 0: the same draw), as one float32 array."""
    from complab.methods.context import StepContext
    from complab.methods.int_quant import calibration_batches
    from complab.methods.tasks import task_for

    ctx = StepContext(data=data, layers=list(handle.prunable_layers()),
                      task=task_for(handle, data, shift_pixels=data.shift_pixels), seed=0)
    return torch.cat(calibration_batches(ctx, CALIBRATION, 0)).numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# NNCF in its own environment


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_nncf() -> float | None:
    """Create the NNCF environment if it is not there; seconds it took (None: already there)."""
    stamp = VENV / ".installed"
    if stamp.exists() and venv_python().exists():
        return None
    started = time.time()
    log_path = CACHE / "venv-nncf-install.log"
    CACHE.mkdir(parents=True, exist_ok=True)
    for command in ([sys.executable, "-m", "venv", str(VENV)],
                    [str(venv_python()), "-m", "pip", "install", *NNCF_PACKAGES]):
        with open(log_path, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
        if code != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
            raise BenchmarkError(f"could not make the NNCF environment: `{' '.join(command)}` exited with {code}:\n  "
                                 + "\n  ".join(tail))
    probe = subprocess.run([str(venv_python()), "-c", "import nncf, onnxruntime, importlib.util; "
                            "print(importlib.util.find_spec('torch') is None)"], capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        raise BenchmarkError("nncf does not import in its environment, or pulled torch in: "
                             + (probe.stderr.strip() or probe.stdout.strip()))
    stamp.touch()
    return time.time() - started


def nncf_quantize(fp32_bytes: bytes, images: np.ndarray, folder: Path) -> tuple[bytes, dict]:
    model, calib, out = folder / "fp32.onnx", folder / "calibration.npy", folder / "nncf_int8.onnx"
    model.write_bytes(fp32_bytes)
    np.save(calib, images)
    done = subprocess.run([str(venv_python()), str(HELPER), str(model), str(calib), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError("nncf_helper failed: " + "\n".join(done.stderr.strip().splitlines()[-8:]))
    return out.read_bytes(), json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------
# the parts


def classifier(name: str, handle, data, out: Path, args) -> dict:
    from complab import deploy

    row: dict = {}
    w8 = run(handle, int_plan(f"{name}-w8a8", "test", **W8A8), data, out)
    row["fp32_accuracy"] = round(w8.metrics["before"]["accuracy"], 4)
    row["w8a8_accuracy"] = round(w8.metrics["after"]["accuracy"], 4)
    row["w8a8_drop_pts"] = drop_pts(w8.metrics)
    row["w8a8_file_bytes"] = w8.metrics["after"]["compressed_bytes"]
    log(f"{name}: fp32 {row['fp32_accuracy']}, W8A8 {row['w8a8_accuracy']}")
    w4 = run(handle, int_plan(f"{name}-w4", "test", **W4), data, out)
    row["w4_accuracy"] = round(w4.metrics["after"]["accuracy"], 4)
    row["w4_drop_pts"] = drop_pts(w4.metrics)
    log(f"{name}: W4 gptq {row['w4_accuracy']}")
    images = calibration_images(handle, data)
    batches = [torch.from_numpy(images[i:i + 32]) for i in range(0, len(images), 32)]
    fp32_onnx = deploy.onnx_model_bytes(handle, int8=False)
    ours_onnx = deploy.onnx_model_bytes(w8.handle, int8=True, calibration=batches)
    row["onnx_fp32_bytes"], row["onnx_int8_bytes"] = len(fp32_onnx), len(ours_onnx)
    row["int_file_vs_onnx"] = round(w8.metrics["after"]["compressed_bytes"] / len(ours_onnx), 4)
    row["ours_ort_accuracy"] = round(ort_accuracy(ours_onnx, data), 4)
    row["fp32_ort_accuracy"] = round(ort_accuracy(fp32_onnx, data), 4)
    if not args.skip_nncf:
        (out / name).mkdir(parents=True, exist_ok=True)
        nncf_onnx, info = nncf_quantize(fp32_onnx, images, out / name)
        row["nncf"] = info
        row["nncf_ort_accuracy"] = round(ort_accuracy(nncf_onnx, data), 4)
        row["ours_minus_nncf_pts"] = round(100 * (row["ours_ort_accuracy"] - row["nncf_ort_accuracy"]), 3)
        ours_ms, nncf_ms, _ = deploy.ort_latency_pair(ours_onnx, nncf_onnx, tuple(handle.input_shape),
                                                      threads=THREADS, rounds=args.rounds)
        row["ort_ms_ours_int8"], row["ort_ms_nncf_int8"] = round(ours_ms, 3), round(nncf_ms, 3)
        log(f"{name}: ours in ORT {row['ours_ort_accuracy']}, NNCF {row['nncf_ort_accuracy']}")
    try:
        row.update(mixed_vs_uniform(name, handle, data, out))
    except BenchmarkError as exc:
        row["mixed_error"] = str(exc)
        log(f"{name}: no mixed-precision figure: {exc}")
    row["w8a8"], row["batches"] = w8, batches
    return row


MIXED_ROUNDING = "nearest"  # both sides of mixed_vs_uniform: the comparison is of the widths chosen, not the rounding
MIXED_RESOLVES = 3  # re-solves of the mixed plan when its real file is larger than uniform's


def mixed_vs_uniform(name: str, handle, data, out: Path) -> dict:
    """The solver's bits per layer (mixed precision, integers only) against every layer at 3 bits, at the same real
    file bytes: uniform 3-bit is written first, then the mixed plan is solved for uniform's estimated bytes
    (analysis.targets "bits:3") and, while its real file is larger than uniform's, solved again for a target scaled
    down by the overshoot. Both plans round to the nearest level (MIXED_ROUNDING): GPTQ makes uniform 3-bit nearly
    lossless on these models (99.44-99.72% on 360 test images, one image being 0.28 pts), which would leave no room
    to see what the widths do. One exact sensitivity analysis with only the bits axis."""
    from complab.analysis.estimate import model_stats
    from complab.analysis.grid import SensitivityConfig
    from complab.analysis.sensitivity import analyze
    from complab.analysis.solver import grids_from_report, solve
    from complab.analysis.targets import average_bits_bytes, plan_from_settings, target_plan

    started = time.time()
    report = analyze(handle, data, SensitivityConfig(sparsities=(0.0,), n_clusters=(), bits=(8, 6, 4, 3, 2),
                                                     val_size=512)).to_dict()
    seconds = time.time() - started
    stats = model_stats(handle)
    options = {"calibration_images": CALIBRATION, "rounding": MIXED_ROUNDING}
    uniform_plan = target_plan(stats, report, "uniform", 3.0, name=name, int_options=options).plan
    uniform = run(handle, uniform_plan, data, out).metrics["after"]
    grids = grids_from_report(report)
    layers = [layer for layer in grids if layer in stats.layers]
    target = average_bits_bytes(stats, 3.0, layers)
    for attempt in range(MIXED_RESOLVES):
        solved = solve(stats, grids, "compressed_bytes", target, axes=("bits",))
        plan = plan_from_settings(solved["settings"], f"{name}-mixed-{attempt}", bits=solved.get("bits"),
                                  int_options=options)
        mixed = run(handle, plan, data, out).metrics["after"]
        if mixed["compressed_bytes"] <= uniform["compressed_bytes"]:
            break
        target *= uniform["compressed_bytes"] / mixed["compressed_bytes"]
    log(f"{name}: uniform 3 bits {uniform['accuracy']:.4f} ({uniform['compressed_bytes']} B), mixed "
        f"{mixed['accuracy']:.4f} ({mixed['compressed_bytes']} B, {attempt + 1} solve(s))")
    return {"uniform3_accuracy": round(uniform["accuracy"], 4), "uniform3_file_bytes": uniform["compressed_bytes"],
            "mixed_accuracy": round(mixed["accuracy"], 4), "mixed_file_bytes": mixed["compressed_bytes"],
            "mixed_bits": solved.get("bits"), "mixed_solves": attempt + 1, "mixed_rounding": MIXED_ROUNDING,
            "sensitivity_s": round(seconds, 1),
            "mixed_vs_uniform_pts": round(100 * (mixed["accuracy"] - uniform["accuracy"]), 3)}


def detector(out: Path) -> dict:
    from complab.data.detection import load_detection_data
    from complab.models.detector import load_detector

    handle, data = load_detector(), load_detection_data("shapes")
    result = run(handle, int_plan("detector-w8a8", "val", **W8A8), data, out)
    before, after = result.metrics["before"], result.metrics["after"]
    return {"map50_95_before": round(before["map50_95"], 4), "map50_95_after": round(after["map50_95"], 4),
            "map50_before": round(before["map50"], 4), "map50_after": round(after["map50"], 4),
            "det_w8a8_map50_95_drop": drop_pts(result.metrics, "map50_95"),
            "file_bytes": after["compressed_bytes"], "fp32_bytes": before["fp32_bytes"]}


def int8_speedup(w8, original, batches: list[torch.Tensor], rounds: int) -> dict:
    """ResNet-18 at 224 px: fp32 ONNX vs our int8 QDQ ONNX in ONNX Runtime, paired."""
    from complab import deploy

    fp32 = deploy.onnx_model_bytes(at_shape(original, DEPLOY_SHAPE), int8=False)
    # the activation ranges were calibrated at 32 px; the output quantizers see the same images upsampled to 224
    big = [torch.nn.functional.interpolate(b[:8], size=DEPLOY_SHAPE[1:], mode="bilinear") for b in batches[:1]]
    int8 = deploy.onnx_model_bytes(at_shape(w8.handle, DEPLOY_SHAPE), int8=True, calibration=big)
    fp32_ms, int8_ms, info = deploy.ort_latency_pair(fp32, int8, DEPLOY_SHAPE, threads=THREADS, rounds=rounds)
    return {"ort_int8_speedup": round(fp32_ms / int8_ms, 3), "ort_fp32_ms_224": round(fp32_ms, 3),
            "ort_int8_ms_224": round(int8_ms, 3), "ort_info": info}


def pruned_resnet18(keep: float, round_to: int) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    if keep < 1.0:
        graph = build_graph(model, DEPLOY_SHAPE)
        groups = channel_groups(model, DEPLOY_SHAPE, graph)
        masks = [(g, top_mask(l1_scores(g), keep_count(g.channels, keep, round_to))) for g in groups]
        for group, mask in masks:
            remove_channels(model, graph, group, mask)
    return model.eval()


def channels_latency(rounds: int) -> dict:
    """ResNet-18 at 224 px, L1 channels: ORT fp32 speed-up over FLOPs reduction, rounded to 8 or not."""
    from complab import deploy

    def export(model):
        handle = ModelHandle(model, {"kind": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 10}},
                             DEPLOY_SHAPE, 10, "resnet18")
        return deploy.onnx_model_bytes(handle, int8=False)

    original = pruned_resnet18(1.0, 1)
    base_flops = metrics.flops(original, DEPLOY_SHAPE)["flops"]
    base_params = sum(p.numel() for p in original.parameters())
    base_bytes = export(original)
    rows: dict = {}
    for keep in (0.5, 0.3):
        for round_to in (1, 8):
            model = pruned_resnet18(keep, round_to)
            widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
            same = next((row for row in rows.values() if row["keep"] == keep and row["all_widths"] == widths), None)
            if same is not None:  # rounding changed nothing (every width already a multiple): the same model
                rows[f"keep{keep}_round{round_to}"] = {**same, "round_to": round_to, "same_model_as_round1": True}
                continue
            flops = metrics.flops(model, DEPLOY_SHAPE)["flops"]
            base_ms, ms, _ = deploy.ort_latency_pair(base_bytes, export(model), DEPLOY_SHAPE, threads=THREADS,
                                                     rounds=rounds, seconds=15.0)
            reduction, speedup = base_flops / flops, base_ms / ms
            rows[f"keep{keep}_round{round_to}"] = {
                "keep": keep, "round_to": round_to, "flops_reduction": round(reduction, 3),
                "ort_speedup": round(speedup, 3), "latency_over_flops": round(speedup / reduction, 3),
                "ms": round(ms, 3), "original_ms": round(base_ms, 3),
                "params_kept": round(sum(p.numel() for p in model.parameters()) / base_params, 4),
                "widths": sorted(set(widths)), "all_widths": widths}
            log(f"channels keep {keep} round_to {round_to}: {rows[f'keep{keep}_round{round_to}']}")
    for row in rows.values():
        row.pop("all_widths", None)
    return {"ort_channels_latency_over_flops": rows["keep0.5_round8"]["latency_over_flops"], "channels": rows}


def detector_channels(rounds: int) -> dict:
    """The demo detector at its 160 px, channels kept 0.5 and 0.4 by L1 (prune_detector), rounded to 8 or not: ORT fp32
    speed-up over FLOPs reduction (supporting figures for the round_to default)."""
    from complab import deploy
    from complab.methods.channels.detector import prune_detector
    from complab.models.detector import DetectorHandle, load_detector

    original = load_detector()
    shape = tuple(original.input_shape)

    def export(model):
        handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)},
                                shape[1], "benchmark")
        return deploy.onnx_model_bytes(handle, int8=False)

    base_bytes, base_flops = export(original.model), metrics.flops(original.model, shape)["flops"]
    base_params = sum(p.numel() for p in original.model.parameters())
    rows: dict = {}
    for keep in (0.5, 0.4):
        for round_to in (1, 8):
            model = copy.deepcopy(original.model).eval()
            prune_detector(model, keep, shape, "l1", 0, round_to)
            widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
            same = next((row for row in rows.values() if row["keep"] == keep and row["all_widths"] == widths), None)
            if same is not None:
                rows[f"keep{keep}_round{round_to}"] = {**same, "round_to": round_to, "same_model_as_round1": True}
                continue
            flops = metrics.flops(model, shape)["flops"]
            base_ms, ms, _ = deploy.ort_latency_pair(base_bytes, export(model), shape, threads=THREADS,
                                                     rounds=max(rounds, 60), seconds=10.0)
            rows[f"keep{keep}_round{round_to}"] = {
                "keep": keep, "round_to": round_to, "flops_reduction": round(base_flops / flops, 3),
                "ort_speedup": round(base_ms / ms, 3),
                "latency_over_flops": round(base_ms / ms * flops / base_flops, 3),
                "ms": round(ms, 3), "original_ms": round(base_ms, 3),
                "params_kept": round(sum(p.numel() for p in model.parameters()) / base_params, 4),
                "widths": sorted(set(widths)), "all_widths": widths}
            log(f"detector channels keep {keep} round_to {round_to}: {rows[f'keep{keep}_round{round_to}']}")
    for row in rows.values():
        row.pop("all_widths", None)
    return rows


def resnet18(data):
    """The digits-trained ResNet-18, from the cache when it is there."""
    path = CACHE / f"resnet18_digits_e{RESNET_EPOCHS}.pt"
    if path.exists():
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        model.load_state_dict(torch.load(path, weights_only=True))
        return ModelHandle(model.eval(), {"kind": "torchvision", "arch": "resnet18", "kwargs": {"num_classes": 10}},
                           (3, 32, 32), 10, "torchvision:resnet18 (trained here on the digits)")
    started = time.time()
    handle = train_resnet18(data, RESNET_EPOCHS)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(handle.model.state_dict(), path)
    log(f"resnet18 trained in {time.time() - started:.0f} s (cached in {path.relative_to(ROOT)})")
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="paired ORT runs per latency")
    parser.add_argument("--skip-nncf", action="store_true")
    parser.add_argument("--skip-detector", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    from complab import deploy

    started = time.time()
    venv_seconds = None if args.skip_nncf else ensure_nncf()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        digits = load_data("digits", input_size=32)
        vgg = classifier("vgg_small", load_model("demo:vgg_small"), digits, folder, args)
        rgb = rgb_digits()
        r18_handle = resnet18(rgb)
        r18 = classifier("resnet18", r18_handle, rgb, folder, args)
        speed = int8_speedup(r18.pop("w8a8"), r18_handle, r18.pop("batches"), args.rounds)
        vgg.pop("w8a8"), vgg.pop("batches")
        chans = channels_latency(args.rounds)
        det = None if args.skip_detector else detector(folder)
        det_channels = None if args.skip_detector else detector_channels(args.rounds)
    rows = {"vgg_small": vgg, "resnet18": r18}

    def worst(key: str, pick=max):
        values = [row[key] for row in rows.values() if row.get(key) is not None]
        return pick(values) if values else None

    out = {
        "w8a8_drop_pts": worst("w8a8_drop_pts"),
        "det_w8a8_map50_95_drop": det and det["det_w8a8_map50_95_drop"],
        "w4_drop_pts": worst("w4_drop_pts"),
        "ours_minus_nncf_pts": worst("ours_minus_nncf_pts", min),
        "mixed_vs_uniform_pts": worst("mixed_vs_uniform_pts", min),
        "ort_int8_speedup": speed["ort_int8_speedup"],
        "ort_channels_latency_over_flops": chans["ort_channels_latency_over_flops"],
        "int_file_vs_onnx": r18["int_file_vs_onnx"],
        "ort_isa": deploy.int8_isa(),
        "ort_threads": THREADS,
        "ort_fp32_ms_224": speed["ort_fp32_ms_224"], "ort_int8_ms_224": speed["ort_int8_ms_224"],
        "ort_info": speed["ort_info"],
        "classifiers": rows, "detector": det, "channels": chans["channels"],
        "detector_channels": det_channels,
        "targets": {"w8a8_drop_pts": "<= 0.5", "det_w8a8_map50_95_drop": "<= 1.0", "w4_drop_pts": "<= 1.5",
                    "ours_minus_nncf_pts": ">= -0.1", "mixed_vs_uniform_pts": ">= 0.5", "ort_int8_speedup": ">= 2.0",
                    "ort_channels_latency_over_flops": ">= 0.8", "int_file_vs_onnx": "<= 0.8"},
        "calibration_images": CALIBRATION,
        "nncf_venv_build_s": None if venv_seconds is None else round(venv_seconds, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
