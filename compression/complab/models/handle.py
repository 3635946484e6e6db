"""ModelHandle: a classifier plus how to rebuild it; safe loading of demo, torchvision and TorchScript models.

A model reference string says where a model comes from:
  demo:NAME                    a built-in demo classifier (weights in assets/)
  torchvision:ARCH + weights   a torchvision architecture and a state dict (.pt/.pth, read with
                               torch.load(weights_only=True)) or a .safetensors file; the class count
                               is read from the weights
  torchscript:FILE             a TorchScript archive (its own code defines the architecture): code, loaded only
                               with trust=True (--trust, the app's checkbox), and never in the Streamlit server
                               (compression/complab/models/codeload.py measures it in a child process there); for
                               evaluation only, never compressed or analysed (EVALUATION_ONLY says why)

`architecture` is the JSON-friendly record a compact file stores to rebuild the model.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from complab import metrics
from complab.data.digits import DIGITS_MEAN, DIGITS_STD
from complab.errors import MismatchError, ModelLoadError, first_line
from complab.metrics import weight_layers
from complab.models.compact_writer import write_compact
from complab.models.protocol import TaskKind
from complab.models.zoo import DEMO_MODELS
from complab.paths import ASSETS

CLASSIFY = TaskKind(name="classify", score_name="accuracy", score_label="top-1 accuracy", score_short="top-1",
                    score_counts_images=True,
                    finds_boxes=False, chooses_split=True, normalizes_input=True, folds_batch_norm=False,
                    groups_channels_by_block=False)


@dataclass
class ModelHandle:
    """A loaded classifier, the record that rebuilds its architecture and the input it expects (protocol.Handle)."""

    kind: ClassVar[TaskKind] = CLASSIFY  # what pipeline, sensitivity and pages ask instead of testing types
    task: ClassVar[str] = CLASSIFY.name
    score_name: ClassVar[str] = CLASSIFY.score_name  # the score every page plots (top-1 on the evaluation split)
    model: nn.Module
    architecture: dict
    input_shape: tuple[int, int, int]
    num_classes: int
    label: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    file_meta: dict | None = None  # the compact file's meta this model was decoded from (None: loaded from source)
    # channel-pruning replay records already applied to this model (a decoded channel-pruned file)
    channel_history: list = field(default_factory=list)
    c2f_replaced: list = field(default_factory=list)  # (a detector's; a classifier replaces no module)
    source_file: str | None = None  # the TorchScript archive it was read from
    # weight tensor name -> storage.int_section.IntWeights (integer levels + scales) of the layers a compact file
    # stored as integers ({} for a float model); the export writes these layers as integers
    int_weights: dict = field(default_factory=dict)

    def save(self, path, extra: dict | None = None, products=None) -> int:
        """Write this model as a compact file (the one writer, models/compact_writer.write_compact); bytes written."""
        return write_compact(self, path, extra, products)

    def compact_meta(self) -> dict:
        """What the compact file records to rebuild this classifier (models/compact.write_compact)."""
        return {"architecture": self.architecture, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "label": self.label,
                "mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None}

    def score(self, model: nn.Module, data, split: str = "test") -> float:
        """Top-1 accuracy of `model` (this one or a compressed copy of it) on a split of `data`."""
        return metrics.accuracy(model, data.loader(split))

    def measure(self, data, split: str = "test", latency: bool = True) -> dict:
        """Accuracy, the number of images it was measured on (`images`: what its interval needs, intervals.wilson),
        parameters, FLOPs, fp32 bytes, prunable weights kept and (optionally) CPU latency."""
        return {"accuracy": self.score(self.model, data, split), "images": len(data.split(split)),
                **sizes(self, latency)}

    def deployed_model(self) -> nn.Module:
        """A classifier runs as it is (its CPU latency is timed on this model)."""
        return self.model

    def prunable_layers(self) -> dict[str, torch.Tensor]:
        """Layer name -> weight (convolutions and linear layers, in definition order)."""
        return weight_layers(self.model)

    def skipped_layers(self) -> list[str]:
        """A classifier keeps no weight layer out of compression."""
        return []

    def layer_kinds(self) -> dict[str, str]:
        """Weight tensor name -> "conv" or "fc" (the compact file's position field width depends on it)."""
        return {f"{name}.weight": ("conv" if w.dim() > 2 else "fc") for name, w in self.prunable_layers().items()}

    def clone(self) -> ModelHandle:
        """A deep copy: models cached by the app are shared, so never change one in place."""
        return ModelHandle(copy.deepcopy(self.model), copy.deepcopy(self.architecture), self.input_shape,
                           self.num_classes, self.label, self.mean, self.std, self.file_meta,
                           list(self.channel_history), list(self.c2f_replaced), self.source_file,
                           dict(self.int_weights))

    def export_graph(self) -> tuple[nn.Module, torch.Tensor, str, str]:
        """The model as it is, a zero example at its input shape: input "input", output "logits"."""
        return self.model.eval().cpu(), torch.zeros((1, *self.input_shape)), "input", "logits"


def sizes(handle, latency: bool = True) -> dict:
    """Parameters, FLOPs, fp32 bytes, prunable weights kept and (optionally) CPU latency: any model handle.

    Latency is timed on handle.deployed_model() (a detector: its fused copy), at the handle's own input shape."""
    out = dict(metrics.model_summary(handle.model, handle.input_shape))
    prunable = handle.prunable_layers()
    out["prunable_weights"] = sum(w.numel() for w in prunable.values())
    out["prunable_nonzero"] = sum(int(torch.count_nonzero(w)) for w in prunable.values())
    if latency:
        out["latency_ms"] = metrics.cpu_latency_ms(handle.deployed_model(), handle.input_shape)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a .pt/.pth state dict, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelLoadError(f"weights path {path} is a folder: give the .pt, .pth or .safetensors file in it")
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist: check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader error means the same thing to a user
        reason = first_line(exc, 200)
        if "Weights only load failed" in reason:  # torch's refusal of pickled code, explained in many lines
            reason = "it holds pickled Python objects, not only tensors"
        raise ModelLoadError(
            f"cannot read weights file {path.name}: {reason}. It must be a state dict saved with "
            "torch.save(model.state_dict()) or a .safetensors file; a whole pickled model is refused for safety"
        ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name} holds no state dict of tensors: save it with torch.save(model.state_dict())")
    out = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)  # per-module versions (MNASNet reads its own)
    if isinstance(metadata, dict):
        out._metadata = {k.removeprefix("module."): v for k, v in metadata.items()}
    return out


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """load_state_dict, lending the model's own per-module versions to a state dict that has none.

    A state dict read from safetensors or from our compact file carries no `_metadata`; modules that
    check their version when loading (torchvision's MNASNet) then refuse it, although the tensors were
    made by this very architecture.
    """
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = model.state_dict()._metadata
    model.load_state_dict(state)


