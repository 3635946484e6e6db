"""Ultralytics must never reach for the network: load, predict, validate and fine-tune (our loop on its data
pipeline and loss) the demo detector with every socket connection outside loopback refused, and fail if
anything even tried."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r'''
import socket, sys
attempts = []
real_connect = socket.socket.connect
def guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if host not in ("127.0.0.1", "::1", "localhost"):
        attempts.append(host)
        raise OSError("network blocked by the test")
    return real_connect(self, address)
socket.socket.connect = guarded_connect
real_getaddrinfo = socket.getaddrinfo
def guarded_getaddrinfo(host, *args, **kwargs):
    if host not in ("127.0.0.1", "::1", "localhost", None):
        attempts.append(host)
        raise socket.gaierror("name resolution blocked by the test")
    return real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = guarded_getaddrinfo

from pathlib import Path
from complab.models.yolo_env import offline_ultralytics
offline_ultralytics()
from ultralytics import YOLO
from complab.data.shapes import draw_image, write_dataset, ShapesConfig

work = Path(sys.argv[1])
model = YOLO(str(Path(sys.argv[2]) / "detector.pt"))
image, labels = draw_image(0, "val", ShapesConfig())
result = model.predict(image, imgsz=160, device="cpu", verbose=False)[0]
yaml = write_dataset(work / "shapes", train=2, val=4)
metrics = model.val(data=str(yaml), imgsz=160, batch=4, device="cpu", plots=False, verbose=False,
                    project=str(work / "runs"), name="val", exist_ok=True)
from complab.data.detection import load_detection_data
from complab.methods.detect_train import train_detector
from complab.models.detection_metric import FastMap
from complab.models.detector import fuse, load_detector
handle = load_detector()
fuse(handle.model)
data = load_detection_data(f"yolo:{yaml}")
train_detector(handle.model, data, 160, epochs=1, lr=1e-5, seed=0, batch=2)  # our fine-tuning loop
print("FAST", FastMap(data, 160)(handle.model)["map50"])
print("BOXES", len(result.boxes), "LABELS", len(labels), "MAP50", round(float(metrics.box.map50), 3))
print("ATTEMPTS", attempts)
'''


@pytest.mark.timeout(300)
def test_ultralytics_never_touches_the_network(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COMPRESSION_LAB_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(ROOT / "assets")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("BOXES", "ATTEMPTS")))
    assert lines["ATTEMPTS"] == "[]", lines["ATTEMPTS"]
    boxes = proc.stdout.split("BOXES ")[1].split()
    assert int(boxes[0]) >= 1  # the demo detector finds the shapes in a generated image
    assert float(proc.stdout.split("MAP50 ")[1].split()[0]) > 0.5
    assert not (tmp_path / ".config" / "Ultralytics").exists()  # settings stay in our own folder
