"""The tasks a model can do, one handle module each: their kinds by name, and a compact file of any task opened.

A file's meta and a run's metrics.json record the task by name (`TaskKind.name`); this table turns the name back
into what the task answers (models/protocol.TaskKind) and into the decoder that rebuilds its handle. A new task:
its handle module (its TaskKind, its decoder) and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from complab.errors import FormatError
from complab.models.compact import handle_from_decoded, read_existing
from complab.models.detector import DETECT, handle_from_decoded_detector
from complab.models.handle import CLASSIFY
from complab.models.protocol import Handle, TaskKind


def _classifier(meta: dict, state: dict, path: Path, base_file, trust: bool, structures: dict) -> Handle:
    return handle_from_decoded(meta, state, base_file, path.name, trust, path.stat().st_size, structures)


def _detector(meta: dict, state: dict, path: Path, base_file, trust: bool, structures: dict) -> Handle:
    return handle_from_decoded_detector(meta, state, path.name, structures)


# task name -> (what the task answers, decoder(meta, state, path, base_file, trust, structures) -> handle); the
# structures are the file's int sections' levels and scales (the handle's int_weights)
TASKS: dict[str, tuple[TaskKind, Callable[..., Handle]]] = {
    CLASSIFY.name: (CLASSIFY, _classifier),
    DETECT.name: (DETECT, _detector),
}


def task_kind(name: str | None) -> TaskKind:
    """The kind of a recorded task name (None: a classifier, as files written before tasks were recorded)."""
    name = CLASSIFY.name if name is None else name
    if not isinstance(name, str) or name not in TASKS:
        raise FormatError(f"unknown task {str(name)[:20]!r}: expected one of {', '.join(TASKS)}; the file is damaged "
                          "or was written by a newer version")
    return TASKS[name][0]


def finds_boxes(name: str | None) -> bool:
    """Whether a recorded task finds objects in images (a run's metrics.json: its pages show mAP and boxes)."""
    return task_kind(name).finds_boxes


def read_compact(path: str | Path, base_file: str | Path | None = None, trust: bool = False) -> Handle:
    """Decode a compact file of any task into a working handle (our own parser; nothing is unpickled).

    A TorchScript model's file is rebuilt from `base_file`, code that loads only with `trust` (the person's
    --trust: the compact file's meta never grants it). The handle's `int_weights` holds the file's integer layers
    and its model the 8-bit activation hooks the file records."""
    path = Path(path)
    structures: dict = {}
    meta, state = read_existing(path, structures)
    kind = task_kind(meta.get("task"))
    return TASKS[kind.name][1](meta, state, path, base_file, trust, structures)
