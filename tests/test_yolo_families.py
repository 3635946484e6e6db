"""Channel pruning across Ultralytics detector families built offline from their yaml (random weights).

Families whose blocks the dependency graph follows prune end to end: the pruned model runs, keeps its prediction
shapes and its compact file decodes to the same outputs. Attention (YOLO11's C2PSA, YOLOv10's PSA, YOLO12's A2C2f)
and the convolutions a block splits by a stored count keep their channels; the rest is pruned around them, and the
pruned model computes what the original computes with the removed channels silenced. A block the channels step
cannot prune (RT-DETR's, YOLOv9c's ADown) or has never seen is refused before anything changes, with the block named.
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


def _silenced(model: torch.nn.Module, history: list, shape: tuple[int, int, int]) -> torch.nn.Module:
    """A copy of the unpruned `model` with every channel a pruning record removes silenced (its batch norm's scale and
    shift zeroed: the channel outputs 0 after the activation): it must compute what the pruned model computes, which
    fails when the graph maps a removed channel to the wrong place (a split, a concatenation, an attention)."""
    import copy

    from complab.models.channel_replay import build_graph, torch_pruning
    from complab.models.yolo_prunable import make_prunable

    silenced = copy.deepcopy(model)
    make_prunable(silenced)
    graph = build_graph(silenced, shape)
    tp = torch_pruning()
    for name, out, idxs in history:
        assert out  # the detector's record removes output channels (their readers follow)
        for item in graph.get_pruning_group(silenced.get_submodule(name), tp.prune_conv_out_channels, list(idxs)):
            module = item.dep.target.module
            if isinstance(module, torch.nn.BatchNorm2d):
                index = torch.as_tensor([int(i) for i in item.idxs])
                module.weight.data[index] = 0.0
                module.bias.data[index] = 0.0
    return silenced


def _spread(model: torch.nn.Module) -> None:
    """Weights that carry the input to the head (Ultralytics' initialisation leaves an untrained detector's outputs
    almost independent of its input, so a wrong channel would hardly show)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.shape[0] > 1:
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.bias, -0.3, 0.3)


def _widths(module: torch.nn.Module) -> list[int]:
    """The output channels of every convolution in `module` (an attention keeps all of them; a split cv1 keeps its
    outputs while its inputs shrink with the layer before)."""
    return [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def _handle(model, size: int, family: str):
    from complab.models.detector import DetectorHandle

    return DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(model.names)}, size, family)


def _decoded(handle, result, tmp_path):
    """The pruned detector written as a compact file and read back."""
    from complab.models.compact import Products
    from complab.models.detector import load_detector_file

    handle.save(tmp_path / "pruned.clab", products=Products(channel_history=result.history,
                                                           c2f_replaced=result.replaced))
    return load_detector_file(tmp_path / "pruned.clab")


def _prunes_around_attention(family: str, tmp_path, size: int = SIZE) -> None:
    import copy

    from complab.methods.channels.detector import prune_detector
    from complab.models.yolo_prunable import kept_whole

    torch.manual_seed(0)
    model = _build(family)
    _spread(model)
    original = copy.deepcopy(model)
    x = torch.rand(2, 3, size, size)
    before = model(x)[0]
    params = sum(p.numel() for p in model.parameters())
    kept = {name: _widths(model.get_submodule(name)) for name in kept_whole(model)}
    handle = _handle(model, size, family)
    result = prune_detector(model, 0.5, handle.input_shape)
    after = model(x)[0]
    assert after.shape == before.shape
    assert sum(p.numel() for p in model.parameters()) < 0.5 * params
    assert result.kept_whole == list(kept)  # the attention and the split convolutions kept every channel
    assert all(_widths(model.get_submodule(name)) == widths for name, widths in kept.items())
    # the removed channels, and only they, are gone: equal up to float32 rounding, which YOLO12n's area attention
    # amplifies to ~2e-4 of the outputs' scale (0 in float64); the unpruned model differs by a few % or more
    scale = float(after.abs().max())
    silenced = _silenced(original, result.history, handle.input_shape)(x)[0]
    assert float((silenced - after).abs().max()) <= 1e-3 * scale
    assert float((original(x)[0] - after).abs().max()) > 1e-2 * scale  # (the check above can fail)
    decoded = _decoded(handle, result, tmp_path)
    assert torch.equal(decoded.model(x)[0], after)


