"""mAP of a YOLO detector on validation images held in memory: FastMap, Ultralytics' quantities without its validator.

Sensitivity analysis and the channels/cluster steps score a detector hundreds of times; Ultralytics'
DetectionValidator reloads data, fuses and logs on every call. FastMap letterboxes a seeded subset of the
validation images once (models/yolo_data.py) and computes the same mAP50 / mAP50-95 on each call.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from complab.data.detection import DetectionData
from complab.models.yolo_data import letterboxed


def _match(pred_cls: np.ndarray, true_cls: np.ndarray, iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Correct-detection matrix (detections x IoU thresholds): Ultralytics' greedy matching, by confidence."""
    correct = np.zeros((len(pred_cls), len(thresholds)), dtype=bool)
    iou = iou * (true_cls[:, None] == pred_cls[None, :])
    matched = np.zeros((iou.shape[0], len(thresholds)), dtype=bool)
    for j in np.flatnonzero((iou >= thresholds.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, range(len(thresholds))] >= thresholds
        matched[k, range(len(thresholds))] |= correct[j]
    return correct


class FastMap:
    """mAP50 / mAP50-95 of a model on validation images held in memory (hundreds of evaluations per analysis).

    The same quantities as Ultralytics' DetectionValidator (NMS at conf 0.001 / IoU 0.7, greedy matching
    at IoU 0.50:0.95, `ap_per_class`), without its per-call data loading, fusing and logging; a test
    checks it against the validator.
    """

    def __init__(self, data: DetectionData, imgsz: int, size: int | None = None, seed: int = 0, batch: int = 32):
        dataset = letterboxed(data, data.val_subset(size, seed), imgsz, batch)
        self.items = []  # (images uint8 [n,3,h,w], [per-image (classes, xyxy boxes in pixels)])
        self.files = []  # per image, in order: (its file, its original (h, w), letterbox ratio_pad)
        for start in range(0, len(dataset), batch):
            samples = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            self.files += [(str(s["im_file"]), tuple(s["ori_shape"]), s["ratio_pad"]) for s in samples]
            imgs = torch.stack([s["img"] for s in samples])
            targets = []
            for sample in samples:
                h, w = sample["img"].shape[1:]
                boxes = sample["bboxes"].clone()
                xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
                xyxy *= torch.tensor([w, h, w, h], dtype=xyxy.dtype)
                targets.append((sample["cls"].view(-1).numpy(), xyxy))
            self.items.append((imgs, targets))
        self.thresholds = np.linspace(0.5, 0.95, 10)

    @torch.no_grad()
    def stats(self, model: nn.Module, on_batch=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(tp [detections x IoU thresholds], confidences, predicted classes, true classes of every labelled box):
        what `ap_per_class` takes; None when the model finds nothing. `on_batch(start, images, predictions)` is
        called with each batch's raw predictions (start: the index of its first image in `files`)."""
        from ultralytics.utils.metrics import box_iou
        from ultralytics.utils.nms import non_max_suppression

        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        tps, confs, pred_classes, true_classes = [], [], [], []
        start = 0
        for imgs, targets in self.items:
            preds = model(imgs.to(device).float() / 255)
            if on_batch is not None:
                on_batch(start, imgs, preds)
            start += len(imgs)
            outputs = non_max_suppression(preds, 0.001, 0.7, multi_label=True, max_det=300)
            for out, (cls, boxes) in zip(outputs, targets, strict=True):
                out = out.cpu()
                true_classes.append(cls)
                if not len(out):
                    continue
                pcls = out[:, 5].numpy()
                if len(cls):
                    tp = _match(pcls, cls, box_iou(boxes, out[:, :4]).numpy(), self.thresholds)
                else:
                    tp = np.zeros((len(out), len(self.thresholds)), dtype=bool)
                tps.append(tp)
                confs.append(out[:, 4].numpy())
                pred_classes.append(pcls)
        model.train(was_training)
        if not tps:
            return None
        return np.concatenate(tps), np.concatenate(confs), np.concatenate(pred_classes), np.concatenate(true_classes)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from ultralytics.utils.metrics import ap_per_class

        stats = self.stats(model)
        if stats is None:
            return {"map50": 0.0, "map50_95": 0.0}
        ap = ap_per_class(*stats)[5]
        return {"map50": float(ap[:, 0].mean()) if len(ap) else 0.0, "map50_95": float(ap.mean()) if len(ap) else 0.0}
