"""Every number the app shows about a model, measured: parameters, FLOPs, bytes, accuracy, CPU latency.

- parameters: total and non-zero (pruned weights are exact zeros)
- FLOPs: dense, counted by `torch.utils.flop_counter` on one input; sparse, the same with each
  prunable layer's FLOPs scaled by its weight density (zero weights skipped, as a sparse kernel would)
- bytes: fp32 = the saved state dict (`torch.save`); compressed = the size of the file on disk
- accuracy: top-1 on a split
- latency: median wall time of repeated batches on the CPU, warm-up runs excluded (PyTorch eager here; ONNX
  Runtime's in complab/deploy.py)
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from complab.devices import device_for


def weight_layers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Prunable layers: every `<module>.weight` parameter with >= 2 dims (convolutions, linear layers)."""
    layers = {}
    for name, param in model.named_parameters():
        if name.endswith("weight") and param.dim() >= 2:
            layers[name[: -len(".weight")] if name != "weight" else ""] = param
    return layers


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params": total, "nonzero_params": nonzero}


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """Total dense FLOPs for one input of shape (C, H, W) and the FLOPs of each module by name."""
    model = model.eval()
    device = device_for(model)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros((1, *input_shape), device=device))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_module = {}
    for key, ops in counts.items():
        if key.startswith(root + "."):
            per_module[key[len(root) + 1:]] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense FLOPs and sparse FLOPs (each weight layer's FLOPs times its fraction of non-zero weights)."""
    total, per_module = layer_flops(model, input_shape)
    saved = 0.0
    for name, weight in weight_layers(model).items():
        layer = per_module.get(name, 0)
        density = float(torch.count_nonzero(weight)) / max(1, weight.numel())
        saved += layer * (1.0 - density)
    return {"flops": total, "sparse_flops": int(round(total - saved))}


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the model's fp32 state dict as `torch.save` writes it."""
    buffer = io.BytesIO()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, buffer)
    return buffer.tell()


def machine() -> dict:
    """The machine a measurement ran on, as metrics.json records it (latency and speed-ups depend on it)."""
    return {"platform": platform.platform(terse=True), "cpus": os.cpu_count(), "torch": torch.__version__,
            "int8_isa": int8_isa()}


CPU_FLAGS = Path("/proc/cpuinfo")
# the int8 instruction sets in the order ONNX Runtime's MLAS prefers them (it picks kernels by cpuid): (flag, name)
ISA_FLAGS = (("amx_int8", "AMX-INT8"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"),
             ("avx512bw", "AVX512BW"), ("avx2", "AVX2"), ("asimddp", "NEON-DOTPROD"), ("asimd", "NEON"))


def int8_isa(cpuinfo: str | None = None) -> str:
    """The CPU's best int8 instruction set in words (e.g. "AVX512-VNNI"), from /proc/cpuinfo's flags; "unknown"
    where there is no /proc/cpuinfo (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPU_FLAGS.read_text(errors="replace")
        except OSError:
            return "unknown"
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
            break  # every core lists the same flags
    for flag, name in ISA_FLAGS:
        if flag in flags:
            return name
    return "none (no int8 dot-product instructions)"


def file_bytes(path: str | os.PathLike) -> int:
    """The size of a file on disk: what 'compressed bytes' means, nothing else."""
    return Path(path).stat().st_size


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    device = device_for(model)
    correct = total = 0
    for images, labels in loader:
        logits = model(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return correct / max(1, total)


def cpu_latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1,
                   repeats: int = 30, warmup: int = 5, threads: int | None = None) -> float:
    """Median milliseconds of one forward pass on the CPU (warm-up runs excluded).

    threads: torch's intra-op threads while measuring (restored after); None: whatever the process uses."""
    return cpu_latencies_ms([model], input_shape, batch_size, repeats, warmup, threads)[0]


@torch.no_grad()
def cpu_latencies_ms(models: list[nn.Module], input_shape: tuple[int, ...], batch_size: int = 1,
                     repeats: int = 30, warmup: int = 5, threads: int | None = None) -> list[float]:
    """cpu_latency_ms of several models, their passes interleaved (A, B, A, B, ...), so a load that comes and
    goes on a shared CPU slows each alike (measured one after the other on a busy 2-core machine, a detector and
    its lightly pruned copy differed by 1.4x; interleaved, by under 15%)."""
    originals = [device_for(model) for model in models]
    before = torch.get_num_threads()
    times: list[list[float]] = [[] for _ in models]
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for model in models:
            model.eval().to("cpu")
        x = torch.randn((batch_size, *input_shape))
        for _ in range(warmup):
            for model in models:
                model(x)
        for _ in range(repeats):
            for model, row in zip(models, times, strict=True):
                start = time.perf_counter()
                model(x)
                row.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(before)
        for model, device in zip(models, originals, strict=True):
            model.to(device)
    return [statistics.median(row) for row in times]


def model_summary(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters, FLOPs and fp32 bytes (no data needed)."""
    return {**count_params(model), **flops(model, input_shape), "fp32_bytes": fp32_bytes(model)}
