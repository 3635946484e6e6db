"""The demo detector through the compact format, the trust refusal, and head layers kept out of compression."""

import pickle

import pytest
import torch

from compression.errors import ModelLoadError
from compression.methods.cluster import quantized
from compression.methods.prune import magnitude_mask
from compression.models.detector import load_detector, load_detector_file, save_detector


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def test_demo_detector_loads_and_skips_head_predictions(detector):
    layers = detector.prunable_layers()
    skipped = detector.skipped_layers()
    assert detector.names == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    assert detector.imgsz == 160
    assert "model.0.conv" in layers
    assert any(s.endswith("dfl.conv") for s in skipped) and any(s.endswith("cv3.0.2") for s in skipped)
    assert not set(layers) & set(skipped)


@torch.no_grad()
def test_compressed_detector_round_trip_gives_identical_outputs(detector, tmp_path):
    work = detector.clone()
    for weight in work.prunable_layers().values():
        pruned = weight * magnitude_mask(weight, 0.6)
        weight.copy_(quantized(pruned, 16, "linear", 0))
    size = save_detector(work, tmp_path / "det.clab")
    fp32 = sum(v.numel() * 4 for v in detector.model.state_dict().values())
    assert size < fp32 / 5
    decoded = load_detector_file(tmp_path / "det.clab")
    x = torch.rand(2, 3, 160, 160)
    expected, got = work.model(x), decoded.model(x)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    got = got[0] if isinstance(got, (tuple, list)) else got
    assert torch.equal(expected, got)


def test_untrusted_checkpoint_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "yolo.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ModelLoadError, match="pickle that can run code.*--trust"):
        load_detector(path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_detector(tmp_path / "missing.pt", trust=True)
