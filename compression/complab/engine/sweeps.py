"""Sweeps: N compression plans (one per target of an axis, or a list of recipes) submitted as one group.

    sweep_id = submit_sweep(jobs, root, axis="ratio", targets=["ratio:10", "ratio:20"])
    sweep_status(sweep_id); list_sweeps(); cancel_sweep(sweep_id); wait_sweep(sweep_id, timeout)
    run_id, reused = submit_or_reuse(job, root)   (one job, the same reuse: the lesson page's steps)

A sweep is a record ROOT/sweeps/<id>.json (written whole: temporary name, then rename) listing its members:
{index, target, run, reused}. Each member it submitted also carries {"sweep": {id, index, target}} in its
job, so a lost sweep file is rebuilt from the run folders (as a lost index is). Members are ordinary runs:
the engine runs them one after another (or max_workers at a time), and a failed member does not stop the
others. Cancelling a sweep cancels its queued members at once and asks its running ones to stop.

Re-running a sweep reuses work: a member whose content key (keys.content_key: the kind, model, the bytes of
its weights or model file, the data's files, input size, normalisation, plan without its name, latency, the
code version) matches a `succeeded` run, or one still queued or running, is not run again; the sweep lists that
run, marked reused. Failed and cancelled runs are never reused. A run's key is computed when it is submitted
and kept in its job.json, so changing a dataset or a weights file in place (or upgrading) makes the next
sweep run afresh. Looking for a matching run and queueing a new one happen under the store's submit lock, so
two identical sweeps (or submit_or_reuse calls) started together become one set of runs. To run every member
regardless: reuse=False (the CLI's --no-reuse).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from complab import runfolder
from complab.engine.jobs import SWEEP_ID, validate
from complab.engine.keys import content_key, file_digest  # noqa: F401 - file_digest: kept importable here
from complab.engine.runs import absolute_paths, cancel, insert, list_runs
from complab.engine.store import FINAL_STATES, RunStore, write_atomic
from complab.errors import CompressionLabError

MAX_MEMBERS = 50  # one sweep's runs (the targets' own limit, complab.analysis.targets.MAX_TARGETS)
REUSABLE = (("succeeded",), ("running", "queued"))  # a finished run first, then one on its way


def recorded_key(row: dict) -> str | None:
    """The content key a run recorded when it was submitted (None for a run of an older release: not reused)."""
    job = row.get("job")
    key = job.get("content_key") if isinstance(job, dict) else None
    return key if isinstance(key, str) else None


def reusable_by_key(rows: list[dict], kind: str) -> dict[str, str]:
    """Content key -> id of the run of `kind` to reuse for it, from list_runs()'s rows (newest first): the newest
    `succeeded` one, else the newest still queued or running."""
    found: dict[str, str] = {}
    for states in REUSABLE:
        for row in rows:
            key = recorded_key(row)
            if row["state"] in states and row["kind"] == kind and key is not None and key not in found \
                    and not row.get("damaged"):  # a damaged run (compression/complab/runfolder.py) is never reused
                found[key] = row["id"]
    return found


def finished_by_key(rows: list[dict], kind: str) -> dict[str, str]:
    """Content key -> id of the newest `succeeded` run of `kind` with that key, from list_runs()'s rows."""
    return reusable_by_key([row for row in rows if row["state"] == "succeeded"], kind)


def submit_or_reuse(job: dict, root: str | Path | None = None) -> tuple[str, bool]:
    """(run id, reused): the newest run computing the same thing as `job` (same content key) that succeeded or is
    still queued or running, else a new run of `job`. Failed and cancelled runs are never reused, so asking again
    after a failure runs the job afresh. A lesson step asked for twice (a second class, a reload, two sessions at
    once) runs once: the lookup and the submission hold the store's submit lock together."""
    checked = validate(absolute_paths({k: v for k, v in job.items() if k != "sweep"}))
    key = content_key(checked)
    store = RunStore(root)
    if key is None:  # data too big to fingerprint: never reused
        return insert(checked, store, key), False
    with store.submit_lock():
        found = reusable_by_key(list_runs(root=store.root, kind=checked["kind"]), checked["kind"]).get(key)
        if found is not None:
            return found, True
        return insert(checked, store, key), False


def import_or_reuse(job: dict, files: dict[str, bytes], metrics: dict, note: str,
                    root: str | Path | None = None) -> tuple[str, bool]:
    """(run id, reused): the run submit_or_reuse(job) would find, else a finished run of `job` made from results
    computed elsewhere and checked by the caller (the lesson's shipped runs): `files` (model.clab, plan.json) and
    `metrics`, both marked "precomputed": true, with the job's content key, so later lookups find it like a run
    that ran here. `note` (what was checked) is its log. Nothing is queued: no worker starts."""
    checked = validate(absolute_paths({k: v for k, v in job.items() if k != "sweep"}))
    key = content_key(checked)
    if key is None:
        raise CompressionLabError("a precomputed result needs data that can be fingerprinted (a content key)")
    store = RunStore(root)
    with store.submit_lock():
        found = reusable_by_key(list_runs(root=store.root, kind=checked["kind"]), checked["kind"]).get(key)
        if found is not None:
            return found, True
        marked = {**checked, "content_key": key, "precomputed": True}
        return store.insert_finished(marked, files, {**metrics, "precomputed": True}, note), False


