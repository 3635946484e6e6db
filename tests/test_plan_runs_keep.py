"""Issue 26, items 9 and 10: the Plan page keeps its target and per-layer edits (page change, reload), takes a typed
target and shows the predicted accuracy's range; the Runs page says what a button did at the top, estimates a
run's time from measured runs, groups a sweep's members and shows each run's change from the original.

Pure functions first (the draft's schema, the time estimate, the Runs page's words), then the pages in AppTest
on a data folder holding one finished analysis and one finished run of demo:lenet5."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
SPEC = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}


# ---- the draft's schema ----------------------------------------------------------------------------------------

def fields():
    from complab.ui.plan_page import option_fields
    from complab.ui.plan_rows import step_fields

    return [f for _, f in step_fields()], [f for _, f in option_fields()]


def a_draft(**changes) -> dict:
    from complab.ui.plan_draft import make_draft

    draft = make_draft("spec", "rep", {"kind": "ratio", "value": 55.0},
                       {"fc1": {"sp": 0.95, "k": 16, "q": "none", "qk": 256, "qs": 4, "qa": "in"},
                        "conv1": {"sp": 0.25, "k": "auto"}},
                       {"plan_prune_epochs": 2, "plan_cluster_epochs": 0})
    draft.update(changes)
    return draft


def parse(value, layers=("fc1", "conv1", "fc2")):
    from complab.ui.plan_draft import parse_draft

    layer_fields, option_fields = fields()
    return parse_draft(value, "spec", "rep", list(layers), layer_fields, option_fields)


def test_draft_round_trip_keeps_every_value_a_widget_can_show():
    draft, problem = parse(json.loads(json.dumps(a_draft())))
    assert problem is None and draft["dropped"] == 0
    assert draft["target"] == {"kind": "ratio", "value": 55.0}
    assert draft["rows"]["fc1"] == {"sp": 0.95, "k": 16, "q": "none", "qk": 256, "qs": 4, "qa": "in"}
    assert draft["rows"]["conv1"] == {"sp": 0.25, "k": "auto"}
    assert draft["options"] == {"plan_prune_epochs": 2, "plan_cluster_epochs": 0}


def test_draft_drops_unknown_layers_fields_and_values_out_of_range_one_by_one():
    value = a_draft(rows={"fc1": {"sp": 1.5, "k": 16, "nope": 1, "qk": True, "qs": 2.5},
                          "gone.layer": {"sp": 0.5}, "conv1": "not a row", "fc2": {"k": 3, "q": "zip"}},
                    options={"plan_prune_epochs": -1, "plan_unknown": 3, "plan_cluster_epochs": 1},
                    target={"kind": "ratio", "value": 1000})
    draft, problem = parse(value)
    assert problem is None
    assert draft["rows"] == {"fc1": {"k": 16}, "fc2": {"k": 3}}  # k=3: a whole number between the choices
    assert draft["options"] == {"plan_cluster_epochs": 1}
    assert draft["target"] is None  # 1000x is outside the ratio's 2-100
    # sp 1.5, nope, qk True, qs 2.5, the unknown layer, the bad row, q zip, 2 options and the target
    assert draft["dropped"] == 10


@pytest.mark.parametrize("kind", [{"a": 1}, ["ratio"], None, 3])
def test_draft_target_of_another_type_is_dropped_not_raised(kind):
    """The fuzz campaign's drafts family found it: a dict as the target's kind raised TypeError (unhashable) on the
    Plan page."""
    draft, problem = parse(a_draft(target={"kind": kind, "value": 10}))
    assert problem is None and draft["target"] is None and draft["dropped"] == 1


@pytest.mark.parametrize("value, why", [
    ([1, 2], "not a JSON object"),
    ({"schema": 2}, "schema"),
    ({**{"schema": 1, "spec": "other", "report": "rep"}}, "another model"),
    ({"schema": 1, "spec": "spec", "report": "rep", "rows": [1]}, "not JSON objects"),
])
def test_a_draft_of_the_wrong_shape_or_for_another_model_is_refused_whole(value, why):
    draft, problem = parse(value)
    assert draft is None and why in problem


def test_read_draft_ignores_a_damaged_file_with_a_note(tmp_path):
    from complab.ui.plan_draft import read_draft, write_draft

    layer_fields, option_fields = fields()
    path = tmp_path / "drafts" / "plan-x.json"
    assert read_draft(path, "spec", "rep", ["fc1"], layer_fields, option_fields) == (None, None)  # none yet
    write_draft(path, a_draft())
    draft, note = read_draft(path, "spec", "rep", ["fc1"], layer_fields, option_fields)
    assert note is None and draft["rows"]["fc1"]["sp"] == 0.95 and draft["saved"] > 0
    for damage in (b"{not json", b"\xff\xfe", b'{"schema": 1, "spec": NaN}', b"[" * 100 + b"]" * 100):
        path.write_bytes(damage)
        draft, note = read_draft(path, "spec", "rep", ["fc1"], layer_fields, option_fields)
        assert draft is None and "was ignored" in note and "starts from the suggestion" in note
    path.unlink()
    os.symlink(tmp_path / "elsewhere.json", path)  # a link is never followed
    (tmp_path / "elsewhere.json").write_text(json.dumps(a_draft()))
    draft, note = read_draft(path, "spec", "rep", ["fc1"], layer_fields, option_fields)
    assert draft is None and "not a regular file" in note


def test_draft_files_are_per_model_and_report_and_the_oldest_are_removed(tmp_path, monkeypatch):
    from complab.ui import plan_draft

    paths = {plan_draft.draft_path(tmp_path, spec, report) for spec in ("a", "b") for report in ("r1", "r2")}
    assert len(paths) == 4
    assert plan_draft.report_id(None) == "none"
    assert plan_draft.report_id({"a": 1, "b": 2}) == plan_draft.report_id({"b": 2, "a": 1}) != plan_draft.report_id(
        {"a": 1, "b": 3})
    monkeypatch.setattr(plan_draft, "KEEP", 3)
    written = []
    for index in range(5):
        path = plan_draft.draft_path(tmp_path, f"spec{index}", "r")
        plan_draft.write_draft(path, a_draft())
        os.utime(path, (1000 + index, 1000 + index))
        written.append(path)
    assert sorted(p.name for p in (tmp_path / "drafts").iterdir()) == sorted(p.name for p in written[-3:])


# ---- the predicted accuracy as the page shows it ------------------------------------------------------------------

def test_shown_prediction_uses_the_range_and_never_a_confident_number_without_basis():
    from complab.ui.plan_page import shown_prediction

    old = {"accuracy": 0.925, "drop": 0.0, "low": -0.01, "high": 0.6, "calibration": {"source": "demo runs"}}
    shown = shown_prediction(old)  # an old predict(): the drop's range, turned into accuracies and clamped
    assert shown["range"] == "32.5-93.5%" and shown["confident"] and shown["basis"] == "demo runs"
    wide = shown_prediction({**old, "high": 2.0, "low": -0.5})
    assert (wide["low"], wide["high"]) == (0.0, 1.0)
    new = {**old, "accuracy_low": 0.40, "accuracy_high": 0.97, "basis": "this model's runs", "warning": ""}
    assert shown_prediction(new)["range"] == "40.0-97.0%" and shown_prediction(new)["confident"]
    warned = shown_prediction({**new, "warning": "40 validation images: one image is 2.5 points"})
    assert not warned["confident"] and warned["warning"].startswith("40 validation images")
    none = shown_prediction({**new, "basis": "none"})
    assert not none["confident"] and "no measured basis" in none["warning"]


# ---- the time estimate --------------------------------------------------------------------------------------------

def test_plan_epochs_counts_every_steps_fine_tuning():
    from complab.service import plan_epochs

    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    assert plan_epochs(quick) == 3 * 1 + 1
    prune = {"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 3, "finetune_epochs": 2}
    assert plan_epochs({"steps": [prune]}) == 6
    assert plan_epochs({"steps": [{"type": "prune", "sparsity": {"_default": 0.5}}]}) == 3 * 4  # the defaults
    assert plan_epochs(None) == 0 and plan_epochs({"steps": "x"}) == 0


def test_run_timing_splits_a_run_into_its_steps_and_the_rest():
    from complab.service import run_timing

    row = {"started": 100.0, "finished": 160.0,
           "job": {"plan": {"steps": [{"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1,
                                       "finetune_epochs": 5}]}}}
    events = [{"time": 101.0, "stage": "start"}, {"time": 104.0, "stage": "measure original"},
              {"time": 110.0, "stage": "prune round 1/1"}, {"time": 150.0, "stage": "write compact file"},
              {"time": 152.0, "stage": "measure compressed"}]
    timing = run_timing(row, events)
    assert timing == {"seconds": 60.0, "epochs": 5, "overhead": 10.0 + 10.0, "steps": ("prune",)}
    assert run_timing(row, [])["overhead"] is None  # no events: only the total is known
    assert run_timing({**row, "finished": None}, events) is None


def test_time_estimate_from_measured_runs():
    from complab.service import time_estimate

    assert time_estimate([], 4)["why"] == "no estimate yet: first run of this model"
    timings = [{"seconds": 30.0, "epochs": 4, "overhead": 10.0, "steps": ("cluster", "prune")},
               {"seconds": 50.0, "epochs": 8, "overhead": 12.0, "steps": ("cluster", "prune")},
               {"seconds": 14.0, "epochs": 0, "overhead": 14.0, "steps": ("prune",)}]
    one = time_estimate(timings, 6, steps=("prune", "cluster"))  # the two runs with the same steps
    assert one["overhead"] == 11.0 and one["per_epoch"] == pytest.approx((5.0 + 38 / 8) / 2)
    assert one["seconds"] == pytest.approx(11.0 + 6 * one["per_epoch"]) and one["same_steps"] and one["basis"] == 2
    sweep = time_estimate(timings, 6, runs=5, workers=2, steps=("prune", "cluster"))
    assert sweep["seconds"] == pytest.approx(3 * one["seconds"])  # 5 runs, 2 at a time: 3 waves
    quick = time_estimate(timings, 0, steps=("prune",))
    assert quick["seconds"] == 14.0  # a run without fine-tuning: as long as the measured one
    no_tuning = [t for t in timings if t["epochs"] == 0]
    assert "no earlier run of this model fine-tuned" in time_estimate(no_tuning, 3)["why"]


def test_time_text_says_the_basis():
    from complab.ui.plan_page import time_text

    text = time_text({"seconds": 95.0, "per_run": 95.0, "per_epoch": 5.0, "overhead": 15.0, "basis": 2,
                      "same_steps": True, "epochs": 16})
    assert text == "about 1:35 (15 s to load, measure and write + 16 epochs x 5.0 s; timed on 2 earlier runs of " \
                   "this model)"
    assert time_text({"seconds": None, "why": "no estimate yet: first run of this model"}) == \
        "no estimate yet: first run of this model"
    several = time_text({"seconds": 190.0, "per_run": 95.0, "per_epoch": 5.0, "overhead": 15.0, "basis": 1,
                         "same_steps": False, "epochs": 16}, runs=4, workers=2)
    assert several.startswith("about 3:10 for 4 runs (1:35 each, 2 at a time)") and "other steps: rough" in several


# ---- the Runs page's words -----------------------------------------------------------------------------------------

def test_runs_are_grouped_by_sweep_newest_first():
    from complab.ui.runs import grouped

    runs = [{"id": f"r{i}", "created": float(i)} for i in range(6)]
    sweeps = [{"id": "s1", "created": 2.5, "members": [{"run": "r3"}, {"run": "r1"}, {"run": "lost"}]},
              {"id": "s2", "created": 5.5, "members": []}]
    entries = grouped(runs, sweeps)
    assert [(kind, item["id"]) for kind, item, _ in entries] == [
        ("sweep", "s2"), ("run", "r5"), ("run", "r4"), ("sweep", "s1"), ("run", "r2"), ("run", "r0")]
    members = next(m for kind, item, m in entries if item["id"] == "s1")
    assert [row["id"] for row in members] == ["r3", "r1"]  # the sweep's order; a lost member is left out
    assert len(grouped(runs, sweeps, limit=2)) == 2


def test_sweep_heading_counts_its_members():
    from complab.ui.runs import sweep_heading

    sweep = {"label": "sweep 3f2a (ratio 20-40)", "name": "my-plan", "members": [{}, {}, {}],
             "counts": {"queued": 1, "running": 0, "succeeded": 2, "failed": 0}}
    assert sweep_heading(sweep) == "sweep 3f2a (ratio 20-40) · my-plan · 3 runs: 2 succeeded, 1 queued"


def test_change_from_original_colours_and_noise():
    from complab.ui.runs import change_from_original

    worse = change_from_original({"before": {"accuracy": 0.986}, "after": {"accuracy": 0.950}})
    assert worse == {"text": "acc 98.6% -> 95.0%", "change": "-3.6 pts", "colour": "red", "noise": "",
                     "interval": ""}
    better = change_from_original({"before": {"accuracy": 0.95}, "after": {"accuracy": 0.96}})
    assert better["colour"] == "green" and better["change"] == "+1.0 pts"
    same = change_from_original({"before": {"accuracy": 0.95}, "after": {"accuracy": 0.9501}})
    assert same["change"] == "no change" and same["colour"] == "gray"
    small = {"before": {"accuracy": 0.925, "images": 40}, "after": {"accuracy": 0.475, "images": 40}}
    assert change_from_original(small)["colour"] == "red"  # 45 points on 40 images is not noise
    noisy = change_from_original({"before": {"accuracy": 0.925, "images": 40}, "after": {"accuracy": 0.9,
                                                                                        "images": 40}})
    assert noisy["colour"] == "gray" and noisy["noise"] == "within noise" and noisy["change"] == "-2.5 pts"
    assert noisy["interval"].startswith("95% CI ") and noisy["interval"].endswith("on 40 images")
    boxes = change_from_original({"before": {"accuracy": 0.512}, "after": {"accuracy": 0.498}}, boxes=True)
    assert boxes["text"] == "mAP50 0.512 -> 0.498" and boxes["change"] == "-1.4 pts"
    assert change_from_original({"after": {"accuracy": 0.5}}) is None


def test_log_tail_shows_whole_lines(tmp_path):
    """A log read from its middle starts at a whole line (the Runs page shows each line whole, wrapped)."""
    from complab.engine.store import RunStore

    store = RunStore(tmp_path)
    folder = store.run_dir("20260101-000000-abcdef")
    folder.mkdir(parents=True)
    lines = [f"line {i} " + "x" * (i * 37 % 500) for i in range(200)]
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
    tail = store.log_tail("20260101-000000-abcdef", 5).splitlines()
    assert tail == lines[-5:]
    assert all(line in lines for line in store.log_tail("20260101-000000-abcdef", 40).splitlines())


# ---- the pages ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A data folder with one finished analysis and one finished (fine-tuned) run of demo:lenet5."""
    from complab import engine

    home = tmp_path_factory.mktemp("keep")
    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    quick["steps"][0]["finetune_epochs"] = 1  # 1 + 1 epochs: a fine-tuned run for the timings, in a third the time
    sens = engine.submit({"kind": "sensitivity", **SPEC, "config": {"val_size": 120, "sparsities": [0.0, 0.5, 0.9],
                                                                     "n_clusters": [2, 8, 32], "seed": 0}}, root=home)
    run = engine.submit({"kind": "compress", **SPEC, "plan": quick, "latency": False}, root=home)
    for run_id in (sens, run):
        assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    return home, run


