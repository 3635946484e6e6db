"""YOLO11n channel-pruned around its attention: params, FLOPs, fused CPU latency, and the decoded file's boxes.

An untrained YOLO11n built from Ultralytics' own yolo11n.yaml (80 classes, nothing downloaded) is pruned by
methods/channels/detector.prune_detector: every channel group keeps half its channels by L1 norm except the Detect
head's prediction outputs and the groups coupled to the attention (C2PSA's Attention and its split `cv1` stay as
they are: models/yolo_prunable.kept_whole). Latency: both models FUSED (batch norm folded, as deployed:
models/detector.fuse), batch 1, one thread, 640 px, the median of paired runs (original and pruned alternate:
channel_pruning_table.paired_latency). The pruned model is then written by our compact writer (DetectorHandle.save:
the channel-pruning record + the tensors) and decoded by complab.sources.load_file; the decoded and the in-memory
pruned model see the same images (Ultralytics' two bundled photos, letterboxed, and two noise images) and must give
the same raw head outputs (max abs difference <= 1e-4) and the same boxes after NMS (confidence 0, IoU 0.7, at most 300
per image: an untrained head's class scores are all tiny, its bias initialisation; every image
gives 300). No fine-tuning: this measures size and speed.

    .venv/bin/python benchmarks/yolo11_channels.py [--repeats 20] [--round-to 1] [--families]

--families adds, for each Ultralytics family checked (untrained, 80 classes, 128 px, keep 0.5), the params ratio, the
modules kept whole, whether the output shapes are kept and whether the decoded file gives identical outputs.

Prints one JSON object as its last line; `yolo11n_ratios` is what benchmarks/yolo_recovery.py reports.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from channel_pruning_table import paired_latency  # noqa: E402
from complab import metrics  # noqa: E402
from complab.methods.channels.detector import prune_detector  # noqa: E402
from complab.models.compact import Products  # noqa: E402
from complab.models.detector import DetectorHandle, fuse  # noqa: E402
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics  # noqa: E402
from complab.sources import load_file  # noqa: E402

SIZE = 640  # the model's own image size
KEEP = 0.5
CONFIDENCE = 0.0  # NMS keeps every candidate: an untrained head's class scores are all tiny (its bias initialisation)
TOLERANCE = 1e-4  # raw head outputs of the decoded vs the in-memory pruned model


def yolo11n(nc: int = 80) -> torch.nn.Module:
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet_ultralytics():
        return DetectionModel("yolo11n.yaml", nc=nc, verbose=False).float().eval()


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(size: int = SIZE) -> torch.Tensor:
    """Ultralytics' two bundled photos letterboxed to `size` (RGB, 0..1) and two seeded noise images."""
    import cv2
    import numpy as np

    offline_ultralytics()
    import ultralytics
    from ultralytics.data.augment import LetterBox

    out = []
    for name in ("bus.jpg", "zidane.jpg"):
        bgr = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / name))
        boxed = LetterBox((size, size), auto=False)(image=bgr)
        out.append(torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))).float() / 255.0)
    generator = torch.Generator().manual_seed(0)
    out.extend(torch.rand((3, size, size), generator=generator) for _ in range(2))
    return torch.stack(out)