def build_architecture(architecture: dict, base_file: str | Path | None = None, trust: bool = False) -> nn.Module:
    """An untrained model of the recorded architecture (used by load_model and by the compact decoder).

    A TorchScript architecture is the user's `base_file`, which is code: it loads only with trust=True,
    which comes from the person (--trust), never from the file that names it."""
    kind = architecture.get("kind")
    if kind == "demo":
        name = architecture.get("name")
        if not isinstance(name, str) or name not in DEMO_MODELS:
            raise ModelLoadError(f"unknown demo model {str(name)[:40]!r}: choose one of {', '.join(DEMO_MODELS)}")
        return DEMO_MODELS[name].build(_torchvision_kwargs({"num_classes": architecture.get("num_classes", 10)})
                                       ["num_classes"])
    if kind == "torchvision":
        import torchvision

        arch = architecture.get("arch")
        # classifiers only: detection/segmentation builders fetch backbone weights when built with defaults
        if arch not in torchvision.models.list_models(module=torchvision.models):
            raise ModelLoadError(
                f"unknown torchvision classifier {str(arch)[:40]!r}: use a name from "
                "torchvision.models.list_models(module=torchvision.models), e.g. resnet18, mobilenet_v2, vgg16"
            )
        return torchvision.models.get_model(arch, weights=None, **_torchvision_kwargs(architecture.get("kwargs")))
    if kind == "torchscript":
        if base_file is None:
            raise ModelLoadError(
                "this file holds a TorchScript model's weights only: pass the original TorchScript file "
                f"({architecture.get('filename')}) to rebuild it (--base FILE)"
            )
        base = Path(base_file)
        if not trust:
            raise untrusted_code(base)
        if not base.is_file():
            raise ModelLoadError(f"TorchScript file {base} does not exist: check the --base path")
        if _sha256(base) != architecture.get("sha256"):
            raise ModelLoadError(f"{base.name} is not the TorchScript file this model was compressed from "
                                 "(sha256 differs): pass the original file")
        return _load_torchscript(base)
    raise ModelLoadError(f"unknown architecture kind {kind!r}: expected demo, torchvision or torchscript")


