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
