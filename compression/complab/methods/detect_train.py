"""A YOLO detector's Task (methods/task.py): fine-tuning and quick scoring with Ultralytics' own data and loss.

Compression methods constrain weights through parametrizations (pruning masks, shared values), so
they need a training loop that leaves the model object alone: Ultralytics' DetectionTrainer
rebuilds the model from its yaml, keeps an EMA copy and saves half-precision checkpoints, any of
which would drop the constraints. This loop takes the trainer's pieces instead: its dataset and
augmentation (`build_yolo_dataset`, mosaic off as in Ultralytics' final `close_mosaic` epochs, since
fine-tuning is short), its loss (`DetectionModel.loss`, box + class + DFL with the default gains),
and trains the parametrized model in place, ending on a weight average (ModelEMA below: Ultralytics' EMA
made to leave parametrizations alone). Scoring is mAP50-95 on a seeded subset of the validation images
(models/detection_metric.py, the same quantity as Ultralytics' DetectionValidator).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from complab.data.detection import DetectionData, image_files
from complab.devices import default_device
from complab.methods import bn_stats
from complab.methods.channels.detector import ignored_layers
from complab.methods.detect_distill import Adapters, NeckFeatures, cwd_loss
from complab.methods.finetune import frozen_copy
from complab.models.detection_metric import FastMap
from complab.models.detector import DETECT
from complab.models.yolo_data import letterboxed, yolo_cfg
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics
from complab.models.yolo_prunable import check_prunable, make_prunable


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


# The weight average's decay for detector fine-tuning (ModelEMA, a fixed decay): measured on the demo detector, 2
# epochs at lr 1e-3 (benchmarks/yolo_recovery.py), mAP50-95 -2.29 / -2.32 points (seeds 0 / 1) without it, -0.05 /
# +0.17 with 0.998, +0.18 / +0.19 with 0.999, -1.04 / -0.92 with 0.99. A fixed decay keeps 0.998^n of the starting
# weights after n steps: what keeps a trained model's boxes, but it holds a freshly pruned model near its damage
# (the pruned recipe's prune step sets its own `ema`).
DETECTOR_EMA_DECAY = 0.998


class ModelEMA:
    """An exponential moving average of a (possibly parametrized) model's trainable parameters and batch-norm
    statistics, copied back into the model at the end (`copy_to`).

    As Ultralytics' ModelEMA (utils/torch_utils.py): decay(n) = decay * (1 - exp(-n / tau)) after n updates.
    Unlike it, the average lives beside the model, never as a second model: it covers the tensors training
    changes (parameters that take a gradient, the originals under a pruning mask or the shared values of the
    cluster step, and floating batch-norm buffers) and leaves every parametrization's own buffers (a pruning
    mask, the shared values' labels) alone, so copying it back keeps the model's constraints: a weight a mask
    zeroes stays zero, since the mask still multiplies the averaged original.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, statistics: bool = True) -> None:
        self.decay, self.tau, self.updates = decay, tau, 0
        self.tracked = dict(_ema_tensors(model, statistics))
        self.shadow = {name: tensor.detach().clone() for name, tensor in self.tracked.items()}

    def rate(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = self.rate()
        for name, tensor in self.tracked.items():
            self.shadow[name].mul_(d).add_(tensor.detach(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self) -> None:
        for name, tensor in self.tracked.items():
            tensor.copy_(self.shadow[name])


def _ema_tensors(model: nn.Module, statistics: bool = True):
    """(name, tensor) of what ModelEMA averages: parameters taking a gradient and batch-norm statistics."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param
    if not statistics:
        return
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            yield f"{module_name}.running_mean", module.running_mean
            yield f"{module_name}.running_var", module.running_var


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Ultralytics' groups (trainer.build_optimizer): weights with decay; norm weights and biases without. A
    parametrized tensor (a pruning mask's original, shared values) belongs to the module that owns it."""
    norms = {name for name, module in model.named_modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm)}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        owner, _, leaf = name.partition(".parametrizations.")
        owner = owner if leaf else name.rpartition(".")[0]
        tensor = leaf.partition(".")[0] if leaf else name.rpartition(".")[2]
        (no_decay if owner in norms or tensor == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_detector(model: nn.Module, data: DetectionData, imgsz: int, *, epochs: int, lr: float, seed: int,
                   batch: int = 16, progress: Callable[[float, float], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, teacher: nn.Module | None = None,
                   temperature: float = 2.0, alpha: float = 0.5, features: float = 0.0,
                   feature_temperature: float = 1.0, ema: float | None = None, ema_tau: float = 0.0,
                   ema_statistics: bool = True, optimizer: str = "adam", weight_decay: float = 0.0,
                   warmup: float = 0.0, freeze_bn: bool = False, accumulate: int = 1,
                   precise_bn: int = 0) -> list[float]:
    """Fine-tune a (possibly parametrized) DetectionModel in place with the detection loss; mean loss per epoch.

    Adam at `lr` with a cosine decay to 0 over the run, gradients clipped at norm 10 (as Ultralytics), and a
    weight average (ModelEMA, decay `ema`, None: DETECTOR_EMA_DECAY, 0: none) copied back at the end. With a
    teacher (the original detector), the loss is (1 - alpha) * detection loss + alpha * the output-distillation
    loss above, on the same augmented images, + `features` * the channel-wise distillation of the neck's maps
    feeding Detect at `feature_temperature` (methods/detect_distill.py; 1x1 adapters where a channel-pruned
    student's levels are narrower than the teacher's, trained here and dropped at the end).

    The other settings are Ultralytics' trainer's choices, kept for the floor's ablation (benchmarks/
    yolo_recovery.py), none of which kept the demo detector's mAP50-95 on its own: `optimizer` "adamw" with
    `weight_decay` on conv weights only (its param groups), `warmup` (a fraction of the steps, or a number of
    steps when >= 1: lr rises linearly from 0), `freeze_bn` (batch norms in eval mode: their statistics kept),
    `accumulate` (batches per optimizer step, its nominal batch 64 at batch 16), `ema_tau` (its decay ramp
    decay * (1 - exp(-updates / tau)); 0: a fixed decay), `ema_statistics` False (average the weights only).
    """
    offline_ultralytics()
    from ultralytics.data import build_dataloader, build_yolo_dataset  # (optional, heavy: when training)

    if epochs <= 0:
        return []
    if data.train is None:
        raise ValueError(f"{data.ref} has no train split to fine-tune on")
    torch.manual_seed(seed)
    random.seed(seed)  # Ultralytics' augmentation draws from random and numpy
    np.random.seed(seed)
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
    if optimizer not in ("adam", "adamw"):
        raise ValueError(f"optimizer {optimizer!r} is unknown: use adam or adamw")
    if teacher is not None:
        teacher = frozen_copy(teacher).to(device)
    neck = None  # (student's, teacher's captured Detect inputs, adapters) for channel-wise distillation
    if teacher is not None and features > 0:
        neck = NeckFeatures(model), NeckFeatures(teacher)
        model.eval()
        with torch.no_grad():  # one probe image tells each level's channel counts
            probe = torch.zeros(1, 3, imgsz, imgsz, device=device)
            model(probe), teacher(probe)
        neck = (*neck, Adapters(neck[0].maps, neck[1].maps).to(device))
    adapted = list(neck[2].parameters()) if neck is not None else []
    if optimizer == "adamw":
        groups = _param_groups(model, weight_decay) + ([{"params": adapted, "weight_decay": 0.0}] if adapted else [])
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.Adam(params + adapted, lr=lr, weight_decay=weight_decay)
    params = params + adapted
    total = max(1, epochs * len(loader))
    warm = int(round(warmup * total)) if warmup < 1 else int(warmup)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        progress_ = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    opt.zero_grad(set_to_none=True)
    ema = DETECTOR_EMA_DECAY if ema is None else ema
    averager = ModelEMA(model, ema, ema_tau, ema_statistics) if ema > 0 else None
    losses, step = [], 0
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    try:
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
                    if neck is not None:
                        loss = loss + features * cwd_loss(neck[2](neck[0].maps), neck[1].maps, feature_temperature)
                (loss / accumulate).backward()
                if (step + 1) % accumulate == 0 or step + 1 == total:
                    torch.nn.utils.clip_grad_norm_(params, max_norm=10.0)  # as Ultralytics' trainer does
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if averager is not None:
                        averager.update()
                scheduler.step()
                running += float(loss.detach())
                count += 1
                step += 1
                if progress is not None:
                    progress(step / total, float(loss.detach()))
                if should_stop is not None and should_stop():
                    return losses
            losses.append(running / max(1, count))
    finally:
        if neck is not None:
            neck[0].remove(), neck[1].remove()  # the adapters go with them: never part of the model
        if averager is not None:
            averager.copy_to()
        model.eval()
    if precise_bn > 0 and bn_stats.has_batch_norm(model):
        def augmented():
            for index, batch_data in enumerate(loader):
                if index >= precise_bn:
                    break
                yield batch_data["img"].float() / 255

        with torch.no_grad():
            bn_stats.reestimate(model, augmented())
    return losses


def detector_batches(data: DetectionData, imgsz: int, size: int | None, seed: int = 0,
                     batch: int = 16) -> list[torch.Tensor]:
    """A seeded sample of `size` training images (all when None), letterboxed without augmentation, as float batches.

    For re-estimating batch-norm statistics: the images a detector sees at inference, not the training
    augmentation's."""
    if data.train is None:
        return []
    images = image_files(data.train)
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


DETECTOR_BN_BATCH_SIZE = 16  # images per batch of the analyses' batch-norm re-estimation (statistics_batches)
DETECTOR_BN_IMAGES = 256  # training images whose statistics re-estimate a detector's batch norms after fine-tuning


def recalibrate_detector(model: nn.Module, data: DetectionData, imgsz: int, seed: int = 0,
                         size: int = DETECTOR_BN_IMAGES) -> int:
    """Re-estimate a detector's batch-norm statistics on training images (nothing to do once fold_bn folded them)."""
    if not bn_stats.has_batch_norm(model):
        return 0
    return bn_stats.reestimate(model, detector_batches(data, imgsz, size, seed))


def map_scorer(data: DetectionData, imgsz: int, size: int, seed: int,
               metric: str = "map50_95") -> Callable[[nn.Module], float]:
    """score(model) -> mAP on a seeded subset of `size` validation images, held in memory."""
    fast = FastMap(data, imgsz, size, seed)
    return lambda model: fast(model)[metric]


class DetectorTask:
    """A YOLO detector on a DetectionData (methods/task.Task): Ultralytics' detection loss, mAP on validation subsets.

    Its batch-norm statistics are re-estimated on letterboxed training images, and not after real training
    (`reestimate_after_training` False): re-estimating the demo YOLO's statistics on 256 letterboxed training
    images, its weights unchanged, took mAP50-95 from 0.936 to 0.885 (its weights are tuned to the statistics of
    Ultralytics' augmented training); after 2 epochs of fine-tuning the model kept 0.914 without it and 0.871
    with it.
    """

    kind = DETECT
    score_name = "mAP50-95"
    fitness_name = "mAP50"  # which boxes survive; their placement is restored by fine-tuning (mAP50-95)
    reestimate_after_training = False  # measured on the demo detector: see above
    statistics_between_groups = False  # its re-estimation runs in fine-tuning, once per group
    scores_whole_model = True  # mAP runs the Ultralytics model whole, on images FastMap holds
    gradient_loss_name = "detection (box + class + DFL)"

    def __init__(self, data: DetectionData, imgsz: int, batch: int = 16) -> None:
        self.data = data
        self.imgsz = imgsz
        self.batch = batch
        self.input_shape = (3, imgsz, imgsz)
        self._distill: dict = {}  # teacher, temperature, alpha once a plan's distill step asked

    @property
    def distilling(self) -> bool:
        return bool(self._distill)

    def train(self, model: nn.Module, *, epochs: int, lr: float, seed: int,
              progress: Callable[[float, float], None] | None = None,
              should_stop: Callable[[], bool] | None = None, ema: float | None = None) -> None:
        train_detector(model, self.data, self.imgsz, epochs=epochs, lr=lr, seed=seed, batch=self.batch,
                       progress=progress, should_stop=should_stop, ema=ema, **self._distill)

    def recalibrate(self, model: nn.Module, seed: int, max_batches: int) -> int | None:
        return recalibrate_detector(model, self.data, self.imgsz, seed)

    def scorer(self, size: int, seed: int, metric: str | None = None) -> Callable[[nn.Module], float]:
        return map_scorer(self.data, self.imgsz, size, seed, "map50" if metric == "fitness" else "map50_95")

    def screen(self, size: int, seed: int) -> torch.Tensor:
        return screen_batch(self.data, self.imgsz, size, seed)

    def distil_from(self, teacher: nn.Module, temperature: float, alpha: float, features: float = 0.0,
                    feature_temperature: float = 1.0) -> None:
        self._distill = {"teacher": teacher, "temperature": temperature, "alpha": alpha, "features": features,
                         "feature_temperature": feature_temperature}

    @classmethod
    def for_handle(cls, handle, data: DetectionData | None, batch_size: int = 64,
                   shift_pixels: int = 0) -> DetectorTask:
        """(A detector trains in batches of its own size, without the classifier's pixel shifts.)"""
        return cls(data, handle.imgsz)

    @staticmethod
    def prepare_channel_pruning(model: nn.Module) -> tuple[list[str], tuple[nn.Module, ...]]:
        """Ultralytics' C2f splits its channels by a stored count the dependency graph cannot follow: replace it
        by the output-identical split-free C2fV2 (recorded, so the decoder repeats it), and keep the Detect
        head's prediction outputs (boxes, class scores, DFL) and the attention layers whole."""
        check_prunable(model)  # a block the graph cannot follow (RT-DETR's, ADown): refused before any change
        return make_prunable(model), ignored_layers(model)

    def statistics_batches(self, batches: int, seed: int, batch_size: int) -> list[torch.Tensor]:
        """`batches` batches of DETECTOR_BN_BATCH_SIZE letterboxed training images (its own batch size)."""
        return detector_batches(self.data, self.imgsz, batches * DETECTOR_BN_BATCH_SIZE, seed, DETECTOR_BN_BATCH_SIZE)

    def whole_model_score(self, size: int, seed: int) -> tuple[Callable[[nn.Module], float], int]:
        """mAP50 on validation images held in memory (FastMap)."""
        fast = FastMap(self.data, self.imgsz, size, seed)
        return (lambda model: fast(model)["map50"]), sum(len(images) for images, _ in fast.items)

    def validation_images(self, size: int, seed: int) -> int:
        return len(self.data.val_subset(size, seed))

    def example_batch(self, size: int, seed: int) -> torch.Tensor:
        return torch.rand(4, 3, self.imgsz, self.imgsz)

    def gradient_samples(self, images: int, size: int, seed: int, microbatch: int) -> tuple[list[dict], int]:
        """One-image batches {img, cls, bboxes, batch_idx} from the validation subset, letterboxed (no
        augmentation); always one image to a sample (the detection loss batches by its own index)."""
        dataset = letterboxed(self.data, self.data.val_subset(min(images, size), seed), self.imgsz, 1)
        out = []
        for index in range(min(images, len(dataset))):
            batch = dataset.collate_fn([dataset[index]])
            out.append({"img": batch["img"].float() / 255, "cls": batch["cls"], "bboxes": batch["bboxes"],
                        "batch_idx": batch["batch_idx"]})
        return out, 1

    def prepare_gradients(self, model: nn.Module) -> None:
        model.args = yolo_cfg(self.imgsz)  # the loss reads its box / class / DFL gains from here
        model.criterion = None

    def sample_loss(self, model: nn.Module, sample, device: torch.device) -> torch.Tensor:
        batch = {key: value.to(device) for key, value in sample.items()}
        loss, _ = model.loss(batch, model(batch["img"]))
        return loss.sum()