class _ParametersOnMeta(TorchFunctionMode):
    """Like `torch.device("meta")`, but only for tensors made empty or filled (parameters and buffers):
    tensors made from data (arange, tensor) stay on the CPU, where a builder may read them back."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _meta_factories() and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


@functools.cache
def _meta_factories() -> frozenset:
    from torch.utils._device import _device_constructors

    return frozenset(_device_constructors()) - {torch.arange, torch.range, torch.linspace, torch.logspace, torch.tensor,
                                          torch.as_tensor, torch.scalar_tensor, torch.asarray}


def build_on_meta(architecture: dict) -> nn.Module:
    """The recorded architecture with its parameters and buffers on the meta device: shapes, no memory, no init.

    RegNet computes its block widths with torch ops and reads them back (`.tolist()`), which the meta device
    cannot do; those data-made tensors stay on the CPU (`_ParametersOnMeta`), so every torchvision classifier
    builds here (tests/test_bounds.py). A builder that still fails raises ModelLoadError: building it for
    real would allocate an architecture a few bytes of file named, before anything could be checked.
    """
    if architecture.get("kind") == "torchscript":
        raise ModelLoadError("a TorchScript archive is loaded from its own file, not built from a record")
    try:
        try:
            with torch.device("meta"):
                return build_architecture(architecture)
        except (RuntimeError, NotImplementedError):  # an init that copies data (RegNet's block widths)
            with _ParametersOnMeta():
                return build_architecture(architecture)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a recorded argument the builder refuses, or an unsupported builder
        name = str(architecture.get("arch") or architecture.get("name"))[:40]
        raise ModelLoadError(f"cannot build architecture {name!r} ({first_line(exc, 120)}): the record is damaged or "
                             "was written by another version") from None


class _LargestTensor(TorchDispatchMode):
    """Records the bytes of the largest tensor any operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.largest = max(self.largest, leaf.numel() * leaf.element_size())
        return out


def largest_activation(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes of the largest tensor one forward pass of a batch of one makes, run on the meta device.

    `model` must live on the meta device (build_on_meta): nothing is allocated. Raises whatever the forward
    raises (an input size the architecture cannot take)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _LargestTensor() as probe:
            model(torch.zeros((1, *input_shape), device="meta"))
    finally:
        model.train(was_training)
    return probe.largest


# input sides tried on the meta device to name the sizes an architecture can take when the asked one fails
TRIED_SIDES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 299, 320, 384, 448, 512)


def check_input_size(model: nn.Module, input_shape: tuple[int, ...], name: str, flag: str = "--input-size") -> int:
    """largest_activation of a meta model, or a ModelLoadError naming the input sizes its architecture can take."""
    try:
        return largest_activation(model, input_shape)
    except Exception as exc:  # noqa: BLE001 - each architecture refuses a size in its own words
        reason = first_line(exc, 100)
    works = []
    for side in TRIED_SIDES:
        try:
            largest_activation(model, (input_shape[0], side, side))
            works.append(str(side))
        except Exception:  # noqa: BLE001
            continue
    sizes = f"use {flag} {' or '.join(works[:6])}" if works else "it takes none of the usual sizes"
    raise ModelLoadError(f"{name} cannot take {input_shape[1]}x{input_shape[2]} inputs ({reason}): {sizes}")


MAX_CLASSES = 100_000


def _torchvision_kwargs(kwargs) -> dict:
    """The builder arguments a file may record: only the class count (others, e.g. weights_backbone, download)."""
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict) or set(kwargs) - {"num_classes"}:
        raise ModelLoadError(f"the file's torchvision architecture has arguments {sorted(map(str, kwargs))[:5]}; "
                             "only num_classes is read: the file is damaged or was not written by Compression Lab")
    classes = kwargs.get("num_classes", 1000)
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= MAX_CLASSES:
        raise ModelLoadError(f"the file's class count {str(classes)[:20]} is not an integer from 1 to {MAX_CLASSES:,}: "
                             "the file is damaged")
    return dict(kwargs)


EVALUATION_ONLY = (
    "TorchScript is for evaluation only: a scripted model is compiled code whose modules cannot take the pruning "
    "masks, shared values, hooks and channel surgery that compression and sensitivity analysis add; save its state "
    "dict with torch.save(model.state_dict()) and use torchvision:ARCH with --weights FILE")


def untrusted_code(path: str | Path) -> ModelLoadError:
    """The refusal for a TorchScript file the user has not said they trust (the app and the CLI)."""
    return ModelLoadError(
        f"{Path(path).name} is a TorchScript file, a program that runs when loaded: pass --trust on the command "
        "line or tick 'I trust this file' in the app if you made it or trust its source")


