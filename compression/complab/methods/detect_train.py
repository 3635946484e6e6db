"""Fine-tuning and quick scoring of YOLO detectors, as StepContext hooks, with Ultralytics' own data and loss.

Compression methods constrain weights through parametrizations (pruning masks, shared values), so
they need a training loop that leaves the model object alone: Ultralytics' DetectionTrainer
rebuilds the model from its yaml, keeps an EMA copy and saves half-precision checkpoints, any of
which would drop the constraints. This loop takes the trainer's pieces instead: its dataset and
augmentation (`build_yolo_dataset`, mosaic off as in Ultralytics' final `close_mosaic` epochs, since
fine-tuning is short), its loss (`DetectionModel.loss`, box + class + DFL with the default gains),
and trains the parametrized model in place. Scoring is mAP50-95 on a seeded subset of the validation
images (models/detection_metric.py, the same quantity as Ultralytics' DetectionValidator).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from complab.data.detection import DetectionData
from complab.devices import default_device
from complab.methods.finetune import frozen_copy
from complab.models.detection_metric import FastMap
from complab.models.yolo_data import letterboxed, yolo_cfg
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics


def _raw(preds):
    """The head's raw training outputs {boxes [B, 4*reg_max, A], scores [B, nc, A]} from train or eval mode."""
    preds = preds[1] if isinstance(preds, tuple) else preds
    return preds["one2many"] if "one2many" in preds else preds


def detection_kd_loss(student: dict, teacher: dict, temperature: float) -> torch.Tensor:
    """Output distillation for a YOLO head (soft targets, Hinton et al. applied per anchor).

    Class scores: binary cross-entropy against the teacher's sigmoid(logit / T). Boxes: KL divergence
    between the teacher's and the student's softmax over the DFL bins of each box side, weighted by
    the teacher's best class probability so background anchors do not dominate. Both scaled by T^2.
    """
    t_scores = torch.sigmoid(teacher["scores"] / temperature)
    cls = F.binary_cross_entropy_with_logits(student["scores"] / temperature, t_scores)
    b, channels, anchors = student["boxes"].shape
    sides = channels // 4
    s_box = student["boxes"].view(b, 4, sides, anchors)
    t_box = teacher["boxes"].view(b, 4, sides, anchors)
    kl = F.kl_div(F.log_softmax(s_box / temperature, 2), F.log_softmax(t_box / temperature, 2),
                  reduction="none", log_target=True).sum(2).mean(1)  # [B, A]
    weight = torch.sigmoid(teacher["scores"]).amax(1)  # [B, A]
    box = (kl * weight).sum() / weight.sum().clamp(min=1e-6)
    return temperature ** 2 * (cls + box)


