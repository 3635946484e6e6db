"""Detection datasets: the built-in synthetic shapes (generated on first use) or a local YOLO dataset yaml.

`load_detection_data(ref)`:
  shapes          the demo detector's data: complab.data.shapes with the settings recorded in
                  assets/detector_card.json (seeded, so the same images the detector was trained on),
                  written once under the engine's data folder ($COMPRESSION_LAB_HOME/data/shapes, or
                  $COMPRESSION_LAB_DATA/shapes)
  yolo:FILE.yaml  a YOLO dataset yaml whose `train` and `val` (and `test`) point at local image folders or lists

A dataset yaml is untrusted (README, "Trust"): Ultralytics runs a yaml's `download:` script (Python or shell)
when one of its split paths is missing. `check_dataset_yaml` reads it ourselves (yaml.safe_load, at most
MAX_YAML_BYTES), checks `names`/`nc` and every entry of `train`, `val` and `test` (a string or a list: each must
exist and lie inside the yaml's dataset root or the yaml's folder) and keeps nothing else: `download:` and every
other key are dropped. Ultralytics only ever reads the copy we write from the checked values
(`DetectionData.yaml_path`, in a private temporary folder), never the user's file; nothing is downloaded or run.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from complab.data import walk
from complab.data.shapes import ShapesConfig, write_dataset
from complab.errors import DataLoadError, first_line
from complab.paths import ASSETS, data_home, describe_os_error

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
MAX_YAML_BYTES = 1 << 20  # a dataset yaml is a few lines (COCO's, with its class names, is 3 KB)
MAX_CLASSES = 10_000
MAX_NAME_CHARS = 256
MAX_SPLIT_ENTRIES = 64  # paths in one split's list
MAX_LIST_BYTES = 256 << 20  # an image-list file (a million paths is ~60 MB)
MAX_PATH_CHARS = 4096


@dataclass
class DetectionData:
    """A YOLO-format dataset, checked: its class names and resolved image folders (or image-list files).

    `yaml_path` is the yaml Ultralytics reads: a copy written by us from the checked values (absolute split
    paths, names, nc; no `download:` or any other key), never the user's file (`source`)."""

    ref: str
    source: Path
    train: Path | None
    val: Path
    names: dict[int, str] = field(default_factory=dict)
    shift_pixels: int = 0  # (classifier fine-tuning augmentation; Ultralytics' trainer augments its own way)
    train_paths: tuple[Path, ...] = ()
    val_paths: tuple[Path, ...] = ()
    test_paths: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        self.val_paths = self.val_paths or (self.val,)
        self.train_paths = self.train_paths or ((self.train,) if self.train else ())

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def yaml_path(self) -> Path:
        """The checked yaml Ultralytics reads (written again if this process has not written it yet)."""
        return write_checked_yaml(self.checked())

    def checked(self) -> dict:
        """What the yaml Ultralytics reads holds: absolute split paths, names and nc, nothing else."""
        val = [str(p) for p in self.val_paths]
        out = {"path": str(self.val_paths[0].parent), "train": [str(p) for p in self.train_paths] or val,
               "val": val, "names": dict(self.names), "nc": len(self.names)}
        if self.test_paths:
            out["test"] = [str(p) for p in self.test_paths]
        return out

    def val_images(self, limit: int | None = None) -> list[Path]:
        images = []
        for path in self.val_paths:
            images += image_files(path)
            if limit is not None and len(images) >= limit:
                break
        return images[:limit]

    def val_subset(self, size: int | None, seed: int = 0) -> list[Path]:
        """A seeded sample of `size` validation images, in file order (all of them when None or larger)."""
        images = self.val_images()
        if size is not None and size < len(images):
            images = sorted(random.Random(seed).sample(images, size))
        return images


_CHECKED_DIR: Path | None = None


def _checked_dir() -> Path:
    """A folder only this process writes (mkdtemp: mode 0700, a fresh name), removed when the process exits."""
    global _CHECKED_DIR
    if _CHECKED_DIR is None or not _CHECKED_DIR.is_dir():
        _CHECKED_DIR = Path(tempfile.mkdtemp(prefix="complab-data-"))
        atexit.register(shutil.rmtree, _CHECKED_DIR, True)
    return _CHECKED_DIR