def _load_torchscript(path: Path) -> nn.Module:
    """torch.jit.load: runs the archive's code (its __setstate__ methods at once). Callers check trust first."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read TorchScript file {path.name}: {first_line(exc, 200)}. "
                             "Export it with torch.jit.script(model).save(path) or torch.jit.trace") from None


def _script_error(exc: BaseException) -> str:
    """One line for an error raised inside TorchScript code: its last line (the first only says where it failed)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("The following operation failed in the TorchScript interpreter"):
        return lines[-1][:200]
    return first_line(exc, 120)


def _head(model: nn.Module) -> str | None:
    """The classifier's output layer: the last Linear, or the last convolution where there is none (SqueezeNet)."""
    linear = conv = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            linear = module_name
        elif isinstance(module, nn.Conv2d):
            conv = module_name
    return linear or conv


def load_model(ref: str, weights: str | Path | None = None, input_size: int | None = None,
               trust: bool = False) -> ModelHandle:
    """Load a classifier from a reference string (see the module docstring), in this process.

    `trust` (from the person, never from a file) lets a TorchScript file load: without it the file is refused
    before a byte of it is read. The fuzz campaign calls this as the CLI would, with trust=False."""
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                   or not 8 <= input_size <= 2048):
        raise ModelLoadError(f"input size {str(input_size)[:20]} must be a whole number of pixels from 8 to 2048")
    kind, _, arg = ref.partition(":")
    if kind == "demo":
        if arg not in DEMO_MODELS:
            raise ModelLoadError(f"unknown demo model {arg!r}: choose one of {', '.join(DEMO_MODELS)}")
        spec = DEMO_MODELS[arg]
        architecture = {"kind": "demo", "name": arg, "num_classes": 10}
        model = build_architecture(architecture)
        path = ASSETS / spec.weights_file
        if not path.is_file():
            raise ModelLoadError(f"demo weights {path} are missing: run `python -m complab.demo.train`")
        _load_into(model, read_state_dict(path), path.name)
        return ModelHandle(model.eval(), architecture, spec.input_shape, 10, ref, DIGITS_MEAN, DIGITS_STD)
    if kind == "torchvision":
        if weights is None:
            raise ModelLoadError("a torchvision model needs its weights: add --weights FILE "
                                 "(.pt, .pth or .safetensors)")
        state = read_state_dict(weights)
        # only the head's name is read: no memory, no random init (1.3 s on ResNet-50)
        probe = build_on_meta({"kind": "torchvision", "arch": arg})
        head = _head(probe)
        if input_size is not None:  # every torchvision classifier takes the default 224; some take only that
            check_input_size(probe, (3, input_size, input_size), arg)
        num_classes = int(state[f"{head}.weight"].shape[0]) if head and f"{head}.weight" in state else 1000
        architecture = {"kind": "torchvision", "arch": arg, "kwargs": {"num_classes": num_classes}}
        model = build_architecture(architecture)
        _load_into(model, state, Path(weights).name)
        size = input_size or 224
        return ModelHandle(model.eval(), architecture, (3, size, size), num_classes, f"{ref} ({Path(weights).name})")
    if kind == "torchscript":
        path = Path(arg).expanduser()
        if path.is_dir():
            raise ModelLoadError(f"TorchScript path {path} is a folder: give the .pt/.ts file in it")
        if not path.is_file():
            raise ModelLoadError(f"TorchScript file {path} does not exist: check the path")
        if not trust:
            raise untrusted_code(path)
        model = _load_torchscript(path)
        architecture = {"kind": "torchscript", "filename": path.name, "sha256": _sha256(path)}
        size = input_size or 224
        out, shape, error = None, (3, size, size), ""
        for channels in (3, 1):  # a TorchScript file does not say its input: try RGB, then greyscale
            try:
                with torch.no_grad():
                    out = model(torch.zeros((1, channels, size, size)))
                shape = (channels, size, size)
                break
            except Exception as exc:  # noqa: BLE001
                error = _script_error(exc)
        if out is None:
            raise ModelLoadError(f"TorchScript model {path.name} failed on 3- and 1-channel {size}x{size} inputs: "
                                 f"set --input-size to what it expects ({error})")
        return ModelHandle(model.eval(), architecture, shape, int(out.shape[-1]), ref, source_file=str(path))
    raise ModelLoadError(f"unknown model reference {ref!r}: use demo:NAME, torchvision:ARCH or torchscript:FILE")


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ModelLoadError(
            f"{source} does not match the architecture: missing {missing[:3]}, unexpected {unexpected[:3]}: "
            "check the architecture name"
        )
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ModelLoadError(
                f"{source}: {key} has shape {tuple(state[key].shape)} but the architecture expects "
                f"{tuple(tensor.shape)}: check the architecture name and the class count"
            )
        if tensor.is_floating_point() != state[key].is_floating_point():
            raise ModelLoadError(f"{source}: {key} holds {state[key].dtype} values where the architecture has "
                                 f"{tensor.dtype}: save the float weights with torch.save(model.state_dict())")
    load_state(model, state)