def find_reusable(job: dict, root: str | Path | None = None) -> str | None:
    """The id of the run submit_or_reuse(job) would reuse (same content key, succeeded or on its way), or None."""
    checked = validate(absolute_paths({k: v for k, v in job.items() if k != "sweep"}))
    key = content_key(checked)
    if key is None:
        return None
    return reusable_by_key(list_runs(root=root, kind=checked["kind"]), checked["kind"]).get(key)


def _folder(store: RunStore) -> Path:
    return store.root / "sweeps"


def _new_id(store: RunStore) -> str:
    while True:
        sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        if not (_folder(store) / f"{sweep_id}.json").exists():
            return sweep_id


def short_name(sweep: dict) -> str:
    """"sweep 3f2a (ratio 5-80)": the id's random tail and the range of its targets."""
    values = []
    for target in sweep.get("targets") or []:
        try:
            values.append(float(str(target).partition(":")[2]))
        except ValueError:
            pass
    axis = sweep.get("axis") or "plans"
    if values and len(values) == len(sweep["targets"]):
        span = f"{min(values):g}" if len(values) == 1 else f"{min(values):g}-{max(values):g}"
        what = f"{axis} {span}"
    else:
        what = f"{len(sweep.get('members') or [])} {axis}"
    return f"sweep {str(sweep['id'])[-4:]} ({what})"


def submit_sweep(jobs: list[dict], root: str | Path | None = None, axis: str = "plans",
                 targets: list[str] | None = None, name: str | None = None, reuse: bool = True,
                 extend: str | None = None) -> str:
    """Validate every job (nothing is queued if one is bad), then queue each as a member of a new sweep; returns
    the sweep id. `targets` label the members (default: their plan names). With `reuse`, a member whose content
    key matches a succeeded run (or an earlier member of this sweep) is not submitted: the sweep lists that run.
    `extend`: add the members to that existing sweep instead (a search adds one generation at a time)."""
    if not isinstance(jobs, list) or not jobs:
        raise CompressionLabError("a sweep needs at least one plan")
    if len(jobs) > MAX_MEMBERS:
        raise CompressionLabError(f"{len(jobs)} plans: a sweep takes at most {MAX_MEMBERS}; split it in two")
    if targets is not None and len(targets) != len(jobs):
        raise CompressionLabError(f"{len(targets)} target labels for {len(jobs)} plans: give one per plan")
    checked = [validate(absolute_paths({k: v for k, v in job.items() if k != "sweep"})) for job in jobs]
    labels = [str(t)[:80] for t in targets] if targets is not None else [
        str((job.get("plan") or {}).get("name") or f"plan {i + 1}")[:80] for i, job in enumerate(checked)]
    store = RunStore(root)
    memo: dict = {}  # each dataset walked once for all the members
    keys = [content_key(job, memo) for job in checked]  # before the lock: hashing files, walking data take time
    with store.submit_lock():  # two identical sweeps started together: the second finds the first's runs
        return _submit_members(store, checked, keys, labels, axis, name, reuse, extend)


def _submit_members(store: RunStore, checked: list[dict], keys: list[str | None], labels: list[str], axis: str,
                    name: str | None, reuse: bool, extend: str | None) -> str:
    done = reusable_by_key(list_runs(root=store.root, kind=checked[0]["kind"]), checked[0]["kind"]) if reuse else {}
    if extend is not None:
        record = {k: v for k, v in sweep_status(extend, store.root).items()
                  if k in ("id", "created", "name", "axis", "targets", "model", "data", "members")}
        record["members"] = [{k: m[k] for k in ("index", "target", "run", "reused")} for m in record["members"]]
        record["targets"] = list(record.get("targets") or []) + labels
        sweep_id, first = extend, len(record["members"])
        if first + len(checked) > MAX_MEMBERS * 4:
            raise CompressionLabError(f"sweep {extend} would have {first + len(checked)} members: at most "
                                      f"{MAX_MEMBERS * 4}; start another")
    else:
        sweep_id, first = _new_id(store), 0
        record = {"id": sweep_id, "created": time.time(), "name": name or "", "axis": axis, "targets": labels,
                  "model": checked[0].get("model"), "data": checked[0].get("data"), "members": []}
    try:
        for index, (job, key, label) in enumerate(zip(checked, keys, labels, strict=True), start=first):
            if key is not None and key in done:
                record["members"].append({"index": index, "target": label, "run": done[key], "reused": True})
                continue
            run_id = insert({**job, "sweep": {"id": sweep_id, "index": index, "target": label}}, store, key)
            record["members"].append({"index": index, "target": label, "run": run_id, "reused": False})
            if reuse and key is not None:
                done[key] = run_id  # a later member with the same plan shares this run
    finally:  # even a submit that failed half-way (a full disk) leaves a record of the members it queued
        if record["members"]:
            _folder(store).mkdir(exist_ok=True)
            write_atomic(_folder(store) / f"{sweep_id}.json", json.dumps(record, indent=2))
    return sweep_id