@pytest.mark.parametrize("family", ["yolov8n", "yolov5nu"])
@torch.no_grad()
def test_supported_family_prunes_and_its_file_decodes_to_the_same_outputs(family, tmp_path):
    from complab.methods.channels.detector import prune_detector

    torch.manual_seed(0)
    model = _build(family)
    x = torch.rand(2, 3, SIZE, SIZE)
    before = model(x)[0]
    params = sum(p.numel() for p in model.parameters())
    handle = _handle(model, SIZE, family)
    result = prune_detector(model, 0.5, handle.input_shape)
    after = model(x)[0]
    assert after.shape == before.shape
    assert sum(p.numel() for p in model.parameters()) < 0.35 * params
    decoded = _decoded(handle, result, tmp_path)
    assert torch.allclose(decoded.model(x)[0], after, atol=1e-5)


@torch.no_grad()
def test_yolo11n_is_pruned_around_its_attention_and_its_file_decodes_to_the_same_outputs(tmp_path):
    # C2PSA's attention (model.10.m.0.attn) and its split cv1 keep their channels; everything else loses half, and the
    # pruned model computes exactly what the original computes with the removed channels silenced
    _prunes_around_attention("yolo11n", tmp_path, 128)


@pytest.mark.slow  # ~10 s each on two busy cores
@pytest.mark.parametrize("family", ["yolov10n", "yolo12n", "yolov9t", "yolo26n"])
@torch.no_grad()
def test_attention_and_elan_families_are_pruned_around_their_kept_layers(family, tmp_path):
    # YOLOv10n's PSA, YOLO12n's A2C2f area attention, YOLOv9t's ELAN chunks, YOLO26n's C2PSA and attention C3k2
    _prunes_around_attention(family, tmp_path, 128)


