"""The lesson page's Streamlit parts: how far the class has got, each step's run found or started, its progress.

A step that changes the model is an engine run (complab.analysis.lesson.step_job), started with
complab.service.submit_run(reuse=True): a run of the same plan, model and data that succeeded (or is still on its
way) is shown instead of starting another, so a second class, a reload or a reopened lesson finds every finished
step at once.
A run not in the store yet is first looked for in the repository's shipped results (assets/lesson, made by
`python -m complab.demo.lesson_assets`): when its plan is the one this lesson runs, checked on this machine
(complab/analysis/lesson_shipped.py: the file decodes and scores what its metrics say) and imported into the store as
a finished, "precomputed" run, so a first class does not wait for it; "Recompute here" runs it for real. A shipped
result that fails a check is not used: the step runs, and the page says why.
Only how far this session has got lives in st.session_state; the runs live in the engine's store.
"""

from __future__ import annotations

import time

import streamlit as st

from complab import engine, runfolder, service
from complab.analysis import lesson, lesson_shipped, report
from complab.errors import CompressionLabError
from complab.ui.state import decoded_run, home, load_active

POLL_EVERY_S = 1.0  # seconds between looks at a running step's run (as the Runs page)
# started together with a step: the run a later step shows, so it computes while the class reads (step 3's run
# repeats step 2's pruning, so it cannot start from step 2's result; queued behind it, it is often done when asked for)
AHEAD = {"prune": "share"}
ACTIVE = ("queued", "running")


def _fresh() -> dict:
    return {"shown": 1, "runs": {}, "reused": {}, "not_shipped": {}}


def progress_state() -> dict:
    """{"shown": steps shown so far (1-5), "runs": {run name: run id}, "reused": {run name: bool},
    "not_shipped": {run name: why its shipped result was not used}}."""
    return st.session_state.setdefault("lesson", _fresh())


def restart() -> None:
    st.session_state["lesson"] = _fresh()


def find_or_import(job: dict, run: str) -> tuple[str, bool] | None:
    """(run id, reused) of the lesson run `run`: one in the store computing the same thing, else the shipped result
    checked here and imported as a finished run; None when neither (the caller submits the job; the reason a shipped
    result was refused is kept in the session's "not_shipped"). Only for the real lesson's settings: the shipped
    plans are LESSON's, so the tests' FAST runs always run, and only for the lesson's own job of that run."""
    if lesson.settings() is not lesson.LESSON or run not in lesson_shipped.RUNS or not lesson_shipped.is_lesson_job(
            job, run):
        return None
    found = engine.find_reusable(job, root=home())
    if found is not None:
        return found, True
    _, data = load_active(lesson.LESSON_SPEC)
    original = original_measured()["accuracy"]
    shipped = lesson_shipped.check_shipped(run, data, original_accuracy=original)
    if not shipped.ok:
        progress_state()["not_shipped"][run] = shipped.problem
        return None
    note = (f"precomputed: {lesson_shipped.SHIPPED / run} imported, checked on this machine: plan.json is the "
            f"lesson's plan, model.clab ({len(shipped.files['model.clab']):,} bytes) decodes and scores "
            f"{shipped.accuracy:.6f} on the {len(data.test)} test digits, as its metrics.json says")
    return engine.import_or_reuse(job, shipped.files, shipped.metrics, note, root=home())


def start(step: str) -> None:
    """The Next button's callback: show `step`, finding or starting its run (errors kept for the redraw)."""
    state = progress_state()
    state["shown"] = max(state["shown"], lesson.STEPS.index(step) + 1)
    state.pop("error", None)
    for wanted in (step, AHEAD.get(step)):
        job = lesson.step_job(wanted) if wanted else None
        if job is None or lesson.RUN_OF[wanted] in state["runs"]:
            continue
        try:
            found = find_or_import(job, lesson.RUN_OF[wanted])
            run_id, reused = found if found is not None else service.submit_run(job, home(), reuse=True)
        except CompressionLabError as exc:  # a read-only or full data folder
            state["error"] = (step, str(exc))
            return
        state["runs"][lesson.RUN_OF[wanted]] = run_id
        state["reused"][lesson.RUN_OF[wanted]] = reused