@pytest.fixture
def home(seeded, monkeypatch):
    """The seeded folder, with no draft left by another test."""
    folder, _ = seeded
    shutil.rmtree(folder / "drafts", ignore_errors=True)
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(folder))
    return folder


def plan_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sparsity(at: AppTest, layer: str):
    return at.slider(key=next(s.key for s in at.slider if s.key.endswith(f"::sp::{layer}")))


def in_order(at: AppTest) -> list[tuple[str, str]]:
    """(element type, its text) of the main area, top to bottom."""
    out = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if isinstance(children, dict) and children:
            for index in sorted(children):
                walk(children[index])
            return
        kind = getattr(node, "type", "")
        out.append((kind, str(node.label if kind == "button" else getattr(node, "value", ""))))

    walk(at.main)
    return out


def test_plan_page_keeps_target_and_edits_across_a_page_change_and_a_reload(home):
    at = plan_page()
    suggested = sparsity(at, "fc1").value
    at.number_input(key="plan_target_value").set_value(55.0).run()
    sparsity(at, "fc1").set_value(0.975 if suggested != 0.975 else 0.95).run()
    edited = sparsity(at, "fc1").value
    assert edited != suggested and not at.exception
    at.switch_page("pages/model.py")
    at.run()
    assert not at.exception and not [s for s in at.slider if "::sp::" in s.key]  # another page: the rows are gone
    at.switch_page("pages/plan.py")
    at.run()
    assert at.number_input(key="plan_target_value").value == 55.0 and sparsity(at, "fc1").value == edited
    reloaded = plan_page()  # a new session on the same data folder: a browser reload
    assert reloaded.number_input(key="plan_target_value").value == 55.0
    assert sparsity(reloaded, "fc1").value == edited
    assert any("Your draft of this plan is back" in c.value for c in reloaded.caption)
    reloaded.button(key="plan_reset").click().run()  # back to the sensitivity suggestion
    assert sparsity(reloaded, "fc1").value == suggested
    assert reloaded.number_input(key="plan_target_value").value == 40.0
    assert plan_page().number_input(key="plan_target_value").value == 40.0  # and the draft says so too


