"""Magnitude pruning (Han et al. 2015): the config, its ordering, its Plan-page field and its estimate hook.
The handler is methods/prune.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from complab.layermap import LayerField, OptionField, _integer, _number, resolve, step_config

EMA_MAX = 0.9999  # a weight average's decay: 0 (none) up to 0.9999 (Ultralytics' ModelEMA's)
SPARSITY_MAX = 0.999  # every sparsity a valid recipe holds fits the Plan page's slider


@step_config
@dataclass(frozen=True)
class PruneStep:
    """Magnitude pruning (Han et al. 2015): per layer, the smallest |w| are set to zero and stay zero."""

    type: ClassVar[str] = "prune"
    per_layer: ClassVar[tuple[str, ...]] = ("sparsity",)
    after: ClassVar[tuple[tuple[str, str], ...]] = (
        ("channels", "removing channels changes the layers' shapes, so prune must work on what remains; "
                     "move the channels step first"),)
    layer_fields: ClassVar[tuple[LayerField, ...]] = (
        LayerField("sp", "sparsity", "slider", 0.5, low=0.0, high=SPARSITY_MAX, step=0.001, fmt="%.3f", off=0.0,
                   setting="sparsity", bulk_step=0.05, width=2.2),)
    option_fields: ClassVar[tuple[OptionField, ...]] = (
        OptionField("iterations", "plan_iterations", "prune rounds", 1, 100),
        OptionField("finetune_epochs", "plan_prune_epochs", "epochs per round", 0, 1000),
        OptionField("ema", "plan_prune_ema", "weight average decay (detectors)", 0.0, EMA_MAX, step=0.001,
                    fmt="%.4f", help="a detector's fine-tuning keeps an exponential average of its weights and "
                                     "batch-norm statistics with this decay and ends on it (0: off). It holds the "
                                     "model near where a round started: right for a small step, wrong after a big "
                                     "one (measured on the demo detector: benchmarks/yolo_recovery.py)"),
    )
    sparsity: dict[str, float] = field(default_factory=dict)  # fraction of weights removed, 0 to 0.999
    iterations: int = 3  # prune-then-fine-tune rounds; sparsity rises to its target over them
    finetune_epochs: int = 4  # epochs of masked fine-tuning after each round
    lr: float = 5e-4  # fine-tuning learning rate (Adam)
    seed: int = 0
    # a detector's fine-tuning: decay of the weight average it ends on (methods/detect_train.ModelEMA; 0 = none);
    # a classifier's loop keeps none
    ema: float = 0.0
    quiet_defaults: ClassVar[tuple[str, ...]] = ("ema",)  # (plan.Plan.to_dict)

    def check(self, where: str) -> None:
        for layer, value in self.sparsity.items():
            _number(where, layer, "sparsity", value, 0.0, SPARSITY_MAX)
        _integer(where, None, "iterations", self.iterations, 1, 100)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)
        _number(where, None, "ema", self.ema, 0.0, EMA_MAX)

    @classmethod
    def from_rows(cls, rows: dict[str, dict], options: dict | None = None) -> PruneStep | None:
        """The step the Plan page's rows ask for (None when no layer is pruned)."""
        sparsity = {layer: round(float(row["sp"]), 4) for layer, row in rows.items() if float(row["sp"]) > 0}
        return cls(sparsity=sparsity, **(options or {})) if sparsity else None

    def to_rows(self, layers: list[str]) -> dict[str, dict]:
        return {layer: {"sp": float(resolve(self.sparsity, layer) or 0.0)} for layer in layers}

    def encoding(self, layer: str) -> dict:
        """The estimate hook: what this step does to the layer's stored weights (analysis/estimate.py)."""
        value = resolve(self.sparsity, layer)
        return {} if value is None else {"sparsity": float(value)}