def write_checked_yaml(checked: dict) -> Path:
    """Write the checked values (check_dataset_yaml's) as the yaml Ultralytics reads; returns its path."""
    text = yaml.safe_dump(checked, sort_keys=False, allow_unicode=True)
    path = _checked_dir() / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def image_files(path: Path) -> list[Path]:
    """The images of a split entry: an image-list file's lines, or a folder's image files (walked in bounded
    time, a symlink cycle refused: complab.data.walk)."""
    if path.is_file():  # an image-list file
        if path.stat().st_size > MAX_LIST_BYTES:
            raise DataLoadError(f"image list {path} is larger than {MAX_LIST_BYTES >> 20} MB: split it or list fewer "
                                "images")
        base = path.parent
        out = []
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if line and "\x00" not in line:
                    if len(out) >= walk.MAX_FILES:
                        raise DataLoadError(f"image list {path} names more than {walk.MAX_FILES:,} images: list fewer")
                    p = Path(line)
                    out.append(p if p.is_absolute() else base / p)
        return out
    return sorted(Path(p) for p in walk.walk_files(path, lambda p: Path(p).suffix.lower() in IMAGE_SUFFIXES))


def shapes_dataset(folder: Path | None = None) -> Path:
    """Write (once) the demo detector's synthetic dataset; returns its data.yaml."""
    card = json.loads((ASSETS / "detector_card.json").read_text())
    generator = dict(card["generator"])
    train, val = generator.pop("train"), generator.pop("val")
    folder = Path(folder) if folder else data_home() / "shapes"
    yaml = folder / "data.yaml"
    if yaml.is_file() and len(list((folder / "images" / "val").glob("*.png"))) >= val and \
            len(list((folder / "images" / "train").glob("*.png"))) >= train:
        return yaml
    try:
        return write_dataset(folder, train, val, ShapesConfig(**generator))
    except OSError as exc:
        problem = describe_os_error(exc, exc.filename or folder)
        raise DataLoadError(f"cannot write the demo detection dataset: {problem} (or set COMPRESSION_LAB_HOME to a "
                            "writable folder)") from None


def _read_yaml(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise DataLoadError(f"dataset yaml {path} is larger than {MAX_YAML_BYTES >> 10} KB, more than a dataset "
                                "yaml holds: check the file")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
        data = yaml.safe_load(raw.decode("utf-8"))
    except DataLoadError:
        raise
    except RecursionError:
        raise DataLoadError(f"cannot read dataset yaml {path} (nested too deeply): it must be a YOLO data yaml with "
                            "train, val and names") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, OverflowError) as exc:
        raise DataLoadError(f"cannot read dataset yaml {path} ({first_line(exc)}): "
                            "it must be a YOLO data yaml with train, val and names") from None
    if not isinstance(data, dict):
        raise DataLoadError(f"dataset yaml {path} is not a mapping: it must hold train, val and names")
    return data


def _check_names(data: dict, path: Path) -> dict[int, str]:
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DataLoadError(f"dataset yaml {path} has no 'names': list the class names")
    if len(names) > MAX_CLASSES:
        raise DataLoadError(f"dataset yaml {path} names {len(names):,} classes, more than {MAX_CLASSES:,}: check "
                            "its 'names'")
    if sorted(k for k in names if isinstance(k, int) and not isinstance(k, bool)) != list(range(len(names))):
        raise DataLoadError(f"dataset yaml {path}: the keys of 'names' must be the class numbers 0 to "
                            f"{len(names) - 1}: write names as a list, or as 0: cat, 1: dog, ...")
    out = {}
    for key, value in names.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float) or len(str(value)) > MAX_NAME_CHARS:
            raise DataLoadError(f"dataset yaml {path}: class {key}'s name must be a text of at most "
                                f"{MAX_NAME_CHARS} characters")
        out[key] = str(value)
    nc = data.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc != len(out)):
        raise DataLoadError(f"dataset yaml {path}: 'nc: {str(nc)[:20]}' must be the number of names ({len(out)}): "
                            "fix nc or drop it")
    return dict(sorted(out.items()))


def _is(path: Path, kind: str) -> bool:
    """Whether `path` is a file ("file") or exists at all ("any"); False for a name the system refuses (too long,
    a NUL byte) rather than an exception."""
    try:
        return path.is_file() if kind == "file" else path.exists()
    except (OSError, ValueError):
        return False


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    path = Path(os.path.normpath(path))
    return any(path.is_relative_to(Path(os.path.normpath(folder))) for folder in folders)


