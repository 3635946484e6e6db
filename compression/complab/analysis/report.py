"""What a report on finished runs says, as data: the headline, where the bytes went, the per-layer table, detections.

Everything here is read from what a run left on disk (metrics.json, plan.json, the compact file itself);
nothing is re-measured except the detector's boxes on a few validation images. The HTML is drawn by
compression/complab/ui/report.py.

Where the bytes went (`bytes_waterfall`): the fp32 size (`torch.save` of the fp32 state dict, what the
compression ratio divides) is walked to the compact file's size through the parts of that file as the
file's own sections count them (storage.inspect_bytes): the zero weights pruning took out, the
positions of the kept ones (Han et al.'s relative indices at a fixed width), the kept values replaced by
log2(k+1)-bit indices into a codebook of k shared values, the entropy coding of both streams, vector
quantizers' codes, zstd on values kept at full width, the sections' own framing and the file header with its
JSON metadata. Each part is a difference of byte counts, so the bars add up to the file size exactly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from complab import intervals, sources
from complab.analysis import detections
from complab.errors import CompressionLabError
from complab.models.tasks import task_kind
from complab.storage import inspect_bytes, inspect_header

# the waterfall's steps, in the order they are drawn (a step no tensor has is left out)
STEPS = (
    ("framing", "fp32 file -> bare tensors (torch.save's framing; buffers no longer kept)"),
    ("structure", "smaller architecture (channels removed, batch norm folded)"),
    ("pruned", "pruned: zero weights not stored"),
    ("positions", "positions of the kept weights (fixed-width relative indices)"),
    ("indices", "shared values: 32-bit values -> log2(k+1)-bit indices"),
    ("codebooks", "codebooks (the shared values or codewords)"),
    ("entropy", "entropy coded (positions and indices)"),
    ("codes", "quantized: weights -> codes"),
    ("levels", "integer-quantized: 32-bit weights -> entropy-coded integer levels"),
    ("zstd", "zstd on values kept as 32-bit numbers (sparse and raw tensors)"),
    ("stored", "other tensors stored as they are"),
    ("sections", "section headers (names, shapes, stream tables)"),
    ("header", "file header + metadata (plan, architecture)"),
)
STEP_LABELS = dict(STEPS)
# the same steps as a figure's axis labels: a word or two, a line each (the long label is the bar's hover)
STEP_SHORT = {"framing": "framing", "structure": "smaller<br>arch.", "pruned": "pruned", "positions": "posi-<br>tions",
              "indices": "shared<br>values", "codebooks": "code-<br>books", "entropy": "entropy<br>coding",
              "codes": "VQ<br>codes", "levels": "int<br>levels", "zstd": "zstd", "stored": "stored<br>as is",
              "sections": "section<br>headers", "header": "file<br>header"}


@dataclass
class Waterfall:
    """Start (fp32 bytes), signed steps (key -> bytes), end (the file's size): start + sum(steps) == end."""

    title: str
    start: int
    steps: dict[str, int] = field(default_factory=dict)
    end: int = 0

    def bars(self) -> list[tuple[str, int]]:
        """(label, signed bytes) of the steps in drawing order, zero steps left out."""
        return [(STEP_LABELS[key], self.steps[key]) for key, _ in STEPS if self.steps.get(key)]

    def short_bars(self) -> list[tuple[str, str, int]]:
        """(short label, long label, signed bytes) of the steps in drawing order, zero steps left out."""
        return [(STEP_SHORT[key], STEP_LABELS[key], self.steps[key]) for key, _ in STEPS if self.steps.get(key)]


def dense_bytes(row: dict) -> int:
    """Bytes of the tensor in the fp32 state dict: floats as float32, other dtypes at their own size."""
    dtype = getattr(torch, row["dtype"])
    return row["numel"] * (4 if dtype.is_floating_point else torch.empty((), dtype=dtype).element_size())


def _stream(row: dict, name: str) -> dict | None:
    return next((s for s in row.get("streams") or [] if s["stream"] == name), None)


def tensor_steps(row: dict) -> dict[str, int]:
    """One section of inspect_bytes as signed steps from its fp32 bytes to its bytes in the file (they sum to
    bytes_total - fp32 bytes exactly)."""
    dense = dense_bytes(row)
    encoding = row["encoding"]
    size = dense // max(1, row["numel"])
    steps = {"sections": row["bytes_total"] - row["bytes_positions"] - row["bytes_indices"]
             - row["bytes_codebook"] - row["bytes_raw"]}
    if encoding in ("shared", "sparse"):
        kept = row["nonzeros"]
        steps["pruned"] = -(row["numel"] - kept) * size
        positions = _stream(row, "positions")
        fixed_positions = 0
        if positions is not None:  # fixed-width gaps (v2: absolute indices): what the entropy coder started from
            width = row["gap_bits"] or max(1, (row["numel"] - 1).bit_length())
            fixed_positions = math.ceil(positions["symbols"] * width / 8)
        steps["positions"] = fixed_positions
        entropy = row["bytes_positions"] - fixed_positions
        if encoding == "shared":
            indices = _stream(row, "indices")
            fixed_indices = math.ceil(indices["symbols"] * max(1, math.ceil(math.log2(row["n_clusters"] + 1))) / 8)
            steps["indices"] = fixed_indices - kept * size
            steps["codebooks"] = row["bytes_codebook"]
            entropy += row["bytes_indices"] - fixed_indices
        else:  # kept values stored at full width (zstd when smaller)
            steps["zstd"] = row["bytes_raw"] - kept * size
        steps["entropy"] = entropy
    elif encoding == "vq":
        steps["codes"] = row["bytes_indices"] - dense
        steps["codebooks"] = row["bytes_codebook"]
    elif encoding == "int":  # the levels (after the non-zero ones' positions in a pruned layer) and the scales
        steps["levels"] = row["bytes_positions"] + row["bytes_indices"] - dense
        steps["codebooks"] = row["bytes_codebook"]
    else:  # raw: as they are, or zstd-compressed when smaller
        steps["zstd" if row.get("raw_compression") else "stored"] = row["bytes_raw"] - dense
    assert sum(steps.values()) == row["bytes_total"] - dense, row["name"]
    return steps


def rows_steps(rows: list[dict]) -> tuple[dict[str, int], int]:
    """The waterfall steps of inspect rows (the header row as "header"), and their tensors' fp32 bytes."""
    steps: dict[str, int] = {}
    dense_total = 0
    for row in rows:
        if row["encoding"] == "header":
            steps["header"] = steps.get("header", 0) + row["bytes_total"]
            continue
        dense_total += dense_bytes(row)
        for key, value in tensor_steps(row).items():
            steps[key] = steps.get(key, 0) + value
    return steps, dense_total


def bytes_waterfall(rows: list[dict], fp32_bytes: int, title: str = "whole model",
                    params_removed: int = 0) -> Waterfall:
    """The whole file: fp32 bytes -> the file's size (the sum of the rows' bytes_total).

    params_removed: parameters the architecture lost (channels removed, batch norm folded: metrics' before.params
    - after.params); their fp32 bytes are one step, and torch.save's framing (with any buffers that went with
    them) the rest of the gap between the fp32 file and the file's tensors at full width."""
    steps, dense_total = rows_steps(rows)
    steps["structure"] = -4 * max(0, params_removed)
    steps["framing"] = dense_total - fp32_bytes - steps["structure"]
    end = sum(row["bytes_total"] for row in rows)
    waterfall = Waterfall(title, fp32_bytes, steps, end)
    assert waterfall.start + sum(waterfall.steps.values()) == waterfall.end  # the bars add up to the file exactly
    return waterfall


def layer_waterfalls(rows: list[dict], limit: int | None = None) -> list[Waterfall]:
    """Each weight layer's tensors (weight and bias, by module name), fp32 bytes -> its bytes in the file,
    largest layer (by fp32 bytes) first."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["encoding"] != "header":
            groups.setdefault(row["name"].rsplit(".", 1)[0], []).append(row)
    out = []
    for layer, members in groups.items():
        steps: dict[str, int] = {}
        for row in members:
            for key, value in tensor_steps(row).items():
                steps[key] = steps.get(key, 0) + value
        start = sum(dense_bytes(row) for row in members)
        waterfall = Waterfall(layer, start, steps, sum(row["bytes_total"] for row in members))
        assert waterfall.start + sum(waterfall.steps.values()) == waterfall.end
        out.append(waterfall)
    out.sort(key=lambda w: -w.start)
    return out[:limit] if limit else out


def layer_table(rows: list[dict]) -> list[dict]:
    """Per tensor of the file, largest first: encoding, sparsity, k or quantizer, bytes and bits per weight."""
    table = []
    for row in rows:
        if row["encoding"] == "header":
            continue
        nonzeros = row.get("nonzeros")
        table.append({
            "tensor": row["name"], "shape": "x".join(str(s) for s in row.get("shape") or []) or "-",
            "encoding": row["encoding"], "weights": row["numel"],
            "sparsity": None if nonzeros is None or not row["numel"] else round(1 - nonzeros / row["numel"], 4),
            "k or quantizer": row.get("quantizer") or row.get("n_clusters") or "",
            "fp32 bytes": dense_bytes(row), "file bytes": row["bytes_total"],
            "bits per weight": None if row.get("bits_per_weight") is None else round(row["bits_per_weight"], 3)})
    table.sort(key=lambda r: -r["fp32 bytes"])
    return table


def _times(before: float | None, after: float | None) -> float | None:
    if not before or not after:
        return None
    return before / after


UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{12}-")  # the app's uploads: "<12 hex of the file's sha256>-<its name>"
HEX_RUN = re.compile(r"\b[0-9a-f]{16,}\b")  # a digest in a label (a file's sha256): never in a title


def _file_name(text: str) -> str:
    """The last part of a path ("/home/x/uploads/3fa9b1c2d4e5-resnet.pt" -> "resnet.pt"), upload prefix removed."""
    name = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return UPLOAD_PREFIX.sub("", name) or name


def model_name(label: str | None) -> str:
    """A model's label as a person names it: "demo:lenet5" -> "LeNet-5 (demo)", "torchvision:resnet18
    (3fa9b1c2d4e5-weights.safetensors)" -> "resnet18 (weights.safetensors)", "torchscript:/home/x/net.pt" ->
    "net.pt (TorchScript)"; never a local path or a file's digest."""
    if not isinstance(label, str) or not label.strip():
        return "the model"
    kind, _, arg = label.strip().partition(":")
    if kind == "demo":
        from complab.models.zoo import DEMO_MODELS  # (the zoo's descriptions name the architectures)

        spec = DEMO_MODELS.get(arg)
        name = re.sub(r"\s*\(.*?\)", "", spec.description.split(":")[0]).strip() if spec else arg
        return f"{name} (demo)"
    if kind == "detector" and arg == "demo":
        return "demo detector"
    if kind == "torchvision":
        arch, _, weights = arg.partition(" (")
        return f"{arch} ({_file_name(weights.rstrip(')'))})" if weights else arch
    if kind == "torchscript":
        return f"{_file_name(arg)} (TorchScript)"
    name = _file_name(label.strip())
    return HEX_RUN.sub("", name).strip(" -_") or "the model"


def data_name(ref: str | None) -> str:
    """A data reference as a person names it: "digits", "imagefolder:/home/x/pets" -> "image folder pets"."""
    if not isinstance(ref, str) or not ref.strip():
        return "its data"
    kind, _, arg = ref.partition(":")
    if not arg:
        return ref
    return f"{'image folder' if kind == 'imagefolder' else kind} {_file_name(arg)}"


def split_images(metrics: dict) -> tuple[int | None, int | None]:
    """The number of images the score before and after was measured on (metrics["before"]["images"]); None for
    a run that did not record it (older runs)."""
    def images(side: dict) -> int | None:
        value = side.get("images")
        return int(value) if isinstance(value, int | float) and value > 0 else None

    return images(metrics["before"]), images(metrics["after"])


def map_intervals(metrics: dict) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """A detector run's 95% bootstrap intervals of mAP50 before and after (metrics[side]["map50_interval"], [low,
    high] fractions); None for a side that did not record one (older runs, a classifier)."""
    return (intervals.recorded(metrics["before"].get("map50_interval")),
            intervals.recorded(metrics["after"].get("map50_interval")))


def score_split(metrics: dict) -> str:
    """The split the run's score was measured on ("test" or "validation")."""
    kind = task_kind(metrics.get("task"))
    return metrics.get("eval_split", "test") if kind.chooses_split else "validation"


def headline_numbers(metrics: dict) -> dict:
    """The headline's numbers (the values the headline says; None where the run did not measure it): the
    presentation view shows them as big metric boxes above the sentence."""
    before, after = metrics["before"], metrics["after"]
    kind = task_kind(metrics.get("task"))
    images_before, images_after = split_images(metrics)
    return {"model": model_name(metrics.get("model")), "data": data_name(metrics.get("data")),
            "ratio": metrics["compression_ratio"], "fp32_bytes": before["fp32_bytes"],
            "compressed_bytes": after["compressed_bytes"],
            "flops_before": before.get("sparse_flops") or before.get("flops"),
            "flops_after": after.get("sparse_flops"),
            "flops_times": _times(before.get("sparse_flops") or before.get("flops"), after.get("sparse_flops")),
            "latency_before": before.get("latency_ms"), "latency_after": after.get("latency_ms"),
            "speed_times": _times(before.get("latency_ms"), after.get("latency_ms")),
            "score_name": kind.score_short, "score_label": kind.score_label,
            # Wilson intervals hold for an accuracy; a detector's mAP carries its bootstrap interval (map_spans)
            "has_interval": not kind.finds_boxes and images_before is not None and images_after is not None,
            "map_spans": map_intervals(metrics) if kind.finds_boxes else (None, None),
            "score_before": before["accuracy"], "score_after": after["accuracy"],
            "images_before": images_before, "images_after": images_after, "split": score_split(metrics),
            "drop_pts": 100 * (before["accuracy"] - after["accuracy"])}


def machine_words(machine: dict | None) -> str:
    """The machine in plain words: "a Linux computer (x86_64) with 2 CPUs"; its exact platform and torch version
    go to the report's details."""
    if not machine:
        return "a machine the run did not record"
    platform = str(machine.get("platform") or "")
    system = platform.split("-", 1)[0] or "an unknown system"
    system = {"Darwin": "macOS", "macOS": "macOS"}.get(system, system)
    arch = next((a for a in ("x86_64", "AMD64", "arm64", "aarch64") if a in platform), "")
    return f"a {system} computer{f' ({arch})' if arch else ''} with {machine['cpus']} CPUs"


def provenance(metrics: dict, finished: float | None) -> str:
    """Where the numbers come from: the split, the machine that measured them and when."""
    kind = task_kind(metrics.get("task"))
    split = score_split(metrics)
    score = kind.score_label
    where = machine_words(metrics.get("machine"))
    when = (dt.datetime.fromtimestamp(finished, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if finished
            else "an unrecorded date")
    latency = ("; latency: batch 1, median of repeated forward passes" if metrics["after"].get("latency_ms")
               else "; latency not measured")
    return (f"{score} on the {split} split of {data_name(metrics.get('data'))}, measured on the model decoded "
            f"from the compact file by {where}; finished {when}{latency}.")


@dataclass
class DetectionPair:
    """One validation image: the original's and the compressed model's boxes drawn, and their counts."""

    file: str
    original: object  # PIL images
    compressed: object
    counts: dict


def original_matches(original, metrics: dict) -> bool:
    """Whether `original` (a model handle the person loaded in this command or session) is the model the run
    compressed: the same label as metrics.json's model. Only such a model is drawn beside the compressed one;
    a run folder never names the original to load (its job.json is not trusted to build a model)."""
    return original is not None and isinstance(metrics.get("model"), str) and original.label == metrics["model"]


def detection_grid(run_dir: Path, original, data, n_images: int = 4, conf: float = 0.25) -> list[DetectionPair]:
    """The first `n_images` validation images of `data` with both detectors' boxes (vanished / appeared marked):
    `original` is the detector the person loaded (never one rebuilt from the run folder), the compressed one is
    decoded from the folder's model.clab by our own parser."""
    from PIL import Image

    compressed = sources.load_file(Path(run_dir) / "model.clab")
    pairs = []
    for path in data.val_images(limit=n_images):
        with Image.open(path) as image:
            image.load()
            boxes_before, boxes_after, count = detections.side_by_side(original.model, compressed.model, image,
                                                                       original.imgsz, conf)
            scale = max(1, round(240 / max(image.size)))
            pairs.append(DetectionPair(Path(path).name, detections.draw(image, boxes_before, original.names, scale),
                                       detections.draw(image, boxes_after, compressed.names, scale), count))
    return pairs


MAX_FILE_BYTES = 4 << 30  # a model.clab larger than this is not read for a report (the biggest zoo model's is < 1 GB)


def _file_bytes(run_dir: Path) -> bytes:
    path = Path(run_dir) / "model.clab"
    try:
        if not path.is_file():
            raise CompressionLabError(f"run folder {Path(run_dir).name} has no model.clab: report finished "
                                      "compression runs only")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CompressionLabError(f"damaged: model.clab: {size:,} bytes, more than the {MAX_FILE_BYTES:,} a "
                                      "report reads: report another run")
        return path.read_bytes()
    except OSError as exc:
        raise CompressionLabError(f"damaged: model.clab: cannot be read ({exc.strerror}): report another run") \
            from None


def file_rows(run_dir: Path) -> list[dict]:
    """inspect_bytes of the run's compact file (its per-section byte counts), read by our own parser; a file that
    does not parse is CompressionLabError ("damaged: model.clab: ...")."""
    try:
        return inspect_bytes(_file_bytes(run_dir))
    except CompressionLabError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompressionLabError(text if text.startswith(("damaged:", "run folder")) else
                                  f"damaged: model.clab: {text}") from None


def file_meta(run_dir: Path) -> dict:
    """The compact file's JSON metadata (its plan, label, data reference); {} when it holds none."""
    try:
        meta = inspect_header(_file_bytes(run_dir))["meta"]
    except CompressionLabError as exc:
        raise CompressionLabError(f"damaged: model.clab: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from None
    return meta if isinstance(meta, dict) else {}


def params_removed(metrics: dict) -> int:
    """Parameters the compressed architecture no longer has (channels removed, batch norm folded), from metrics."""
    before, after = metrics["before"].get("params"), metrics["after"].get("params")
    return int(max(0, before - after)) if before and after else 0