def retry(step: str) -> None:
    """Start a failed or cancelled step again (a reusing submit never reuses those: a new run)."""
    state = progress_state()
    state["runs"].pop(lesson.RUN_OF[step], None)
    start(step)


def recompute(step: str) -> None:
    """"Recompute here": a re-run of the precomputed run on this machine (engine.rerun: the same job, unmarked, its
    origin the precomputed run, as the Compare page's map draws it), shown instead; once it succeeds, later lookups
    by content key find it (the newest)."""
    state = progress_state()
    run = lesson.RUN_OF[step]
    try:
        state["runs"][run] = engine.rerun(state["runs"][run], root=home())
    except CompressionLabError as exc:
        state["error"] = (step, str(exc))
        return
    state["reused"][run] = False


def run_of(step: str) -> str | None:
    return progress_state()["runs"].get(lesson.RUN_OF.get(step, ""))


def status(run_id: str) -> dict:
    return engine.status(run_id, root=home())


@st.fragment(run_every=POLL_EVERY_S)
def watch(run_id: str, title: str) -> None:
    """A running step's progress, redrawn every second; once its run ends the whole page redraws with the result."""
    row = status(run_id)
    if row["state"] not in ACTIVE:
        st.rerun()
    progress = row.get("progress") or {}
    started = row.get("started") or row.get("created") or time.time()
    fraction = min(1.0, max(0.0, float(progress.get("progress") or 0.0)))
    stage = progress.get("stage") or ("waiting for the engine" if row["state"] == "queued" else "starting")
    st.progress(fraction, text=f"{title}: {row['state']} · {stage} · {time.time() - started:.0f} s")


@st.cache_data(max_entries=16, show_spinner=False)
def run_metrics(root: str, run_id: str) -> dict:
    """A finished run's metrics.json (written whole, never changed afterwards), checked (complab/runfolder.py):
    a damaged one is CompressionLabError."""
    metrics, problem = runfolder.load(engine.run_file(run_id, "metrics.json", root=root), kind="compress")
    if problem:
        raise CompressionLabError(f"a lesson run cannot be shown: {problem}")
    return metrics


@st.cache_data(max_entries=16, show_spinner=False)
def run_plan(root: str, run_id: str) -> dict:
    plan, problem = runfolder.read_json(engine.run_file(run_id, "plan.json", root=root))
    if problem or not isinstance(plan, dict):
        raise CompressionLabError(f"a lesson run cannot be shown: {problem or 'damaged: plan.json: not an object'}")
    return plan


@st.cache_data(max_entries=1, show_spinner=False)
def original_measured() -> dict:
    """The demo LeNet-300-100's test accuracy, parameters and fp32 bytes, measured (step 1)."""
    handle, data = load_active(lesson.LESSON_SPEC)
    return lesson.original_measured(handle, data)


@st.cache_data(max_entries=1, show_spinner=False)
def original_weights():
    """The demo LeNet-300-100's own weights per layer and their counts (step 1)."""
    handle, data = load_active(lesson.LESSON_SPEC)
    weights = lesson.layer_weights(handle.model)
    return weights, lesson.weight_facts(weights), len(data.test)


@st.cache_data(max_entries=16, show_spinner="Reading the compact file...")
def run_weights(root: str, run_id: str):
    """The decoded file's weights per layer (the histograms draw them) and their counts (the text says them)."""
    weights = lesson.layer_weights(decoded_run(run_id).model)
    return weights, lesson.weight_facts(weights)


@st.cache_data(max_entries=16, show_spinner=False)
def run_coding(root: str, run_id: str) -> lesson.Coding:
    return lesson.coding(report.file_rows(engine.run_dir(run_id, root=root)), run_metrics(root, run_id))


@st.cache_data(max_entries=16, show_spinner="Comparing the answers of both models on the test digits...")
def run_flips(root: str, run_id: str) -> dict:
    """The behaviour diff of the original LeNet-300-100 (the lesson's own demo model) against a step's decoded
    file (complab.service.behaviour_diff: analysis/behaviour.py, cached in the data folder per pair of files)."""
    handle, data = load_active(lesson.LESSON_SPEC)
    return service.behaviour_diff(run_id, None, root=root, original=handle, data=data)