def check_dataset_yaml(path: str | Path) -> dict:
    """The checked contents of a YOLO dataset yaml, or a DataLoadError naming the problem and the fix.

    Returns {"path": root, "train": [...], "val": [...], "test": [...] (present splits only), "names": {i: name},
    "nc": n} with absolute split paths. Read with yaml.safe_load (at most MAX_YAML_BYTES); `names` (a list, or a
    dict keyed 0..n-1) and `nc` checked; every entry of `train`, `val` (required) and `test` (a path or a list of
    paths, relative to the yaml's `path:` root, else the yaml's folder) must exist, lie inside that root or the
    yaml's folder, and hold images. Every other key, `download:` included, is dropped: nothing is ever run or
    fetched (Ultralytics runs a `download:` script when a split is missing)."""
    path = Path(os.path.expanduser(path))
    if not _is(path, "file"):
        raise DataLoadError(f"dataset yaml {str(path)[:MAX_PATH_CHARS]} does not exist: check the path after 'yolo:'")
    data = _read_yaml(path)
    names = _check_names(data, path)
    folder = Path(os.path.abspath(path.parent))
    root = data.get("path")
    if root is not None and (not isinstance(root, str) or len(root) > MAX_PATH_CHARS or "\x00" in root):
        raise DataLoadError(f"dataset yaml {path}: 'path' must be a folder name of at most {MAX_PATH_CHARS} "
                            "characters")
    base = Path(os.path.expanduser(root)) if root else folder
    base = Path(os.path.abspath(base if base.is_absolute() else folder / base))

    def split(key: str, required: bool) -> list[Path]:
        value = data.get(key)
        if value is None or value == [] or value == "":
            if required:
                raise DataLoadError(f"dataset yaml {path} has no '{key}' split: add '{key}: images/{key}'")
            return []
        entries = value if isinstance(value, list) else [value]
        if len(entries) > MAX_SPLIT_ENTRIES or not all(isinstance(entry, str) and 0 < len(entry) <= MAX_PATH_CHARS
                                                       and "\x00" not in entry for entry in entries):
            raise DataLoadError(f"dataset yaml {path}: '{key}' must be a path or a list of at most "
                                f"{MAX_SPLIT_ENTRIES} paths (image folders or image-list files)")
        out = []
        for entry in entries:
            where = Path(os.path.expanduser(entry))
            where = Path(os.path.abspath(where if where.is_absolute() else base / where))
            if not _inside(where, (base, folder)):
                raise DataLoadError(f"the '{key}' entry {entry[:80]!r} of {path.name} lies outside its dataset folder "
                                    f"{base}: put the images under it (or under the yaml's folder)")
            if not _is(where, "any"):
                raise DataLoadError(f"the '{key}' images of {path.name} are not at {where}: Compression Lab never "
                                    "downloads datasets; put the images there or fix the yaml")
            try:
                found = image_files(where)
            except OSError as exc:
                raise DataLoadError(f"the '{key}' images of {path.name} at {where} cannot be read "
                                    f"({exc.strerror or type(exc).__name__}): check the folder") from None
            if not found:
                raise DataLoadError(f"the '{key}' split of {path.name} ({where}) holds no images")
            out.append(where)
        return out

    checked = {"path": str(base), **{key: [str(p) for p in paths] for key, required in
                                     (("train", False), ("val", True), ("test", False))
                                     if (paths := split(key, required))},
               "names": names, "nc": len(names)}
    return checked


def load_detection_data(ref: str) -> DetectionData:
    """Resolve `shapes` or `yolo:FILE.yaml` into a DetectionData (see the module docstring)."""
    kind, _, arg = ref.partition(":")
    if kind == "shapes":
        yaml_path = shapes_dataset(Path(arg) if arg else None)
    elif kind == "yolo":
        if not arg:
            raise DataLoadError("dataset reference 'yolo:' has no yaml: write yolo:PATH/data.yaml")
        yaml_path = Path(os.path.expanduser(arg))
    else:
        raise DataLoadError(f"unknown detection dataset {ref!r}: use 'shapes' (the demo) or 'yolo:PATH/data.yaml'")
    checked = check_dataset_yaml(yaml_path)
    train = tuple(Path(p) for p in checked.get("train", ()))
    val = tuple(Path(p) for p in checked["val"])
    return DetectionData(ref if kind == "yolo" else "shapes", yaml_path, train[0] if train else None, val[0],
                         checked["names"], train_paths=train, val_paths=val,
                         test_paths=tuple(Path(p) for p in checked.get("test", ())))
