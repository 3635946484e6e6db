"""DetectorHandle: an Ultralytics YOLO detector, how to rebuild it, and which layers may be compressed.

Sources: the built-in demo detector (assets/detector.pt, trained by complab.demo.train_detector:
ours, so trusted), or a user's Ultralytics .pt file (v3, v5u, v8, 11). An Ultralytics checkpoint is a
pickle of Python objects, so it is loaded only when the user says they trust it (a checkbox in the
app, --trust on the CLI); otherwise loading is refused with the reason. The compact file records the
model's yaml (its architecture) and the class names, and rebuilds a DetectionModel from them; no
pickle is involved in decoding.

Prunable layers: every convolution and linear weight except the Detect head's final 1x1 prediction
convolutions (box regression `cv2.*.2` and class scores `cv3.*.2`) and its DFL convolution (a fixed,
non-trained projection of the box distribution): pruning or sharing those distorts every box and
score directly, with no later layer to absorb the error.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from complab.errors import FormatError, ModelLoadError, first_line
from complab.models.channel_replay import replay
from complab.models.compact import check_channel_history, install_int, read_existing
from complab.models.compact_writer import write_compact
from complab.models.handle import sizes
from complab.models.params import bake
from complab.models.protocol import TaskKind
from complab.models.yolo_arch import MAX_CLASSES, MAX_ROWS, check_yaml, count_parameters
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics
from complab.models.yolo_prunable import make_prunable
from complab.paths import ASSETS
from complab.steps.channels import DETECTOR_ROUND_TO

DEMO_DETECTOR = ASSETS / "detector.pt"
PRUNED_GROWTH = 64  # a channel-pruned file's architecture may hold this many times its stored values
REPLAY_SIDE = 128  # the zero image a channel-pruning record is replayed on (the graph does not depend on size)
HEAD_SKIP = re.compile(r".*\.(cv2|cv3)\.\d+\.2$|.*\.dfl\.conv$|.*\.one2one_cv[23]\.\d+\.2$")


# A detector has ~60 layers and each point is an mAP evaluation: a coarser sensitivity grid on fewer images
# bits: three integer widths (not the classifiers' five): each point of a detector costs a validation pass
ANALYSIS_DEFAULTS = {"sparsities": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95], "n_clusters": [4, 8, 16, 32, 64],
                     "bits": [8, 4, 3], "val_size": 64, "seed": 0, "bn_batches": 2}
DETECT = TaskKind(name="detect", score_name="mAP50", score_label="mAP50", score_short="mAP50",
                  score_counts_images=False,
                  finds_boxes=True, chooses_split=False, normalizes_input=False, folds_batch_norm=True,
                  groups_channels_by_block=True, analysis_defaults=ANALYSIS_DEFAULTS,
                  channel_round_to=DETECTOR_ROUND_TO)


@dataclass
class DetectorHandle:
    """A loaded YOLO detector, the record that rebuilds it and its image size (models/protocol.Handle)."""

    kind: ClassVar[TaskKind] = DETECT
    task: ClassVar[str] = DETECT.name
    score_name: ClassVar[str] = DETECT.score_name  # reported as "accuracy": the score every page plots
    model: nn.Module  # ultralytics DetectionModel (fp32, eval)
    architecture: dict  # {"kind": "ultralytics", "yaml": {...}, "names": {...}}
    imgsz: int
    label: str
    file_meta: dict | None = None  # the compact file's meta this model was decoded from (None: loaded from source)
    # channel-pruning replay records already applied to this model (a decoded channel-pruned file)
    channel_history: list = field(default_factory=list)
    # C2f modules already replaced by C2fV2 (models/yolo_prunable.py) so channels could be pruned
    c2f_replaced: list = field(default_factory=list)
    source_file: str | None = None  # the Ultralytics checkpoint it was read from
    # weight tensor name -> storage.int_section.IntWeights (integer levels + scales) of the layers a compact file
    # stored as integers ({} for a float model); the export writes these layers as integers
    int_weights: dict = field(default_factory=dict)

    def save(self, path, extra: dict | None = None, products=None) -> int:
        """Write this model as a compact file (the one writer, models/compact_writer.write_compact); bytes written."""
        return write_compact(self, path, extra, products)

    def compact_meta(self) -> dict:
        """What the compact file records to rebuild this detector (models/compact.write_compact)."""
        return {"architecture": self.architecture, "imgsz": self.imgsz, "label": self.label,
                "fused": is_fused(self.model)}

    def score(self, model: nn.Module, data, split: str = "val") -> float:
        """mAP50 of `model` (this one or a compressed copy of it) on the dataset's validation images."""
        return evaluate_model(model, self.imgsz, data.yaml_path)["map50"]

    def measure(self, data, split: str = "val", latency: bool = True) -> dict:
        """mAP50 (as `accuracy`), mAP50-95, P, R, the validation images they were measured on (`images`),
        parameters, FLOPs, fp32 bytes and CPU latency (of the model as deployed, batch norm folded, at its own image
        size: the original and a compressed detector are timed alike)."""
        scores = evaluate_model(self.model, self.imgsz, data.yaml_path)
        return {"accuracy": scores["map50"], **scores, **sizes(self, latency)}

    def deployed_model(self) -> nn.Module:
        """The detector as it runs at inference (deployed: a fused copy), what its CPU latency is timed on."""
        return deployed(self.model)

    @property
    def names(self) -> dict[int, str]:
        return dict(self.model.names)

    # what the classifier-side tools (layer table, FLOPs, size estimate, latency) read from a handle
    mean = None
    std = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.imgsz, self.imgsz)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def prunable_layers(self) -> dict[str, torch.Tensor]:
        layers = {}
        for name, param in self.model.named_parameters():
            if name.endswith(".weight") and param.dim() >= 2:
                layer = name[: -len(".weight")]
                if not HEAD_SKIP.fullmatch(layer):
                    layers[layer] = param
        return layers

    def skipped_layers(self) -> list[str]:
        """The Detect head's prediction and DFL convolutions (HEAD_SKIP): kept out of compression."""
        return [name[: -len(".weight")] for name, p in self.model.named_parameters()
                if name.endswith(".weight") and p.dim() >= 2 and HEAD_SKIP.fullmatch(name[: -len(".weight")])]

    def layer_kinds(self) -> dict[str, str]:
        return {f"{name}.weight": ("conv" if w.dim() > 2 else "fc") for name, w in self.prunable_layers().items()}

    def clone(self) -> DetectorHandle:
        return DetectorHandle(copy.deepcopy(self.model), copy.deepcopy(self.architecture), self.imgsz, self.label,
                              self.file_meta, list(self.channel_history), list(self.c2f_replaced), self.source_file,
                              dict(self.int_weights))

    def export_graph(self) -> tuple[nn.Module, torch.Tensor, str, str]:
        """The model behind `DetectorPredictions` (its predictions tensor only): input "images", output
        "predictions"."""
        example = torch.zeros((1, *self.input_shape))
        module = DetectorPredictions(self.model.eval().cpu())
        with torch.no_grad():  # a dry run, as Ultralytics' exporter does: the head caches its anchor grid for this
            module(example)  # image size, so the trace holds it as a constant instead of tracing make_anchors
        return module, example, "images", "predictions"


