"""Detector fine-tuning's pieces (methods/detect_train.py): the weight average on parametrized models, the
optimizer's parameter groups, and the plan options that set them."""

from __future__ import annotations

import pytest
import torch
from complab.errors import PlanError
from complab.methods.cluster import SharedValues
from complab.methods.detect_train import ModelEMA, _param_groups
from complab.methods.prune import apply_masks
from complab.plan import Plan
from torch import nn
from torch.nn.utils import parametrize


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_ema_averages_parameters_and_statistics_and_keeps_pruned_zeros():
    model = tiny()
    mask = (torch.rand_like(model[0].weight) > 0.5).float()
    apply_masks(model, {"0": mask})
    ema = ModelEMA(model, decay=0.75, tau=0.0)
    original = model[0].parametrizations.weight.original
    start = original.detach().clone()
    start_mean = model[1].running_mean.clone()
    with torch.no_grad():
        original.add_(1.0)  # a "training step" moves every trained tensor, masked positions included
        model[1].running_mean.add_(4.0)
    ema.update()
    assert torch.allclose(ema.shadow["0.parametrizations.weight.original"], 0.75 * start + 0.25 * (start + 1))
    assert torch.allclose(ema.shadow["1.running_mean"], start_mean + 1.0)
    ema.copy_to()
    assert torch.allclose(original, start + 0.25)
    assert torch.allclose(model[1].running_mean, start_mean + 1.0)
    assert torch.equal(model[0].parametrizations.weight[0].mask, mask)  # the mask is not averaged
    assert bool((model[0].weight[mask == 0] == 0).all())  # pruned weights stay exactly zero
    assert bool((model[0].weight[mask == 1] != 0).all())


def test_ema_ramp_follows_ultralytics_and_shared_values_keep_their_labels():
    model = tiny()
    labels = torch.randint(0, 3, model[3].weight.shape)
    parametrize.register_parametrization(model[3], "weight", SharedValues(labels, torch.tensor([-1.0, 0.5, 2.0])),
                                         unsafe=True)
    ema = ModelEMA(model, decay=0.9999, tau=2000.0)
    assert "3.parametrizations.weight.original" in ema.shadow  # the centroids are what trains
    assert not any("labels" in name or "mask" in name for name in ema.shadow)
    with torch.no_grad():
        model[3].parametrizations.weight.original.mul_(2)
    ema.update()
    rate = 0.9999 * (1 - torch.exp(torch.tensor(-1 / 2000.0))).item()
    expected = torch.tensor([-1.0, 0.5, 2.0]) * (rate + 2 * (1 - rate))
    assert torch.allclose(ema.shadow["3.parametrizations.weight.original"], expected)
    ema.copy_to()
    assert torch.equal(model[3].parametrizations.weight[0].labels, labels)
    assert set(torch.unique(model[3].weight).tolist()) <= set(expected.tolist())


def test_param_groups_decay_conv_weights_only_each_parameter_once():
    model = tiny()
    apply_masks(model, {"0": torch.ones_like(model[0].weight)})
    decay, no_decay = _param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for p in decay["params"]] + [id(p) for p in no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in decay["params"]} == {id(model[0].parametrizations.weight.original),
                                                 id(model[3].weight)}
    torch.optim.AdamW([decay, no_decay])  # a valid optimizer


@pytest.mark.parametrize("step", [{"type": "prune", "sparsity": 0.5, "ema": 1.0},
                                  {"type": "prune", "sparsity": 0.5, "ema": -0.1},
                                  {"type": "channels", "keep_ratio": 0.5, "ema": 2}])
def test_plan_refuses_an_ema_out_of_range(step):
    with pytest.raises(PlanError, match="ema"):
        Plan.from_dict({"schema_version": 1, "steps": [step]})


