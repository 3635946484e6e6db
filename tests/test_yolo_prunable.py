"""C2f made prunable: the demo detector and an untrained YOLOv8n give identical outputs after make_prunable."""

import pytest
import torch
from complab.models.detector import load_detector
from complab.models.yolo_prunable import C2fV2, make_prunable


def _yolov8n(nc: int = 4):
    from complab.models.yolo_env import offline_ultralytics, quiet_ultralytics

    offline_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    with quiet_ultralytics():  # the yaml ships inside the ultralytics package: nothing is downloaded
        return DetectionModel("yolov8n.yaml", nc=nc, verbose=False).float().eval()


def _shapes(output) -> list:
    """Every tensor's shape in a (nested) detector output: Ultralytics returns tensors, lists and dicts."""
    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    items = output.values() if isinstance(output, dict) else output
    return [shape for item in items for shape in _shapes(item)]


def _predictions(output) -> list:
    """A detector output without the intermediate features Ultralytics returns beside the predictions."""
    if isinstance(output, dict):
        return [value for key, value in output.items() if key != "feats"]
    if isinstance(output, tuple | list):
        return [_predictions(item) for item in output]
    return output


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


@pytest.mark.parametrize("source", ["demo", "yolov8n"])
@torch.no_grad()
def test_detector_channels_pruned_by_l1_run_and_replay(source):
    from complab.methods.channels.detector import head_outputs, prune_detector
    from complab.models.channel_replay import replay

    model = load_detector().model if source == "demo" else _yolov8n()
    x = torch.rand(1, 3, 320, 320)
    before = model(x)
    params = sum(p.numel() for p in model.parameters())
    heads = {name: m.weight.shape[0] for name, m in model.named_modules() if m in head_outputs(model)
             and hasattr(m, "weight")}
    result = prune_detector(model, 0.5, (3, 320, 320))
    after = model(x)
    # the predictions (decoded boxes + class scores, raw box distributions and scores) keep their shapes;
    # only the neck features Ultralytics also returns ("feats") are narrower
    assert _shapes(_predictions(after)) == _shapes(_predictions(before))
    ratio = sum(p.numel() for p in model.parameters()) / params
    assert 0.22 < ratio < 0.32, ratio  # both sides of most convolutions halve: about a quarter remains
    assert all(model.get_submodule(name).weight.shape[0] == width for name, width in heads.items())
    assert result.layers and all(row["kept"] == round(row["channels"] / 2) for row in result.layers.values())
    # the record rebuilds the pruned shapes on a fresh copy: the replaced C2f names, then the history
    fresh = load_detector().model if source == "demo" else _yolov8n()
    assert make_prunable(fresh) == result.replaced
    replay(fresh, result.history, (3, 320, 320))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@torch.no_grad()
def test_channel_pruned_fused_detector_file_decodes_to_the_same_outputs(tmp_path):
    # fused: the channels step's usual successor is fold_bn (an unfused file: the step test below)
    from complab.methods.channels.detector import prune_detector
    from complab.models.compact import Products
    from complab.models.detector import fuse, load_detector_file

    handle = load_detector().clone()
    result = prune_detector(handle.model, 0.5, (3, handle.imgsz, handle.imgsz))
    fuse(handle.model)
    handle.save(tmp_path / "det.clab", products=Products(channel_history=result.history,
                                                         c2f_replaced=result.replaced))
    decoded = load_detector_file(tmp_path / "det.clab")
    assert decoded.c2f_replaced == result.replaced and decoded.channel_history == result.history
    x = torch.rand(2, 3, handle.imgsz, handle.imgsz)
    assert torch.equal(_first(handle.model(x)), _first(decoded.model(x)))
    # saving the decoded handle again keeps its records, so the file still decodes
    decoded.save(tmp_path / "again.clab")
    assert torch.equal(_first(load_detector_file(tmp_path / "again.clab").model(x)), _first(handle.model(x)))