def flips(root: str, run_id: str, model: str, short: str, presenting: bool = False) -> None:
    """A step's flips against the original: the sentences, then a few flipped digits with both models' answers
    (red: right -> wrong, green: wrong -> right, orange: one wrong answer -> another)."""
    try:
        diff = run_flips(root, run_id)
    except CompressionLabError as exc:  # the run's file damaged or gone since: said, the step still shown
        st.error(f"The answers of the {model} model cannot be compared with the original's: {exc}")
        return
    st.markdown(lesson.flips_text(diff, model))
    examples = lesson.flip_examples(diff, limit=6)
    if not examples:
        return
    colours = {"right_to_wrong": "red", "wrong_to_right": "green", "wrong_to_other_wrong": "orange"}
    for col, example in zip(st.columns(len(examples)), examples, strict=True):
        col.image(example["png"], width=96 if presenting else 64)
        col.markdown(f"true {example['label']}  \noriginal {example['original']}  \n{short} "
                     f":{colours[example['kind']]}[**{example['compressed']}**]")


@st.cache_data(max_entries=16, show_spinner="Decoding the file and classifying the test digits...")
def run_decode_check(root: str, run_id: str) -> dict:
    _, data = load_active(lesson.LESSON_SPEC)
    return lesson.decode_check(engine.run_file(run_id, "model.clab", root=root), data)


def finished_run(step: str) -> str | None:
    """The succeeded run a step shows, or None after drawing why not: its progress (polled), its failure (with a
    button to try again) or a problem starting it. A class sees the step's name and its plan's, never a run id
    (the Runs page lists the run under the plan's name)."""
    state = progress_state()
    title = f"Step {lesson.STEPS.index(step) + 1} ({lesson.TITLES[step].lower()})"
    plan_name = lesson.step_plan(step).name
    if state.get("error") and state["error"][0] == step:
        st.error(f"{title} could not start: {state['error'][1]}")
        return None
    run_id = run_of(step)
    if run_id is None:
        return None
    try:
        row = status(run_id)
    except CompressionLabError:  # the run's folder is gone (a cleared data folder)
        st.error(f"{title}'s run cannot be read: its folder is gone from the data folder. Run the step again.")
        st.button("Run this step again", key=f"lesson_retry_{step}", on_click=retry, args=(step,))
        return None
    why_not = state.get("not_shipped", {}).get(lesson.RUN_OF[step])
    if row["state"] in ACTIVE:
        if why_not:
            st.warning(f"{title} is running here: its shipped result was not used ({why_not}).")
        watch(run_id, title)
        return None
    if row["state"] != "succeeded":
        st.error(f"{title}'s run {row['state']}: {(row.get('error') or 'no message')[:300]}. Its log is on the Runs "
                 f"page, under the plan `{plan_name}`.")
        st.button("Run this step again", key=f"lesson_retry_{step}", on_click=retry, args=(step,))
        return None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.get("finished") or time.time()))
    if (row.get("job") or {}).get("precomputed"):
        scored = lesson.percent(float((row.get("metrics") or {}).get("after", {}).get("accuracy", 0.0)))
        st.caption(f"{title}: the run of the plan `{plan_name}`, precomputed with this recipe and checked on this "
                   f"machine: the file decodes and scores {scored} on the test digits, as shipped (imported {when}).")
        if step in lesson_shipped.RUNS:
            st.button("Recompute here", key=f"lesson_recompute_{step}", on_click=recompute, args=(step,),
                      help="Run this step on this machine (seconds on an idle laptop, a minute on a busy one); the "
                                   "page then shows that run.")
        return run_id
    again = " (computed earlier: shown without recomputing)" if state["reused"].get(lesson.RUN_OF[step]) else ""
    here = f" Run on this machine: its shipped result was not used ({why_not})." if why_not else ""
    st.caption(f"{title}: the run of the plan `{plan_name}`, finished {when}{again}.{here}")
    return run_id


def next_button(step: str) -> None:
    """The button that shows the step after `step` (none after the last)."""
    index = lesson.STEPS.index(step)
    if index + 1 < len(lesson.STEPS) and progress_state()["shown"] == index + 1:
        following = lesson.STEPS[index + 1]
        st.button(f"Next: {index + 2}. {lesson.TITLES[following]}", key=f"lesson_next_{following}", type="primary",
                  on_click=start, args=(following,))
