"""The behaviour diff's cache: one JSON file per pair of models, keyed by what the diff depends on, read back checked.

The key (`cache_key`) is a sha256 of both models' identities (a compact file's sha256, or the original's tensors'
sha256), the split's identity (dataset reference, split, images, input shape, normalisation), the options that
change the result (gallery size, the sensitivity report's hash) and the code version (the package version and a
hash of its .py files, complab.code_version, the one content keys use). A cache file
is untrusted like every file on disk (DESIGN.md "Trust"): `read_cached` refuses it by size before reading, parses
it without NaN or Infinity within bounded depth and values (runfolder.parse_json), and checks every key of the
schema ("behaviour/1": types, finite numbers, ranges, list lengths). A damaged file reads as None and the diff is
recomputed; nothing here raises on a bad file. Writes are atomic (temporary file + rename). The identities of
the two sides (`file_side`, `handle_side`: the "a" and "b" entries of a diff) are made here too.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from complab import code_version, runfolder
from complab.models.tasks import finds_boxes
from complab.paths import replace_atomically

SCHEMA = "behaviour/1"
MAX_CACHE_BYTES = 32 << 20  # a diff of 1,000 classes' confusion matrices and 48 thumbnails is ~15 MB
MAX_CLASSES = 1000
MAX_LIST = 100_000  # gallery items, image rows, trace layers
MAX_IMAGES = 10**9
MAX_THUMBNAIL_CHARS = 1 << 20
MAX_BOXES = 3000


class _Bad(Exception):
    pass


def cache_key(identity_a: str, identity_b: str, split_identity: dict, options: dict | None = None) -> str:
    """The cache file's name (64 hex digits) for a diff of two models (their sha256s) on a split, with options."""
    record = {"a": identity_a, "b": identity_b, "split": split_identity, "options": options or {},
              "code": code_version(), "schema": SCHEMA}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def state_sha256(model) -> str:
    """A sha256 of a model's tensors (names, shapes, dtypes and bytes): the identity of a model without a file."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}\0".encode())
        digest.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return digest.hexdigest()


def handle_side(handle) -> dict:
    """The "a" / "b" entry of a model without a file (the caller's original): its label and its tensors' sha256."""
    return {"label": str(handle.label), "file": None, "bytes": None, "sha256": state_sha256(handle.model)}


def file_side(path: str | Path) -> dict:
    """The "a" / "b" entry of a compact file: its label (set by the caller), name, size and sha256."""
    path = Path(path)
    data = path.read_bytes()
    return {"label": path.name, "file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_cached(cache_dir: str | Path, key: str, diff: dict) -> Path:
    """Store a diff as cache_dir/KEY.json, atomically; OSError as it comes (the caller may ignore it)."""
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    replace_atomically(path, json.dumps(diff, allow_nan=False))
    return path


def read_cached(cache_dir: str | Path | None, key: str) -> dict | None:
    """The checked diff stored under `key`, or None when there is none or it is damaged (never raises)."""
    if cache_dir is None or not isinstance(key, str) or len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        return None
    value, problem = runfolder.read_json(Path(cache_dir) / f"{key}.json", "behaviour cache", MAX_CACHE_BYTES)
    if problem is not None:
        return None
    return check_diff(value)


def check_diff(value) -> dict | None:
    """`value` when it is a diff of schema "behaviour/1" in every key the UI and CLI read, else None."""
    try:
        _diff(value)
    except (_Bad, RecursionError):
        return None
    return value


# --- the schema's pieces ------------------------------------------------------------------------------------------


def _number(value, low: float | None = None, high: float | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad("not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Bad("out of range")


def _integer(value, low: int = 0, high: int = MAX_IMAGES, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad("not a whole number in range")


def _text(value, limit: int = 4096, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit:
        raise _Bad("not text")


def _object(value, keys: tuple = ()) -> dict:
    if not isinstance(value, dict) or any(key not in value for key in keys):
        raise _Bad("not an object with its keys")
    return value


def _list(value, limit: int = MAX_LIST, length: int | None = None) -> list:
    if not isinstance(value, list) or len(value) > limit or (length is not None and len(value) != length):
        raise _Bad("not a list of the right length")
    return value


def _interval(value, low: float = -1.0, high: float = 1.0) -> None:
    pair = _list(value, length=2)
    _number(pair[0], low, high)
    _number(pair[1], low, high)
    if pair[0] > pair[1]:
        raise _Bad("interval upside down")


def _side(value) -> None:
    side = _object(value, ("label", "file", "bytes", "sha256"))
    _text(side["label"])
    _text(side["file"], optional=True)
    _integer(side["bytes"], high=1 << 50, optional=True)
    _text(side["sha256"], limit=64)


def _matrix(value, classes: int, low: int) -> None:
    for row in _list(value, MAX_CLASSES, classes):
        for cell in _list(row, MAX_CLASSES, classes):
            _integer(cell, low)


def _top3(value, classes: int) -> None:
    for pair in _list(value, 3):
        _list(pair, length=2)
        _integer(pair[0], 0, classes - 1)
        _number(pair[1], 0.0, 1.0)


def _classifier(diff: dict, n: int) -> None:
    for key in ("accuracy_a", "accuracy_b", "agreement"):
        _number(diff.get(key), 0.0, 1.0)
    _interval(diff.get("agreement_ci"), 0.0, 1.0)
    flips = _object(diff.get("flips"), ("right_to_wrong", "wrong_to_right", "wrong_to_other_wrong",
                                        "right_to_wrong_ci", "wrong_to_right_ci", "net_ci"))
    for key in ("right_to_wrong", "wrong_to_right", "wrong_to_other_wrong"):
        _integer(flips[key], 0, n)
    for key in ("right_to_wrong_ci", "wrong_to_right_ci", "net_ci"):
        _interval(flips[key])
    rows = _list(diff.get("per_class"), MAX_CLASSES)
    classes = len(rows)
    if classes == 0:
        raise _Bad("no classes")
    for row in rows:
        row = _object(row, ("class", "name", "n", "accuracy_a", "accuracy_b", "ci_a", "ci_b", "diff", "diff_ci",
                            "within_noise"))
        _integer(row["class"], 0, classes - 1)
        _text(row["name"], 200)
        _integer(row["n"], 0, n)
        for key in ("accuracy_a", "accuracy_b"):
            _number(row[key], 0.0, 1.0)
        _number(row["diff"], -1.0, 1.0)
        for key in ("ci_a", "ci_b", "diff_ci"):
            _interval(row[key])
        if not isinstance(row["within_noise"], bool):
            raise _Bad("within_noise not a boolean")
    _matrix(diff.get("confusion_a"), classes, 0)
    _matrix(diff.get("confusion_b"), classes, 0)
    _matrix(diff.get("confusion_diff"), classes, -MAX_IMAGES)
    calibration = _object(diff.get("calibration"), ("ece_a", "ece_b", "bins"))
    _number(calibration["ece_a"], 0.0, 1.0)
    _number(calibration["ece_b"], 0.0, 1.0)
    for item in _list(calibration["bins"], 1000):
        item = _object(item, ("lo", "hi", "count_a", "confidence_a", "accuracy_a", "count_b", "confidence_b",
                              "accuracy_b"))
        for key in ("lo", "hi"):
            _number(item[key], 0.0, 1.0)
        for side in ("a", "b"):
            _integer(item[f"count_{side}"], 0, n)
            _number(item[f"confidence_{side}"], 0.0, 1.0, optional=True)
            _number(item[f"accuracy_{side}"], 0.0, 1.0, optional=True)
    for item in _list(diff.get("gallery"), 10_000):
        item = _object(item, ("index", "label", "kind", "top3_a", "top3_b", "confidence_wrong"))
        _integer(item["index"], 0, max(0, n - 1))
        _integer(item["label"], 0, classes - 1)
        if item["kind"] not in ("right_to_wrong", "wrong_to_right", "wrong_to_other_wrong"):
            raise _Bad("unknown flip kind")
        _top3(item["top3_a"], classes)
        _top3(item["top3_b"], classes)
        _number(item["confidence_wrong"], 0.0, 1.0)
        if "image_png_b64" in item:
            _text(item["image_png_b64"], MAX_THUMBNAIL_CHARS)
    trace = _object(diff.get("trace"), ("method", "layers", "note"))
    if trace["method"] not in ("ablation", "sensitivity", None):
        raise _Bad("unknown trace method")
    _text(trace["note"])
    for layer in _list(trace["layers"], 1000):
        layer = _object(layer, ("layer", "share"))
        _text(layer["layer"], 1000)
        _number(layer["share"], 0.0, 1.0)
        _integer(layer.get("flips_reproduced"), 0, n, optional=True)
        _number(layer.get("predicted_drop"), -1.0, 1.0, optional=True)


def _boxes(value) -> None:
    for box in _list(value, MAX_BOXES):
        box = _list(box, length=6)
        for number in box:
            _number(number, -1e6, 1e6)


def _detector(diff: dict) -> None:
    for key in ("map50_a", "map50_b", "map50_95_a", "map50_95_b"):
        _number(diff.get(key), 0.0, 1.0)
    for row in _list(diff.get("per_class"), MAX_CLASSES):
        row = _object(row, ("class", "name", "ap50_a", "ap50_b", "ap50_95_a", "ap50_95_b", "n_boxes"))
        _integer(row["class"], 0, MAX_CLASSES)
        _text(row["name"], 200)
        for key in ("ap50_a", "ap50_b", "ap50_95_a", "ap50_95_b"):
            _number(row[key], 0.0, 1.0, optional=True)
        _integer(row["n_boxes"])
    for image in _list(diff.get("images")):
        image = _object(image, ("path", "vanished", "new", "moved", "kept", "change"))
        _text(image["path"], 1000)
        for key in ("vanished", "new", "moved", "kept"):
            _integer(image[key], 0, 1 << 20)
        _number(image["change"], 0.0, 1e9)
        for key in ("boxes_a", "boxes_b"):
            if key in image:
                _boxes(image[key])


def _diff(value) -> None:
    diff = _object(value, ("schema", "task", "a", "b", "split", "n", "seconds"))
    if diff["schema"] != SCHEMA or diff["task"] not in ("classify", "detect"):
        raise _Bad("not a behaviour/1 diff")
    _side(diff["a"])
    _side(diff["b"])
    _text(diff["split"], 40)
    boxes = finds_boxes(diff["task"])
    _integer(diff["n"], 0 if boxes else 1)
    _number(diff["seconds"], 0.0, 1e9)
    if not boxes:
        _classifier(diff, diff["n"])
    else:
        _detector(diff)
