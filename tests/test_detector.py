"""The demo detector through the compact format, the trust refusal, and head layers kept out of compression."""

import pickle

import pytest
import torch
from complab.errors import ModelLoadError
from complab.methods.cluster import quantized
from complab.methods.prune import magnitude_mask
from complab.models.detector import load_detector, load_detector_file, save_detector


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


@pytest.mark.slow  # mAP twice (36 s at load 10); the quick loop keeps the round trip's identical outputs
def test_map_of_decoded_file_equals_in_memory(detector, tmp_path):
    from complab.data.shapes import write_dataset
    from complab.models.detector import evaluate_detector

    yaml = write_dataset(tmp_path / "shapes", train=0, val=40)
    work = detector.clone()
    with torch.no_grad():
        for weight in work.prunable_layers().values():
            weight.copy_(quantized(weight * magnitude_mask(weight, 0.3), 64, "linear", 0))
    save_detector(work, tmp_path / "det.clab")
    decoded = load_detector_file(tmp_path / "det.clab")
    original = evaluate_detector(detector, yaml, workdir=tmp_path)
    in_memory = evaluate_detector(work, yaml, workdir=tmp_path)
    from_file = evaluate_detector(decoded, yaml, workdir=tmp_path)
    assert from_file == in_memory
    assert original["map50"] > 0.9 and from_file["map50"] > 0.5
    assert sum(p.numel() for p in work.model.parameters()) == sum(p.numel() for p in detector.model.parameters())
