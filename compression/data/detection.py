"""Detection datasets: the built-in synthetic shapes (generated on first use) or a local YOLO dataset yaml.

`load_detection_data(ref)`:
  shapes          the demo detector's data: compression.data.shapes with the settings recorded in
                  assets/detector_card.json (seeded, so the same images the detector was trained on),
                  written once under the engine's data folder ($COMPRESSION_LAB_HOME/data/shapes, or
                  $COMPRESSION_LAB_DATA/shapes)
  yolo:FILE.yaml  a YOLO dataset yaml whose `train` and `val` point at local image folders or lists

Nothing is downloaded: a yaml whose folders are missing is refused with the path to fix, before
Ultralytics could try to fetch it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from compression.errors import DataLoadError, first_line
from compression.paths import ASSETS, data_home

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class DetectionData:
    """A YOLO-format dataset: the yaml Ultralytics reads, and the resolved image folders."""

    ref: str
    yaml_path: Path
    train: Path | None
    val: Path
    names: dict[int, str] = field(default_factory=dict)
    shift_pixels: int = 0  # (classifier fine-tuning augmentation; Ultralytics' trainer augments its own way)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def val_images(self, limit: int | None = None) -> list[Path]:
        return _images(self.val)[:limit]

    def val_subset(self, size: int | None, seed: int = 0) -> list[Path]:
        """A seeded sample of `size` validation images, in file order (all of them when None or larger)."""
        import random

        images = self.val_images()
        if size is not None and size < len(images):
            images = sorted(random.Random(seed).sample(images, size))
        return images


def _images(path: Path) -> list[Path]:
    if path.is_file():  # an image-list file
        base = path.parent
        out = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                p = Path(line)
                out.append(p if p.is_absolute() else base / p)
        return out
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def shapes_dataset(folder: Path | None = None) -> Path:
    """Write (once) the demo detector's synthetic dataset; returns its data.yaml."""
    from compression.data.shapes import ShapesConfig, write_dataset

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
        raise DataLoadError(f"cannot write the demo detection dataset to {folder} ({exc.strerror}): free some disk "
                            "space or set COMPRESSION_LAB_HOME to a writable folder") from None


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataLoadError(f"cannot read dataset yaml {path} ({first_line(exc)}): "
                            "it must be a YOLO data yaml with train, val and names") from None
    if not isinstance(data, dict):
        raise DataLoadError(f"dataset yaml {path} is not a mapping: it must hold train, val and names")
    return data


def load_detection_data(ref: str) -> DetectionData:
    """Resolve `shapes` or `yolo:FILE.yaml` into a DetectionData (see the module docstring)."""
    kind, _, arg = ref.partition(":")
    if kind == "shapes":
        yaml_path = shapes_dataset(Path(arg) if arg else None)
    elif kind == "yolo":
        if not arg:
            raise DataLoadError("dataset reference 'yolo:' has no yaml: write yolo:PATH/data.yaml")
        yaml_path = Path(arg).expanduser()
        if not yaml_path.is_file():
            raise DataLoadError(f"dataset yaml {yaml_path} does not exist: check the path after 'yolo:'")
    else:
        raise DataLoadError(f"unknown detection dataset {ref!r}: use 'shapes' (the demo) or 'yolo:PATH/data.yaml'")
    data = _read_yaml(yaml_path)
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DataLoadError(f"dataset yaml {yaml_path} has no 'names': list the class names")
    base = Path(os.path.expanduser(str(data.get("path") or yaml_path.parent)))
    if not base.is_absolute():
        base = yaml_path.parent / base

    def split(key: str, required: bool) -> Path | None:
        value = data.get(key)
        if not value:
            if required:
                raise DataLoadError(f"dataset yaml {yaml_path} has no '{key}' split: add '{key}: images/{key}'")
            return None
        if isinstance(value, list):
            value = value[0]
        path = Path(os.path.expanduser(str(value)))
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise DataLoadError(f"the '{key}' images of {yaml_path.name} are not at {path}: Compression Lab never "
                                "downloads datasets; put the images there or fix the yaml")
        if not _images(path):
            raise DataLoadError(f"the '{key}' split of {yaml_path.name} ({path}) holds no images")
        return path

    return DetectionData(ref if kind == "yolo" else "shapes", yaml_path, split("train", False), split("val", True),
                         {int(k): str(v) for k, v in names.items()})
