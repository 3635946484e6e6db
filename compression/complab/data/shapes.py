"""A synthetic detection dataset the project generates itself: coloured shapes on cluttered backgrounds.

Seeded and deterministic per image (image i of a split is drawn from seed + split offset + i), written
in YOLO format (images/{train,val}/*.png, labels/{train,val}/*.txt, data.yaml). The settings live in
`ShapesConfig`; assets/detector_card.json records the ones the demo detector was trained with.

    python -m complab.data.shapes OUT_DIR [--train 800 --val 200]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ShapesConfig:
    image_size: int = 160  # square images, pixels
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 18  # object side, pixels
    max_size: int = 48
    clutter_lines: int = 12  # thin random lines per image
    clutter_blobs: int = 6  # small dull ellipses per image (distractors, not labelled)
    seed: int = 0


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour noise: a few random low-resolution fields upsampled."""
    low = rng.integers(40, 200, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(low, "RGB").resize((size, size), Image.BICUBIC)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    hue = rng.uniform(0, 1)
    r, g, b = (0.5 + 0.5 * math.cos(2 * math.pi * (hue + shift)) for shift in (0, 1 / 3, 2 / 3))
    return int(255 * r), int(255 * g), int(255 * b)


def draw_image(index: int, split: str, config: ShapesConfig) -> tuple[Image.Image, list[tuple[int, float, float,
                                                                                           float, float]]]:
    """Image `index` of `split` and its labels [(class, cx, cy, w, h) normalised]."""
    offset = {"train": 0, "val": 1_000_000, "test": 2_000_000}[split]
    rng = np.random.default_rng(config.seed + offset + index)
    size = config.image_size
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    for _ in range(config.clutter_lines):
        points = [tuple(rng.integers(0, size, 2).tolist()) for _ in range(2)]
        draw.line(points, fill=tuple(rng.integers(60, 180, 3).tolist()), width=int(rng.integers(1, 3)))
    for _ in range(config.clutter_blobs):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(3, 8))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.integers(70, 170, 3).tolist()))
    labels, boxes = [], []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.integers(config.min_size, config.max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in boxes):
                break
        else:
            continue
        boxes.append(box)
        cls = int(rng.integers(0, len(CLASSES)))
        colour = _colour(rng)
        x0, y0, x1, y1 = box
        if CLASSES[cls] == "circle":
            draw.ellipse(box, fill=colour)
        elif CLASSES[cls] == "square":
            draw.rectangle(box, fill=colour)
        elif CLASSES[cls] == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
        else:
            bar = max(3, side // 4)
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle([x0, cy - bar, x1, cy + bar], fill=colour)
            draw.rectangle([cx - bar, y0, cx + bar, y1], fill=colour)
        labels.append((cls, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size))
    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, labels


def write_dataset(out: Path, train: int = 800, val: int = 200, config: ShapesConfig = ShapesConfig()) -> Path:
    """Write the dataset in YOLO format; returns the data.yaml path. Skips images already there."""
    out = Path(out)
    for split, count in (("train", train), ("val", val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image_path = out / "images" / split / f"{index:05d}.png"
            if image_path.exists():
                continue
            image, labels = draw_image(index, split, config)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            # label first, each file whole under its name (two processes may generate the same set at once): an
            # image that exists is complete and has its label
            _write_whole(out / "labels" / split / f"{index:05d}.txt",
                         ("\n".join(lines) + ("\n" if lines else "")).encode())
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            _write_whole(image_path, buffer.getvalue())
    yaml = out / "data.yaml"
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(CLASSES))
    _write_whole(out / "generator.json", json.dumps({"train": train, "val": val, **asdict(config)}, indent=2).encode())
    _write_whole(yaml, f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n".encode())
    return yaml


def _write_whole(path: Path, data: bytes) -> None:
    """Write `data` under a temporary name, then rename: a reader sees the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--val", type=int, default=200)
    args = parser.parse_args(argv)
    print(write_dataset(args.out, args.train, args.val))


if __name__ == "__main__":
    main()
