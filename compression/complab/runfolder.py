"""The one place a run folder's JSON is read: job.json, metrics.json, state.json and events.jsonl, checked by a schema.

A run folder may come from anywhere (mailed, unpacked, edited by hand), so everything in it is untrusted. Each file
is refused by size before it is read (MAX_BYTES), parsed without NaN or Infinity, bounded in nesting depth and in
number of values, and checked against the shape the engine writes: types, ranges, finite numbers, bounded text.
A file that fails is never raised: the reader gets `Damaged("damaged: metrics.json: after.accuracy is 'oops', not
a number")` (a str subclass, so it can be shown as it is) and the caller shows the run as damaged.

    read_json(path, name)            -> (value, None) or (None, Damaged)     (bounded read, no schema)
    check_job(value) / check_metrics(value, kind) / check_state(value) / check_event(value)
                                     -> (clean dict, None) or (None, Damaged)
    load(path, name, kind=None)      -> the checked file: read_json + its schema
    read_run_folder(path)            -> {"id", "dir", "job", "metrics", "state", "events", "files", "damaged"}

The checked job never carries `trust`: trust comes from the person, in that command or session, never from a
file. Nothing here imports torch or builds a model; it is the ground floor (compression/complab/errors.py's layer).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from pathlib import Path

MAX_BYTES = {"job.json": 4 << 20, "plan.json": 4 << 20, "metrics.json": 8 << 20, "state.json": 64 << 10,
             "sensitivity.json": 64 << 20}
EVENTS_TAIL_BYTES = 4 << 20  # events.jsonl: only its last 4 MiB are read (a run's progress is at its end)
EVENT_LINE_BYTES = 64 << 10  # a longer events line is skipped
MAX_DEPTH = 32  # nesting of arrays and objects (the engine's deepest, a plan's per-layer settings, is ~5)
MAX_VALUES = 2_000_000  # values in one file (a ResNet-152's metrics.json holds ~20,000)
MAX_TEXT = 4096  # characters of one string the schema names (a model spec, a path, a label)
JOB_KINDS = ("compress", "sensitivity", "test-sleep", "test-hang", "test-crash")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
RESULT_FILES = ("model.clab", "metrics.json", "sensitivity.json", "plan.json")


LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@%-]{0,39}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a run folder's name (engine/runs.py's), never a path
ORIGIN_KINDS = ("rerun", "recipe")  # a job's origin: a re-run of a run, or a plan started from a run's recipe


class Damaged(str):
    """Why a file (or a value in it) cannot be used: "damaged: <file>: <why>". A str, shown as it is."""


class _Bad(Exception):
    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where} {why}" if where else why)


def _show(value) -> str:
    """A short, printable form of a bad value for the message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _bounded(value, depth: int = 0) -> None:
    """Nesting depth and value count, iteratively (a deep value never reaches Python's recursion limit here)."""
    stack, count = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise _Bad("", f"holds more than {MAX_VALUES:,} values")
        if isinstance(item, dict | list):
            if level > MAX_DEPTH:
                raise _Bad("", f"is nested deeper than {MAX_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)


def parse_json(data: bytes | str, name: str):
    """(value, None) or (None, Damaged): JSON text without NaN/Infinity, within MAX_DEPTH and MAX_VALUES."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        value = json.loads(data, parse_constant=_no_constants)
        _bounded(value)
    except UnicodeDecodeError:
        return None, Damaged(f"damaged: {name}: not UTF-8 text")
    except RecursionError:
        return None, Damaged(f"damaged: {name}: is nested deeper than {MAX_DEPTH} levels")
    except _Bad as exc:
        return None, Damaged(f"damaged: {name}: {exc}")
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of thousands of digits
        return None, Damaged(f"damaged: {name}: not valid JSON ({str(exc).splitlines()[0][:120]})")
    return value, None


class _NotRegular(OSError):
    pass


def open_regular(path: Path):
    """The file opened for reading only if it is a regular file and not a symbolic link: a pipe would block the
    reader, a device never end, a link read outside the folder."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegular(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, name: str | None = None, cap: int | None = None):
    """(bytes, None), or (None, Damaged) for a missing, unreadable, non-regular or too large file (the size checked
    before a byte is read): a run file handed to another checked parser (a sensitivity report)."""
    path = Path(path)
    name = name or path.name
    cap = cap if cap is not None else MAX_BYTES.get(path.name, 4 << 20)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                return None, Damaged(f"damaged: {name}: {size:,} bytes, more than the {cap:,} a run file may hold")
            data = f.read(cap + 1)
    except FileNotFoundError:
        return None, Damaged(f"damaged: {name}: missing")
    except OSError as exc:
        if isinstance(exc, _NotRegular) or exc.errno == errno.ELOOP:
            return None, Damaged(f"damaged: {name}: not a regular file (a link, a pipe or a device)")
        return None, Damaged(f"damaged: {name}: cannot be read ({exc.strerror or type(exc).__name__})")
    if len(data) > cap:
        return None, Damaged(f"damaged: {name}: more than the {cap:,} bytes a run file may hold")
    return data, None


def read_json(path: str | Path, name: str | None = None, cap: int | None = None):
    """(value, None), or (None, Damaged) for a missing, unreadable, too large, malformed or too deep file. The size
    is checked before a byte is read; a pipe, a device or a link is never opened."""
    path = Path(path)
    name = name or path.name
    data, problem = read_bytes(path, name, cap)
    if problem is not None:
        return None, problem
    return parse_json(data, name)


# --- the schema's pieces ---------------------------------------------------------------------------------------


def _number(value, where: str, low: float | None = None, high: float | None = None, integer: bool = False,
            optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(where, f"is {_show(value)}, not {'a whole number' if integer else 'a number'}")
    if integer and not isinstance(value, int):
        if not (math.isfinite(value) and value == int(value)):
            raise _Bad(where, f"is {_show(value)}, not a whole number")
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(where, f"is {_show(value)}, not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _Bad(where, f"is {_show(value)}, outside {low if low is not None else '-inf'}..."
                          f"{high if high is not None else 'inf'}")
    return value


def _text(value, where: str, optional: bool = False, limit: int = MAX_TEXT, choices: tuple | None = None):
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _Bad(where, f"is {_show(value)}, not text")
    if len(value) > limit:
        raise _Bad(where, f"is {len(value):,} characters long, more than {limit:,}")
    if choices is not None and value not in choices:
        raise _Bad(where, f"is {_show(value)}, not one of {', '.join(choices)}")
    return value


def _object(value, where: str, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise _Bad(where, f"is {_show(value)}, not an object")
    return value


def _checked(check, value, name: str, *args):
    try:
        return check(value, *args), None
    except _Bad as exc:
        return None, Damaged(f"damaged: {name}: {exc}")


# --- job.json ---------------------------------------------------------------------------------------------------

BIG = float(1 << 62)


def _job(value) -> dict:
    job = _object(value, "the job")
    out = {"kind": _text(job.get("kind"), "kind", choices=JOB_KINDS)}
    heavy = out["kind"] in ("compress", "sensitivity")
    out["model"] = _text(job.get("model"), "model", optional=not heavy)
    for key in ("weights", "data"):
        out[key] = _text(job.get(key), key, optional=True)
    out["input_size"] = _number(job.get("input_size"), "input_size", 1, 65536, integer=True, optional=True)
    for key in ("mean", "std"):
        values = job.get(key)
        if values is not None:
            if not isinstance(values, list) or not 1 <= len(values) <= 16:
                raise _Bad(key, f"is {_show(values)}, not a list of 1 to 16 numbers")
            values = [_number(v, f"{key}[{i}]", -1e6, 1e6) for i, v in enumerate(values)]
        out[key] = values
    if "plan" in job or out["kind"] == "compress":
        plan = _object(job.get("plan"), "plan")
        _text(plan.get("name"), "plan.name", optional=True)
        steps = plan.get("steps")
        if steps is not None and (not isinstance(steps, list)
                                  or not all(isinstance(step, dict) and isinstance(step.get("type", ""), str)
                                             for step in steps)):
            raise _Bad("plan.steps", "is not a list of steps (objects with a type)")
        out["plan"] = plan
    if "latency" in job:
        if not isinstance(job["latency"], bool):
            raise _Bad("latency", f"is {_show(job['latency'])}, not true or false")
        out["latency"] = job["latency"]
    if job.get("config") is not None:
        out["config"] = _object(job["config"], "config")
    if "seconds" in job:
        out["seconds"] = _number(job["seconds"], "seconds", 0, 86_400 * 365)
    if job.get("predicted") is not None:
        predicted = _object(job["predicted"], "predicted")
        out["predicted"] = {key: _number(predicted[key], f"predicted.{key}", -1e6, 1e6)
                            for key in ("accuracy", "drop", "low", "high", "raw_drop", "accuracy_low", "accuracy_high")
                            if predicted.get(key) is not None}
        for key in ("model", "basis", "warning"):
            if predicted.get(key) is not None:
                out["predicted"][key] = _text(predicted[key], f"predicted.{key}")
    if job.get("sweep") is not None:
        sweep = _object(job["sweep"], "sweep")
        target = sweep.get("target", "")
        if isinstance(target, int | float) and not isinstance(target, bool):
            target = str(_number(target, "sweep.target", -BIG, BIG))
        out["sweep"] = {"id": _text(sweep.get("id"), "sweep.id", limit=64),
                        "index": _number(sweep.get("index"), "sweep.index", 0, 999, integer=True),
                        "target": _text(target, "sweep.target", limit=80)}
    if (origin := check_origin(job.get("origin"))) is not None:  # where the run came from (a malformed one: dropped)
        out["origin"] = origin
    return out  # `trust` is never taken from a file; unknown keys are left out


def check_origin(value) -> dict | None:
    """A job's provenance {"kind": "rerun" | "recipe", "run": RUN_ID} (the run it came from), or None for anything
    else. Advisory (the Compare page's map draws it): a malformed origin is dropped, never a reason to refuse the run;
    the id it names may be any run, or none in this store, so readers look it up (analysis/lineage.py)."""
    if not isinstance(value, dict) or set(value) != {"kind", "run"}:
        return None
    kind, run = value.get("kind"), value.get("run")
    if kind not in ORIGIN_KINDS or not isinstance(run, str) or not RUN_ID.fullmatch(run):
        return None
    return {"kind": kind, "run": run}


def check_job(value):
    """(the job as the engine reads it, without `trust`), or (None, Damaged)."""
    return _checked(_job, value, "job.json")


# --- metrics.json -----------------------------------------------------------------------------------------------

MEASURED = {"params": (0, BIG, True), "flops": (0, BIG, False), "sparse_flops": (0, BIG, False),
            "prunable_weights": (0, BIG, True), "prunable_nonzero": (0, BIG, True), "latency_ms": (0, 1e9, False),
            "in_memory_accuracy": (0, 1, False), "fp32_bytes": (0, BIG, True),
            # the images of the split the score was measured on (older runs lack it: readers use .get())
            "images": (0, 10**9, True),
            # median ms in ONNX Runtime (complab/deploy.py; older runs lack it: readers use .get())
            "ort_latency_ms": (0, 1e9, False)}


def _side(value, where: str, required: dict[str, tuple]) -> dict:
    side = _object(value, where)
    out = dict(side)
    for key, (low, high, integer) in MEASURED.items():
        if key in side:
            out[key] = _number(side[key], f"{where}.{key}", low, high, integer=integer, optional=True)
    for key, (low, high, integer) in required.items():
        out[key] = _number(side.get(key), f"{where}.{key}", low, high, integer=integer)
    for key in INTERVALS:
        if side.get(key) is not None:
            out[key] = _interval(side[key], f"{where}.{key}")
    return out


# a detector's 95% bootstrap intervals of its mAPs, [low, high] fractions (older runs lack them: readers use .get())
INTERVALS = ("map50_interval", "map50_95_interval")


def _interval(value, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != 2:
        raise _Bad(where, f"is {_show(value)}, not a list of two numbers [low, high]")
    low, high = (_number(v, f"{where}[{i}]", 0, 1) for i, v in enumerate(value))
    if low > high:
        raise _Bad(where, f"is {_show(value)}: its low end is above its high end")
    return [low, high]


def _compress_metrics(m: dict) -> dict:
    out = dict(m)
    out["before"] = _side(m.get("before"), "before", {"accuracy": (0, 1, False), "fp32_bytes": (1, BIG, True)})
    out["after"] = _side(m.get("after"), "after", {"accuracy": (0, 1, False), "compressed_bytes": (1, BIG, True)})
    out["compression_ratio"] = _number(m.get("compression_ratio"), "compression_ratio", 0, 1e12)
    if out["compression_ratio"] <= 0:
        raise _Bad("compression_ratio", f"is {_show(out['compression_ratio'])}, not above 0")
    for key in ("model", "data", "plan_name"):
        if key in m:
            out[key] = _text(m[key], key, optional=True)
    for key in ("score_name", "eval_split"):  # short labels, shown as metric names: no markup in them
        if key in m:
            out[key] = _text(m[key], key, optional=True, limit=40)
            if out[key] is not None and not LABEL.fullmatch(out[key]):
                raise _Bad(key, f"is {_show(out[key])}, not a short label (letters, digits, - . _ and spaces)")
    if "task" in m:
        out["task"] = _text(m["task"], "task", choices=("classify", "detect"))
    if out.get("task") == "detect":  # the Detections page shows both mAPs of both models
        for side in ("before", "after"):
            for key in ("map50", "map50_95"):
                out[side][key] = _number(m[side].get(key), f"{side}.{key}", 0, 1)
    for key, low, high in (("accuracy_drop", -1, 1), ("weights_kept", 0, 1), ("seconds", 0, 1e9)):
        if key in m:
            out[key] = _number(m[key], key, low, high)
    if "steps" in m:
        steps = _object(m["steps"], "steps")
        if len(steps) > 64:
            raise _Bad("steps", f"holds {len(steps)} steps, more than 64")
        for key in steps:
            _text(key, "a step's name", limit=64)
    if m.get("machine") is not None:
        machine = _object(m["machine"], "machine")
        out["machine"] = {"platform": _text(machine.get("platform"), "machine.platform", limit=200),
                          "cpus": _number(machine.get("cpus"), "machine.cpus", 1, 1 << 20, integer=True),
                          "torch": _text(machine.get("torch"), "machine.torch", limit=100)}
    if m.get("ort") is not None:  # how ONNX Runtime ran (or why it did not): shown as text on the pages
        out["ort"] = _ort(m["ort"])
    if "layers" in m:
        layers = m["layers"]
        if not isinstance(layers, list) or not all(isinstance(row, dict) for row in layers):
            raise _Bad("layers", "is not a list of objects")
    if "batch_norm" in m:
        _object(m["batch_norm"], "batch_norm", optional=True)
    return out


def _ort(value) -> dict:
    ort = _object(value, "ort")
    out = {key: _text(ort.get(key), f"ort.{key}", optional=True, limit=limit)
           for key, limit in (("version", 40), ("isa", 80), ("provider", 80), ("error", 500))}
    out["threads"] = _number(ort.get("threads"), "ort.threads", 1, 4096, integer=True, optional=True)
    out["rounds"] = _number(ort.get("rounds"), "ort.rounds", 0, 1e9, integer=True, optional=True)
    if ort.get("int8") is not None and not isinstance(ort["int8"], bool):
        raise _Bad("ort.int8", f"is {_show(ort['int8'])}, not true or false")
    out["int8"] = ort.get("int8")
    return out


def _sensitivity_metrics(m: dict) -> dict:
    out = dict(m)
    out["base_accuracy"] = _number(m.get("base_accuracy"), "base_accuracy", 0, 1)
    if "layers" in m and not isinstance(m["layers"], list):  # the summary keeps the count, metrics.json too
        out["layers"] = _number(m["layers"], "layers", 0, 1 << 20, integer=True)
    if "cached" in m and not isinstance(m["cached"], bool):
        raise _Bad("cached", f"is {_show(m['cached'])}, not true or false")
    return out


def _metrics(value, kind: str | None) -> dict:
    m = _object(value, "the metrics")
    if kind == "compress" or (kind is None and "after" in m):
        return _compress_metrics(m)
    if kind == "sensitivity" or (kind is None and "base_accuracy" in m):
        return _sensitivity_metrics(m)
    return dict(m)  # a test job's: bounded JSON, nothing read from it


def check_metrics(value, kind: str | None = None):
    """(metrics, None) or (None, Damaged). `kind` is the run's ("compress", "sensitivity"; None: told by the keys)."""
    return _checked(_metrics, value, "metrics.json", kind)


# --- state.json and events.jsonl --------------------------------------------------------------------------------


def _state(value) -> dict:
    record = _object(value, "the record")
    out = {"state": _text(record.get("state"), "state", optional=True, choices=STATES)}
    for key in ("created", "started", "finished", "cancel"):
        out[key] = _number(record.get(key), key, 0, 1e11, optional=True)
    out["pid"] = _number(record.get("pid"), "pid", 0, 1 << 31, integer=True, optional=True)
    error = record.get("error")
    out["error"] = None if error is None else _text(error, "error", limit=1 << 16)
    return out


def check_state(value):
    return _checked(_state, value, "state.json")


def _event(value) -> dict:
    event = _object(value, "an event")
    out = dict(event)
    if "progress" in event:
        out["progress"] = _number(event["progress"], "progress", 0, 1, optional=True)
    if "stage" in event:
        out["stage"] = _text(event["stage"], "stage", optional=True, limit=500)
    if "time" in event:
        out["time"] = _number(event["time"], "time", 0, 1e11, optional=True)
    if "values" in event:
        out["values"] = _object(event["values"], "values", optional=True)
    return out


def check_event(value):
    return _checked(_event, value, "events.jsonl")


def read_events(path: str | Path) -> list[dict]:
    """events.jsonl's checked events, oldest first: its last EVENTS_TAIL_BYTES only; a line cut by a kill, too long,
    malformed or of the wrong shape is skipped (progress is advisory: a bad line never hides the run)."""
    try:
        with open_regular(Path(path)) as f:
            size = os.fstat(f.fileno()).st_size
            start = max(0, size - EVENTS_TAIL_BYTES)
            f.seek(start)
            data = f.read(EVENTS_TAIL_BYTES)
    except OSError:
        return []
    lines = data.split(b"\n")
    if start:
        lines = lines[1:]  # the first line was cut by the tail
    out = []
    for line in lines:
        if not line.strip() or len(line) > EVENT_LINE_BYTES:
            continue
        value, problem = parse_json(line, "events.jsonl")
        if problem is None:
            event, problem = check_event(value)
            if problem is None:
                out.append(event)
    return out


def load(path: str | Path, name: str | None = None, kind: str | None = None):
    """A run file read and checked by its schema (job.json, metrics.json, state.json): (value, None) or
    (None, Damaged). Other names are read with the size and depth bounds only."""
    path = Path(path)
    name = name or path.name
    value, problem = read_json(path, name, MAX_BYTES.get(path.name))
    if problem is not None:
        return None, problem
    if path.name == "job.json":
        return check_job(value)
    if path.name == "metrics.json":
        return check_metrics(value, kind)
    if path.name == "state.json":
        return check_state(value)
    return value, None


def read_run_folder(path: str | Path) -> dict:
    """What runs, report and the pages read of one run folder, checked; never raises for what is in it.

    {"id": folder name, "dir": str, "job": checked job or None, "metrics": checked metrics or None,
     "state": checked state.json or None, "events": [checked events], "files": {name: bool},
     "damaged": {file: "damaged: ..."} (empty when every file present is sound)}
    A missing job.json or state.json is "damaged" too (an engine folder has both); a missing metrics.json is not
    (a run that has not finished has none)."""
    folder = Path(path)
    out = {"id": folder.name, "dir": str(folder), "job": None, "metrics": None, "state": None, "events": [],
           "files": {}, "damaged": {}}
    if not folder.is_dir():
        out["damaged"]["folder"] = Damaged(f"damaged: {folder.name}: the run folder is gone")
        return out
    out["files"] = {name: (folder / name).is_file() for name in RESULT_FILES}
    out["job"], problem = load(folder / "job.json")
    if problem:
        out["damaged"]["job.json"] = problem
    out["state"], problem = load(folder / "state.json")
    if problem:
        out["damaged"]["state.json"] = problem
    if out["files"]["metrics.json"]:
        kind = (out["job"] or {}).get("kind")
        out["metrics"], problem = load(folder / "metrics.json", kind=kind if kind in JOB_KINDS else None)
        if problem:
            out["damaged"]["metrics.json"] = problem
    out["events"] = read_events(folder / "events.jsonl")
    return out


def first_problem(damaged: dict) -> Damaged | None:
    """The first of read_run_folder's problems (job.json's first), or None."""
    for name in ("folder", "job.json", "metrics.json", "state.json"):
        if damaged.get(name):
            return damaged[name]
    return next(iter(damaged.values()), None)
