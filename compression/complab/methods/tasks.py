"""A handle's Task (methods/task.py) on its data: one row per task, keyed by the handle's kind."""

from __future__ import annotations

from complab.methods.detect_train import DetectorTask
from complab.methods.task import ClassifierTask, Task
from complab.models.detector import DETECT
from complab.models.handle import CLASSIFY
from complab.models.protocol import Handle
from complab.models.tasks import task_kind

# task name -> its Task class (`for_handle` makes one; `prepare_channel_pruning` needs no data)
TASKS: dict[str, type] = {CLASSIFY.name: ClassifierTask, DETECT.name: DetectorTask}


def task_for(handle: Handle, data, batch_size: int = 64, shift_pixels: int = 0) -> Task:
    """How `handle`'s task fine-tunes, scores and re-estimates batch norm on `data` (a fresh object per run)."""
    return TASKS[handle.kind.name].for_handle(handle, data, batch_size, shift_pixels)


def task_class(name: str) -> type:
    """The Task class of a task name (what a channel layout asks before any data is loaded)."""
    return TASKS[task_kind(name).name]