@pytest.mark.parametrize(("family", "block", "where"), [
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


def test_a_block_holding_a_refused_layer_is_refused_by_that_layer_and_an_unknown_block_by_its_own_name():
    from complab.methods.channels.detector import prune_detector
    from complab.models.yolo_env import offline_ultralytics

    offline_ultralytics()
    from ultralytics.nn.modules.block import ADown

    class Mystery(torch.nn.Module):  # a block the channels step has never seen
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.f, self.i = inner, inner.f, inner.i

        def forward(self, x):
            return self.inner(x)

    model = _build("yolov8n")
    model.model[3] = Mystery(model.model[3])
    with pytest.raises(PlanError, match=r"YOLO block Mystery \(model\.3\) cannot be channel-pruned yet \(the "
                                        r"channels step has not been checked on it\)"):
        prune_detector(model, 0.5, (3, SIZE, SIZE))
    model = _build("yolov8n")
    down = Mystery(model.model[3])
    down.extra = ADown(16, 16)  # (a YOLOv9c downsampling block: its input chunk left uneven halves when pruned)
    model.model[3] = down
    with pytest.raises(PlanError, match=r"YOLO block ADown \(model\.3\.extra\) .*halves uneven"):
        prune_detector(model, 0.5, (3, SIZE, SIZE))


def test_channels_step_refuses_an_unsupported_detector_by_name():
    from complab.methods import channels
    from complab.methods.context import StepContext
    from complab.methods.tasks import task_for
    from complab.plan import ChannelStep

    model = _build("rtdetr-l")
    handle = _handle(model, SIZE, "rtdetr-l")
    ctx = StepContext(data=None, layers=list(handle.prunable_layers()), task=task_for(handle, None))
    with pytest.raises(PlanError, match=r"YOLO block HGStem \(model\.0\)"):
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


def test_plan_page_layout_of_yolo11n_is_the_step_s_and_its_estimate_is_what_pruning_removes():
    # the plan page traces a detector as the step does: YOLO11n's attention is left whole (no key for it), its
    # depthwise convolutions (the Detect class branch) are pruned with the channels they read, and the estimated
    # weights left equal the pruned model's
    import copy

    from complab.analysis.channel_estimate import channel_factors, channel_layout
    from complab.methods.channels.detector import prune_detector

    model = _build("yolo11n")
    handle = _handle(model, 128, "yolo11n")
    layout = channel_layout(copy.deepcopy(model), (3, 128, 128), "detect")
    assert not any(".attn." in key or key.startswith("model.10.cv1") for key in layout.groups)
    assert "model.23.cv3.0.0.0.conv" in layout.out_group  # a depthwise convolution, pruned with its inputs
    layers = handle.prunable_layers()
    factors = channel_factors(layout, {"_default": 0.5}, list(layers))
    pruned = handle.clone()
    prune_detector(pruned.model, 0.5, (3, 128, 128))
    assert round(sum(w.numel() * factors[name] for name, w in layers.items())) == sum(
        w.numel() for w in pruned.prunable_layers().values())


def test_plan_page_layout_refuses_an_unsupported_detector_at_once():
    from complab.analysis.channel_estimate import channel_layout

    with pytest.raises(PlanError, match=r"YOLO block HGStem"):
        channel_layout(_build("rtdetr-l"), (3, SIZE, SIZE), "detect")


@pytest.mark.slow  # ~40 s on two busy cores: the step scores each of YOLO11n's 67 groups on 8 images
def test_pipeline_channels_step_prunes_yolo11n_around_its_attention_and_its_file_gives_the_same_boxes(tmp_path):
    from complab.analysis.detections import predict
    from complab.data.detection import load_detection_data
    from complab.data.shapes import ShapesConfig, write_dataset
    from complab.models.detector import DetectorHandle
    from complab.pipeline import compress
    from complab.plan import Plan
    from complab.sources import load_file
    from PIL import Image

    images = write_dataset(tmp_path / "shapes", train=8, val=8, config=ShapesConfig(seed=3))
    data = load_detection_data(f"yolo:{images}")
    torch.manual_seed(0)
    model = _build("yolo11n", nc=len(data.names))
    model.names = dict(data.names)
    handle = DetectorHandle(model, {"kind": "ultralytics", "yaml": model.yaml, "names": dict(data.names)}, 160,
                            "yolo11n")
    attention = [p.shape for p in model.get_submodule("model.10.m.0.attn").parameters()]
    plan = Plan.from_dict({"schema_version": 1, "eval_split": "val", "steps": [
        {"type": "channels", "selection": "l1", "keep_ratio": {"_default": 0.5}, "fitness_size": 8,
         "finetune_epochs": 0, "final_epochs": 0}]})
    result = compress(handle, plan, data, tmp_path / "run", latency=False, keep_in_memory=True)
    pruned = result.in_memory.model
    assert sum(p.numel() for p in pruned.parameters()) < 0.35 * sum(p.numel() for p in model.parameters())
    assert [p.shape for p in pruned.get_submodule("model.10.m.0.attn").parameters()] == attention
    again = load_file(result.path)
    x = torch.rand(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(again.model(x)[0], pruned(x)[0])
    for path in data.val_images(limit=2):  # an untrained head's scores are ~1e-4: a threshold that still gives boxes
        image = Image.open(path)
        a = predict(pruned, image, 160, 1e-6)
        assert a
        assert [(b.xyxy, b.cls, b.conf) for b in a] == [(b.xyxy, b.cls, b.conf) for b in predict(again.model, image,
                                                                                                  160, 1e-6)]
