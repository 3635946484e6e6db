"""Check a recorded Ultralytics architecture before Ultralytics sees it: decoding must never run code.

A compact detector file records the model's yaml (a dict), and `build_detector` hands it to
Ultralytics' `parse_model`, which `eval()`s the `activation` string and looks every module name up
in the globals of `ultralytics.nn.tasks` (functions that load checkpoints included) before calling
it. A crafted file could therefore run any Python. This module accepts only what the YOLO families
we support (v3u, v5u, v8, 9, 10, 11, 12, 26 detection) write: known keys, module names from a fixed
allow-list, an activation from a fixed set (rewritten into our own canonical string, so `eval`
only ever sees text we produced), and literal arguments with bounded sizes. Anything else is refused
with a message naming the offending value. A second check (`count_parameters`) builds the layers
on PyTorch's meta device, which allocates no memory, so a file cannot make us allocate more than its
tensors honestly describe.
"""

from __future__ import annotations

import copy
import math
import re

from complab.errors import ModelLoadError, first_line
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics

# The module names the supported detection families use (collected from Ultralytics' own model yamls).
# Deliberately absent: TorchVision (builds torchvision models and may download weights), the
# World/YOLOE heads (load text encoders), and everything in tasks.py's globals that is not a layer.
MODULES = frozenset({
    "Conv", "DWConv", "GhostConv", "ConvTranspose", "Focus", "Concat", "Bottleneck", "BottleneckCSP",
    "GhostBottleneck", "C1", "C2", "C2f", "C3", "C3x", "C3TR", "C3Ghost", "C3k2", "RepC3", "SPP", "SPPF",
    "C2PSA", "C2fPSA", "PSA", "A2C2f", "C2fCIB", "SCDown", "RepNCSPELAN4", "ELAN1", "ADown", "AConv", "SPPELAN",
    "CBLinear", "CBFuse", "Detect", "v10Detect",
    "nn.Upsample", "nn.MaxPool2d", "nn.ZeroPad2d", "nn.Identity", "nn.BatchNorm2d", "nn.ConvTranspose2d",
})
# activation functions a yaml may name, each with how many numeric arguments it may take
ACTIVATIONS = {"SiLU": 0, "ReLU": 0, "ReLU6": 0, "Hardswish": 0, "GELU": 0, "Mish": 0, "Identity": 0,
               "Sigmoid": 0, "Tanh": 0, "LeakyReLU": 1, "ELU": 1}
_ACTIVATION = re.compile(r"(?:torch\.)?nn\.([A-Za-z0-9]+)\(\s*([-+0-9.eE]*)\s*"
                         r"(?:,?\s*inplace\s*=\s*(?:True|False)\s*)?\)")
# strings parse_model resolves itself: `nc` is the class count, the rest are literals it parses with ast
STRING_ARGS = frozenset({"nc", "nearest", "bilinear", "None", "True", "False"})
KEYS = frozenset({"nc", "scales", "scale", "backbone", "head", "depth_multiple", "width_multiple", "activation",
                  "channels", "ch", "reg_max", "end2end", "yaml_file"})
MAX_ROWS = 512
MAX_REPEATS = 64
MAX_INT = 1 << 16  # channel counts, kernel sizes, strides: Ultralytics' largest models stay under 2,048
MAX_CLASSES = 100_000


def _refuse(what: str) -> ModelLoadError:
    return ModelLoadError(f"the file's detector architecture is not one we can rebuild safely: {what}. "
                          "Only Ultralytics YOLO detection layouts written by Compression Lab are read; "
                          "re-compress the original .pt file")