def train_detector(model: nn.Module, data: DetectionData, imgsz: int, *, epochs: int, lr: float, seed: int,
                   batch: int = 16, progress: Callable[[float, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, teacher: nn.Module | None = None,
                   temperature: float = 2.0, alpha: float = 0.5) -> list[float]:
    """Fine-tune a (possibly parametrized) DetectionModel in place with the detection loss; mean loss per epoch.

    With a teacher (the original detector), the loss is (1 - alpha) * detection loss + alpha * the
    output-distillation loss above, on the same augmented images.
    """
    offline_ultralytics()
    from ultralytics.data import build_dataloader, build_yolo_dataset

    if epochs <= 0:
        return []
    if data.train is None:
        raise ValueError(f"{data.ref} has no train split to fine-tune on")
    torch.manual_seed(seed)
    cfg = yolo_cfg(imgsz)
    device = default_device()
    model.to(device)
    model.args = cfg  # the loss reads its box/cls/dfl gains from here
    model.criterion = None
    stride = max(int(model.stride.max()), 32)
    with quiet_ultralytics():
        dataset = build_yolo_dataset(cfg, str(data.train), batch, {"names": data.names, "nc": data.num_classes,
                                                                   "channels": 3}, mode="train", stride=stride)
    loader = build_dataloader(dataset, batch=batch, workers=0, shuffle=True, rank=-1, device=device)
    # checkpoints come back frozen; Ultralytics trains everything but the fixed DFL projection
    for name, param in model.named_parameters():
        param.requires_grad_(".dfl" not in name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    losses, step = [], 0
    model.train()
    if teacher is not None:
        teacher = frozen_copy(teacher).to(device)
    for _ in range(epochs):
        running, count = 0.0, 0
        for index, batch_data in enumerate(loader):
            if index >= len(loader):
                break
            batch_data["img"] = batch_data["img"].to(device).float() / 255
            for key in ("cls", "bboxes", "batch_idx"):
                batch_data[key] = batch_data[key].to(device)
            preds = model(batch_data["img"])
            loss, _ = model.loss(batch_data, preds)
            loss = loss.sum() / batch_data["img"].shape[0]
            if teacher is not None:
                with torch.no_grad():
                    teacher_preds = _raw(teacher(batch_data["img"]))
                loss = (1 - alpha) * loss + alpha * detection_kd_loss(_raw(preds), teacher_preds, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm=10.0)  # as Ultralytics' trainer does
            optimizer.step()
            scheduler.step()
            running += float(loss.detach())
            count += 1
            step += 1
            if progress is not None:
                progress(step / total, float(loss.detach()))
            if should_stop is not None and should_stop():
                model.eval()
                return losses
        losses.append(running / max(1, count))
    model.eval()
    return losses


def detector_batches(data: DetectionData, imgsz: int, size: int | None, seed: int = 0,
                     batch: int = 16) -> list[torch.Tensor]:
    """A seeded sample of `size` training images (all when None), letterboxed without augmentation, as float batches.

    For re-estimating batch-norm statistics: the images a detector sees at inference, not the training
    augmentation's."""
    import random

    from complab.data.detection import _images

    if data.train is None:
        return []
    images = _images(data.train)
    if size is not None and size < len(images):
        images = sorted(random.Random(seed).sample(images, size))
    if not images:
        return []
    dataset = letterboxed(data, images, imgsz, batch)
    with quiet_ultralytics():
        return [torch.stack([dataset[i]["img"] for i in range(start, min(start + batch, len(dataset)))]).float() / 255
                for start in range(0, len(dataset), batch)]


def screen_batch(data: DetectionData, imgsz: int, size: int, seed: int = 0) -> torch.Tensor:
    """A seeded sample of `size` validation images, letterboxed as the detector reads them, as one float batch."""
    dataset = letterboxed(data, data.val_subset(size, seed), imgsz, max(1, size))
    with quiet_ultralytics():
        return torch.stack([dataset[i]["img"] for i in range(len(dataset))]).float() / 255


DETECTOR_BN_IMAGES = 256  # training images whose statistics re-estimate a detector's batch norms after fine-tuning


def recalibrate_detector(model: nn.Module, data: DetectionData, imgsz: int, seed: int = 0,
                         size: int = DETECTOR_BN_IMAGES) -> int:
    """Re-estimate a detector's batch-norm statistics on training images (nothing to do once fold_bn folded them)."""
    from complab.methods import bn_stats

    if not bn_stats.has_batch_norm(model):
        return 0
    return bn_stats.reestimate(model, detector_batches(data, imgsz, size, seed))


def map_scorer(data: DetectionData, imgsz: int, size: int, seed: int,
               metric: str = "map50_95") -> Callable[[nn.Module], float]:
    """score(model) -> mAP on a seeded subset of `size` validation images, held in memory."""
    fast = FastMap(data, imgsz, size, seed)
    return lambda model: fast(model)[metric]


def detection_hooks(data: DetectionData, imgsz: int, ctx, batch: int = 16) -> None:
    """Point a StepContext's trainer and scorer at this detection dataset."""

    distill: dict = {}

    def trainer(model: nn.Module, *, epochs: int, lr: float, seed: int, stage: str) -> None:
        train_detector(model, data, imgsz, epochs=epochs, lr=lr, seed=seed, batch=batch,
                       progress=lambda f, loss: ctx.emit(stage, f, loss=loss), should_stop=ctx.should_stop,
                       **distill)

    def enable_distillation(teacher: nn.Module, temperature: float, alpha: float) -> None:
        """Every later fine-tuning distils from `teacher` (a plan's distill step calls this)."""
        distill.update(teacher=teacher, temperature=temperature, alpha=alpha)

    ctx.trainer = trainer
    ctx.bn_recalibrator = lambda model, seed: recalibrate_detector(model, data, imgsz, seed)
    ctx.reestimate_after_training = False  # measured on the demo detector: see StepContext
    ctx.enable_distillation = enable_distillation
    ctx.scorer = lambda size, seed, metric=None: map_scorer(data, imgsz, size, seed,
                                                            "map50" if metric == "fitness" else "map50_95")
    ctx.fitness_name = "mAP50"
    ctx.screener = lambda size, seed: screen_batch(data, imgsz, size, seed)
    ctx.score_name = "mAP50-95"
