"""What keeps a compressed detector as fast as its FLOPs say: no hook left on Ultralytics' shared activation, a decoded
model with its own in-place activations, contiguous weights after channel removal, kept channels rounded for
detectors, and latency timed on the fused model at the model's own image size."""

import copy

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def detector():
    from complab.models.detector import load_detector

    return load_detector()


def _hooks(module: nn.Module) -> int:
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


def test_the_meta_count_leaves_no_hook_on_the_shared_activation():
    """count_parameters hooked every layer it built, Ultralytics' one shared Conv.default_act included, and never
    removed the hooks: each decoded file added one more to every Conv of every detector built afterwards."""
    from complab.errors import ModelLoadError
    from complab.models.detector import load_detector  # noqa: F401  (offline Ultralytics first)
    from complab.models.yolo_arch import check_yaml, count_parameters
    from ultralytics.nn.modules.conv import Conv

    spec = check_yaml({"nc": 4, "scale": "n", "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "C2f", [16, True]]],
                       "head": [[[1], 1, "Detect", ["nc"]]]})
    before = _hooks(Conv.default_act)
    for _ in range(3):
        assert count_parameters(spec, 3, 4) > 0
    crafted = copy.deepcopy(spec)
    crafted["backbone"][1] = [-1, 1, "C3TR", [16, 3, 2]]
    crafted["backbone"].insert(1, [-1, 1, "nn.Upsample", [None, 64, "nearest"]])
    crafted = check_yaml(crafted)
    with pytest.raises(ModelLoadError, match="after layer"):  # refused half-way through: hooks removed all the same
        count_parameters(crafted, 3, 4)
    assert _hooks(Conv.default_act) == before


@torch.no_grad()
def test_a_decoded_detector_has_its_own_in_place_activations_and_the_same_boxes(detector, tmp_path):
    from complab.models.detector import load_detector_file, save_detector
    from ultralytics.nn.modules.conv import Conv

    save_detector(detector, tmp_path / "det.clab")
    decoded = load_detector_file(tmp_path / "det.clab").model
    acts = [m.act for m in decoded.modules() if isinstance(m, Conv)]
    assert acts and all(isinstance(a, nn.SiLU) and a.inplace and _hooks(a) == 0 for a in acts)
    assert len({id(a) for a in acts}) == len(acts)  # none shared (a hook on one stays on that layer)
    assert all(a is not Conv.default_act for a in acts) and not Conv.default_act.inplace
    x = torch.rand(1, 3, 160, 160)
    assert torch.equal(detector.model(x)[0], decoded(x)[0])


def test_channel_removal_leaves_contiguous_weights(detector):
    """Torch-Pruning slices weights with index_select on dim 1 for a consumer's inputs; every weight and bias the
    pruned model holds must be contiguous (a strided weight makes the convolution copy it on every call)."""
    from complab.methods.channels.detector import prune_detector

    model = detector.clone().model
    prune_detector(model, 0.5, (3, 64, 64))
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert tensors and all(t.is_contiguous() for t in tensors.values()), [
        n for n, t in tensors.items() if not t.is_contiguous()]


def test_detectors_round_kept_channels_to_16_by_default(detector):
    """prune_detector and the Plan page (handle.kind.channel_round_to) round a detector's kept channels to a multiple
    of 16 (benchmarks/detector_channels.py round_to_effect: it pays on this CPU); a classifier's page starts off."""
    from complab.methods.channels.detector import prune_detector
    from complab.models.handle import CLASSIFY

    assert detector.kind.channel_round_to == 16 and CLASSIFY.channel_round_to == 1
    rounded = prune_detector(detector.clone().model, 0.3, (3, 64, 64))
    plain = prune_detector(detector.clone().model, 0.3, (3, 64, 64), round_to=1)
    wide = {name: row for name, row in rounded.layers.items() if row["channels"] > 16}
    assert wide and all(row["kept"] % 16 == 0 for row in wide.values())
    assert any(plain.layers[name]["kept"] % 16 for name in wide)  # unrounded, 0.3 of 32, 64... are not


@torch.no_grad()
def test_a_detector_is_timed_as_deployed(detector):
    """handle.measure times the fused copy (batch norm folded, no gradients) at the model's own image size, for the
    original as for the compressed file, which the fold_bn step already fused."""
    timed = detector.deployed_model()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in timed.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in detector.model.modules())  # the handle's model is untouched
    assert not any(p.requires_grad for p in timed.parameters())
    x = torch.rand(1, *detector.input_shape)
    assert detector.input_shape == (3, detector.imgsz, detector.imgsz) == (3, 160, 160)
    assert torch.allclose(detector.model.eval()(x)[0], timed(x)[0], atol=1e-3)


def test_a_run_times_both_models_paired_as_deployed(tmp_path, monkeypatch):
    """compress re-times the original and the decoded model together (interleaved) on their deployed_model(), at
    the handle's own input shape: measured minutes apart, the two figures saw different loads."""
    from complab import metrics, pipeline
    from complab.data import load_data
    from complab.models.handle import load_model
    from complab.plan import Plan

    calls = []
    timed = metrics.cpu_latencies_ms

    def record(models, input_shape, *args, **kwargs):
        calls.append((len(models), tuple(input_shape)))
        return timed(models, input_shape, *args, **kwargs)

    monkeypatch.setattr(metrics, "cpu_latencies_ms", record)
    handle = load_model("demo:lenet300")
    plan = Plan.from_dict({"schema_version": 1, "name": "p", "steps": [
        {"type": "prune", "sparsity": {"_default": 0.5}, "finetune_epochs": 0}]})
    result = pipeline.compress(handle, plan, load_data("digits"), tmp_path / "run")
    assert (2, tuple(handle.input_shape)) in calls  # the pair, besides the original's own measurement
    assert result.metrics["before"]["latency_ms"] > 0 and result.metrics["after"]["latency_ms"] > 0