@torch.no_grad()
def head_and_boxes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The raw head outputs (box distributions and class logits, concatenated) and the boxes after NMS."""
    from ultralytics.utils.nms import non_max_suppression

    predictions, raw = model(x)
    raw = raw.get("one2many", raw)
    head = torch.cat([raw["boxes"], raw["scores"]], 1)
    # one image per call: Ultralytics' NMS stops at a time limit and returns nothing for the batch's later images
    return head, [non_max_suppression(predictions[i:i + 1], CONFIDENCE, 0.7, max_det=300)[0] for i in range(len(x))]


@torch.no_grad()
def decoded_same_boxes(pruned: torch.nn.Module, result, folder: Path) -> dict:
    """Write the pruned model with our compact writer, decode it, and compare its outputs with the in-memory one."""
    handle = DetectorHandle(pruned, {"kind": "ultralytics", "yaml": pruned.yaml, "names": dict(pruned.names)}, SIZE,
                            "yolo11n pruned")
    path = folder / "yolo11n_pruned.clab"
    handle.save(path, products=Products(channel_history=result.history, c2f_replaced=result.replaced))
    decoded = load_file(path).model.eval()
    x = images()
    head, boxes = head_and_boxes(pruned, x)
    head_decoded, boxes_decoded = head_and_boxes(decoded, x)
    head_diff = float((head - head_decoded).abs().max())
    same = head_diff <= TOLERANCE and all(
        a.shape == b.shape and torch.allclose(a, b, atol=1e-3) for a, b in zip(boxes, boxes_decoded, strict=True))
    return {"same": bool(same), "head_max_abs_diff": head_diff, "file_bytes": path.stat().st_size,
            "boxes_per_image": [int(len(b)) for b in boxes], "images": int(len(x))}


@torch.no_grad()
def yolo11n_ratios(keep_ratio: float = KEEP, size: int = SIZE, repeats: int = 20, threads: int = 1,
                   round_to: int = 1) -> dict:
    """YOLO11n (untrained, from yolo11n.yaml) pruned to `keep_ratio` outside its attention; every key is printed by
    benchmarks/yolo11_channels.py (and reported by benchmarks/yolo_recovery.py, which calls this function):

    y11n_params_ratio: original / pruned parameters (target >= 3); y11n_flops_ratio: original / pruned FLOPs of the
    fused models at `size` px; y11n_latency_ratio: median of paired original / pruned times, both fused, batch 1,
    `threads` threads, `size` px (target >= 2), y11n_latency_ms their medians; y11n_same_boxes: the pruned model
    written by the compact writer and decoded by complab.sources.load_file gives the same raw head outputs (<= 1e-4)
    and the same boxes after NMS as the in-memory one (y11n_decoded: the details); y11n_kept_attention: the modules
    whose channels were kept (C2PSA's attention and its split cv1)."""
    torch.manual_seed(0)
    original = yolo11n()
    pruned = copy.deepcopy(original)
    result = prune_detector(pruned, keep_ratio, (3, size, size), round_to=round_to)
    with quiet_ultralytics():
        fused_original, fused_pruned = fuse(copy.deepcopy(original)), fuse(copy.deepcopy(pruned))
    latency = paired_latency(fused_original, fused_pruned, (3, size, size), 1, repeats, threads)
    counted = {name: metrics.flops(model, (3, size, size))["flops"] for name, model in
               (("original", fused_original), ("pruned", fused_pruned))}
    with tempfile.TemporaryDirectory(prefix="yolo11n-") as folder:
        decoded = decoded_same_boxes(pruned, result, Path(folder))
    return {"y11n_keep_ratio": keep_ratio, "y11n_round_to": round_to, "y11n_input": [1, 3, size, size],
            "y11n_threads": threads, "y11n_params": {"original": params(original), "pruned": params(pruned)},
            "y11n_params_ratio": round(params(original) / params(pruned), 3),
            "y11n_flops_ratio": round(counted["original"] / counted["pruned"], 3),
            "y11n_latency_ms": {"original": latency["original_ms"], "pruned": latency["pruned_ms"]},
            "y11n_latency_ratio": round(latency["ratio"], 3),
            "y11n_same_boxes": decoded["same"], "y11n_decoded": decoded,
            "y11n_kept_attention": result.kept_whole, "y11n_groups_pruned": len(result.layers)}


FAMILIES = ("yolov8n", "yolov5nu", "yolo11n", "yolov10n", "yolo12n", "yolov9t", "yolo26n")


@torch.no_grad()
def families(size: int = 128) -> dict:
    """Each family of FAMILIES pruned to keep 0.5 around its attention: params ratio, kept modules, shapes, decode."""
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    out = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        with quiet_ultralytics():
            model = DetectionModel(f"{family}.yaml", nc=80, verbose=False).float().eval()
        x = torch.rand(2, 3, size, size)
        before, count = model(x)[0], params(model)
        result = prune_detector(model, KEEP, (3, size, size))
        after = model(x)[0]
        handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)}, size,
                                family)
        with tempfile.TemporaryDirectory(prefix="family-") as folder:
            path = Path(folder) / "pruned.clab"
            handle.save(path, products=Products(channel_history=result.history, c2f_replaced=result.replaced))
            decoded = load_file(path).model.eval()(x)[0]
        out[family] = {"params_ratio": round(count / params(model), 3), "kept_whole": result.kept_whole,
                       "shapes_kept": before.shape == after.shape, "decoded_equal": bool(torch.equal(decoded, after))}
        print(family, out[family], file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--families", action="store_true")
    args = parser.parse_args()
    started = time.time()
    out = yolo11n_ratios(repeats=args.repeats, threads=args.threads, round_to=args.round_to)
    if args.families:
        out["families_128px"] = families()
    out["latency"] = "median of paired (interleaved) runs of the fused models, batch 1; ratio = original / pruned"
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