def untrusted(path: str | Path) -> ModelLoadError:
    """The refusal for an Ultralytics checkpoint the user has not said they trust (the app and the CLI)."""
    return ModelLoadError(
        f"{Path(path).name} is an Ultralytics checkpoint, a pickle that can run code when loaded: tick "
        "'I trust this file' in the app or pass --trust on the command line if you made it or trust its source")


def load_detector(path: str | Path | None = None, trust: bool = False, imgsz: int | None = None) -> DetectorHandle:
    """The demo detector (path None) or a user's Ultralytics .pt file, which needs trust=True."""
    offline_ultralytics()
    demo = path is None
    path = DEMO_DETECTOR if demo else Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"detector file {path} does not exist: check the path"
                             + (" or run `python -m complab.demo.train_detector`" if demo else ""))
    if not demo and not trust:
        raise untrusted(path)
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint  # (optional, heavy: when a detector loads)

    try:
        model, _ = load_checkpoint(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - torch/ultralytics raise many types for a bad file
        raise ModelLoadError(f"cannot read detector {path.name}: {first_line(exc, 200)}; it must be an "
                             "Ultralytics .pt checkpoint (YOLOv3u, v5u, v8, 11)") from None
    model = model.float().eval()
    if type(model) is not DetectionModel:  # not a subclass either (World, YOLOE, segmentation, pose models)
        raise ModelLoadError(f"{path.name} holds a {type(model).__name__}, not a detection model: use a detect model")
    size = imgsz or int(getattr(model, "args", {}).get("imgsz", 640) if isinstance(getattr(model, "args", None),
                                                                                    dict) else 640)
    if demo and imgsz is None:
        size = json.loads((ASSETS / "detector_card.json").read_text())["imgsz"]
    architecture = {"kind": "ultralytics", "yaml": copy.deepcopy(model.yaml), "names": dict(model.names)}
    return DetectorHandle(model, architecture, size, "demo:detector" if demo else path.name,
                          source_file=str(path))


def build_detector(architecture: dict, max_elements: int | None = None) -> nn.Module:
    """An untrained DetectionModel of the recorded architecture (used when decoding a compact file).

    The record comes from a file and may be hostile: `yolo_arch.check_yaml` allow-lists it before
    Ultralytics (which eval()s parts of it) sees it. With `max_elements`, the layers are first built on
    the meta device and refused when they hold more values than that (what the file's tensors describe).
    """
    if not isinstance(architecture, dict) or architecture.get("kind", "ultralytics") != "ultralytics":
        raise ModelLoadError("the file records no Ultralytics detector architecture: it was not written for a detector")
    yaml = check_yaml(architecture.get("yaml"))
    names = _check_names(architecture.get("names", {}))
    channels = int(yaml.get("channels", 3))
    nc = len(names) or int(yaml.get("nc", 80))
    if max_elements is not None:
        needed = count_parameters(yaml, channels, nc)
        if needed > max_elements:
            raise ModelLoadError(f"the file's detector architecture needs {needed:,} values but the file holds "
                                 f"{max_elements:,}: the file is damaged or crafted; re-compress the original model")
    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel  # (optional, heavy: when a detector is built)

    try:
        with quiet_ultralytics():
            model = DetectionModel(yaml, ch=channels, nc=nc, verbose=False)
    except Exception as exc:  # noqa: BLE001 - a checked but inconsistent layout fails in many ways in Ultralytics
        raise ModelLoadError(f"the file's detector architecture cannot be built ({type(exc).__name__}: "
                             f"{first_line(exc, 120)}): the file is damaged; re-compress the original "
                             "model") from None
    model.names = names
    own_activations(model)
    return model.float().eval()


def own_activations(model: nn.Module) -> nn.Module:
    """Give every activation of a yaml-built detector its own in-place module, as Ultralytics' loader has them.

    Ultralytics' Conv layers built from a yaml all share one activation module (Conv.default_act): a hook put on
    one (8-bit activations, a meta-device count) would run in every Conv of every detector built in the process.
    A model Ultralytics loads from a .pt file has its activations in place (attempt_load_weights sets `inplace`),
    which the demo detector's original has; the decoded one had not (its SiLU allocated a new tensor per layer:
    in-place measured 0.5-2% faster at 160-320 px, benchmarks/yolo_table.py's decoded model, one thread).
    Values are unchanged; in-place activations train as well (Ultralytics fine-tunes loaded models so)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__module__ == nn.SiLU.__module__ and isinstance(getattr(child, "inplace", None), bool):
                own = copy.deepcopy(child)
                own._forward_pre_hooks.clear()
                own._forward_hooks.clear()
                own.inplace = True
                setattr(parent, name, own)
    return model


def _check_names(names) -> dict[int, str]:
    """Class id -> name from a file's record: at most yolo_arch.MAX_CLASSES short strings keyed by integers."""
    if not isinstance(names, dict) or len(names) > MAX_CLASSES:
        raise ModelLoadError("the file's class names are not a mapping of class id to name: the file is damaged")
    checked = {}
    for key, value in names.items():
        if not (isinstance(key, int | str) and str(key).isdigit() and isinstance(value, str) and len(value) <= 256):
            raise ModelLoadError(f"the file's class name entry {str(key)[:20]!r} is not an id and a short name: "
                                 "the file is damaged")
        checked[int(key)] = value
    return checked


def is_fused(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def fuse(model: nn.Module) -> nn.Module:
    """Fold every batch norm into its convolution, in place (Ultralytics' own inference-time fusion).

    A fused detector has one bias vector per convolution instead of five batch-norm vectors, and its
    compact file records `fused` so decoding fuses the rebuilt model before loading. A plan fuses
    with its `fold_bn` step, after pruning: without normalisation, fine-tuning a freshly pruned
    detector recovers far less (measured: mAP50 0.17 against 0.98 unfused, 70% pruned, 2 epochs),
    while the shared values' fine-tuning after folding keeps the same mAP.
    """
    with quiet_ultralytics():
        model.fuse(verbose=False)
    return model


def deployed(model: nn.Module) -> nn.Module:
    """A copy of the detector as it runs at inference, what its CPU latency is timed on: masks and shared values
    baked into plain weights, batch norm folded (Ultralytics' fuse, as its predictor and validator run a model),
    eval mode, no gradients. Timing the original with batch norm against a fused compressed file credited the
    compression with the folding (the demo detector: fused 1.17-1.20x faster at 160 px, 1.11-1.13x at 320 px, one
    thread, paired). A model whose 8-bit activation hooks sit on a batch norm is timed unfused (folding would drop
    them)."""
    from complab.models import actquant

    work = copy.deepcopy(model).float().eval()
    bake(work)
    if not is_fused(work):
        hooked = actquant.table_of(work)
        folded = fuse(copy.deepcopy(work))
        if actquant.table_of(folded) == hooked:
            work = folded
    for p in work.parameters():
        p.requires_grad_(False)
    return work


def save_detector(handle: DetectorHandle, path: str | Path, extra: dict | None = None, products=None) -> int:
    """Write the detector in our compact format (tensors + the yaml that rebuilds it): write_compact."""
    return write_compact(handle, path, extra, products)


def load_detector_file(path: str | Path) -> DetectorHandle:
    """Decode a compact detector file into a working DetectionModel (nothing is unpickled)."""
    path = Path(path)
    structures: dict = {}
    meta, state = read_existing(path, structures)
    return handle_from_decoded_detector(meta, state, path.name, structures)


def handle_from_decoded_detector(meta: dict, state: dict, source: str = "file",
                                 structures: dict | None = None) -> DetectorHandle:
    """Rebuild the recorded detector and load the decoded tensors into it; the model gets the 8-bit activation
    hooks its meta records, the handle the int sections' levels (`structures`, models.compact.install_int)."""
    if meta.get("task") != DETECT.name:
        raise FormatError(f"{source} holds a {meta.get('task', 'unknown')} model, not a detector")
    history = check_channel_history(meta.get("channel_pruning"), source)
    replaced = meta.get("c2f_replaced") or []
    if not isinstance(replaced, list) or len(replaced) > MAX_ROWS or not all(
            isinstance(name, str) and len(name) <= 200 for name in replaced):
        raise FormatError(f"{source}: its record of replaced C2f modules is not a list of module names: the file "
                          "is damaged")
    stored = sum(t.numel() for t in state.values())
    # unfused layers hold at most ~1.5x the values of fused ones (batch norm: 4 vectors for 1 bias); a
    # channel-pruned file is built unpruned first, and keeping 1/8 of the channels on both sides of every
    # convolution leaves 1/64 of its weights
    growth = PRUNED_GROWTH if history else 2
    model = build_detector(meta.get("architecture"), max_elements=growth * stored + 100_000)
    if replaced and make_prunable(model) != replaced:
        raise ModelLoadError(f"{source}: its replaced C2f modules do not match its recorded architecture: the file "
                             "is damaged or was written for another model")
    if history:
        replay(model, history, (int(model.yaml.get("channels", 3)), REPLAY_SIDE, REPLAY_SIDE))
    if meta.get("fused"):
        fuse(model)
    expected = model.state_dict()
    if set(expected) != set(state) or any(expected[k].shape != state[k].shape for k in expected):
        raise ModelLoadError(f"{source} does not match its recorded detector architecture: the file is damaged")
    model.load_state_dict(state)
    imgsz = meta.get("imgsz", 640)
    if isinstance(imgsz, bool) or not isinstance(imgsz, int) or not 32 <= imgsz <= 8192:
        raise FormatError(f"{source} records an image size of {str(imgsz)[:20]}: the file is damaged")
    int_weights = install_int(model, meta, structures, source)
    return DetectorHandle(model.eval(), meta["architecture"], imgsz, str(meta.get("label", source))[:200],
                          meta, list(history or []), list(replaced), int_weights=int_weights)


def evaluate_detector(handle: DetectorHandle, data_yaml: str | Path, batch: int = 32,
                      workdir: str | Path | None = None) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall from Ultralytics' own validator (on a copy: it fuses layers)."""
    return evaluate_model(handle.model, handle.imgsz, data_yaml, batch, workdir)


def evaluate_model(model: nn.Module, imgsz: int, data_yaml: str | Path, batch: int = 32,
                   workdir: str | Path | None = None) -> dict[str, float]:
    """Validate a DetectionModel (a deep copy of it: the validator fuses conv and batch norm in place)."""
    offline_ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator  # (optional, heavy)

    work = copy.deepcopy(model).float().eval()
    bake(work)  # masks / shared values become plain weights: fusing needs plain conv parameters
    for p in work.parameters():
        p.requires_grad_(False)
    # the validator wants a run folder; without one given, a temporary one that is removed afterwards
    with tempfile.TemporaryDirectory(prefix="val-") as scratch, quiet_ultralytics():
        validator = DetectionValidator(args={"data": str(data_yaml), "imgsz": imgsz, "batch": batch,
                                             "device": "cuda" if torch.cuda.is_available() else "cpu",
                                             "plots": False, "verbose": False, "project": str(workdir or scratch),
                                             "name": "val", "exist_ok": True})
        per_image = _capture_per_image(validator)
        stats = validator(model=work)
    out = {"map50": float(stats["metrics/mAP50(B)"]), "map50_95": float(stats["metrics/mAP50-95(B)"]),
           "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"])}
    seen = getattr(validator, "seen", None)  # the images the validator scored (the split size its interval needs)
    if isinstance(seen, int) and not isinstance(seen, bool) and seen >= 0:
        out["images"] = seen
    out.update(map_intervals(per_image, out["map50"], out["map50_95"]))
    return out


