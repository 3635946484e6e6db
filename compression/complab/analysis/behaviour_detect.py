"""Did compression change what a detector finds? Per-class AP before/after and the images whose boxes changed most.

`detector_diff(before, after, data, n_images)` scores both detectors on the validation images held in memory
(models/detection_metric.FastMap: Ultralytics' mAP quantities) and splits their AP50 and AP50-95 by class
(`ap_per_class`). From the same forward passes it takes each image's boxes as the Detections page shows them
(confidence >= 0.25 after NMS at IoU 0.7, as analysis/detections.predict finds them, scaled back to the image's
pixels) and matches the two models' boxes as `detections.compare` does (same class, IoU >= 0.5, greedy by
confidence): an original box without a match *vanished*, a compressed one without a match is *new*, a matched pair
with IoU < 0.9 *moved* (`moved_shift`: their mean 1 - IoU), the rest are *kept*. Every scored image is ranked; the
`n_images` most changed are returned.

    change = vanished + new + sum over matched pairs of (1 - IoU)

(each box lost or added counts one, a matched box by how far it moved), images ranked by it, highest first; the
top `DRAWN` carry both models' boxes `[x1, y1, x2, y2, class, confidence]` for the UI to redraw with
`detections.draw`.
"""

from __future__ import annotations

import time

import numpy as np

from complab.analysis.detections import Box, compare, match

MATCH_IOU = 0.5  # detections.compare's
MOVED_IOU = 0.9  # a matched pair overlapping less than this has moved
CONFIDENCE = 0.25  # the Detections page's
DRAWN = 8  # images that carry their boxes


def _pairs(original: list[Box], compressed: list[Box]) -> list[float]:
    """The IoU of each matched (original, compressed) pair, matched as detections.compare matches them."""
    return [overlap for _, j, overlap in match(original, compressed, MATCH_IOU) if j is not None]


def _boxes(boxes: list[Box]) -> list[list[float]]:
    return [[*(round(float(v), 2) for v in box.xyxy), int(box.cls), round(float(box.conf), 4)] for box in boxes]


def image_change(before: list[Box], after: list[Box]) -> dict:
    """Vanished, new, moved and kept boxes of one image and its change score (module docstring)."""
    overlaps = _pairs(before, after)
    compare(before, after)  # marks the statuses the UI draws
    vanished = sum(box.status == "vanished" for box in before)
    new = sum(box.status == "appeared" for box in after)
    shifts = [1.0 - overlap for overlap in overlaps if overlap < MOVED_IOU]
    return {"vanished": vanished, "new": new, "moved": len(shifts), "kept": len(overlaps) - len(shifts),
            "moved_shift": float(np.mean(shifts)) if shifts else 0.0,
            "change": float(vanished + new + sum(1.0 - overlap for overlap in overlaps))}


def _boxes_at(confidence: float, files: list, boxes: dict[int, list[Box]]):
    """An FastMap.stats `on_batch` callback: each image's boxes at `confidence` after NMS (as detections.predict
    finds them: IoU 0.7, one class per box), scaled back to the image's own pixels, into `boxes` by image index."""
    from ultralytics.utils import ops
    from ultralytics.utils.nms import non_max_suppression

    def on_batch(start: int, images, predictions) -> None:
        for offset, out in enumerate(non_max_suppression(predictions, confidence, 0.7, max_det=300)):
            out = out.cpu()
            _, shape, ratio_pad = files[start + offset]
            xyxy = ops.scale_boxes(images.shape[2:], out[:, :4].clone(), shape, ratio_pad=ratio_pad)
            boxes[start + offset] = [Box(tuple(float(v) for v in b), int(c), float(s))
                                     for b, c, s in zip(xyxy, out[:, 5], out[:, 4], strict=True)]
    return on_batch


