"""Sensitivity analysis: how much accuracy each prunable layer loses, alone, to pruning, to weight sharing and to
integer quantization.

For every layer, with all other layers untouched: accuracy on a validation subset at each sparsity
of a grid (magnitude pruning, no fine-tuning), at each cluster count of a grid (k-means weight
sharing of the layer's weights, no fine-tuning) and at each integer width of a grid (uniform per-channel
integers, analysis/grid.py's "bits" axis). The report is plain JSON; the plan page turns it
into suggestions and the target solver (compression/complab/analysis/solver.py) works over it.

A model with batch norm is measured at each point (where the weights changed) with its batch-norm
statistics re-estimated on a few training batches (a cumulative average), as every compression step
leaves them: with the original statistics, a pruned MobileNetV3 layer looks far more sensitive than
it is after compression. The report's config says so (`batch_norm`).

Speed (the prefix cache): changing layer L changes only what is computed from L's output. The model
is traced once with torch.fx; for each layer, the values that the rest of the network (the "suffix":
every node depending on L) reads from the part before it (the "frontier") are computed once, for the
validation images and the batch-norm training batches, and each grid point runs only the suffix. Only
the batch norms inside the suffix can see changed inputs, so only they are re-estimated (the ones
upstream keep their original statistics, measured on the whole training set, in both paths). The
frontier of one layer is held at a time, and only when it fits a memory budget
(PREFIX_CACHE_FRACTION of the memory available, at most PREFIX_CACHE_MAX_BYTES); otherwise, and for
models that cannot be traced (Ultralytics detectors), every point runs the whole model. The report's
`prefix_cache` says which path each layer took.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import fx, nn

from complab.analysis.fisher import analyze_estimate
from complab.analysis.grid import (  # noqa: F401 - re-exported: the analysis' settings and report
    BN_BATCH_SIZE,
    DEFAULT_BITS,
    DEFAULT_CLUSTERS,
    DEFAULT_SPARSITIES,
    SensitivityConfig,
    SensitivityReport,
    grid_weight,
)
from complab.analysis.sensitivity_report import noise_of
from complab.data import DataBundle
from complab.errors import CompressionLabError
from complab.methods import bn_stats
from complab.methods.context import Cancelled
from complab.methods.tasks import task_for
from complab.models.handle import ModelHandle

DEFAULT_CONFIG = SensitivityConfig()
# The prefix cache holds one layer's frontier (validation + batch-norm images) within this budget
PREFIX_CACHE_FRACTION = 0.4  # of the memory available when the analysis starts (MemAvailable, or free GPU memory)
PREFIX_CACHE_MAX_BYTES = 16 * 2**30
# Validation images are evaluated in batches whose estimated activations stay within this
EVAL_BATCH_BYTES = 1 * 2**30
MAX_EVAL_BATCH = 512
# A validation subset smaller than this (or than the class count) measures nothing: refused
MIN_VAL_IMAGES = 10
# Peak activation memory of one image in inference is estimated as this many times the largest
# output of any layer (a residual block holds its input, the branch and the sum at once)
PEAK_ACTIVATION_FACTOR = 3


def weights_digest(handle: ModelHandle) -> str:
    digest = hashlib.sha256()
    for name, tensor in handle.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@dataclass
class _LayerPlan:
    """How the points of one layer are measured: the suffix to run on cached inputs, or the whole model."""

    layer: str
    norms: list[nn.Module]  # the batch norms re-estimated at each point
    suffix: fx.GraphModule | None = None  # the nodes depending on the layer; inputs: the frontier values
    val_inputs: list[tuple] | None = None  # per validation batch, the frontier values
    bn_inputs: list[tuple] | None = None  # per batch-norm training batch, the frontier values
    reason: str = ""  # why the whole model runs (empty when the prefix cache is used)


class ExactScorer:
    """Measures the model's validation score with ONE layer's weight replaced (every other layer untouched).

    The one interface both modes use: the exact mode calls `score` at every grid point, the estimate
    mode at a few calibration points. `score(layer, weight)` puts `weight` into the layer, re-estimates
    the batch-norm statistics its change can reach when the model has them (then puts them back),
    evaluates, and restores the original weight. The handle given is never changed (one clone, made
    here, is reused for every point). With `prefix_cache` (the default) only the part of the network
    after the layer runs at each point (see the module docstring); `prefix_cache=False` runs the whole
    model at every point (the reference the tests compare against). Scoring the points of one layer
    together is fastest: the cache holds one layer's inputs at a time.

    `base` is the score of the model as given (original weights and batch-norm statistics): a point
    whose weight equals the original returns it exactly.
    """

    def __init__(self, handle: ModelHandle, data: DataBundle, config: SensitivityConfig, *,
                 prefix_cache: bool = True):
        if not handle.prunable_layers():
            raise CompressionLabError(
                f"{handle.label} has no layer a sensitivity analysis can measure (no convolution or linear "
                "layer weights were found): load a model with Conv or Linear layers, or check the architecture")
        task = task_for(handle, data)
        available = _available_bytes(next(handle.model.parameters()).device)
        _check_memory(handle, task, data, config, available)
        self.work = handle.clone()
        self.model = self.work.model.eval()
        self.config = config
        self.layers = self.work.prunable_layers()  # name -> the clone's weight tensor (changed in place)
        self.budget_bytes = int(min(PREFIX_CACHE_MAX_BYTES, PREFIX_CACHE_FRACTION * available))
        model = self.model
        device = next(model.parameters()).device
        self._graph: fx.GraphModule | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._plan: _LayerPlan | None = None
        self._whole_score = None
        if task.scores_whole_model:  # e.g. a detector's mAP50 on validation images its task holds in memory
            self._whole_score, self.val_images = task.whole_model_score(config.val_size, config.seed)
            self.eval_batch = None
            self._trace_reason = f"the {handle.kind.score_name} evaluation runs the model whole"
        else:
            loader = data.loader("val", size=config.val_size, seed=config.seed)
            images = [(x, y) for x, y in loader]
            self.val_images = sum(len(y) for _, y in images)
            _check_val_images(self.val_images, handle.num_classes, config.val_size)
            self.eval_batch = _eval_batch_size(_activation_bytes(model, tuple(images[0][0].shape[1:]), device))
            # evaluate on tensors held in memory (the grid runs hundreds of evaluations), in large batches
            xs, ys = torch.cat([x for x, _ in images]), torch.cat([y for _, y in images])
            self._val = [(xs[i:i + self.eval_batch].to(device), ys[i:i + self.eval_batch])
                         for i in range(0, len(ys), self.eval_batch)]
            self._graph, self._trace_reason = _trace(model, self._val[0][0][:2])
        self.prefix_cache = prefix_cache and self._graph is not None
        self._layer_paths: dict[str, str] = {}  # layer -> "" (prefix cache) or why the whole model ran
        self.bn_batches = _bn_batches(task, model, config)
        self._norms = bn_stats.batch_norms(model) if self.bn_batches else []
        self._statistics = {m: (m.running_mean.clone(), m.running_var.clone(),
                                None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                            for m in self._norms}
        with torch.no_grad():
            self.base = self._evaluate(None)
        bn_images = sum(len(batch) for batch in self.bn_batches)
        if self.bn_batches:
            with torch.no_grad():
                self._reestimate(self._norms, lambda: [model(batch) for batch in self.bn_batches])
                try:
                    base_reestimated = self._evaluate(None)
                finally:
                    self._restore(self._norms)
            scope = ("only the batch norms downstream of the layer (the ones its change can reach; those "
                     "upstream keep their original statistics)" if self._graph is not None else
                     "every batch norm (the model could not be traced to find the ones downstream of the layer)")
            self.batch_norm = {
                "reestimated": True, "images": bn_images, "batches": len(self.bn_batches),
                "scope": "downstream" if self._graph is not None else "all",
                "base_reestimated": base_reestimated,
                "note": f"batch-norm statistics re-estimated at each point on {bn_images} training images (cumulative "
                        f"average), as compression leaves them: {scope}. The base accuracy and every point whose "
                        "weight is unchanged use the original statistics; base_reestimated is the accuracy at the "
                        "original weights with every batch norm re-estimated on the same images (how much of a "
                        "drop the re-estimation alone can explain)"}
        else:
            self.batch_norm = {"reestimated": False, "images": 0, "batches": 0,
                               "note": "original batch-norm statistics (none in the model, or bn_batches 0)"}

    # -- the interface ---------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, layer: str, weight: torch.Tensor) -> float:
        """The validation score with `layer`'s weight replaced by `weight` (batch norm re-estimated for it)."""
        target = self.layers[layer]
        original = target.detach().clone()
        if torch.equal(weight, original):
            return self.base
        plan = self._plan_for(layer)
        target.copy_(weight)
        try:
            if plan.norms:
                if plan.bn_inputs is not None:
                    self._reestimate(plan.norms, lambda: [plan.suffix(*inputs) for inputs in plan.bn_inputs])
                else:
                    self._reestimate(plan.norms, lambda: [self.model(batch) for batch in self.bn_batches])
            return self._evaluate(plan)
        finally:
            target.copy_(original)
            self._restore(plan.norms)

    def cache_report(self) -> dict:
        """What the report's config records as `prefix_cache`: which path each measured layer took and why."""
        recomputed = {name: why for name, why in self._layer_paths.items() if why}
        used = any(not why for why in self._layer_paths.values())
        if not self.prefix_cache:
            reason = self._trace_reason or "turned off (prefix_cache=False): every point runs the whole model"
        elif recomputed:
            reason = (f"{len(self._layer_paths) - len(recomputed)} of {len(self._layer_paths)} layers ran only the "
                      "network after the layer on cached inputs; the others ran the whole model (see recomputed)")
        else:
            reason = "every layer ran only the network after it, on its inputs computed once"
        return {"used": bool(self.prefix_cache and used), "reason": reason, "budget_bytes": self.budget_bytes,
                "budget_rule": f"PREFIX_CACHE_FRACTION={PREFIX_CACHE_FRACTION} of the available memory, at most "
                               f"PREFIX_CACHE_MAX_BYTES={PREFIX_CACHE_MAX_BYTES}",
                "layers_cached": sum(1 for why in self._layer_paths.values() if not why),
                "recomputed": recomputed, "eval_batch": self.eval_batch}

    # -- evaluation and batch norm -----------------------------------------------------------------

    def _evaluate(self, plan: _LayerPlan | None) -> float:
        if self._whole_score is not None:
            return self._whole_score(self.model)
        correct = total = 0
        for index, (x, y) in enumerate(self._val):
            if plan is not None and plan.val_inputs is not None:
                logits = plan.suffix(*plan.val_inputs[index])
            else:
                logits = self.model(x)
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
        return correct / max(1, total)

    @staticmethod
    def _reestimate(norms: list[nn.Module], run: Callable[[], object]) -> None:
        """Reset `norms` and average their statistics over the forwards `run` makes (bn_stats.reestimate's rule)."""
        saved = [(m.momentum, m.training) for m in norms]
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average: every batch weighs the same
                m.train()
            run()
        finally:
            for m, (momentum, training) in zip(norms, saved, strict=True):
                m.momentum = momentum
                m.training = training

    def _restore(self, norms: list[nn.Module]) -> None:
        for m in norms:
            mean, var, tracked = self._statistics[m]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)

    # -- the prefix cache ------------------------------------------------------------------------

    def _plan_for(self, layer: str) -> _LayerPlan:
        if self._plan is not None and self._plan.layer == layer:
            return self._plan
        self._plan = None  # free the previous layer's frontier before computing this one's
        plan = self._make_plan(layer)
        self._layer_paths[layer] = plan.reason
        self._plan = plan
        return plan

    def _make_plan(self, layer: str) -> _LayerPlan:
        graph = self._graph
        if graph is None:
            return _LayerPlan(layer, self._norms, reason=self._trace_reason or "prefix cache off")
        nodes = list(graph.graph.nodes)
        starts = [n for n in nodes if (n.op == "call_module" and n.target == layer)
                  or (n.op == "get_attr" and n.target == f"{layer}.weight")]
        suffix: set[fx.Node] = set()
        stack = list(starts)
        while stack:
            node = stack.pop()
            if node not in suffix:
                suffix.add(node)
                stack.extend(node.users)
        modules = dict(graph.named_modules())
        norm_set = set(self._norms)
        inside = {modules[n.target] for n in suffix if n.op == "call_module" and modules.get(n.target) in norm_set}
        outside = {modules[n.target] for n in nodes if n not in suffix and n.op == "call_module"
                   and modules.get(n.target) in norm_set}
        if not starts or not any(n.op == "output" for n in suffix):
            return _LayerPlan(layer, self._norms, reason="the layer's output was not found in the traced graph")
        if inside & outside:  # a batch norm called both before and after the layer: all of them, whole model
            return _LayerPlan(layer, self._norms, reason="a batch norm is used both before and after the layer")
        norms = [m for m in self._norms if m in inside]  # in the model's order
        if not self.prefix_cache:
            return _LayerPlan(layer, norms, reason="prefix cache off")
        read = {source for node in suffix for source in node.all_input_nodes}
        frontier = [n for n in nodes if n not in suffix and n in read]
        prefix, suffix_module = _split(graph, nodes, suffix, frontier)
        first = prefix(self._val[0][0])
        per_image = _nbytes(first) / len(self._val[0][1])
        images = self.val_images + sum(len(batch) for batch in self.bn_batches)
        if per_image * images > self.budget_bytes:
            return _LayerPlan(layer, norms, reason=f"its inputs for {images} images need {_gb(per_image * images)} "
                                                   f"(budget {_gb(self.budget_bytes)})")
        val_inputs = [first] + [prefix(x) for x, _ in self._val[1:]]
        bn_inputs = [prefix(batch) for batch in self.bn_batches] if norms else None
        return _LayerPlan(layer, norms, suffix_module, val_inputs, bn_inputs)