STAT_KEYS = ("tp", "conf", "pred_cls", "target_cls")  # what ap_per_class needs of each image


def _capture_per_image(validator) -> list[dict] | None:
    """Keep a copy of each image's matches (tp per IoU threshold, confidences, classes) as the validator records
    them: its metrics clear their own lists once mAP is computed. None when this Ultralytics has no such hook."""
    metrics = getattr(validator, "metrics", None)
    original = getattr(metrics, "update_stats", None)
    if not callable(original):
        return None
    per_image: list[dict] = []

    def update_stats(stat):
        try:
            per_image.append({key: np.array(stat[key], copy=True) for key in STAT_KEYS})
        except (KeyError, TypeError, ValueError):
            pass  # another layout: the point check in map_intervals then leaves the intervals out
        return original(stat)

    metrics.update_stats = update_stats  # on this instance only
    return per_image


def detection_map(images: list[dict]) -> tuple[float, float]:
    """(mAP50, mAP50-95) of a list of per-image stats, computed as Ultralytics' validator does (ap_per_class over
    the concatenated images; classes with labels only); (0, 0) when no image holds a labelled object."""
    from ultralytics.utils.metrics import ap_per_class  # (optional, heavy: imported with the validator)

    if not images:
        return 0.0, 0.0
    stats = {key: np.concatenate([image[key] for image in images], 0) for key in STAT_KEYS}
    ap = ap_per_class(stats["tp"], stats["conf"], stats["pred_cls"], stats["target_cls"])[5]
    if not len(ap):
        return 0.0, 0.0
    return float(ap[:, 0].mean()), float(ap.mean())


