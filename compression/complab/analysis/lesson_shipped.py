"""The lesson's shipped runs (assets/lesson/<run>/): checked on this machine before the Lesson page may show them.

The repository ships the results of the lesson's two runs (model.clab, metrics.json, plan.json, made by
`python -m complab.demo.lesson_assets`), so a first class does not wait minutes for them. They are read like any
received run folder (DESIGN.md "Trust"): JSON through complab.runfolder (bounded, schema-checked), the compact file
through our own decoder, and nothing is believed that was not measured again here:

- plan.json must be byte for byte the plan the lesson would run now (lesson.step_plan with the settings in force);
- model.clab must decode, its size must be the metrics' compressed_bytes, and the decoded model must score the
  metrics' accuracy on the digits' test split within 1e-9 (and the original model the metrics' "before" accuracy).

A shipped run that fails any check is not used (the page runs the step instead and says why).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from complab import metrics as measure
from complab import runfolder
from complab.analysis import lesson
from complab.errors import CompressionLabError
from complab.paths import ASSETS

SHIPPED = ASSETS / "lesson"
RUNS = ("prune", "share")  # the lesson's two runs (lesson.RUN_OF maps steps to them)
FILES = ("model.clab", "metrics.json", "plan.json")
MAX_MODEL_BYTES = 4 << 20  # LeNet-300-100's compact files are tens of KB; anything near this is not one of ours
TOLERANCE = 1e-9  # accuracy measured here against the shipped metrics' (the same decoder, data and arithmetic)


@dataclass
class ShippedRun:
    """A shipped run checked on this machine: `problem` None means every check passed and `files` are the bytes
    that passed them (the ones to import; never read again from the folder)."""

    run: str
    problem: str | None = None
    accuracy: float | None = None  # the decoded model's test accuracy, measured here
    metrics: dict | None = None  # the shipped metrics.json, schema-checked
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None


def plan_text(run: str, chosen: lesson.LessonSettings | None = None) -> str:
    """plan.json of lesson run `run` as the run store writes it (json.dumps(plan, indent=2))."""
    plan = lesson.step_plan(run, chosen)
    if plan is None:
        raise CompressionLabError(f"{run!r} is not a lesson run: use one of {', '.join(RUNS)}")
    return json.dumps(plan.to_dict(), indent=2)


def is_lesson_job(job: dict, run: str) -> bool:
    """Whether `job` is the real lesson's job of `run` (LESSON settings): the only job a shipped result stands for."""
    plan = lesson.step_plan(run, lesson.LESSON)
    return (isinstance(job, dict) and job.get("kind") == "compress" and plan is not None
            and job.get("plan") == plan.to_dict() and job.get("latency") is False
            and all(job.get(key) == value for key, value in lesson.LESSON_SPEC.items()))


def check_shipped(run: str, data, original_accuracy: float | None = None, folder: str | Path | None = None,
                  chosen: lesson.LessonSettings | None = None) -> ShippedRun:
    """Read and check the shipped run `run` (from `folder`, default assets/lesson/<run>) against the lesson's
    settings in force (`chosen`, default lesson.settings()) on `data` (the digits); never raises for what is in
    the files: a problem is returned, said in one sentence."""
    folder = Path(folder) if folder is not None else SHIPPED / run
    out = ShippedRun(run)
    plan, problem = runfolder.read_bytes(folder / "plan.json", f"{run}/plan.json")
    if problem is None and plan != plan_text(run, chosen).encode():
        problem = (f"its plan.json is not the plan this lesson runs (other settings, or an edited file): "
                   f"{folder / 'plan.json'}")
    metrics, problem = (None, problem) if problem else runfolder.load(folder / "metrics.json", f"{run}/metrics.json",
                                                                      kind="compress")
    model, problem = (None, problem) if problem else runfolder.read_bytes(folder / "model.clab", f"{run}/model.clab",
                                                                          cap=MAX_MODEL_BYTES)
    if problem:
        out.problem = str(problem)
        return out
    out.metrics = metrics
    if len(model) != metrics["after"]["compressed_bytes"]:
        out.problem = (f"its model.clab has {len(model):,} bytes but its metrics.json says "
                       f"{metrics['after']['compressed_bytes']:,}")
        return out
    if metrics.get("eval_split", "test") != "test":
        out.problem = f"its metrics were measured on the {metrics['eval_split']} split, not the test split"
        return out
    if original_accuracy is not None and abs(metrics["before"]["accuracy"] - original_accuracy) > TOLERANCE:
        out.problem = (f"its metrics.json says the original model scored {metrics['before']['accuracy']:.6f}; it "
                       f"scores {original_accuracy:.6f} here (other weights or data)")
        return out
    try:
        out.accuracy = decoded_accuracy(model, data)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder refuses (a damaged file) is said, never raised
        out.problem = f"its model.clab does not decode: {str(exc)[:300]}"
        return out
    if abs(out.accuracy - metrics["after"]["accuracy"]) > TOLERANCE:
        out.problem = (f"its model.clab scores {out.accuracy:.6f} on the test digits here, but its metrics.json "
                       f"says {metrics['after']['accuracy']:.6f}")
        return out
    out.files = {"model.clab": model, "plan.json": plan}
    return out


def decoded_accuracy(model: bytes, data) -> float:
    """Test accuracy of the compact file `model` (bytes), decoded by our own reader (complab.sources.load_file)."""
    from complab.sources import load_file

    with tempfile.TemporaryDirectory() as scratch:  # the bytes already read and checked, not the folder's file
        path = Path(scratch) / "model.clab"
        path.write_bytes(model)
        handle = load_file(path)
    return measure.accuracy(handle.model, data.loader("test"))