def check_data_fits(handle, num_classes: int) -> None:
    """A model (classifier or detector) whose class count differs from the dataset's cannot be evaluated on it."""
    if handle.num_classes != num_classes:
        raise MismatchError(
            f"the model predicts {handle.num_classes} classes but the dataset has {num_classes}: "
            "use the dataset the model was trained on, or weights with a matching head"
        )


def check_model_fits(handle, data) -> None:
    """A MismatchError naming the problem and the fix when a classifier cannot read `data` (a DataBundle).

    Checked before anything is measured, in this order: the class count (check_data_fits), then one forward
    pass of one zero image of the data's shape, whose failure is explained: the input channels (an RGB
    model on the grey digits), a fully connected first layer that takes one image size only, or another size the
    architecture cannot take; a model whose output has another width than the data's classes is refused too.
    Adaptive pooling models take any size: only a forward that fails is called a mismatch."""
    check_data_fits(handle, data.num_classes)
    shape = tuple(int(v) for v in data.input_shape)
    model = handle.model
    first = next(model.parameters(), None)
    was_training = getattr(model, "training", False)
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros((1, *shape), device=first.device if first is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 - each layer refuses a shape in its own words: explained below
        raise _mismatch(handle, data, shape, exc) from None
    finally:
        model.train(was_training)
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None
    if width is not None and width != data.num_classes:
        raise MismatchError(f"{_model_name(handle)} outputs {width} scores per image but {_data_name(data)} have "
                            f"{data.num_classes} classes: use the dataset the model was trained on, or weights with "
                            "a matching head")


def _model_name(handle) -> str:
    architecture = handle.architecture if isinstance(handle.architecture, dict) else {}
    name = architecture.get("arch") or architecture.get("name") or architecture.get("filename") or handle.label
    return f"This model ({str(name)[:60]})"


def _data_name(data) -> str:
    """How a message names the data: "the digits", "the images of pets" (the folder's name)."""
    ref = str(getattr(data, "ref", "") or "")
    if ref == "digits":
        return "the digits"
    folder = Path(ref.partition(":")[2]).name
    return f"the images of {folder}" if folder else "the dataset's images"


def _colours(channels: int) -> str:
    return {1: " (grey)", 3: " (RGB)"}.get(channels, "")


def _first_weight_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            return module
    return None


def _mismatch(handle, data, shape: tuple[int, ...], exc: BaseException) -> MismatchError:
    """What a failed forward of one zero image of the data's `shape` means, as one line with the fix."""
    reason = first_line(exc, 160)
    name, images = _model_name(handle), _data_name(data)
    first = _first_weight_layer(handle.model)
    channels = re.search(r"to have (\d+) channels, but got (\d+)", reason)
    wanted = int(channels.group(1)) if channels else None
    if wanted is None and isinstance(first, nn.Conv2d) and first.in_channels != shape[0]:
        wanted = first.in_channels
    if wanted is not None and wanted != shape[0]:
        got = shape[0]
        if wanted == 3:
            data_fix = ("choose an RGB image folder as the data (Data: Local folder on the Model page, --data "
                        "imagefolder:DIR)")
        elif wanted == 1:
            data_fix = "choose grey data (the digits, or an image folder: it is read as grey for such a model)"
        else:
            data_fix = f"choose data with {wanted}-channel images"
        return MismatchError(f"{name} expects {wanted}-channel{_colours(wanted)} images but {images} are "
                             f"{got}-channel{_colours(got)}: {data_fix}, or a model made for {got}-channel input.")
    side = "x".join(map(str, shape[1:]))
    if isinstance(first, nn.Linear) and first.in_features != math.prod(shape):
        return MismatchError(
            f"{name} reads {first.in_features:,} values per image (its first layer is fully connected, so it takes "
            f"one image size only) but {images} are {'x'.join(map(str, shape))} = {math.prod(shape):,}: set the "
            "input size it was made for (Input size on the Model page, --input-size), or choose a model with a "
            "convolutional stem")
    return MismatchError(f"{name} cannot take {side} images of {shape[0]} channel{'s' if shape[0] != 1 else ''} "
                         f"({reason}): set the input size it was made for (Input size on the Model page, "
                         "--input-size), or choose a model made for this data")
