"""A run's two CPU latencies as its metrics.json recorded them: PyTorch eager (`latency_ms`) and ONNX Runtime
(`ort_latency_ms`, with `metrics["ort"]`: version, threads, the CPU's int8 instruction set, whether the compressed
model ran as QDQ integers, or why there is no figure), in the words every page and the report use.

Nothing is measured here: the figures were measured by the run (complab/deploy.py, paired and alternating, batch 1)
and checked by complab/runfolder.py. Old runs lack the ONNX Runtime keys (they are read with .get()); a run whose
ONNX Runtime could not be used says why in `reason`, one line, never a traceback.
"""

from __future__ import annotations

import math

# why a run has no ONNX Runtime figure, when its metrics do not say (metrics["ort"]["error"] says it when they do)
NOT_RECORDED = ("no ONNX Runtime latency: this run finished before runs measured it; re-run it (Runs page) to "
                "measure it")
LATENCY_OFF = "no latency: this run was launched with latency measurement off"
NOT_MEASURED = "no ONNX Runtime latency: the run recorded none"


def _ms(value) -> float | None:
    """A recorded latency in ms, or None (absent, not a number, not above zero)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value > 0 else None


def _times(before: float | None, after: float | None) -> float | None:
    return before / after if before and after else None


def _version(text) -> str | None:
    """"1.32.0" -> "1.32" (the release people name); None when not recorded."""
    if not isinstance(text, str) or not text.strip():
        return None
    parts = text.strip().split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) else text.strip()[:40]


def ort_info(metrics: dict) -> dict:
    """metrics["ort"] as the pages read it: {"version", "threads", "isa", "provider", "int8", "error"} (None where
    the run did not record one; {} of them all None for an old run)."""
    ort = metrics.get("ort") if isinstance(metrics.get("ort"), dict) else {}
    threads = ort.get("threads")
    error = ort.get("error")
    return {"version": _version(ort.get("version")),
            "threads": threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
            else None,
            "isa": ort.get("isa") if isinstance(ort.get("isa"), str) and ort.get("isa").strip() else None,
            "provider": ort.get("provider") if isinstance(ort.get("provider"), str) else None,
            "int8": ort.get("int8") is True,
            "error": error.strip().splitlines()[0][:300] if isinstance(error, str) and error.strip() else None}


def figures(metrics: dict) -> dict:
    """Both latencies of a run, before and after: {"torch_before", "torch_after", "torch_times", "ort_before",
    "ort_after", "ort_times" (ms, and original / compressed; None where not recorded), "ort": ort_info, "reason":
    why there is no ONNX Runtime pair (one line), None when there is one}."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    torch_before, torch_after = _ms(before.get("latency_ms")), _ms(after.get("latency_ms"))
    ort_before, ort_after = _ms(before.get("ort_latency_ms")), _ms(after.get("ort_latency_ms"))
    info = ort_info(metrics)
    reason = None
    if ort_before is None or ort_after is None:
        if info["error"]:
            reason = f"no ONNX Runtime latency: {info['error'].rstrip('.')}"
        elif "ort" in metrics:
            reason = NOT_MEASURED
        elif torch_before is None and torch_after is None:
            reason = LATENCY_OFF
        else:
            reason = NOT_RECORDED
    return {"torch_before": torch_before, "torch_after": torch_after, "torch_times": _times(torch_before, torch_after),
            "ort_before": ort_before, "ort_after": ort_after, "ort_times": _times(ort_before, ort_after),
            "ort": info, "reason": reason}


def ort_setting(info: dict, int8_words: bool = True) -> str:
    """How ONNX Runtime ran, in words: "ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8" (the compressed model ran
    as QDQ integers on that instruction set) or "ONNX Runtime 1.32, 2 threads, float32" (it did not)."""
    parts = [f"ONNX Runtime {info['version']}" if info.get("version") else "ONNX Runtime"]
    if info.get("threads"):
        parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    if int8_words:
        if info.get("int8"):
            parts.append(f"{info['isa']} int8" if info.get("isa") else "int8")
        else:
            parts.append("float32")
    return ", ".join(parts)


def headline_words(info: dict) -> str:
    """The bracket of the headline's ONNX Runtime clause: "int8, 2 threads, AVX512-VNNI" or "float32, 2 threads"."""
    parts = ["int8" if info.get("int8") else "float32"]
    if info.get("threads"):
        parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    if info.get("int8") and info.get("isa"):
        parts.append(str(info["isa"]))
    return ", ".join(parts)
