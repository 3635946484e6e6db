"""Ultralytics' data pieces the detector code shares: its configuration and a letterboxed image dataset.

One letterboxed dataset (Ultralytics' validation mode: resized and padded to imgsz, no augmentation)
serves the detection metric (models/detection_metric.py) and the batch-norm batches of detector
fine-tuning (methods/detect_train.py), so both see the images a detector sees at inference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from complab.data.detection import DetectionData
from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics


def yolo_cfg(imgsz: int, **overrides):
    """Ultralytics' default configuration at `imgsz` for short fine-tuning and validation runs."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    # mosaic=0: short fine-tuning runs on whole images, like Ultralytics' last (close_mosaic) epochs
    return get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "mosaic": 0.0, "mixup": 0.0, "copy_paste": 0.0,
                                 "plots": False, "verbose": False, **overrides})


def letterboxed(data: DetectionData, images: list[Path], imgsz: int, batch: int):
    """Ultralytics' dataset over `images`, letterboxed to imgsz with no augmentation (its validation mode)."""
    offline_ultralytics()
    from ultralytics.data import build_yolo_dataset

    with tempfile.TemporaryDirectory(prefix="images-") as folder, quiet_ultralytics():
        listing = Path(folder) / "images.txt"  # Ultralytics reads image-list files; the paths inside are absolute
        listing.write_text("\n".join(str(p.resolve()) for p in images) + "\n")
        return build_yolo_dataset(yolo_cfg(imgsz, rect=False), str(listing), batch,
                                  {"names": data.names, "nc": data.num_classes, "channels": 3}, mode="val",
                                  rect=False, stride=32)
