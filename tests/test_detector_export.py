"""A channel-pruned detector exports to ONNX and TorchScript with its smaller shapes, from Python and the CLI."""

import contextlib
import io
import json

import pytest
import torch
from complab.cli import main
from complab.export import onnx_bytes
from complab.models.detector import load_detector


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv_shapes(model: torch.nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _first_conv(graph) -> tuple[int, ...]:
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    return next(weights[node.input[1]] for node in graph.node if node.op_type == "Conv")


def _onnx_conv_shapes(graph) -> list[tuple[int, ...]]:
    weights = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    return sorted(weights[node.input[1]] for node in graph.node if node.op_type == "Conv")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The demo detector channel-pruned at keep 0.5, its compact file, and the CLI's exports of that file."""
    from complab.methods.channels.detector import prune_detector
    from complab.models.compact import Products

    folder = tmp_path_factory.mktemp("det-export")
    handle = load_detector().clone()
    result = prune_detector(handle.model, 0.5, handle.input_shape)
    handle.save(folder / "pruned.clab", products=Products(channel_history=result.history,
                                                         c2f_replaced=result.replaced))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for name in ("pruned.onnx", "pruned.pt"):
            assert main(["export", str(folder / "pruned.clab"), str(folder / name)]) == 0
    return handle, folder, printed.getvalue()


def test_cli_exports_a_pruned_detector_file_in_both_formats(pruned):
    _, folder, printed = pruned
    written = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert {row["file"] for row in written} == {str(folder / "pruned.onnx"), str(folder / "pruned.pt")}
    assert all(row["bytes"] == (folder / row["file"]).stat().st_size > 0 for row in written)


@torch.no_grad()
def test_pruned_detector_onnx_holds_the_pruned_shapes_and_is_smaller(pruned):
    import onnx

    handle, folder, _ = pruned
    model = onnx.load(str(folder / "pruned.onnx"))
    onnx.checker.check_model(model)
    graph = model.graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["predictions"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, handle.imgsz, handle.imgsz]  # a dynamic batch at the detector's image size
    assert _onnx_conv_shapes(graph) == _conv_shapes(handle.model)  # batch norm folds in; the widths stay
    original = load_detector()
    original_onnx = onnx_bytes(original)
    assert isinstance(original.model(torch.zeros(1, *original.input_shape)), tuple)  # export left it as it was
    # the stem convolution (the graph's first) has half the filters of the unpruned export's
    first, first_pruned = (_first_conv(g) for g in (onnx.load_from_string(original_onnx).graph, graph))
    assert first_pruned == (first[0] // 2, *first[1:])
    # onnx's own reference runtime (onnxruntime is not a dependency) gives the model's predictions at batch 2
    from onnx.reference import ReferenceEvaluator

    x = torch.rand(2, 3, handle.imgsz, handle.imgsz)
    (ran,) = ReferenceEvaluator(model).run(None, {"images": x.numpy()})
    assert torch.allclose(torch.from_numpy(ran), handle.model(x)[0], rtol=1e-4, atol=1e-3)
    # the exported file shrinks with the parameters: dense fp32 weights, nothing else of size
    param_ratio = _params(original.model) / _params(handle.model)
    byte_ratio = len(original_onnx) / (folder / "pruned.onnx").stat().st_size
    assert abs(byte_ratio / param_ratio - 1) < 0.2, (byte_ratio, param_ratio)


@torch.no_grad()
def test_pruned_detector_torchscript_gives_the_models_predictions(pruned):
    from complab.models.detector import load_detector_file

    handle, folder, _ = pruned
    x = torch.rand(2, 3, handle.imgsz, handle.imgsz)  # traced at batch 1: the batch stays dynamic
    expected = handle.model(x)[0]
    assert expected.shape == (2, 4 + len(handle.architecture["names"]), expected.shape[2])
    from_cli = torch.jit.load(str(folder / "pruned.pt"))
    # batch norm is folded in the export: equal up to float rounding (boxes are in pixels, scores in 0..1)
    assert torch.allclose(from_cli(x), expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(from_cli(x), load_detector_file(folder / "pruned.clab").model(x)[0], rtol=1e-4, atol=1e-4)