def test_plan_keeps_its_ema():
    plan = Plan.from_dict({"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.5, "ema": 0.998}]})
    assert plan.steps[0].ema == 0.998
    assert Plan.from_json(plan.to_json()).steps[0].ema == 0.998


def test_cwd_loss_is_zero_for_identical_maps_positive_otherwise_and_trains_the_adapter():
    from complab.methods.detect_distill import Adapters, cwd_loss

    torch.manual_seed(0)
    teacher = [torch.randn(2, 8, 5, 5), torch.randn(2, 16, 3, 3)]
    assert float(cwd_loss(teacher, [t.clone() for t in teacher], 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = [torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(2, 16, 3, 3, requires_grad=True)]
    adapters = Adapters(student, teacher)
    assert adapters.learned == 1  # 4 -> 8 channels learned; the 16-channel level compared as it is
    loss = cwd_loss(adapters(student), teacher, 1.0)
    assert float(loss) > 0
    loss.backward()
    assert all(s.grad is not None and float(s.grad.abs().sum()) > 0 for s in student)
    assert float(adapters.maps[0].weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="adapter"):
        cwd_loss(student, teacher)


def test_neck_features_capture_the_detect_inputs():
    from complab.methods.detect_distill import NeckFeatures

    class Head(nn.Module):
        def forward(self, maps):
            return sum(m.mean() for m in maps)

    class Yolo(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.ModuleList([nn.Conv2d(3, 4, 1), Head()])

        def forward(self, x):
            y = self.model[0](x)
            return self.model[1]([y, y[:, :, ::2, ::2]])

    model = Yolo()
    features = NeckFeatures(model)
    model(torch.rand(1, 3, 8, 8))
    assert [tuple(m.shape) for m in features.maps] == [(1, 4, 8, 8), (1, 4, 4, 4)]
    features.remove()
    features.maps = []
    model(torch.rand(1, 3, 8, 8))
    assert features.maps == []


@pytest.mark.parametrize("settings", [{"features": -1.0}, {"feature_temperature": 0.0}])
def test_plan_refuses_bad_feature_distillation(settings):
    with pytest.raises(PlanError, match="feature"):
        Plan.from_dict({"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.5},
                                                        {"type": "distill", **settings}]})


def test_classifier_refuses_feature_distillation():
    from complab.methods.task import ClassifierTask

    with pytest.raises(PlanError, match="classifier"):
        ClassifierTask(None).distil_from(tiny(), 2.0, 0.5, features=1.0)


@pytest.mark.slow
def test_channel_wise_distillation_trains_a_narrower_detector_and_leaves_no_adapter():
    """One epoch of the demo detector with its neck's last C2f narrowed (so an adapter is needed) distilling from
    the original: the loss is finite, the model keeps its own modules and state only, and no hook is left."""
    from complab.data.detection import load_detection_data
    from complab.methods.channels.detector import head_outputs
    from complab.methods.channels.graph import build_graph, channel_groups, remove_channels
    from complab.methods.detect_distill import NeckFeatures
    from complab.methods.detect_train import train_detector
    from complab.models.detector import load_detector
    from complab.models.yolo_prunable import make_prunable

    def neck_widths(model) -> list[int]:
        features = NeckFeatures(model)
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, handle.imgsz, handle.imgsz))
        features.remove()
        return [m.shape[1] for m in features.maps]

    handle = load_detector()
    student = handle.clone().model
    make_prunable(student)
    graph = build_graph(student, handle.input_shape)
    groups = channel_groups(student, handle.input_shape, graph, ignored=tuple(head_outputs(student)))
    group = next(g for g in groups if g.name == "model.21.cv2.conv")
    widths = neck_widths(student)
    keep = torch.zeros(widths[2], dtype=torch.bool)
    keep[::2] = True
    remove_channels(student, graph, group, keep)
    narrowed = neck_widths(student)
    assert narrowed[2] == widths[2] // 2 and narrowed[:2] == widths[:2]
    keys = set(student.state_dict())
    losses = train_detector(student, load_detection_data("shapes"), handle.imgsz, epochs=1, lr=1e-3, seed=0,
                            teacher=handle.model, alpha=0.3, features=2.0, ema=0.0)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses[0]))
    assert set(student.state_dict()) == keys
    assert not student.model[-1]._forward_pre_hooks
