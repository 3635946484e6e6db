"""Detections of two detectors on the same image: predict, match, mark what vanished or appeared, draw.

`predict` runs a DetectionModel on one image the way Ultralytics' predictor does (letterbox to the
model's size, NMS, boxes scaled back to the image). `compare` matches the original's boxes to the
compressed model's (same class, IoU >= 0.5, greedy by confidence): an original box with no match
"vanished", a compressed box with no match "appeared". `draw` puts the boxes on the image with PIL's
built-in font (nothing is downloaded). `latency_pair` times both detectors on this CPU the same way in PyTorch,
`ort_latency_pair` in ONNX Runtime; `channels_removed` reads what a run's channels step took out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from complab.metrics import cpu_latencies_ms
from complab.models.yolo_env import offline_ultralytics

PALETTE = [(31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75), (23, 190, 207),
           (188, 189, 34), (127, 127, 127)]
VANISHED = (214, 39, 40)
APPEARED = (227, 119, 194)


@dataclass
class Box:
    xyxy: tuple[float, float, float, float]
    cls: int
    conf: float
    status: str = "kept"  # kept | vanished (original only) | appeared (compressed only)


@torch.no_grad()
def predict(model: nn.Module, image: Image.Image, imgsz: int, conf: float = 0.25, iou: float = 0.7) -> list[Box]:
    """Boxes (in the image's pixels) with confidence >= conf, after NMS."""
    offline_ultralytics()
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    rgb = np.asarray(image.convert("RGB"))
    bgr = rgb[:, :, ::-1]
    letterboxed = LetterBox((imgsz, imgsz), auto=False, stride=32)(image=bgr)
    x = torch.from_numpy(np.ascontiguousarray(letterboxed[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
    model = model.eval()
    device = next(model.parameters()).device
    out = non_max_suppression(model(x.to(device)), conf, iou, max_det=300)[0].cpu()
    if not len(out):
        return []
    boxes = ops.scale_boxes(x.shape[2:], out[:, :4].clone(), rgb.shape[:2])
    return [Box(tuple(float(v) for v in b), int(c), float(s)) for b, c, s in zip(boxes, out[:, 5], out[:, 4],
                                                                                     strict=True)]


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(original: list[Box], compressed: list[Box], iou: float = 0.5) -> list[tuple[Box, int | None, float]]:
    """Greedy same-class matching, the most confident original box first: (original box, the index of its compressed
    match or None, their IoU) for each original box; a compressed box matches at most once, at IoU >= iou."""
    taken: set[int] = set()
    pairs = []
    for box in sorted(original, key=lambda b: -b.conf):
        best, best_iou = None, iou
        for j, other in enumerate(compressed):
            if j in taken or other.cls != box.cls:
                continue
            overlap = _iou(box.xyxy, other.xyxy)
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best is not None:
            taken.add(best)
        pairs.append((box, best, best_iou if best is not None else 0.0))
    return pairs


def compare(original: list[Box], compressed: list[Box], iou: float = 0.5) -> tuple[list[Box], list[Box]]:
    """Mark original boxes without a same-class match (IoU >= iou) as vanished, compressed ones as appeared."""
    taken = set()
    for box, j, _ in match(original, compressed, iou):
        box.status = "vanished" if j is None else "kept"
        if j is not None:
            taken.add(j)
    for j, box in enumerate(compressed):
        box.status = "kept" if j in taken else "appeared"
    return original, compressed


def counts(original: list[Box], compressed: list[Box]) -> dict[str, int]:
    return {"original": len(original), "compressed": len(compressed),
            "vanished": sum(b.status == "vanished" for b in original),
            "appeared": sum(b.status == "appeared" for b in compressed)}


def side_by_side(original: nn.Module, compressed: nn.Module, image: Image.Image, imgsz: int,
                 conf: float = 0.25) -> tuple[list[Box], list[Box], dict[str, int]]:
    """Both models' boxes on one image, marked (vanished / appeared), and their counts."""
    before = predict(original, image, imgsz, conf)
    after = predict(compressed, image, imgsz, conf)
    compare(before, after)
    return before, after, counts(before, after)


def changed_images(original: nn.Module, compressed: nn.Module, paths: list, imgsz: int,
                   conf: float = 0.25) -> list[dict]:
    """Per-image counts over `paths` (index = position in `paths`), the most changed images first."""
    rows = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            found = side_by_side(original, compressed, image, imgsz, conf)[2]
        rows.append({"image": index, "file": path.name, **found, "changes": found["vanished"] + found["appeared"]})
    return sorted(rows, key=lambda row: (-row["changes"], row["image"]))


def draw(image: Image.Image, boxes: list[Box], names: dict[int, str], scale: int = 3) -> Image.Image:
    """The image (enlarged `scale` times, nearest) with its boxes: class colour, red = vanished, pink = appeared."""
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for box in boxes:
        colour = {"vanished": VANISHED, "appeared": APPEARED}.get(box.status, PALETTE[box.cls % len(PALETTE)])
        x0, y0, x1, y1 = (v * scale for v in box.xyxy)
        width = 4 if box.status != "kept" else 2
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        label = f"{names.get(box.cls, box.cls)} {box.conf:.2f}" + ("" if box.status == "kept" else f" {box.status}")
        tx, ty = x0 + 2, max(0, y0 - 12)
        text_box = pen.textbbox((tx, ty), label, font=font)
        pen.rectangle(text_box, fill=colour)
        pen.text((tx, ty), label, fill=(255, 255, 255), font=font)
    return canvas


LATENCY_THREADS = 1  # one torch thread: the figure a busy or shared CPU reproduces (more threads vary with load)


def latency_pair(original: nn.Module, compressed: nn.Module, imgsz: int,
                 threads: int = LATENCY_THREADS) -> dict[str, float]:
    """CPU milliseconds of one image (batch 1, imgsz x imgsz) through each detector, their passes interleaved."""
    original_ms, compressed_ms = cpu_latencies_ms([original, compressed], (3, imgsz, imgsz), threads=threads)
    return {"original_ms": original_ms, "compressed_ms": compressed_ms, "threads": threads}


ORT_THREADS = 2  # ONNX Runtime's intra-op threads: the setting every run's metrics use (complab/deploy.py)


def ort_latency_pair(original, compressed, data=None, threads: int = ORT_THREADS) -> dict:
    """ONNX Runtime milliseconds of one image (batch 1 at the detector's size) through each detector (model
    handles: the original exported in float32, the compressed one as QDQ integers where it is an int8 model,
    calibrated on `data`'s training images), their runs paired and alternating (complab.deploy.ort_metrics, as a
    run measures them): {"original_ms", "compressed_ms", "version", "threads", "isa", "provider", "int8",
    "error": None}; where ONNX Runtime cannot run them, the same with "error": why, in one line (never raises)."""
    from complab import deploy
    from complab.pipeline import calibration_batches

    calibration = None
    if data is not None and deploy.is_int8(compressed):
        try:
            calibration = calibration_batches(compressed, data)
        except Exception:  # noqa: BLE001 - without calibration the export quantizes fewer tensors, still valid
            calibration = None
    original_ms, compressed_ms, info = deploy.ort_metrics(original, compressed, tuple(original.input_shape),
                                                          calibration=calibration, threads=threads)
    return {**info, "original_ms": original_ms, "compressed_ms": compressed_ms}


def channels_removed(metrics: dict) -> dict | None:
    """What a run's channels step removed (from its metrics): channels kept of all and parameters before/after."""
    layers = ((metrics.get("steps") or {}).get("channels") or {}).get("layers") or {}
    if not layers:
        return None
    return {"groups": len(layers), "channels": sum(int(row["channels"]) for row in layers.values()),
            "kept": sum(int(row["kept"]) for row in layers.values()),
            "params_before": (metrics.get("before") or {}).get("params"),
            "params_after": (metrics.get("after") or {}).get("params")}
