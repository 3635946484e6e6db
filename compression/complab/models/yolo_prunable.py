"""Ultralytics' C2f made prunable: the channel split replaced by two convolutions, same outputs.

Ultralytics' C2f runs one 1x1 convolution `cv1` to 2c channels and splits the result in two
(`chunk(2, 1)`) by a stored count; Torch-Pruning's dependency graph cannot follow a split by a fixed
count, so the channels step could not prune YOLO detectors. `C2fV2` computes the same two halves with
two 1x1 convolutions `cv0` and `cv1` (+ their batch norms) whose weights are the two halves of the
original `cv1`: each half is now an ordinary convolution output the graph can shrink. This is
Torch-Pruning's own YOLOv8 recipe (`C2f_v2` and `transfer_weights` in examples/yolov8/yolov8_pruning.py
of VainF/Torch-Pruning); here the replacement copies the trained modules instead of rebuilding them,
so a fused detector (no batch norm) and C2f subclasses that keep C2f's forward (YOLO11's C3k2) work too.

Attention is pruned around, as Torch-Pruning's users prune YOLO11: its layers (and the convolutions whose output a
block splits by a stored count, C2PSA's and PSA's `cv1`) are the dependency graph's ignored layers (`kept_whole`),
so every channel group coupled to them stays whole and every other group is pruned. Replacing C2PSA by a split-free
equivalent as C2fV2 does for C2f would free only its pass-through half (`a`: 128 of YOLO11n's 256 cv1 outputs; the
other half is the attention's stream, kept anyway) while adding a module the decoder must replay and every Ultralytics
version's C2PSA/PSA forward to copy; ignoring is a rule on existing layers that needs nothing new in the file and
follows Ultralytics' own forward. A block not checked is refused by name (unsupported_block).
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

# the top-level layer types the channels step prunes end to end, each checked on Ultralytics' own yaml (untrained,
# tests/test_yolo_families.py): YOLOv8n, YOLOv5nu, YOLO11n, YOLOv10n, YOLO12n, YOLOv9t and YOLO26n. Attention is
# pruned around: its layers keep their channels (ATTENTION_LAYERS), as do the convolutions whose outputs a block
# splits by a stored count (SPLIT_OUTPUTS); everything else is pruned. Any other block is refused before anything
# changes (unsupported_block), because Torch-Pruning's graph either cannot follow it or has not been checked on it.
SUPPORTED_BLOCKS = ("Conv", "C2f", "C3k2", "C2fCIB", "C3", "SPPF", "SCDown", "Upsample", "Concat", "Detect",
                    "v10Detect", "C2PSA", "PSA", "A2C2f", "ELAN1", "RepNCSPELAN4", "AConv", "SPPELAN", "C2fV2")
# layers whose channels stay as they are (Torch-Pruning's ignored layers): an attention splits its channels into
# query, key and value heads by stored counts the graph cannot follow. A group coupled to them by a residual add (the
# attention's input and output: C2PSA's and PSA's hidden half, A2C2f's ABlock stream) is left whole with them; the
# attention's MLP hidden channels are plain convolution outputs and are pruned.
ATTENTION_LAYERS = ("Attention", "AAttn")
# block -> its convolution whose output the block splits or chunks by a stored count (`self.c`): that convolution's
# outputs stay whole (its inputs are pruned with the layer before). Pruning ELAN1's cv1 broke the graph's groups
# (members of different widths); C2PSA's and PSA's cv1 are coupled to the attention anyway, named here so the rule
# does not depend on that coupling. (C2f and its subclasses are made split-free instead: C2fV2 below.)
SPLIT_OUTPUTS = {"C2PSA": "cv1", "PSA": "cv1", "ELAN1": "cv1", "RepNCSPELAN4": "cv1"}
# why a known block is refused
_WHY = {
    "RTDETRDecoder": "the dependency graph cannot trace its query selection",
    "AIFI": "a transformer encoder layer whose channels reach the decoder: not checked",
    # (checked on YOLOv9c: the pruned model failed, its two halves no longer of the widths its convolutions read)
    "ADown": "it chunks its input in two, and the channels the layer before it loses leave the halves uneven",
    "C2fPSA": "not checked",
}
# an Ultralytics detector made prunable by make_prunable carries this attribute: its depthwise convolutions (YOLO11's
# and YOLOv10's Detect class branch, SCDown, C2fCIB) are pruned with the channels they read (graph.channel_groups)
DEPTHWISE_FLAG = "channels_prune_depthwise"


def unsupported_block(model: nn.Module) -> tuple[str, str, str] | None:
    """The first layer the channels step cannot prune: (block type, module name, why), or None when all can be."""
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


def kept_whole(model: nn.Module) -> list[str]:
    """Names of the modules whose output channels the channels step keeps (attention layers and convolutions whose
    output a block splits by a stored count), in model order; their inputs may shrink with the layer before."""
    names = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ATTENTION_LAYERS:
            names.append(name)
        elif kind in SPLIT_OUTPUTS and hasattr(module, SPLIT_OUTPUTS[kind]):
            names.append(f"{name}.{SPLIT_OUTPUTS[kind]}" if name else SPLIT_OUTPUTS[kind])
    return names


def kept_modules(model: nn.Module) -> list[nn.Module]:
    """Every module inside kept_whole's (the dependency graph's ignored layers are its leaves)."""
    return [inner for name in kept_whole(model) for inner in model.get_submodule(name).modules()]


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
    the replacement on a freshly built architecture before a channel-pruning record is replayed. The model is
    marked (DEPTHWISE_FLAG) so its depthwise convolutions are pruned with the channels they read.
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
    if isinstance(getattr(model, "model", None), nn.Sequential | nn.ModuleList):
        setattr(model, DEPTHWISE_FLAG, True)
    return replaced