def test_plan_page_ignores_a_damaged_draft_with_a_note(home):
    at = plan_page()
    suggested = sparsity(at, "fc1").value
    drafts = list((home / "drafts").glob("plan-*.json"))
    assert len(drafts) == 1
    again = plan_page()  # a draft that is the suggestion itself is read back without a word
    assert not any("draft" in c.value for c in [*again.caption, *again.warning])  # (the 120-image report's noise
    # warning is the predictor's, not the draft's)
    drafts[0].write_text('{"schema": 1, "rows": ')  # cut short
    at = plan_page()
    assert any("was ignored" in w.value and "not valid JSON" in w.value for w in at.warning)
    assert sparsity(at, "fc1").value == suggested and not at.exception
    drafts[0].write_text(json.dumps({"schema": 1, "spec": "x", "report": "y"}))
    at = plan_page()
    assert any("another model" in w.value for w in at.warning)


def test_plan_page_target_is_typed_with_steps_per_kind(home):
    at = plan_page()
    target = at.number_input(key="plan_target_value")
    assert target.value == 40.0 and target.step == 1.0 and (target.min, target.max) == (2.0, 100.0)
    target.set_value(37.0).run()
    at.button(key="plan_apply").click().run()
    assert not at.exception
    note = next(c.value for c in at.caption if c.value.startswith("Solver"))
    assert "predicted accuracy drop" in note and "-0.00" not in note
    at.selectbox(key="plan_target_kind").select("accuracy").run()
    budget = at.number_input(key="plan_target_value")
    assert budget.value == 1.0 and budget.step == 0.1 and (budget.min, budget.max) == (0.0, 10.0)
    budget.set_value(2.5).run()
    assert at.number_input(key="plan_target_value").value == 2.5


