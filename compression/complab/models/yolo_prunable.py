"""Ultralytics' C2f made prunable: the channel split replaced by two convolutions, same outputs.

Ultralytics' C2f runs one 1x1 convolution `cv1` to 2c channels and splits the result in two
(`chunk(2, 1)`) by a stored count; Torch-Pruning's dependency graph cannot follow a split by a fixed
count, so the channels step could not prune YOLO detectors. `C2fV2` computes the same two halves with
two 1x1 convolutions `cv0` and `cv1` (+ their batch norms) whose weights are the two halves of the
original `cv1`: each half is now an ordinary convolution output the graph can shrink. This is
Torch-Pruning's own YOLOv8 recipe (`C2f_v2` and `transfer_weights` in examples/yolov8/yolov8_pruning.py
of VainF/Torch-Pruning); here the replacement copies the trained modules instead of rebuilding them,
so a fused detector (no batch norm) and C2f subclasses that keep C2f's forward (YOLO11's C3k2) work too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from complab.errors import PlanError
from complab.models.yolo_env import offline_ultralytics

# the attributes Ultralytics' parse_model puts on each top-level layer and DetectionModel's forward reads
# (f: where the input comes from, i: the layer's index, type/np: what model.info prints)
ULTRALYTICS_ATTRIBUTES = ("f", "i", "type", "np")

# the top-level layer types the channels step has pruned end to end (YOLOv8n, YOLOv5nu; YOLO11n and YOLOv10n
# with their attention block taken out): every other block is refused before anything changes, because
# Torch-Pruning's graph either cannot follow it (a split by a stored count: the pruned model breaks or the
# graph search does not end, as on YOLO11n's C2PSA) or has not been checked on it
SUPPORTED_BLOCKS = ("Conv", "C2f", "C3k2", "C2fCIB", "C3", "SPPF", "SCDown", "Upsample", "Concat", "Detect",
                    "v10Detect", "C2fV2")
# why a known block cannot be pruned yet (checked against YOLO11n, YOLOv10n, YOLOv9t, YOLO12n, RT-DETR-l)
_WHY = {
    "Attention": "it splits its channels into query, key and value heads by stored counts",
    "AAttn": "it splits its channels into query, key and value heads by stored counts",
    "C2PSA": "it splits its channels in two by a stored count",
    "PSA": "it splits its channels in two by a stored count",
    "C2fPSA": "it splits its channels in two by a stored count",
    "A2C2f": "its area attention splits channels into heads by stored counts",
    "RepNCSPELAN4": "it chunks its channels in two by a stored count",
    "ELAN1": "it chunks its channels in two by a stored count",
    "ADown": "it chunks its channels in two by a stored count",
    "AIFI": "a transformer layer: attention heads split channels by stored counts",
    "RTDETRDecoder": "the dependency graph cannot trace its query selection",
}


def unsupported_block(model: nn.Module) -> tuple[str, str, str] | None:
    """The first layer the channels step cannot prune: (block type, module name, why), or None when all can be.

    A block holding an attention layer is named by that layer (e.g. C2PSA by its Attention), the part to fix.
    """
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential | nn.ModuleList):
        return None  # not an Ultralytics model: the graph decides as for any model
    for index, layer in enumerate(layers):
        kind = type(layer).__name__
        if kind in SUPPORTED_BLOCKS:
            continue
        inner = [(type(m).__name__, name) for name, m in layer.named_modules() if type(m).__name__ in _WHY and name]
        kind, name = inner[0] if inner else (kind, "")
        where = f"model.{index}" + (f".{name}" if name else "")
        return kind, where, _WHY.get(kind, "the channels step has not been checked on it")
    return None


def check_prunable(model: nn.Module) -> None:
    """Raise PlanError naming the first block the channels step cannot prune; changes nothing."""
    found = unsupported_block(model)
    if found:
        kind, where, why = found
        raise PlanError(f"channels: YOLO block {kind} ({where}) cannot be channel-pruned yet ({why}); supported "
                        f"blocks: {', '.join(SUPPORTED_BLOCKS[:-1])} — use the prune and cluster steps on this "
                        "detector instead")


def _half(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an Ultralytics Conv block (conv, optional bn, act) keeping output channels start:stop."""
    block = copy.deepcopy(conv_block)
    conv = block.conv
    conv.weight = nn.Parameter(conv.weight.detach()[start:stop].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[start:stop].clone())
    conv.out_channels = stop - start
    bn = getattr(block, "bn", None)
    if isinstance(bn, nn.BatchNorm2d):
        if bn.affine:
            bn.weight = nn.Parameter(bn.weight.detach()[start:stop].clone())
            bn.bias = nn.Parameter(bn.bias.detach()[start:stop].clone())
        if bn.track_running_stats:
            bn.running_mean = bn.running_mean[start:stop].clone()
            bn.running_var = bn.running_var[start:stop].clone()
        bn.num_features = stop - start
    return block


class C2fV2(nn.Module):
    """C2f with its split replaced by two convolutions: cv0 gives the first half, cv1 the second."""

    # the C2f's names for these layers (a plan names the loaded model's layers): both halves were its cv1
    original_names = {"cv0.conv": "cv1.conv"}

    def __init__(self, c2f: nn.Module) -> None:
        super().__init__()
        self.c = int(c2f.c)  # hidden channels of each half
        self.cv0 = _half(c2f.cv1, 0, self.c)
        self.cv1 = _half(c2f.cv1, self.c, 2 * self.c)
        self.cv2 = c2f.cv2
        self.m = c2f.m
        for name in ULTRALYTICS_ATTRIBUTES:
            if hasattr(c2f, name):
                setattr(self, name, getattr(c2f, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _splits_like_c2f(module: nn.Module) -> bool:
    """A C2f, or a subclass that keeps C2f's forward (and so its split): YOLO11's C3k2."""
    from ultralytics.nn.modules.block import C2f

    return isinstance(module, C2f) and type(module).forward is C2f.forward


def make_prunable(model: nn.Module) -> list[str]:
    """Replace every C2f (and C2f-forward subclass) of an Ultralytics model by C2fV2, in place.

    Returns the replaced modules' names (e.g. "model.2"), in model order: what a decoder needs to repeat
    the replacement on a freshly built architecture before a channel-pruning record is replayed.
    """
    offline_ultralytics()
    replaced = [name for name, module in model.named_modules() if _splits_like_c2f(module)]
    for name in replaced:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = parent.get_submodule(child)
        new = C2fV2(old).to(next(old.parameters()).device)
        new.train(old.training)
        setattr(parent, child, new)
    return replaced
