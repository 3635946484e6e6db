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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from complab.errors import ModelLoadError, first_line
from complab.models.params import bake
from complab.paths import ASSETS

DEMO_DETECTOR = ASSETS / "detector.pt"
PRUNED_GROWTH = 64  # a channel-pruned file's architecture may hold this many times its stored values
REPLAY_SIDE = 128  # the zero image a channel-pruning record is replayed on (the graph does not depend on size)
HEAD_SKIP = re.compile(r".*\.(cv2|cv3)\.\d+\.2$|.*\.dfl\.conv$|.*\.one2one_cv[23]\.\d+\.2$")


@dataclass
class DetectorHandle:
    task: ClassVar[str] = "detect"
    model: nn.Module  # ultralytics DetectionModel (fp32, eval)
    architecture: dict  # {"kind": "ultralytics", "yaml": {...}, "names": {...}}
    imgsz: int
    label: str
    extra: dict = field(default_factory=dict)
    # channel-pruning replay records already applied to this model (a decoded channel-pruned file)
    channel_history: list = field(default_factory=list)
    # C2f modules already replaced by C2fV2 (models/yolo_prunable.py) so channels could be pruned
    c2f_replaced: list = field(default_factory=list)

    def save(self, path, extra: dict | None = None, products=None) -> int:
        """Write this model as a compact file (the one writer, models/compact.write_compact); bytes written."""
        from complab.models.compact import write_compact

        return write_compact(self, path, extra, products)

    def compact_meta(self) -> dict:
        """What the compact file records to rebuild this detector (models/compact.write_compact)."""
        return {"architecture": self.architecture, "imgsz": self.imgsz, "label": self.label,
                "fused": is_fused(self.model)}

    score_name: ClassVar[str] = "mAP50"  # reported as "accuracy": the score every page plots

    def score(self, model: nn.Module, data, split: str = "val") -> float:
        """mAP50 of `model` (this one or a compressed copy of it) on the dataset's validation images."""
        return evaluate_model(model, self.imgsz, data.yaml_path)["map50"]

    def measure(self, data, split: str = "val", latency: bool = True) -> dict:
        """mAP50 (as `accuracy`), mAP50-95, P, R, parameters, FLOPs, fp32 bytes and CPU latency."""
        from complab.models.handle import sizes

        scores = evaluate_model(self.model, self.imgsz, data.yaml_path)
        return {"accuracy": scores["map50"], **scores, **sizes(self, latency)}

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
        return [name[: -len(".weight")] for name, p in self.model.named_parameters()
                if name.endswith(".weight") and p.dim() >= 2 and HEAD_SKIP.fullmatch(name[: -len(".weight")])]

    def layer_kinds(self) -> dict[str, str]:
        return {f"{name}.weight": ("conv" if w.dim() > 2 else "fc") for name, w in self.prunable_layers().items()}

    def clone(self) -> DetectorHandle:
        return DetectorHandle(copy.deepcopy(self.model), copy.deepcopy(self.architecture), self.imgsz, self.label,
                              dict(self.extra), list(self.channel_history), list(self.c2f_replaced))


def untrusted(path: str | Path) -> ModelLoadError:
    """The refusal for an Ultralytics checkpoint the user has not said they trust (the app and the CLI)."""
    return ModelLoadError(
        f"{Path(path).name} is an Ultralytics checkpoint, a pickle that can run code when loaded: tick "
        "'I trust this file' in the app or pass --trust on the command line if you made it or trust its source")


def load_detector(path: str | Path | None = None, trust: bool = False, imgsz: int | None = None) -> DetectorHandle:
    """The demo detector (path None) or a user's Ultralytics .pt file, which needs trust=True."""
    from complab.models.yolo_env import offline_ultralytics

    offline_ultralytics()
    demo = path is None
    path = DEMO_DETECTOR if demo else Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"detector file {path} does not exist: check the path"
                             + (" or run `python -m complab.demo.train_detector`" if demo else ""))
    if not demo and not trust:
        raise untrusted(path)
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

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
        import json

        size = json.loads((ASSETS / "detector_card.json").read_text())["imgsz"]
    architecture = {"kind": "ultralytics", "yaml": copy.deepcopy(model.yaml), "names": dict(model.names)}
    return DetectorHandle(model, architecture, size, "demo:detector" if demo else path.name,
                          {"source": str(path), "trusted": True})


