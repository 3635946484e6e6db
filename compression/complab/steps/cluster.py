"""k-means weight sharing (Deep Compression; k "auto": the dynamical-clustering paper): the config, its ordering,
its Plan-page field and its estimate hook. The handler is methods/cluster.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from complab.errors import PlanError
from complab.layermap import LayerField, OptionField, _integer, _number, _short, resolve, step_config

CLUSTER_CHOICES = ("off", "auto", 2, 4, 8, 16, 32, 64, 128, 256)


@step_config
@dataclass(frozen=True)
class ClusterStep:
    """k-means weight sharing per layer (Deep Compression), k fixed or "auto" (the dynamical-clustering
    paper's dynamic choice, arXiv 1910.02747)."""

    type: ClassVar[str] = "cluster"
    per_layer: ClassVar[tuple[str, ...]] = ("n_clusters", "rate_lambda")
    quiet_defaults: ClassVar[tuple[str, ...]] = ("objective", "rate_lambda", "target_bytes", "importance",
                                                 "joint_prune")  # (plan.Plan.to_dict)
    after: ClassVar[tuple[tuple[str, str], ...]] = (
        ("prune", "pruning after weight sharing would break the shared values"),
        ("channels", "removing channels changes the layers' shapes, so cluster must work on what remains; "
                     "move the channels step first"),
        ("distill", "its fine-tuning would break the shared values (the cluster step already fine-tunes "
                    "with the KD loss when the plan distills)"),
        ("fold_bn", "folding scales each output channel's weights, which would break the shared values"),
    )
    layer_fields: ClassVar[tuple[LayerField, ...]] = (
        LayerField("k", "clusters", "select", 32, choices=CLUSTER_CHOICES, off="off", setting="n_clusters",
                   bulk_step=1, width=1.5, on_change=lambda k: {} if k in (None, "off") else {"b": "off"}),)
    option_fields: ClassVar[tuple[OptionField, ...]] = (
        OptionField("finetune_epochs", "plan_cluster_epochs", "shared-value epochs", 0, 1000),
        OptionField("tolerance", "plan_tolerance", "auto-k tolerance (acc. drop)", 0.0, 1.0, step=0.001, fmt="%.3f"),
        OptionField("bias_clusters", "plan_bias_clusters", "bias shared values", 0, 256,
                    help="0: biases stay fp32; 2-256: each clustered layer's bias is shared among that many values "
                         "and fine-tuned with the weights (at 100x+ the biases are a fifth of a LeNet's file)"),
        OptionField("objective", "plan_cluster_objective", "sharing objective", 0, 0, choices=("mse", "rate"),
                    help="mse: k-means with the layer's k values; rate: entropy-constrained k-means (distortion + "
                         "lambda x index bits), k the most values a layer may use"),
        OptionField("lambda_all", "plan_rate_lambda", "rate lambda (objective rate)", 0.0, 1000.0, step=0.001,
                    fmt="%.4f", help="share of a layer's mean square weight one saved bit per weight is worth "
                                     "(0.01: 1%); larger: fewer bytes, more error. A recipe may set it per layer"),
        OptionField("target_bytes_or_0", "plan_target_bytes", "weight bytes target (0: off)", 0, 1 << 40,
                    help="objective rate: one lambda for the whole model, found to code the clustered weights in "
                         "about this many bytes (replaces the lambda)"),
        OptionField("importance", "plan_cluster_importance", "sharing importance", 0, 0, choices=("none", "fisher"),
                    help="fisher: squared errors weighted by the diagonal Fisher on validation images, so the "
                         "shared values sit nearer the weights the loss is sensitive to"),
        OptionField("joint_prune", "plan_joint_prune", "prune while sharing", 0, 0, choices=(False, True),
                    help="objective rate: zero is a free shared value; a weight goes to zero where the position and "
                         "index bits it saves outweigh the error it adds (zeros stay zero in fine-tuning)"),
    )
    n_clusters: dict[str, int | str] = field(default_factory=dict)  # 2 to 256 shared values, or "auto"
    init: str = "linear"  # centroid initialisation; Han et al. found linear best (large weights matter)
    auto_criterion: str = "accuracy"  # "accuracy": drop on a validation subset; "reconstruction": rel. SSE
    tolerance: float = 0.005  # auto: largest accuracy drop (fraction) or relative SSE a layer may cost
    auto_val_size: int = 512  # validation images used by the auto search
    finetune_epochs: int = 4  # epochs fine-tuning the shared values (gradients summed per cluster)
    lr: float = 2e-4  # learning rate for the shared values
    seed: int = 0
    # shared values for each clustered layer's bias, 2 to 256 (0: biases stay fp32). At 160x a LeNet-5 file
    # is ~11 KB and its 580 fp32 biases are 2.2 KB of it; shared (and fine-tuned with the weights) at 16
    # values they cost 0.6 KB. The file shares a bias of at least 64 values; shorter ones stay raw.
    bias_clusters: int = 0
    # rate-aware sharing (methods/ecsq.py). objective "mse": k-means (n_clusters values); "rate": entropy-constrained
    # k-means, minimising distortion + rate_lambda x the index bits (n_clusters is then the most values a layer
    # may use). rate_lambda's unit: the share of the layer's mean square weight one saved bit is worth (0.01: one
    # bit per weight for 1% of it); a number or per layer like n_clusters. target_bytes (objective "rate"): one
    # lambda for the whole model, found by bisection to code the clustered weights in about this many bytes.
    objective: str = "mse"
    rate_lambda: dict[str, float] = field(default_factory=dict)  # per layer (a number: {"_default": it})
    target_bytes: int | None = None
    importance: str = "none"  # "fisher": squared errors weighted by the diagonal Fisher on validation images
    joint_prune: bool = False  # objective "rate": zero is a free level (a weight goes to zero where that pays)

    def check(self, where: str) -> None:
        for layer, value in self.n_clusters.items():
            if value == "auto":
                continue
            _integer(where, layer, "n_clusters", value, 2, 256, extra=' or "auto"')
        if self.bias_clusters != 0:
            _integer(where, None, "bias_clusters", self.bias_clusters, 2, 256, extra=" or 0 (biases stay fp32)")
        if self.init not in ("linear", "quantile", "random"):
            raise PlanError(f"{where}: init {_short(self.init)} is unknown: use linear, quantile or random")
        if self.auto_criterion not in ("accuracy", "reconstruction"):
            raise PlanError(f"{where}: auto_criterion {_short(self.auto_criterion)} is unknown: "
                            "use accuracy or reconstruction")
        _number(where, None, "tolerance", self.tolerance, 0.0, 1.0)
        _integer(where, None, "auto_val_size", self.auto_val_size, 1, 10_000_000)
        _integer(where, None, "finetune_epochs", self.finetune_epochs, 0, 1000)
        _number(where, None, "lr", self.lr, 0.0, 1.0)
        if self.objective not in ("mse", "rate"):
            raise PlanError(f"{where}: objective {_short(self.objective)} is unknown: use mse (k-means) or rate "
                            "(entropy-constrained, with rate_lambda or target_bytes)")
        if self.importance not in ("none", "fisher"):
            raise PlanError(f"{where}: importance {_short(self.importance)} is unknown: use none or fisher")
        if not isinstance(self.joint_prune, bool):
            raise PlanError(f"{where}: joint_prune {_short(self.joint_prune)} must be true or false")
        lambdas = self.rate_lambda
        for layer, value in lambdas.items():
            _number(where, layer, "rate_lambda", value, 0.0, 1000.0)
        if self.target_bytes is not None:
            _integer(where, None, "target_bytes", self.target_bytes, 1, 1 << 40, extra=" or null")
        if self.objective == "mse":
            for name, set_ in (("rate_lambda", any(lambdas.values())), ("target_bytes", self.target_bytes is not None),
                               ("joint_prune", self.joint_prune)):
                if set_:
                    raise PlanError(f"{where}: {name} needs objective \"rate\" (k-means ignores it): "
                                    "set objective to rate or remove it")
        if self.target_bytes is not None and self.rate_lambda:
            raise PlanError(f"{where}: target_bytes chooses one lambda for the whole model: remove rate_lambda "
                            "or target_bytes")
        if self.objective == "rate" and any(k == "auto" for k in self.n_clusters.values()):
            raise PlanError(f"{where}: objective rate needs a number of clusters per layer (the largest it may use), "
                            "not \"auto\": give n_clusters a number")

    @classmethod
    def from_rows(cls, rows: dict[str, dict], options: dict | None = None) -> ClusterStep | None:
        """The step the Plan page's rows ask for (None when no layer is clustered)."""
        clusters = {layer: row["k"] for layer, row in rows.items() if row["k"] not in (None, "off")}
        return cls(n_clusters=clusters, **cls.config_options(options)) if clusters else None

    @staticmethod
    def config_options(options: dict | None) -> dict:
        """The Plan page's option values as the config holds them: its one lambda (lambda_all) becomes the
        rate_lambda's _default and its byte target (target_bytes_or_0, 0: none) target_bytes. Every caller that
        builds the step from the page's options (rows, sweeps, searches) goes through here."""
        options = dict(options or {})
        if "lambda_all" in options:
            lam = options.pop("lambda_all")
            options["rate_lambda"] = {"_default": lam} if lam else {}
        if "target_bytes_or_0" in options:
            options["target_bytes"] = int(options.pop("target_bytes_or_0")) or None
        return options

    @property
    def lambda_all(self) -> float:
        """The Plan page's lambda: the recipe's _default (a per-layer value stays the recipe's own)."""
        return float(self.rate_lambda.get("_default", 0.0))

    @property
    def target_bytes_or_0(self) -> int:
        return int(self.target_bytes or 0)

    def to_rows(self, layers: list[str]) -> dict[str, dict]:
        return {layer: {"k": "off" if (k := resolve(self.n_clusters, layer)) is None else k} for layer in layers}

    def encoding(self, layer: str) -> dict:
        """The estimate hook: the layer's shared values ("auto": the estimate uses its AUTO_CLUSTERS)."""
        k = resolve(self.n_clusters, layer)
        return {} if k is None else {"n_clusters": k}

    def estimate_options(self) -> dict:
        """The plan-wide settings the estimate reads: biases shared among bias_clusters values, and the rate-aware
        options (only when set, so a plain plan's estimate options stay as they were)."""
        options = {"bias_clusters": self.bias_clusters}
        if self.objective != "mse":
            options["rate"] = {"rate_lambda": self.rate_lambda, "target_bytes": self.target_bytes,
                               "joint_prune": self.joint_prune}
        return options