def map_intervals(per_image: list[dict] | None, map50: float, map50_95: float, rounds: int = 200,
                  seed: int = 0) -> dict[str, list[float]]:
    """95% percentile-bootstrap intervals of mAP50 and mAP50-95 over the validation images
    (`map50_interval`, `map50_95_interval`: [low, high] fractions). Empty when the per-image stats were not
    captured or do not reproduce the validator's own mAP (another Ultralytics version): no interval beats a
    wrong one. Both intervals come from the same resamples (one ap_per_class per round)."""
    from complab.intervals import bootstrap

    if not per_image:
        return {}
    try:
        point = detection_map(per_image)
    except Exception:  # noqa: BLE001 - another layout of the stats: leave the intervals out, never fail the score
        return {}
    if abs(point[0] - map50) > 1e-6 or abs(point[1] - map50_95) > 1e-6:
        return {}
    cache: dict[tuple, tuple[float, float]] = {}

    def statistic(which: int):
        def score(sample: list[dict]) -> float:
            key = tuple(id(image) for image in sample)
            if key not in cache:
                cache[key] = detection_map(sample)
            return cache[key][which]
        return score

    out = {}
    for which, name in enumerate(("map50_interval", "map50_95_interval")):  # the same seed: the same resamples
        low, high = bootstrap(per_image, statistic(which), rounds=rounds, seed=seed)
        out[name] = [round(max(0.0, low), 4), round(min(1.0, high), 4)]
    return out


class DetectorPredictions(torch.nn.Module):
    """A copy of a detector, batch norm folded, whose Detect head returns only its decoded predictions,
    [batch, 4 + classes, anchors], not the raw head outputs beside them: one tensor, which TorchScript and ONNX
    can both name and give a dynamic batch (the tracer cannot type the head's usual (tensor, dict of lists)
    output). The head's `export` flag is Ultralytics' own switch for this and changes nothing else in a Detect
    head's forward; the copy leaves the handle's model as it was."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        offline_ultralytics()  # before ultralytics is imported: nothing it does may reach the network
        from ultralytics.nn.modules.head import Detect  # (optional, heavy: imported when a detector is exported)

        # batch norm folded into the convolutions, as Ultralytics runs and exports a detector (the ONNX exporter
        # folds it too): a smaller, faster TorchScript archive with the same predictions up to float rounding
        self.model = fuse(copy.deepcopy(model).eval())
        for module in self.model.modules():
            if isinstance(module, Detect):
                module.export = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)