def _records(store: RunStore, rows: list[dict]) -> dict[str, dict]:
    """Every sweep: its file, or (a lost file) rebuilt from the jobs of the runs it submitted."""
    out: dict[str, dict] = {}
    folder = _folder(store)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record, problem = runfolder.read_json(path)  # bounded: a sweep file may have been received too
        if problem is not None:
            continue
        if isinstance(record, dict) and record.get("id") == path.stem and isinstance(record.get("members"), list):
            out[path.stem] = record
    rebuilt: dict[str, dict] = {}
    for row in rows:
        tag = (row.get("job") or {}).get("sweep")
        if not isinstance(tag, dict) or tag.get("id") in out or not SWEEP_ID.fullmatch(str(tag.get("id"))):
            continue
        record = rebuilt.setdefault(tag["id"], {"id": tag["id"], "created": row["created"], "name": "",
                                                "axis": str(tag.get("target", "")).partition(":")[0] or "plans",
                                                "model": row["job"].get("model"), "data": row["job"].get("data"),
                                                "members": [], "rebuilt": True})
        record["created"] = min(record["created"], row["created"])
        record["members"].append({"index": tag.get("index", 0), "target": tag.get("target", ""), "run": row["id"],
                                  "reused": False})
    for record in rebuilt.values():
        record["members"].sort(key=lambda m: m["index"])
        record["targets"] = [m["target"] for m in record["members"]]
    return {**out, **rebuilt}


def _with_states(record: dict, by_id: dict[str, dict]) -> dict:
    members = []
    for member in record["members"]:
        row = by_id.get(member["run"], {})
        members.append({**member, "state": row.get("state", "missing"), "error": row.get("error"),
                        "metrics": row.get("metrics"), "progress": row.get("progress")})
    counts = {state: sum(m["state"] == state for m in members) for state in
              ("queued", "running", "succeeded", "failed", "cancelled", "missing")}
    active = counts["queued"] + counts["running"] > 0
    return {**record, "members": members, "counts": counts, "active": active,
            "state": "active" if active else "finished", "label": short_name(record)}


def list_sweeps(root: str | Path | None = None, runs: list[dict] | None = None) -> list[dict]:
    """Every sweep with its members' states, newest first. `runs` (list_runs()'s rows) saves a second listing."""
    store = RunStore(root)
    rows = runs if runs is not None else list_runs(root=store.root)
    by_id = {row["id"]: row for row in rows}
    records = _records(store, rows)
    return sorted((_with_states(r, by_id) for r in records.values()), key=lambda s: (s["created"], s["id"]),
                  reverse=True)


def sweep_status(sweep_id: str, root: str | Path | None = None) -> dict:
    """The sweep's record, each member with its run's state, error, metrics and progress, and counts per state."""
    for sweep in list_sweeps(root):
        if sweep["id"] == sweep_id:
            return sweep
    raise CompressionLabError(f"no sweep {str(sweep_id)[:80]!r}: list sweeps with `complab sweeps`")


def cancel_sweep(sweep_id: str, root: str | Path | None = None) -> list[str]:
    """Cancel every member still queued (at once, so none starts) then ask the running ones to stop; reused
    members (runs of earlier work) are left alone. Returns the run ids it cancelled or asked to stop."""
    sweep = sweep_status(sweep_id, root)
    active = [m["run"] for m in sweep["members"] if not m["reused"] and m["state"] in ("queued", "running")]
    # every queued member in one transaction, so that neither stopping a running member nor the dispatcher's next
    # claim can start one of them; a member started between the listing and that transaction is asked to stop
    cancelled = set(RunStore(root).cancel_queued(active))
    for run_id in active:
        if run_id not in cancelled:
            cancel(run_id, root)
    return active


def wait_sweep(sweep_id: str, timeout: float = 3600.0, root: str | Path | None = None, poll: float = 0.5,
               on_finish=None) -> dict:
    """Poll until no member is queued or running; calls on_finish(member) once per member as it ends.
    Raises CompressionLabError after `timeout` seconds."""
    deadline = time.time() + timeout
    seen: set[str] = set()
    while True:
        sweep = sweep_status(sweep_id, root)
        for member in sweep["members"]:
            if member["state"] in FINAL_STATES and member["run"] not in seen:
                seen.add(member["run"])
                if on_finish is not None:
                    on_finish(member)
        if not sweep["active"]:
            return sweep
        if time.time() > deadline:
            counts = ", ".join(f"{n} {state}" for state, n in sweep["counts"].items() if n)
            raise CompressionLabError(f"sweep {sweep_id} is still running after {timeout:.0f} s ({counts}): follow "
                                      "it with `complab sweeps`")
        time.sleep(poll)