@pytest.mark.slow  # a detector channel-pruned through compress (54 s at load 10)
def test_channels_step_prunes_a_detector_and_its_file_gives_the_same_boxes(tmp_path):
    from complab.analysis.detections import predict
    from complab.data.detection import load_detection_data
    from complab.data.shapes import ShapesConfig, write_dataset
    from complab.methods import channels
    from complab.methods.context import StepContext
    from complab.methods.tasks import task_for
    from complab.models.detector import load_detector_file
    from complab.pipeline import compress
    from complab.plan import ChannelStep, Plan
    from PIL import Image

    detector = load_detector()
    images = write_dataset(tmp_path / "shapes", train=16, val=8, config=ShapesConfig(seed=3))
    data = load_detection_data(f"yolo:{images}")
    ctx = StepContext(data=data, layers=list(detector.prunable_layers()), task=task_for(detector, data))
    assert ctx.task.reestimate_after_training is False  # a detector keeps the statistics its fine-tuning kept
    # the genetic search with the detection fitness: reconstruction-error screen, then mAP50 on a subset
    model = detector.clone().model
    targets = {"model.7.conv": 0.5, "model.22.cv3.0.0.conv": 0.25}
    report = channels.run(model, ChannelStep(keep_ratio=targets, population=4, generations=1, survivors=2,
                                             screen_size=4, fitness_size=8, finetune_epochs=0), ctx).report
    assert report["selection"] == "ga" and report["fitness"] == "mAP50" and set(report["order"]) == set(targets)
    for name, ratio in targets.items():
        row = report["layers"][name]
        assert row["kept"] == round(row["channels"] * ratio) == len(row["kept_channels"])
        assert row["screened"] > 0 and row["scored"] > 0 and len(row["generations"]) == 2
        assert 0.0 <= row["l1_fitness"] <= row["ga_fitness"] <= 1.0  # the L1 mask seeds the search; elitism keeps it
    assert model.get_submodule("model.7.conv").out_channels == report["layers"]["model.7.conv"]["kept"]
    plan = Plan.from_dict({"schema_version": 1, "eval_split": "val", "steps": [
        {"type": "channels", "selection": "l1", "keep_ratio": {"_default": 0.5}, "fitness_size": 8,
         "finetune_epochs": 0, "final_epochs": 0}]})
    result = compress(detector, plan, data, tmp_path / "run", latency=False, keep_in_memory=True)
    params = sum(p.numel() for p in detector.model.parameters())
    assert sum(p.numel() for p in result.in_memory.model.parameters()) < 0.35 * params
    again = load_detector_file(result.path)
    assert again.c2f_replaced == result.products.c2f_replaced and again.channel_history
    assert result.metrics["after"]["map50"] == result.metrics["after"]["in_memory_accuracy"]
    for path in data.val_images(limit=4):  # the file decodes to the model the step made: the same boxes
        image = Image.open(path)
        # a threshold low enough that the unfine-tuned pruned model still gives boxes to compare
        a = predict(result.in_memory.model, image, 160, 0.001)
        b = predict(again.model, image, 160, 0.001)
        assert a
        assert [(x.xyxy, x.cls, x.conf) for x in a] == [(x.xyxy, x.cls, x.conf) for x in b]


def test_plan_keys_name_the_loaded_detector_and_the_estimate_is_what_the_step_removes(tmp_path):
    """The plan page's channel layout of a detector is the channels step's: a C2f's cv1 (two convolutions once
    prunable) is one plan key for both halves, the head's outputs are no key, the frozen first layers are keys,
    and the estimate's weights left equal the pruned model's (a concatenation reads several groups)."""
    import copy

    from complab.analysis.channel_estimate import channel_factors, channel_layout
    from complab.data.detection import load_detection_data
    from complab.data.shapes import ShapesConfig, write_dataset
    from complab.methods import channels
    from complab.methods.context import StepContext
    from complab.methods.tasks import task_for
    from complab.plan import ChannelStep, Plan

    detector = load_detector()
    layout = channel_layout(copy.deepcopy(detector.model), tuple(detector.input_shape), "detect")
    layers = detector.prunable_layers()
    assert set(layout.groups) <= set(layers) and "model.0.conv" in layout.groups
    assert layout.parts["model.4.cv1.conv"] == (16, 16) and layout.channels["model.4.cv1.conv"] == 32
    assert layout.blocks["model.9.cv2.conv"] == "model.9 · SPPF"
    assert layout.blocks["model.22.cv3.0.1.conv"] == "model.22 · Detect (class branch)"
    assert layout.in_shares["model.12.cv1.conv"] == {"model.6.cv2.conv": 64, "model.9.cv2.conv": 128}
    keep = {"model.0.conv": 0.5, "model.4.cv1.conv": 0.5, "model.9.cv2.conv": 0.5, "model.22.cv2.0.1.conv": 0.25}
    step = ChannelStep(keep_ratio=keep, selection="l1", finetune_epochs=0, final_epochs=0, fitness_size=8)
    Plan(steps=(step,)).validate(list(layers))  # the page's keys are layers of the loaded model
    factors = channel_factors(layout, keep, list(layers))
    images = write_dataset(tmp_path / "shapes", train=8, val=8, config=ShapesConfig(seed=3))
    data = load_detection_data(f"yolo:{images}")
    ctx = StepContext(data=data, layers=list(layers), task=task_for(detector, data))
    work = detector.clone()
    report = channels.run(work.model, step, ctx).report
    assert report["layers"]["model.4.cv0.conv"]["kept"] == report["layers"]["model.4.cv1.conv"]["kept"] == 8
    assert round(sum(w.numel() * factors[name] for name, w in layers.items())) == sum(
        w.numel() for w in work.prunable_layers().values())
