"""A classifier's compact file decoded back into a working model (no unpickling), and the meta checks the decoders
share; the writer is models/compact_writer.py, models/tasks.py opens a file of any task, detector.py a detector's."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from complab.errors import FormatError, ModelLoadError, first_line
from complab.models import actquant
from complab.models.channel_replay import replay
from complab.models.compact_writer import Products, write_compact  # noqa: F401 - the writer, named here too
from complab.models.handle import (
    CLASSIFY,
    ModelHandle,
    build_architecture,
    build_on_meta,
    largest_activation,
    load_state,
)
from complab.storage import read_file
from complab.storage.codec import decode_allowance
from complab.storage.int_section import IntWeights


def save_compressed(handle: ModelHandle, path: str | Path, extra: dict | None = None,
                    products: Products | None = None) -> int:
    """Encode a classifier into our compact format (write_compact); returns the bytes written."""
    return write_compact(handle, path, extra, products)


def read_existing(path: Path, structures: dict | None = None) -> tuple[dict, dict]:
    """(meta, tensors) of a compact file, or a FormatError saying the path does not exist; `structures` is filled
    with what the file's sections were stored from (storage.read_file: the int sections' IntWeights)."""
    if not path.is_file():
        raise FormatError(f"compressed file {path} does not exist: check the path")
    return read_file(path, structures=structures)


def install_int(model: torch.nn.Module, meta: dict, structures: dict | None, source: str = "file") -> dict:
    """A decoded model's integer side: the 8-bit activation hooks its meta records installed on it (checked by
    actquant.table_from_meta: a bad table is a FormatError), and its int sections' levels and scales, returned as
    the handle's `int_weights` ({} when the file has none)."""
    table = actquant.table_from_meta(meta, model, source)
    if table:
        actquant.install(model, table)
    return {name: value for name, value in (structures or {}).items() if isinstance(value, IntWeights)}


# What a file's meta may say (checked before anything is built): an input of at most MAX_INPUT_CHANNELS
# channels and MAX_INPUT_SIDE pixels a side (the channel-pruning replay traces the model on a zero input
# of this shape), at most MAX_CHANNEL_RECORDS replayed pruning records.
MAX_INPUT_CHANNELS = 16
MAX_INPUT_SIDE = 2048
MAX_INPUT_ELEMENTS = 3 * 2048 * 2048
MAX_CHANNEL_RECORDS = 100_000
MAX_LABEL_CHARS = 1000
MAX_CLASSES = 100_000


