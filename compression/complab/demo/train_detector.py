"""Train the built-in demo detector: a width-reduced YOLOv8n on the synthetic shapes dataset, from scratch, CPU.

    python -m complab.demo.train_detector [--epochs 40] [--out assets]

Writes assets/detector.pt (Ultralytics checkpoint, made by us: the demo loads it as trusted),
assets/detector.yaml (the architecture), assets/detector_card.json (mAP50, mAP50-95, params, FLOPs,
the generator's settings, the command). Ultralytics is kept offline throughout (yolo_env).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from complab.data.shapes import CLASSES, ShapesConfig, write_dataset
from complab.models.yolo_env import offline_ultralytics
from complab.paths import ASSETS

TRAIN_IMAGES, VAL_IMAGES = 800, 200
# YOLOv8n's layout at a quarter of its width (width 0.125 instead of 0.25): the shapes task is easy
# and CPU training must finish in minutes.
DETECTOR_YAML = """# Demo detector: YOLOv8n layout, width-reduced (Compression Lab)
nc: {nc}
scales:
  n: [0.33, 0.125, 1024]
backbone:
  - [-1, 1, Conv, [64, 3, 2]]
  - [-1, 1, Conv, [128, 3, 2]]
  - [-1, 3, C2f, [128, True]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [-1, 6, C2f, [256, True]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [-1, 6, C2f, [512, True]]
  - [-1, 1, Conv, [1024, 3, 2]]
  - [-1, 3, C2f, [1024, True]]
  - [-1, 1, SPPF, [1024, 5]]
head:
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 6], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, nn.Upsample, [None, 2, "nearest"]]
  - [[-1, 4], 1, Concat, [1]]
  - [-1, 3, C2f, [256]]
  - [-1, 1, Conv, [256, 3, 2]]
  - [[-1, 12], 1, Concat, [1]]
  - [-1, 3, C2f, [512]]
  - [-1, 1, Conv, [512, 3, 2]]
  - [[-1, 9], 1, Concat, [1]]
  - [-1, 3, C2f, [1024]]
  - [[15, 18, 21], 1, Detect, [nc]]
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    offline_ultralytics()
    from ultralytics import YOLO

    config = ShapesConfig(image_size=args.imgsz)
    work = Path(tempfile.mkdtemp(prefix="detector-"))
    data_yaml = write_dataset(work / "shapes", TRAIN_IMAGES, VAL_IMAGES, config)
    model_yaml = work / "detector_n.yaml"
    model_yaml.write_text(DETECTOR_YAML.format(nc=len(CLASSES)))
    model = YOLO(str(model_yaml), task="detect")
    start = time.time()
    model.train(data=str(data_yaml), imgsz=args.imgsz, epochs=args.epochs, batch=32, device="cpu", workers=2,
                seed=0, deterministic=True, amp=False, plots=False, project=str(work / "runs"), name="train",
                exist_ok=True, verbose=False, patience=100, close_mosaic=5)
    seconds = time.time() - start
    best = work / "runs" / "train" / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics = trained.val(data=str(data_yaml), imgsz=args.imgsz, batch=32, device="cpu", plots=False,
                          project=str(work / "runs"), name="val", exist_ok=True, verbose=False)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, args.out / "detector.pt")
    (args.out / "detector.yaml").write_text(model_yaml.read_text())
    info = trained.model
    params = sum(p.numel() for p in info.parameters())
    from complab import metrics as measure

    detector = info.float().eval()
    card = {
        "name": "shapes-yolov8n-w0.125",
        "command": f"python -m complab.demo.train_detector --epochs {args.epochs} --imgsz {args.imgsz}",
        "classes": list(CLASSES),
        "imgsz": args.imgsz,
        "epochs": args.epochs,
        "train_images": TRAIN_IMAGES,
        "val_images": VAL_IMAGES,
        "generator": {"train": TRAIN_IMAGES, "val": VAL_IMAGES, **config.__dict__},
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "precision": float(metrics.box.mp),
        "recall": float(metrics.box.mr),
        "params": params,
        "flops": measure.flops(detector, (3, args.imgsz, args.imgsz))["flops"],
        "fp32_bytes": measure.fp32_bytes(detector),
        "train_seconds": round(seconds, 1),
    }
    (args.out / "detector_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
