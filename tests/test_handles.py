"""Every model handle offers one interface (models/protocol.Handle), every task's behaviour is one object
(methods/task.Task), and nothing outside the handle modules asks which task it runs."""

import re
from pathlib import Path

import pytest
import torch
from complab.errors import CompressionLabError
from complab.methods.context import StepContext
from complab.methods.detect_train import DetectorTask
from complab.methods.task import ClassifierTask, Task
from complab.methods.tasks import TASKS as TASK_CLASSES
from complab.methods.tasks import task_for
from complab.models.detector import DetectorHandle, load_detector
from complab.models.handle import ModelHandle
from complab.models.protocol import Handle
from complab.models.tasks import TASKS, read_compact, task_kind

PACKAGE = Path(__file__).resolve().parents[1] / "compression" / "complab"
# where a task may be named: the source specs and the handle modules (the classifier's decoder, compact.py, and
# the task tables included)
TASK_HOMES = {"sources.py", "models/handle.py", "models/compact.py", "models/detector.py", "models/tasks.py",
              "methods/tasks.py", "methods/detect_train.py", "methods/task.py",
              "runfolder.py"}  # (the ground-floor schema of metrics.json: a detector's run records two mAPs)
BRANCH = re.compile(r"""\.task\s*[!=]=|\btask["')\]]*\s*[!=]=\s*["']|[!=]=\s*(DETECT|CLASSIFY)\b"""
                    r"""|["'](detect|classify)["']\s*[!=]=""")


def _protocol_members(protocol) -> set[str]:
    return {name for name in (*protocol.__annotations__, *vars(protocol))
            if not name.startswith("_") and name not in ("__annotations__",)}


def test_both_handles_satisfy_the_protocol(lenet5):
    detector = load_detector()
    for handle in (lenet5, detector):
        assert isinstance(handle, Handle)
        assert handle.task == handle.kind.name and handle.score_name == handle.kind.score_name
        missing = [name for name in _protocol_members(Handle) if not hasattr(handle, name)]
        assert missing == []
    # the two tasks answer differently where they differ
    assert lenet5.skipped_layers() == [] and detector.skipped_layers()
    assert not lenet5.kind.folds_batch_norm and detector.kind.folds_batch_norm
    assert lenet5.kind.score_counts_images and not detector.kind.score_counts_images
    module, example, input_name, output_name = detector.export_graph()
    assert (input_name, output_name) == ("images", "predictions") and module(example).dim() == 3
    assert lenet5.export_graph()[2:] == ("input", "logits")


def test_a_class_missing_a_member_is_not_a_handle(lenet5):
    class Partial:
        model = lenet5.model

    assert not isinstance(Partial(), Handle)


def test_every_task_has_a_kind_a_decoder_and_a_behaviour():
    assert set(TASKS) == set(TASK_CLASSES) == {ModelHandle.task, DetectorHandle.task}
    for name, (kind, _decode) in TASKS.items():
        assert kind.name == name and task_kind(name) is kind
        behaviour = TASK_CLASSES[name]
        assert behaviour.kind is kind
        missing = [member for member in _protocol_members(Task) if not hasattr(behaviour, member)
                   and member not in ("input_shape", "distilling")]  # set per object
        assert missing == []
    assert task_kind(None).name == "classify"  # files written before tasks were recorded
    with pytest.raises(CompressionLabError, match="unknown task 'segment'"):
        task_kind("segment")
    with pytest.raises(CompressionLabError, match="unknown task"):
        task_kind(["detect"])  # a damaged meta


def test_a_handle_gets_its_task_as_one_object(lenet5, digits28):
    task = task_for(lenet5, digits28, shift_pixels=2)
    assert isinstance(task, ClassifierTask) and isinstance(task, Task)
    assert task.input_shape == tuple(digits28.input_shape) and task.shift_pixels == 2
    ctx = StepContext(data=digits28, layers=list(lenet5.prunable_layers()), task=task, teacher=lenet5.model)
    assert not ctx.task.distilling
    ctx.task.distil_from(lenet5.model, 4.0, 0.5)
    assert ctx.task.distilling  # what a plan's distill step asks of the task, not of the context
    detector_task = task_for(load_detector(), None)
    assert isinstance(detector_task, DetectorTask) and isinstance(detector_task, Task)
    assert detector_task.input_shape[1:] == (detector_task.imgsz, detector_task.imgsz)
    assert not detector_task.reestimate_after_training and detector_task.fitness_name == "mAP50"


def test_a_context_without_a_task_is_a_classifiers(digits28):
    ctx = StepContext(data=digits28, layers=[])
    assert isinstance(ctx.task, ClassifierTask) and ctx.task.input_shape == tuple(digits28.input_shape)
    score = ctx.make_scorer(16, 0)
    assert 0.0 <= score(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))) <= 1.0


def test_a_decoded_file_records_its_meta_as_a_declared_attribute(lenet5, tmp_path):
    path = tmp_path / "m.clab"
    lenet5.save(path, {"data": "digits"})
    decoded = read_compact(path)
    assert isinstance(decoded, ModelHandle) and decoded.file_meta["data"] == "digits"
    assert lenet5.file_meta is None and decoded.clone().file_meta == decoded.file_meta


def test_no_task_branch_outside_sources_and_the_handles():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in TASK_HOMES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCH.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    for path in sorted((PACKAGE.parents[1] / "pages").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCH.search(line):
                found.append(f"pages/{path.name}:{number}: {line.strip()}")
    assert found == [], "ask the handle (handle.kind, a Task) instead:\n" + "\n".join(found)


def test_the_branch_pattern_finds_what_it_forbids():
    for line in ('if handle.task == "detect":', 'detector = ctx.task != "detect"', "if task == 'classify':",
                 "if handle.task == sources.DETECT:", "if x or task == 'detect':",
                 'if m.get("task") == "detect":', 'rows["task"] == "detect"'):
        assert BRANCH.search(line), line
    assert not BRANCH.search("if handle.kind.folds_batch_norm:")