def _bad_meta(source: str, key: str, value, expected: str) -> FormatError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return FormatError(f"{source}: its meta {key} is {shown}, not {expected}: the file is damaged or was not "
                       "written by Compression Lab; re-export it from the run folder")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_meta(meta: dict, source: str = "file") -> dict:
    """The meta values the decoder uses, type- and range-checked (FormatError naming the key otherwise).

    Returns {architecture, input_shape, num_classes, label, mean, std, channel_pruning} with defaults filled.
    """
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict):
        raise FormatError(f"{source} records no architecture: it was not written by Compression Lab's compress")
    kind = architecture.get("kind")
    if kind not in ("demo", "torchvision", "torchscript"):
        raise _bad_meta(source, "architecture.kind", kind, "demo, torchvision or torchscript")
    fields = {"demo": ("name",), "torchvision": ("arch",), "torchscript": ("filename", "sha256")}[kind]
    for key in fields:
        if not isinstance(architecture.get(key), str):
            raise _bad_meta(source, f"architecture.{key}", architecture.get(key), "a string")
    if kind == "demo" and "num_classes" in architecture and not _is_int(architecture["num_classes"]):
        raise _bad_meta(source, "architecture.num_classes", architecture["num_classes"], "an integer")
    if kind == "torchvision" and "kwargs" in architecture:
        kwargs = architecture["kwargs"]
        if not isinstance(kwargs, dict):
            raise _bad_meta(source, "architecture.kwargs", kwargs, "an object")
        if "num_classes" in kwargs and not _is_int(kwargs["num_classes"]):
            raise _bad_meta(source, "architecture.kwargs.num_classes", kwargs["num_classes"], "an integer")
    shape = meta.get("input_shape", [3, 224, 224])
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape)
            or shape[0] > MAX_INPUT_CHANNELS or max(shape[1:]) > MAX_INPUT_SIDE
            or math.prod(shape) > MAX_INPUT_ELEMENTS):
        raise _bad_meta(source, "input_shape", shape, f"[C, H, W] with C <= {MAX_INPUT_CHANNELS}, H, W <= "
                        f"{MAX_INPUT_SIDE} and C*H*W <= {MAX_INPUT_ELEMENTS}")
    num_classes = meta.get("num_classes", 0)
    if not _is_int(num_classes) or not 0 <= num_classes <= MAX_CLASSES:
        raise _bad_meta(source, "num_classes", num_classes, f"an integer from 0 to {MAX_CLASSES}")
    recorded = (architecture.get("num_classes", 10) if kind == "demo" else
                architecture.get("kwargs", {}).get("num_classes", 1000) if kind == "torchvision" else None)
    if num_classes and recorded is not None and num_classes != recorded:
        raise FormatError(f"{source}: its meta num_classes {num_classes} differs from its architecture's {recorded}: "
                          "the file is damaged; re-export it from the run folder")
    label = meta.get("label", source)
    if label is not None and not isinstance(label, str):
        raise _bad_meta(source, "label", label, "a string")
    label = source if label is None else label[:MAX_LABEL_CHARS]
    norms = {}
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, list) or len(value) > MAX_INPUT_CHANNELS
                                  or not all(_is_number(v) for v in value)
                                  or (key == "std" and not all(v > 0 for v in value))):
            raise _bad_meta(source, key, value, f"null or a list of at most {MAX_INPUT_CHANNELS} finite numbers"
                            + (" above 0" if key == "std" else ""))
        norms[key] = tuple(value) if value else None
    history = check_channel_history(meta.get("channel_pruning"), source)
    return {"architecture": architecture, "input_shape": tuple(shape), "num_classes": num_classes, "label": label,
            "mean": norms["mean"], "std": norms["std"], "channel_pruning": history}


def check_channel_history(history, source: str = "file") -> list | None:
    """A file's channel-pruning record (None when absent), or a FormatError when it is not a list of records."""
    if history is not None and not (
            isinstance(history, list) and len(history) <= MAX_CHANNEL_RECORDS
            and all(isinstance(h, list) and len(h) == 3 and isinstance(h[0], str) and isinstance(h[1], bool | int)
                    and isinstance(h[2], list) and all(_is_int(i) and 0 <= i < 2**31 for i in h[2]) for h in history)):
        raise _bad_meta(source, "channel_pruning", history, "a list of [module name, out-channels?, [channel indices]]")
    return history


def _check_shapes(state_shapes: dict[str, tuple], expected: dict[str, tuple], source: str) -> None:
    """The decoded tensors must be exactly the architecture's (names and shapes): ModelLoadError otherwise."""
    if set(expected) != set(state_shapes):
        missing = sorted(set(expected) - set(state_shapes))[:3]
        extra = sorted(set(state_shapes) - set(expected))[:3]
        raise ModelLoadError(f"{source} does not match its architecture (missing {missing}, unexpected {extra}): "
                             "the file is damaged or was written for another model")
    for key, shape in expected.items():
        if tuple(shape) != tuple(state_shapes[key]):
            raise ModelLoadError(f"{source}: {key} has shape {tuple(state_shapes[key])}, the architecture "
                                 f"expects {tuple(shape)}: the file was written for another model")


def _shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _check_not_larger(state_shapes: dict[str, tuple], unpruned: dict[str, tuple], source: str) -> None:
    """A channel-pruned file's tensors: the architecture's names, each no larger than the unpruned one's."""
    if set(unpruned) != set(state_shapes):
        _check_shapes(state_shapes, unpruned, source)
    for key, shape in unpruned.items():
        got = state_shapes[key]
        if len(shape) != len(got) or any(a > b for a, b in zip(got, shape, strict=True)):
            raise ModelLoadError(f"{source}: {key} has shape {got}, larger than the architecture's {shape}: "
                                 "the file was written for another model")