def ranked_images(files: list, boxes_a: dict[int, list[Box]], boxes_b: dict[int, list[Box]],
                  n_images: int) -> list[dict]:
    """The `n_images` most changed images (ties: file order), the first DRAWN with both models' boxes."""
    from pathlib import Path

    rows = []
    for index, (file, _, _) in enumerate(files):
        before, after = boxes_a.get(index, []), boxes_b.get(index, [])
        rows.append({"path": Path(file).name, **image_change(before, after), "order": index,
                     "boxes_a": _boxes(before), "boxes_b": _boxes(after)})
    rows.sort(key=lambda row: (-row["change"], row["order"]))
    rows = rows[:max(0, int(n_images))]
    for rank, row in enumerate(rows):
        del row["order"]
        if rank >= DRAWN:
            del row["boxes_a"], row["boxes_b"]
    return rows


def _per_class_ap(stats, classes: int) -> tuple[dict[int, tuple[float, float]], float, float]:
    """{class: (AP50, AP50-95)} of the classes with labelled boxes, and the mAPs (their means)."""
    from ultralytics.utils.metrics import ap_per_class

    if stats is None:
        return {}, 0.0, 0.0
    result = ap_per_class(*stats)
    ap, present = result[5], result[6]
    table = {int(cls): (float(ap[i, 0]), float(ap[i].mean())) for i, cls in enumerate(present) if cls < classes}
    return table, (float(ap[:, 0].mean()) if len(ap) else 0.0), (float(ap.mean()) if len(ap) else 0.0)


def detector_diff(before, after, data, n_images: int = 32, ap_images: int | None = None) -> dict:
    """The behaviour diff (schema "behaviour/1", task "detect") of two detector handles on `data`'s validation
    images (a DetectionData; `ap_images`: a seeded sample of them, None: all); `n_images` of them are ranked by
    how much their boxes changed."""
    from complab.analysis.behaviour_cache import SCHEMA, handle_side
    from complab.errors import CompressionLabError
    from complab.models.detection_metric import FastMap

    if not (before.kind.finds_boxes and after.kind.finds_boxes):
        raise CompressionLabError("detector_diff compares two detectors: use classifier_diff for classifiers")
    if before.imgsz != after.imgsz:
        raise CompressionLabError(f"the detectors read {before.imgsz} and {after.imgsz} pixel images: compare two "
                                  "runs of the same model")
    started = time.perf_counter()
    fast = FastMap(data, before.imgsz, ap_images)
    boxes_a: dict[int, list[Box]] = {}
    boxes_b: dict[int, list[Box]] = {}
    stats_a = fast.stats(before.model, _boxes_at(CONFIDENCE, fast.files, boxes_a))
    stats_b = fast.stats(after.model, _boxes_at(CONFIDENCE, fast.files, boxes_b))
    names = dict(before.names)
    table_a, map50_a, map50_95_a = _per_class_ap(stats_a, len(names))
    table_b, map50_b, map50_95_b = _per_class_ap(stats_b, len(names))
    true_classes = np.concatenate([cls for _, targets in fast.items for cls, _ in targets]) if fast.items else []
    counts = np.bincount(np.asarray(true_classes, dtype=np.int64), minlength=len(names))
    per_class = []
    for cls in sorted(names):
        a, b = table_a.get(cls), table_b.get(cls)
        per_class.append({"class": int(cls), "name": str(names[cls]), "n_boxes": int(counts[cls]),
                          "ap50_a": a[0] if a else None, "ap50_b": b[0] if b else None,
                          "ap50_95_a": a[1] if a else None, "ap50_95_b": b[1] if b else None})
    return {"schema": SCHEMA, "task": "detect", "a": handle_side(before), "b": handle_side(after), "split": "val",
            "n": sum(len(targets) for _, targets in fast.items), "map50_a": map50_a, "map50_b": map50_b,
            "map50_95_a": map50_95_a, "map50_95_b": map50_95_b, "per_class": per_class,
            "images": ranked_images(fast.files, boxes_a, boxes_b, n_images), "seconds": time.perf_counter() - started}
