"""Channel pruning across Ultralytics detector families built offline from their yaml (random weights).

Families whose blocks the dependency graph follows prune end to end: the pruned model runs, keeps its prediction
shapes and its compact file decodes to the same outputs. A family with a block it cannot follow (attention heads
or an ELAN chunk split by stored counts) is refused before anything changes, with the block named.
"""

import pytest
import torch
from complab.errors import PlanError

SIZE = 160  # the graph and the outputs do not need a full-size image


def _build(name: str, nc: int = 4) -> torch.nn.Module:
    from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics

    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel

    kind = RTDETRDetectionModel if name.startswith("rtdetr") else DetectionModel
    with quiet_ultralytics():  # the yaml ships inside the ultralytics package: nothing is downloaded
        return kind(f"{name}.yaml", nc=nc, verbose=False).float().eval()


@pytest.mark.parametrize("family", ["yolov8n", "yolov5nu"])
@torch.no_grad()
def test_supported_family_prunes_and_its_file_decodes_to_the_same_outputs(family, tmp_path):
    from complab.methods.channels.detector import prune_detector
    from complab.models.compact import Products
    from complab.models.detector import DetectorHandle, load_detector_file

    torch.manual_seed(0)
    model = _build(family)
    x = torch.rand(2, 3, SIZE, SIZE)
    before = model(x)[0]
    params = sum(p.numel() for p in model.parameters())
    handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)}, SIZE,
                            family)
    result = prune_detector(model, 0.5, handle.input_shape)
    after = model(x)[0]
    assert after.shape == before.shape
    assert sum(p.numel() for p in model.parameters()) < 0.35 * params
    handle.save(tmp_path / "pruned.clab", products=Products(channel_history=result.history,
                                                           c2f_replaced=result.replaced))
    decoded = load_detector_file(tmp_path / "pruned.clab")
    assert torch.allclose(decoded.model(x)[0], after, atol=1e-5)


@pytest.mark.parametrize(("family", "block", "where"), [
    ("yolo11n", "Attention", "model.10.m.0.attn"),  # inside C2PSA
    ("yolov10n", "Attention", "model.10.attn"),  # inside PSA
    ("yolov9t", "ELAN1", "model.2"),
    ("yolo12n", "AAttn", "model.6.m.0.0.attn"),  # inside A2C2f
    ("rtdetr-l", "HGStem", "model.0"),
])
def test_unsupported_family_is_refused_naming_the_block_before_any_change(family, block, where):
    from complab.methods.channels.detector import prune_detector

    model = _build(family)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(PlanError, match=rf"YOLO block {block} \({where}\) cannot be channel-pruned yet.*"
                                        "supported blocks: Conv, C2f, C3k2.*use the prune and cluster steps"):
        prune_detector(model, 0.5, (3, SIZE, SIZE))
    assert not any(type(m).__name__ == "C2fV2" for m in model.modules())  # nothing was replaced
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())


def test_channels_step_refuses_an_unsupported_detector_by_name():
    from complab.methods import channels
    from complab.methods.context import StepContext
    from complab.methods.tasks import task_for
    from complab.models.detector import DetectorHandle
    from complab.plan import ChannelStep

    model = _build("yolo11n")
    handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)}, SIZE,
                            "yolo11n")
    ctx = StepContext(data=None, layers=list(handle.prunable_layers()), task=task_for(handle, None))
    with pytest.raises(PlanError, match=r"YOLO block Attention \(model\.10\.m\.0\.attn\)"):
        channels.run(model, ChannelStep(keep_ratio={"_default": 0.5}, selection="l1"), ctx)


@pytest.mark.parametrize(("family", "subclass"), [("yolo11n", "C3k2"), ("yolov10n", "C2fCIB")])
@torch.no_grad()
def test_make_prunable_replaces_c2f_subclasses_with_the_same_outputs(family, subclass):
    from complab.models.yolo_prunable import C2fV2, make_prunable

    torch.manual_seed(0)
    model = _build(family)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    names = [name for name, m in model.named_modules() if type(m).__name__ == subclass]
    x = torch.rand(1, 3, SIZE, SIZE)
    before = model(x)[0]
    replaced = make_prunable(model)
    assert names and set(names) <= set(replaced)
    assert all(isinstance(model.get_submodule(name), C2fV2) for name in names)
    assert torch.allclose(model(x)[0], before, atol=1e-4)


def test_plan_page_layout_refuses_an_unsupported_detector_at_once():
    # the plan page's channel section traces a detector as the step does (its cached_layout shows no section on
    # an error): YOLO11n's attention must be refused, not traced (that ran for minutes)
    from complab.analysis.channel_estimate import channel_layout

    with pytest.raises(PlanError, match=r"YOLO block Attention"):
        channel_layout(_build("yolo11n"), (3, SIZE, SIZE), "detect")
