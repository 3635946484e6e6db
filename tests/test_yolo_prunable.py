"""C2f made prunable: the demo detector and an untrained YOLOv8n give identical outputs after make_prunable."""

import pytest
import torch

from compression.models.detector import load_detector
from compression.models.yolo_prunable import C2fV2, make_prunable


def _yolov8n(nc: int = 4):
    from compression.models.yolo_env import offline_ultralytics, quiet_ultralytics

    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet_ultralytics():  # the yaml ships inside the ultralytics package: nothing is downloaded
        return DetectionModel("yolov8n.yaml", nc=nc, verbose=False).float().eval()


def _first(output):
    return output[0] if isinstance(output, tuple | list) else output


@pytest.mark.parametrize("source", ["demo", "yolov8n"])
@torch.no_grad()
def test_make_prunable_keeps_outputs(source):
    torch.manual_seed(0)
    model = load_detector().model if source == "demo" else _yolov8n()
    if source == "yolov8n":  # an untrained model's batch norms hold trivial statistics: give them real ones
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(1, 3, 160, 160)
    before = _first(model(x))
    replaced = make_prunable(model)
    assert replaced and all(isinstance(model.get_submodule(name), C2fV2) for name in replaced)
    assert not any(type(m).__name__ == "C2f" for m in model.modules())
    first = model.get_submodule(replaced[0])
    assert (first.i, first.f) == (int(replaced[0].split(".")[-1]), -1)
    after = _first(model(x))
    assert after.shape == before.shape
    assert torch.allclose(before, after, atol=1e-5)