def _materialize(model: torch.nn.Module, source: str) -> torch.nn.Module:
    """A meta-device model given CPU storage (uninitialised: load_state fills every tensor it has)."""
    named = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    if named - set(model.state_dict()):  # a tensor the file does not hold would stay uninitialised
        raise ModelLoadError(f"{source}: its architecture holds tensors a file does not store "
                             f"({sorted(named - set(model.state_dict()))[:2]}): it cannot be decoded")
    return model.to_empty(device="cpu")


def activation_allowance(file_bytes: int) -> int:
    """Most bytes one activation of a decoded model may take at its recorded input size (a batch of one):
    the decoder's own allowance for a file of that size (64 MiB plus 4096 bytes per byte of file)."""
    return decode_allowance(file_bytes)


def handle_from_decoded(meta: dict, state: dict[str, torch.Tensor], base_file: str | Path | None = None,
                        source: str = "file", trust: bool = False, file_bytes: int | None = None,
                        structures: dict | None = None) -> ModelHandle:
    """Rebuild the recorded architecture and load the decoded tensors into it.

    Every meta value is checked first (check_meta). The architecture is then built on the meta device
    (build_on_meta: shapes only, no memory), the channel-pruning record replayed there (its trace at the
    recorded input size costs nothing), the resulting shapes compared with the decoded tensors, and one
    forward at the recorded input size run there to measure its largest activation. Only a file that
    passes all of this gets CPU storage, exactly its own tensors' size: a few bytes of file cannot make the
    decoder build a RegNet-Y-128GF, trace SqueezeNet at 2048x2048 with gradients or allocate VGG-19
    unpruned (issue 24). `file_bytes` (default: the tensors' bytes) sets the activation allowance. The model gets
    the 8-bit activation hooks its meta records, and the handle the int sections' levels (`structures`,
    install_int).
    """
    checked = check_meta(meta, source)
    architecture = checked["architecture"]
    history = checked["channel_pruning"]
    state_shapes = {key: tuple(value.shape) for key, value in state.items()}
    if architecture.get("kind") == "torchscript":  # the user's own archive, matched by its sha256
        model = build_architecture(architecture, base_file, trust)
        if history:
            replay(model, history, checked["input_shape"])
        _check_shapes(state_shapes, _shapes(model), source)
    else:
        model = build_on_meta(architecture)
        if history:  # each replayed layer only loses channels: the unpruned architecture bounds the file
            _check_not_larger(state_shapes, _shapes(model), source)
            replay(model, history, checked["input_shape"])
        _check_shapes(state_shapes, _shapes(model), source)
        if file_bytes is None:
            file_bytes = sum(t.numel() * t.element_size() for t in state.values())
        shape = "x".join(map(str, checked["input_shape"]))
        try:
            largest = largest_activation(model, checked["input_shape"])
        except Exception as exc:  # noqa: BLE001 - each architecture refuses an input in its own words
            raise ModelLoadError(f"{source}: its architecture cannot take its recorded {shape} input "
                                 f"({first_line(exc, 100)}): the file is damaged or crafted") from None
        allowance = activation_allowance(file_bytes)
        if 3 * largest > allowance:
            raise ModelLoadError(f"{source}: its model needs {3 * largest / 2**20:,.0f} MiB of activations on a "
                                 f"{shape} input, more than a file of {file_bytes:,} bytes may ask "
                                 f"({allowance / 2**20:,.0f} MiB): the file is damaged or crafted")
        model = _materialize(model, source)
    load_state(model, state)
    int_weights = install_int(model, meta, structures, source)
    return ModelHandle(model.eval(), architecture, checked["input_shape"], checked["num_classes"],
                       checked["label"], checked["mean"], checked["std"], meta,
                       channel_history=list(history or []), int_weights=int_weights)


def load_compressed(path: str | Path, base_file: str | Path | None = None, trust: bool = False) -> ModelHandle:
    """Decode a compact classifier file into a working model (our own parser; nothing is unpickled)."""
    path = Path(path)
    structures: dict = {}
    meta, state = read_existing(path, structures)
    if meta.get("task", CLASSIFY.name) != CLASSIFY.name:
        raise FormatError(f"{path.name} holds a {str(meta.get('task'))[:20]} model, not a classifier: load it with "
                          "complab.sources.load_file")
    return handle_from_decoded(meta, state, base_file, path.name, trust, path.stat().st_size, structures)
