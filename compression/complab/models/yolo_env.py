"""Keep Ultralytics offline: no weights, fonts, datasets, AMP checks or telemetry are ever fetched.

Call `offline_ultralytics()` before importing ultralytics anywhere. It points Ultralytics' settings
folder at a folder of ours (YOLO_CONFIG_DIR), sets YOLO_OFFLINE, turns settings sync off and places
a local font (matplotlib's DejaVu Sans) where Ultralytics looks for Arial, so plotting never downloads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from complab.paths import ultralytics_config_dir

_DONE = False


def config_dir() -> Path:
    return ultralytics_config_dir()


def offline_ultralytics() -> None:
    """Configure the environment; idempotent. Must run before `import ultralytics`."""
    global _DONE
    if _DONE:
        return
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(folder)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = folder / "Ultralytics" / name
        for place in (folder / name, target):
            if not place.exists() and font.exists():
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(font, place)
    # Ultralytics replaces PIL.Image.open, process-wide, with one that answers a file Pillow cannot identify by
    # installing pi-heif (pip, over the network) and raising ModuleNotFoundError: every image folder loaded after a
    # detector (a corrupt .png, /dev/zero) got a traceback instead of "not a readable image". Pillow's own back.
    from PIL import Image
    from ultralytics.utils import SETTINGS, patches

    if getattr(Image.open, "__module__", "") == patches.__name__:
        Image.open = patches._image_open
    SETTINGS.update({key: False for key in ("sync", "hub", "wandb", "mlflow", "comet", "clearml", "dvc", "neptune",
                                            "raytune", "tensorboard", "platform") if key in SETTINGS})
    _DONE = True


@contextlib.contextmanager
def quiet_ultralytics():
    """Ultralytics' logger at WARNING inside the block (its dataset scans and validators print per call)."""
    offline_ultralytics()
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel("WARNING")
    try:
        yield
    finally:
        LOGGER.setLevel(level)
