"""Channel pruning (Hu et al. 2018): the config and its ordering. The handler is methods/channels/; the Plan page
draws its "channels kept" sliders per channel group (ui/channels.py), not per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from complab.errors import PlanError
from complab.layermap import _integer, _number, _short, step_config

ROUND_TO = (1, 8, 16)  # round_to's choices (methods/channels/graph.keep_count applies it)
# round_to's default for a detector (the channels step's plan default for a detector task, the Plan page's,
# methods/channels/detector.prune_detector's): see benchmarks/detector_channels.py round_to_effect for its measurement.
# 16, not 8: on this AVX-512 CPU rounding to 16 ran 1.14-1.39x more FLOPs per second than unrounded (8: 1.12-1.14x),
# and untrained YOLOv8n at keep 0.5 (640 px, fused, 1 thread) ran as fast rounded to 16 as to 8 (latency x2.71 vs
# x2.72) while keeping 7% more FLOPs (FLOPs ratio 3.61 vs 3.88): the same speed with more of the model kept
DETECTOR_ROUND_TO = 16


@step_config
@dataclass(frozen=True)
class ChannelStep:
    """Channel pruning (Hu et al. 2018): per convolution, keep a fraction of output channels, removed for real.

    Layers are pruned least sensitive first; the kept channels are chosen by a genetic algorithm with the
    paper's two-step fitness, or by the L1-norm (Li et al. 2017) or random baselines.
    """

    type: ClassVar[str] = "channels"
    per_layer: ClassVar[tuple[str, ...]] = ("keep_ratio",)
    after: ClassVar[tuple[tuple[str, str], ...]] = ()  # it goes first: every other step works on what remains
    keep_ratio: dict[str, float] = field(default_factory=dict)  # fraction of output channels kept, 0.01 to 1
    selection: str = "ga"  # "ga" (genetic algorithm), "l1" (largest filter L1 norms) or "random"
    population: int = 16  # GA: candidate keep masks per generation
    generations: int = 8  # GA: generations after the initial population
    crossover: float = 0.8  # GA: probability that a child mixes two parents (uniform crossover)
    mutation: float = 0.05  # GA: per kept channel, probability of swapping it for a dropped one
    elite: int = 2  # GA: best masks copied unchanged into the next generation
    survivors: int = 4  # GA: candidates per generation the accurate fitness scores (0 = all: no screening)
    screen_size: int = 64  # images for the cheap fitness (reconstruction error of the next layers)
    fitness_size: int = 256  # validation images for the accurate fitness (top-1; mAP50 for a detector)
    recalibrate_size: int = 256  # training images whose batch statistics re-estimate BatchNorm after each layer
    finetune_epochs: int = 1  # fine-tuning epochs after each layer (KD loss when the plan distills)
    final_epochs: int = 0  # fine-tuning epochs after the last layer
    lr: float = 1e-3  # fine-tuning learning rate (Adam)
    seed: int = 0
    # kept channels per group rounded to the nearest multiple of this (1 = off, 8, 16): ONNX Runtime's and other
    # runtimes' convolution kernels vectorize over 8 or 16 channels, so an odd width wastes the remainder's lanes
    round_to: int = 1
    # a detector's fine-tuning: decay of the weight average it ends on (methods/detect_train.ModelEMA; 0 = none)
    ema: float = 0.0
    quiet_defaults: ClassVar[tuple[str, ...]] = ("ema",)  # (plan.Plan.to_dict)

    def check(self, where: str) -> None:
        for layer, value in self.keep_ratio.items():
            _number(where, layer, "keep_ratio", value, 0.01, 1.0)
        if self.selection not in ("ga", "l1", "random"):
            raise PlanError(f"{where}: selection {_short(self.selection)} is unknown: use ga, l1 or random")
        _integer(where, None, "population", self.population, 2, 1000)
        _integer(where, None, "generations", self.generations, 0, 1000)
        _number(where, None, "crossover", self.crossover, 0.0, 1.0)
        _number(where, None, "mutation", self.mutation, 0.0, 1.0)
        _integer(where, None, "elite", self.elite, 0, self.population - 1)
        _integer(where, None, "survivors", self.survivors, 0, self.population)
        _integer(where, None, "screen_size", self.screen_size, 1, 100_000)
        _integer(where, None, "fitness_size", self.fitness_size, 1, 10_000_000)
        _integer(where, None, "recalibrate_size", self.recalibrate_size, 0, 10_000_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _integer(where, None, "final_epochs", self.final_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)
        _number(where, None, "ema", self.ema, 0.0, 0.9999)
        if isinstance(self.round_to, bool) or self.round_to not in ROUND_TO:
            raise PlanError(f"{where}: round_to {_short(self.round_to)} is unknown: use 1 (off), 8 or 16")