def _number(value, name: str, low: float, high: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise _refuse(f"{name} must be a{'n integer' if integer else ' number'}, not {type(value).__name__}")
    if not (math.isfinite(value) and low <= value <= high):
        raise _refuse(f"{name} = {value!r} is outside {low:g}..{high:g}")
    return value


def canonical_activation(text) -> str:
    """The activation as our own string `torch.nn.NAME(ARG)`, or a refusal (the original is never eval'd)."""
    if not isinstance(text, str) or len(text) > 64:
        raise _refuse("the activation must be a short string such as 'nn.SiLU()'")
    match = _ACTIVATION.fullmatch(text.strip())
    if not match or match.group(1) not in ACTIVATIONS:
        raise _refuse(f"activation {text[:64]!r} is not one of {', '.join(sorted(ACTIVATIONS))}")
    name, arg = match.group(1), match.group(2)
    if arg and not ACTIVATIONS[name]:
        raise _refuse(f"activation {name} takes no argument")
    if arg:
        try:
            value = float(arg)
        except ValueError:
            raise _refuse(f"activation argument {arg!r} is not a number") from None
        _number(value, f"activation {name}'s argument", -100.0, 100.0)
        return f"torch.nn.{name}({value!r})"
    return f"torch.nn.{name}()"


def _check_arg(value, where: str, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int | float):
        _number(value, where, -MAX_INT, MAX_INT)
        return
    if isinstance(value, str):
        if value not in STRING_ARGS:
            words = ", ".join(sorted(STRING_ARGS))
            raise _refuse(f"{where} = {value[:40]!r} is not a literal (allowed words: {words})")
        return
    if isinstance(value, list) and depth == 0 and len(value) <= 16:
        for j, item in enumerate(value):
            _check_arg(item, f"{where}[{j}]", depth + 1)
        return
    raise _refuse(f"{where} has a {type(value).__name__} value; only numbers, booleans and short lists are allowed")


def _check_from(value, row: int, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 16:
        raise _refuse(f"{where}: 'from' must name 1 to 16 earlier layers")
    for item in items:
        _number(item, f"{where} 'from'", -row - 1, row - 1, integer=True)


def check_yaml(yaml) -> dict:
    """A checked copy of a recorded yaml whose activation is rewritten canonically; ModelLoadError otherwise."""
    if not isinstance(yaml, dict):
        raise ModelLoadError("the file records no detector architecture: it was not written for a detector")
    unknown = sorted(str(k)[:40] for k in yaml if not isinstance(k, str) or k not in KEYS)
    if unknown:
        raise _refuse(f"unknown keys {unknown[:5]}")
    checked = copy.deepcopy(yaml)
    if checked.get("activation") is not None:
        checked["activation"] = canonical_activation(checked["activation"])
    if "nc" in checked:
        _number(checked["nc"], "nc", 1, MAX_CLASSES, integer=True)
    for key in ("depth_multiple", "width_multiple"):
        if key in checked:
            _number(checked[key], key, 1e-3, 4.0)
    for key, high in (("channels", 16), ("ch", 16), ("reg_max", 64)):
        if key in checked:
            _number(checked[key], key, 1, high, integer=True)
    if "end2end" in checked and not isinstance(checked["end2end"], bool | None):
        raise _refuse("end2end must be true or false")
    for key in ("scale", "yaml_file"):
        if key in checked and not (isinstance(checked[key], str) and len(checked[key]) <= 4096):
            raise _refuse(f"{key} must be a short string")
    scales = checked.get("scales")
    if scales is not None:
        if not isinstance(scales, dict) or len(scales) > 16:
            raise _refuse("scales must map a few scale names to [depth, width, max_channels]")
        for name, values in scales.items():
            if not (isinstance(name, str) and len(name) <= 8 and isinstance(values, list) and len(values) == 3):
                raise _refuse(f"scale {str(name)[:16]!r} must be [depth, width, max_channels]")
            _number(values[0], f"scale {name} depth", 1e-3, 4.0)
            _number(values[1], f"scale {name} width", 1e-3, 4.0)
            _number(values[2], f"scale {name} max_channels", 1, MAX_INT, integer=True)
        if checked.get("scale") and checked["scale"] not in scales:  # a str (checked above)
            raise _refuse(f"scale {checked['scale'][:16]!r} is not among the recorded scales")
    rows = []
    for part in ("backbone", "head"):
        section = checked.get(part)
        if not isinstance(section, list):
            raise _refuse(f"'{part}' must be a list of layers")
        rows += section
    if not rows or len(rows) > MAX_ROWS:
        raise _refuse(f"it has {len(rows)} layers (1 to {MAX_ROWS} allowed)")
    for i, row in enumerate(rows):
        where = f"layer {i}"
        if not (isinstance(row, list) and len(row) == 4):
            raise _refuse(f"{where} must be [from, repeats, module, args]")
        origin, repeats, module, args = row
        _check_from(origin, i, where)
        _number(repeats, f"{where} repeats", 1, MAX_REPEATS, integer=True)
        if not isinstance(module, str) or module not in MODULES:
            raise _refuse(f"{where} names module {str(module)[:40]!r}, which is not a known YOLO layer")
        if not isinstance(args, list) or len(args) > 16:
            raise _refuse(f"{where} args must be a list of at most 16 literals")
        for j, arg in enumerate(args):
            _check_arg(arg, f"{where} arg {j}")
    if module not in ("Detect", "v10Detect"):
        raise _refuse(f"the last layer is {module}, not a Detect head: only detection models are supported")
    return checked


# float32 values of feature maps and attention matrices in Ultralytics' 256 px stride pass: 128 MB. The shipped
# layouts need at most 16M (yolov9e; yolo12x 10M of maps and 2M of attention); a record of a few hundred bytes
# asked for 1 GiB under the old bound, and for 0.5 GB of attention it did not count (C3TR at stride 4: 4,096 tokens).
MAX_ACTIVATION_ELEMENTS = 32 * 2**20
ATTENTION_COPIES = 3  # scores, their softmax and the weighted sum's workspace live together


def _attention_elements(module, args) -> int:
    """Values of the attention matrices one call of an attention module holds (0 for any other module)."""
    import torch

    if isinstance(module, torch.nn.MultiheadAttention):
        query = args[0]
        key = args[1] if len(args) > 1 else query
        if module.batch_first:
            batch, tokens_q, tokens_k = query.shape[0], query.shape[1], key.shape[1]
        else:
            batch, tokens_q, tokens_k = query.shape[1], query.shape[0], key.shape[0]
        return ATTENTION_COPIES * batch * module.num_heads * tokens_q * tokens_k
    name = type(module).__name__
    if not (name.endswith("Attention") or name.endswith("Attn")) or not args or args[0].dim() != 4:
        return 0
    batch, _, height, width = args[0].shape
    tokens = height * width
    heads = int(getattr(module, "num_heads", 1) or 1)
    area = max(1, int(getattr(module, "area", 1) or 1))  # area attention: `area` blocks of tokens / area each
    return ATTENTION_COPIES * batch * heads * tokens * tokens // area


def count_parameters(yaml: dict, channels: int, nc: int) -> int:
    """Parameter and buffer elements of the layers a checked yaml describes, built on the meta device (no memory).

    The layers also run once on a meta tensor of the 256 x 256 image Ultralytics feeds them to find the
    strides: a layout whose feature maps would take more than MAX_ACTIVATION_ELEMENTS (an upsampling
    factor of 64, say) is refused here, before that real forward pass could allocate them.
    """
    import torch

    offline_ultralytics()
    from ultralytics.nn.tasks import parse_model

    spec = copy.deepcopy(yaml)
    spec["nc"] = nc
    try:
        with torch.device("meta"), quiet_ultralytics():
            layers, save = parse_model(spec, ch=channels, verbose=False)
            layers.eval()
            layers[-1].training = True  # as Ultralytics' stride pass: the head returns its feature maps
            x, outputs, activations = torch.zeros(1, channels, 256, 256), [], 0
            attention = [0]

            def count_attention(module, args):
                attention[0] += _attention_elements(module, args)

            # removed again below: Ultralytics' Conv shares one SiLU (Conv.default_act) with every Conv built in
            # the process, so a hook left on it ran in every later detector's forward pass, one more per decoded
            # file (4 decodes made a decoded detector 6-13% slower at 160-320 px on this CPU)
            hooks = [sub.register_forward_pre_hook(count_attention) for sub in layers.modules()]
            try:
                for module in layers:
                    if module.f != -1:
                        x = outputs[module.f] if isinstance(module.f, int) else [x if j == -1 else outputs[j]
                                                                                 for j in module.f]
                    x = module(x)
                    activations += sum(t.numel() for t in (x if isinstance(x, list | tuple) else [x])
                                       if isinstance(t, torch.Tensor))
                    if activations + attention[0] > MAX_ACTIVATION_ELEMENTS:
                        raise _refuse(f"its feature maps and attention matrices after layer {module.i} exceed "
                                      f"{MAX_ACTIVATION_ELEMENTS:,} values for a 256 px image")
                    outputs.append(x if module.i in save else None)
            finally:
                for hook in hooks:
                    hook.remove()
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed layout fails in many ways inside Ultralytics
        raise _refuse(f"Ultralytics cannot build it ({type(exc).__name__}: {first_line(exc, 120)})") from None
    return sum(t.numel() for t in layers.parameters()) + sum(t.numel() for t in layers.buffers())