def _split(graph: fx.GraphModule, nodes: list[fx.Node], suffix: set[fx.Node],
           frontier: list[fx.Node]) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Two modules sharing `graph`'s submodules: input -> the frontier values, and the frontier values -> output."""
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node not in suffix and node.op != "output":
            env[node] = head.node_copy(node, env.__getitem__)
    head.output(tuple(env[node] for node in frontier))
    prefix = fx.GraphModule(graph, head)
    prefix.graph.eliminate_dead_code()  # what the frontier does not need (needs the owning module set)
    prefix.recompile()
    tail = fx.Graph()
    env = {node: tail.placeholder(f"frontier_{i}") for i, node in enumerate(frontier)}
    for node in nodes:
        if node in suffix:
            env[node] = tail.node_copy(node, env.__getitem__)
    return prefix, fx.GraphModule(graph, tail)


def _trace(model: nn.Module, sample: torch.Tensor) -> tuple[fx.GraphModule | None, str]:
    """The model as an fx graph (plain symbolic tracing, then torchvision's tracer), checked on a sample."""
    errors = []
    for tracer in ("fx", "torchvision"):
        try:
            if tracer == "fx":
                graph = fx.symbolic_trace(model)
            else:
                from torchvision.models.feature_extraction import NodePathTracer

                graph = fx.GraphModule(model, NodePathTracer().trace(model))
            graph.eval()
            with torch.no_grad():
                expected, got = model(sample), graph(sample)
            if not isinstance(got, torch.Tensor) or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                errors.append(f"{tracer}: the traced model's output differs")
                continue
            return graph, ""
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: run the whole model
            errors.append(f"{tracer}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
    return None, "the model could not be traced with torch.fx (" + "; ".join(errors) + "): every point runs it whole"


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _gb(size: float) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**28 else f"{size / 2**20:.0f} MB"


def _available_bytes(device: torch.device) -> int:
    """Memory free for the analysis: the GPU's free memory, or MemAvailable from /proc/meminfo (psutil elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - no way to tell: assume plenty
        return 2**40


@torch.no_grad()
def _activation_bytes(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """Estimated peak inference memory of one image: PEAK_ACTIVATION_FACTOR x the largest layer output."""
    largest = [int(torch.Size(shape).numel()) * 4]

    def hook(module, inputs, output) -> None:
        largest[0] = max(largest[0], _nbytes(output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        model(torch.zeros((1, *shape), device=device))
    except Exception:  # noqa: BLE001 - the estimate is a guide; evaluation reports a real failure itself
        pass
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in training:
            m.training = flag
    return PEAK_ACTIVATION_FACTOR * largest[0]


def _eval_batch_size(per_image: int) -> int:
    return max(1, min(MAX_EVAL_BATCH, EVAL_BATCH_BYTES // max(1, per_image)))


def _check_val_images(found: int, num_classes: int, asked: int) -> None:
    needed = max(MIN_VAL_IMAGES, num_classes)
    if found < needed:
        raise CompressionLabError(
            f"the validation split has {found} images (asked for up to {asked}): a sensitivity analysis needs at "
            f"least {needed} (at least {MIN_VAL_IMAGES}, and one per class for {num_classes} classes) to measure "
            "anything; add images to the validation folder (DIR/val) or choose a larger data set")


def _check_memory(handle, task, data, config: SensitivityConfig, available: int) -> None:
    """Refuse, before starting, a model whose copy and one batch of activations would not fit the memory left."""
    weights = sum(t.numel() * t.element_size() for t in (*handle.model.parameters(), *handle.model.buffers()))
    message = ("{model} needs about {need} for a sensitivity analysis ({detail}) but only {free} of memory is "
               "free: close other programs, lower the validation images or batch-norm batches, or use a machine "
               "with more memory")
    if weights > available:
        raise CompressionLabError(message.format(model=handle.label, need=_gb(weights), free=_gb(available),
                                                 detail=f"a working copy of its weights: {_gb(weights)}"))
    if task.scores_whole_model:  # no validation tensors held here: its task holds its own images
        return
    shape = tuple(data.input_shape)
    device = next(handle.model.parameters()).device
    batch = BN_BATCH_SIZE if config.bn_batches and bn_stats.has_batch_norm(handle.model) else 1
    activations = _activation_bytes(handle.model, shape, device) * batch
    images = 4 * torch.Size(shape).numel() * (min(config.val_size, len(data.val)) + config.bn_batches * BN_BATCH_SIZE)
    need = weights + activations + images
    if need > available:
        raise CompressionLabError(message.format(
            model=handle.label, need=_gb(need), free=_gb(available),
            detail=f"weights {_gb(weights)}, activations of a batch of {batch} images {_gb(activations)}, "
                   f"validation and batch-norm images {_gb(images)}"))


def analyze(handle: ModelHandle, data: DataBundle, config: SensitivityConfig = DEFAULT_CONFIG, *,
            on_progress: Callable[[str, float, dict], None] | None = None,
            cancel_requested: Callable[[], bool] | None = None,
            layers: Sequence[str] | None = None) -> SensitivityReport:
    """Measure every layer alone at every grid point (the model given is not changed).

    `layers` (exact mode): only these layers, in the model's order: one part of an analysis split across
    workers (`layer_groups` splits, `merge_reports` joins the parts into the report one run would write).

    Progress: after every point, `on_progress("sensitivity", fraction, {"layer", "point", "done", "total",
    "eta_s"})` ("point" reads e.g. "sparsity 0.5", "clusters 16" or "bits 4"; eta_s is the seconds left at the mean
    pace so far), then `cancel_requested()`: a cancel stops within one point.
    With config.mode "estimate" most points are estimated instead (analysis/fisher.py).
    """
    if config.mode == "estimate":
        if layers is not None:
            raise CompressionLabError("the estimate mode measures every layer at once: split only exact analyses")
        return analyze_estimate(handle, data, config, ExactScorer, on_progress=on_progress,
                                cancel_requested=cancel_requested)
    scorer = ExactScorer(handle, data, config)
    chosen = scorer.layers
    if layers is not None:
        unknown = [name for name in layers if name not in scorer.layers]
        if unknown or not layers:
            raise CompressionLabError(f"no layer {unknown[0] if unknown else '(none given)'!r} in {handle.label}: "
                                      f"its layers are {', '.join(list(scorer.layers)[:5])}...")
        chosen = {name: weight for name, weight in scorer.layers.items() if name in set(layers)}
    report = SensitivityReport(scorer.base, {}, {**asdict(config), "base_accuracy": scorer.base,
                                                 "val_images": scorer.val_images, "batch_norm": scorer.batch_norm})
    total_points = len(chosen) * (len(config.sparsities) + len(config.n_clusters) + len(config.bits))
    done = 0
    started = time.monotonic()
    for name, weight in chosen.items():
        original = weight.detach().clone()
        row = {"params": weight.numel(), "kind": "conv" if weight.dim() > 2 else "fc", "sparsity": {}, "clusters": {}}
        if config.bits:
            row["bits"] = {}
        for kind, grid in (("sparsity", config.sparsities), ("clusters", config.n_clusters), ("bits", config.bits)):
            for value in grid:
                row[kind][str(value)] = scorer.score(name, grid_weight(original, kind, value, config.seed))
                done += 1
                if on_progress:
                    elapsed = time.monotonic() - started
                    on_progress("sensitivity", done / total_points,
                                {"layer": name, "point": f"{kind} {value}", "done": done, "total": total_points,
                                 "eta_s": round(elapsed / done * (total_points - done), 1)})
                if cancel_requested and cancel_requested():
                    raise Cancelled("the sensitivity analysis was cancelled")
        report.layers[name] = row
    report.config["prefix_cache"] = scorer.cache_report()
    return report.finish()


def layer_groups(layer_names: Sequence[str], parts: int) -> list[list[str]]:
    """The layers split into at most `parts` runs of consecutive layers for parallel workers. With the prefix
    cache a layer's points cost about what the network after it costs, so early layers are dearer: the groups are
    balanced on that (layer i of n weighs n - i + 1), not on the count."""
    names = list(layer_names)
    parts = max(1, min(int(parts), len(names)))
    weights = [len(names) - i + 1 for i in range(len(names))]
    share, groups, current, acc = sum(weights) / parts, [], [], 0.0
    for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
        current.append(name)
        acc += weight
        left_names, left_groups = len(names) - index - 1, parts - len(groups) - 1
        if left_groups and (acc >= share * (len(groups) + 1) or left_names == left_groups):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def merge_reports(parts: Sequence[dict], layer_order: Sequence[str] | None = None) -> dict:
    """Join the reports of an analysis split by layer (`analyze(..., layers=...)`) into the one report a single
    run writes: the same base accuracy (the parts measure the same model on the same subset; checked), every
    layer once, in `layer_order` (default: the parts' order). The prefix-cache note is the parts' combined."""
    if not parts:
        raise CompressionLabError("no sensitivity parts to merge")
    first = parts[0]
    bases = {round(float(part["base_accuracy"]), 9) for part in parts}
    if len(bases) > 1:
        raise CompressionLabError(f"the parts of the sensitivity analysis disagree on the base accuracy "
                                  f"({sorted(bases)}): they did not measure the same model and data; re-run it")
    layers: dict[str, dict] = {}
    for part in parts:
        for name, row in part["layers"].items():
            if name in layers:
                raise CompressionLabError(f"layer {name!r} was measured by two parts of the analysis")
            layers[name] = row
    if layer_order is not None:
        layers = {name: layers[name] for name in layer_order if name in layers}
    config = dict(first["config"])
    caches = [cache for part in parts if isinstance(cache := part["config"].get("prefix_cache"), dict)]
    if caches:
        merged = dict(caches[0])
        merged["used"] = any(cache.get("used") for cache in caches)
        merged["layers_cached"] = sum(int(cache.get("layers_cached") or 0) for cache in caches)
        merged["recomputed"] = {name: why for cache in caches for name, why in (cache.get("recomputed") or {}).items()}
        config["prefix_cache"] = merged
    config["parts"] = len(parts)
    return {"base_accuracy": first["base_accuracy"], "layers": layers, "config": config,
            "noise": noise_of(first["base_accuracy"], config.get("val_images"), layers)}


def _bn_batches(task, model: torch.nn.Module, config: SensitivityConfig) -> list[torch.Tensor]:
    """The training batches (held in memory, on the model's device) that re-estimate batch norm at each point."""
    if config.bn_batches <= 0 or not bn_stats.has_batch_norm(model):
        return []
    device = next(model.parameters()).device
    batches = task.statistics_batches(config.bn_batches, config.seed, BN_BATCH_SIZE)
    return [batch.to(device) for batch in batches if len(batch) >= 2]