def build_detector(architecture: dict, max_elements: int | None = None) -> nn.Module:
    """An untrained DetectionModel of the recorded architecture (used when decoding a compact file).

    The record comes from a file and may be hostile: `yolo_arch.check_yaml` allow-lists it before
    Ultralytics (which eval()s parts of it) sees it. With `max_elements`, the layers are first built on
    the meta device and refused when they hold more values than that (what the file's tensors describe).
    """
    from complab.models.yolo_arch import check_yaml, count_parameters
    from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics

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
    from ultralytics.nn.tasks import DetectionModel

    try:
        with quiet_ultralytics():
            model = DetectionModel(yaml, ch=channels, nc=nc, verbose=False)
    except Exception as exc:  # noqa: BLE001 - a checked but inconsistent layout fails in many ways in Ultralytics
        raise ModelLoadError(f"the file's detector architecture cannot be built ({type(exc).__name__}: "
                             f"{first_line(exc, 120)}): the file is damaged; re-compress the original "
                             "model") from None
    model.names = names
    return model.float().eval()


def _check_names(names) -> dict[int, str]:
    """Class id -> name from a file's record: at most yolo_arch.MAX_CLASSES short strings keyed by integers."""
    from complab.models.yolo_arch import MAX_CLASSES

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
    from complab.models.yolo_env import quiet_ultralytics

    with quiet_ultralytics():
        model.fuse(verbose=False)
    return model


def save_detector(handle: DetectorHandle, path: str | Path, extra: dict | None = None, products=None) -> int:
    """Write the detector in our compact format (tensors + the yaml that rebuilds it): write_compact."""
    from complab.models.compact import write_compact

    return write_compact(handle, path, extra, products)


def load_detector_file(path: str | Path) -> DetectorHandle:
    """Decode a compact detector file into a working DetectionModel (nothing is unpickled)."""
    from complab.models.compact import read_existing

    path = Path(path)
    meta, state = read_existing(path)
    return handle_from_decoded_detector(meta, state, path.name)


def handle_from_decoded_detector(meta: dict, state: dict, source: str = "file") -> DetectorHandle:
    """Rebuild the recorded detector and load the decoded tensors into it."""
    from complab.errors import FormatError
    from complab.models.channel_replay import replay
    from complab.models.compact import check_channel_history
    from complab.models.yolo_arch import MAX_ROWS
    from complab.models.yolo_prunable import make_prunable

    if meta.get("task") != "detect":
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
    return DetectorHandle(model.eval(), meta["architecture"], imgsz, str(meta.get("label", source))[:200],
                          {"meta": meta}, list(history or []), list(replaced))


def evaluate_detector(handle: DetectorHandle, data_yaml: str | Path, batch: int = 32,
                      workdir: str | Path | None = None) -> dict[str, float]:
    """mAP50, mAP50-95, precision and recall from Ultralytics' own validator (on a copy: it fuses layers)."""
    return evaluate_model(handle.model, handle.imgsz, data_yaml, batch, workdir)


def evaluate_model(model: nn.Module, imgsz: int, data_yaml: str | Path, batch: int = 32,
                   workdir: str | Path | None = None) -> dict[str, float]:
    """Validate a DetectionModel (a deep copy of it: the validator fuses conv and batch norm in place)."""
    import tempfile

    from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics

    offline_ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator

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
        stats = validator(model=work)
    return {"map50": float(stats["metrics/mAP50(B)"]), "map50_95": float(stats["metrics/mAP50-95(B)"]),
            "precision": float(stats["metrics/precision(B)"]), "recall": float(stats["metrics/recall(B)"])}