def test_plan_page_shows_the_predicted_range_and_the_time_estimate(home):
    from complab import engine

    at = plan_page()
    metric = next(m for m in at.metric if m.label == "Predicted accuracy")
    assert "%" in metric.value
    assert any(c.value.startswith("Predicted accuracy") and "range" in c.value for c in at.caption)
    estimate = next(c.value for c in at.caption if c.value.startswith("Estimated time of a run"))
    assert "about " in estimate and "timed on 1 earlier run of this model" in estimate
    at.text_input(key="plan_sweep_targets::ratio").input("10, 20, 40").run()
    sweep = next(c.value for c in at.caption if c.value.startswith("Estimated time: about"))
    workers = engine.settings(home)["max_workers"]
    assert "for 3 runs (" in sweep and f"each, {workers} at a time)" in sweep  # the sweep's members, by the workers


def test_plan_page_time_estimate_without_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "empty"))
    at = plan_page()
    assert any(c.value == "Estimated time of a run: no estimate yet: first run of this model." for c in at.caption)


def test_plan_page_launch_says_queued_at_the_top(home):
    from complab import engine

    at = plan_page()
    for key in ("plan_prune_epochs", "plan_cluster_epochs"):  # a quick run
        at.number_input(key=key).set_value(0)
    at.button(key="plan_launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = next(s.value for s in at.success if "queued" in s.value)
    run_id = said.split()[1]
    try:
        assert [t.value for t in at.toast] == [f"Queued: run {run_id}"]  # seen wherever the page is scrolled
        order = in_order(at)
        top = next(i for i, (_, text) in enumerate(order) if text == said)
        target = next(i for i, (_, text) in enumerate(order) if "Global target" in text)
        launch = next(i for i, (kind, text) in enumerate(order) if text == "Launch run")
        assert top < target < launch  # above the page's first section, not by the button at its bottom
    finally:
        engine.cancel(run_id, root=home)
        engine.wait(run_id, 120, root=home)


def runs_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/runs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_runs_page_groups_a_sweep_and_shows_the_change_from_the_original(home, seeded):
    from complab import engine

    _, run_id = seeded
    job = engine.status(run_id, root=home)["job"]
    sweep_id = engine.submit_sweep([job], root=home, axis="ratio", targets=["ratio:20"])  # the run, reused
    at = runs_page()
    heading = next(m.value for m in at.markdown if f"sweep {sweep_id[-4:]}" in m.value)
    assert "1 run: 1 succeeded" in heading
    assert not any(run_id in m.value for m in at.markdown)  # in the sweep, closed: not listed on its own
    at.toggle(key=f"sweep_open_{sweep_id}").set_value(True).run()
    row = next(m.value for m in at.markdown if run_id in m.value)
    metrics = engine.status(run_id, root=home)["metrics"]
    change = next(m.value for m in at.markdown if m.value.startswith("acc "))
    before, after = 100 * metrics["before"]["accuracy"], 100 * metrics["after"]["accuracy"]
    assert change.startswith(f"acc {before:.1f}% -> {after:.1f}%") and "quick-demo" in row
    moved = after - before
    assert (":gray[no change" in change) if abs(moved) < 0.05 else (f"{moved:+.1f} pts" in change)
    assert at.code and all(c.proto.wrap_lines for c in at.code)  # the log: whole lines, wrapped


def test_runs_page_rerun_says_queued_at_the_top(home, seeded):
    from complab import engine

    _, run_id = seeded
    at = runs_page()
    for toggle in [t for t in at.toggle if t.key.startswith("sweep_open_")]:  # the run may be in a sweep
        toggle.set_value(True)
    at.run()
    button = next(b for b in at.button if b.label == "Re-run")
    button.click().run()
    assert not at.exception
    said = next(s.value for s in at.success if "a re-run of" in s.value)
    new = said.split()[1]
    try:
        assert [t.value for t in at.toast] == [f"Queued: run {new}"]
        order = in_order(at)
        assert next(i for i, (_, text) in enumerate(order) if text == said) < next(
            i for i, (_, text) in enumerate(order) if text == "Re-run")
    finally:
        engine.cancel(new, root=home)
        engine.wait(new, 120, root=home)


def test_page_estimate_reads_the_seeded_run(seeded):
    """service.run_timings on the real run: its measured seconds, its plan's epochs and the time outside steps."""
    from complab import service

    home, _ = seeded
    timings = [t for t in service.run_timings(SPEC, home) if t["epochs"] == 2]  # the seeded quick recipe's run
    assert len(timings) == 1 and 0 < timings[0]["overhead"] < timings[0]["seconds"]
    estimate = service.time_estimate(timings, 2, steps=("prune", "cluster"))
    assert estimate["seconds"] == pytest.approx(timings[0]["seconds"])  # the same plan: as long as it took
    assert estimate["per_epoch"] == pytest.approx((timings[0]["seconds"] - timings[0]["overhead"]) / 2)


def test_sparkline_reads_a_setting_beyond_the_measured_grid():
    """A slider above the analysis's highest sparsity (0.975 on a 0-0.9 grid) drew a traceback on the Plan page."""
    from complab.ui.sparkline import Curve, accuracy_at, sparkline

    curve = Curve((0.0, 0.5, 0.9), (0.98, 0.97, 0.80), (True, True, True), 0.98, "sparsity")
    assert accuracy_at(curve, 0.975) == 0.80 and accuracy_at(curve, 0.7) == pytest.approx(0.885)
    assert "<svg" in sparkline(curve, 0.975)
