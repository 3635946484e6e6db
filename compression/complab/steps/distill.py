"""Knowledge distillation (Hinton et al. 2015): the config and its ordering. The handler is methods/distill.py;
the Plan page sets it in the channel section (ui/channels.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from complab.layermap import _integer, _number, step_config


@step_config
@dataclass(frozen=True)
class DistillStep:
    """Knowledge distillation (Hinton et al. 2015): the original model teaches the compressed one.

    With a distill step in the plan, every fine-tuning of the plan (each step's own) uses the KD loss;
    the step itself then fine-tunes `epochs` more where it stands, keeping pruned weights at zero.
    """

    type: ClassVar[str] = "distill"
    per_layer: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[tuple[str, str], ...]] = ()
    temperature: float = 4.0  # softens both models' logits; the KD term is scaled by T^2
    alpha: float = 0.7  # weight of the KD term; 1 - alpha weighs the hard-label cross-entropy
    epochs: int = 4  # fine-tuning epochs of this step (0: only switch the other steps' loss to KD)
    lr: float = 5e-4  # learning rate (Adam)
    seed: int = 0
    # a detector: weight of the channel-wise distillation (Shu et al. 2021) of the neck's maps feeding Detect, added
    # to the loss (0 = off; methods/detect_distill.py), and its softmax temperature
    features: float = 0.0
    feature_temperature: float = 1.0
    quiet_defaults: ClassVar[tuple[str, ...]] = ("features", "feature_temperature")  # (plan.Plan.to_dict)

    def check(self, where: str) -> None:
        _number(where, None, "temperature", self.temperature, 0.1, 100.0)
        _number(where, None, "alpha", self.alpha, 0.0, 1.0)
        _integer(where, None, "epochs", self.epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)
        _number(where, None, "features", self.features, 0.0, 1000.0)
        _number(where, None, "feature_temperature", self.feature_temperature, 0.1, 100.0)
