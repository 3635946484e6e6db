"""The map of the experiments (issue 28): runs record where they came from (job "origin"), analysis/lineage.py draws
the graph (sweeps, re-runs, recipes, the lesson's steps, same recipes) from untrusted run rows, recipe_diff says what
changed per layer, and the Compare page draws the map, selects a clicked run and starts a plan from a run's recipe."""

import json
import shutil
import time
from pathlib import Path

import pytest
from complab import engine, runfolder
from complab.analysis.lineage import MAX_DEPTH, experiment_graph, layer_names, recipe_diff
from complab.engine.jobs import validate
from complab.engine.keys import content_key
from complab.errors import CompressionLabError
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "assets" / "recipes"
TIMEOUT = 120
BASE = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
TINY = {"schema_version": 1, "name": "tiny-prune", "seed": 0, "eval_split": "test",
        "steps": [{"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 0}]}
LENET5_LAYERS = ["conv1", "conv2", "fc1", "fc2"]  # demo:lenet5's weight layers


def recipe(name: str) -> dict:
    return json.loads((RECIPES / name).read_text())


def row(run_id: str, created: float, plan: dict | None = None, origin=None, sweep: str | None = None,
        model: str = "demo:lenet5", accuracy: float | None = 0.9, size: int | None = 1000) -> dict:
    """A run as engine.list_runs lists it (only what the map reads)."""
    job = {"kind": "compress", "model": model, "plan": plan or TINY}
    if origin is not None:
        job["origin"] = origin
    if sweep is not None:
        job["sweep"] = {"id": sweep, "index": 0, "target": "ratio:10"}
    metrics = None if accuracy is None else {
        "after": {"accuracy": accuracy, "compressed_bytes": size}, "before": {"accuracy": 0.99, "fp32_bytes": 99_000},
        "plan_name": (plan or TINY)["name"]}
    return {"id": run_id, "state": "succeeded" if metrics else "failed", "created": created, "job": job,
            "metrics": metrics, "model": model}


def named(plan: dict, name: str, sparsity: float | None = None) -> dict:
    out = json.loads(json.dumps(plan))
    out["name"] = name
    if sparsity is not None:
        out["steps"][0]["sparsity"] = {"_default": sparsity}
    return out


def parents(graph) -> dict[str, tuple[str | None, str | None]]:
    """run id -> (parent node id, edge kind)."""
    return {n["run"]: (n["parent"], n["edge"]) for n in graph.nodes if n["kind"] == "run"}


# ---- provenance: validated at submit, read back bounded, never part of what a run computes -----------------------

def test_origin_is_checked_at_submit_and_dropped_when_malformed_in_a_folder():
    job = {"kind": "compress", **BASE, "plan": TINY}
    good = validate({**job, "origin": {"kind": "recipe", "run": "20261207-101500-ab12cd"}})
    assert good["origin"] == {"kind": "recipe", "run": "20261207-101500-ab12cd"}
    assert content_key(good) == content_key(validate(job))  # where a run came from never changes what it computes
    for bad in ({"kind": "copy", "run": "x1"}, {"kind": "rerun", "run": "../etc"}, {"kind": "rerun"}, "x",
                {"kind": "rerun", "run": "a" * 101}, {"kind": "rerun", "run": 5, "extra": 1}):
        with pytest.raises(CompressionLabError, match="origin"):
            validate({**job, "origin": bad})
    checked, problem = runfolder.check_job({**job, "origin": {"kind": "rerun", "run": ["a"]}})
    assert problem is None and "origin" not in checked  # advisory: a bad one is dropped, the run stays usable
    checked, _ = runfolder.check_job({**job, "origin": {"kind": "rerun", "run": "r1"}})
    assert checked["origin"] == {"kind": "rerun", "run": "r1"}


# ---- the graph ---------------------------------------------------------------------------------------------------

def test_graph_links_reruns_recipes_sweeps_lesson_steps_and_same_recipes():
    lesson_prune = named(TINY, "lesson: prune (fast test settings)")
    lesson_share = json.loads(json.dumps(lesson_prune))
    lesson_share["name"] = "lesson: prune + share (fast test settings)"
    lesson_share["steps"].append({"type": "cluster", "n_clusters": {"_default": 16}})
    runs = [row("a", 1, named(TINY, "first")),
            row("b", 2, named(TINY, "first"), origin={"kind": "rerun", "run": "a"}),
            row("c", 3, named(TINY, "edited", 0.7), origin={"kind": "recipe", "run": "b"}),
            row("d", 4, named(TINY, "s1", 0.6), sweep="sw1"), row("e", 5, named(TINY, "s2", 0.8), sweep="sw1"),
            row("f", 6, named(TINY, "again")),  # a's steps, no origin: the same recipe
            row("l1", 7, lesson_prune), row("l2", 8, lesson_share),
            row("x", 9, named(TINY, "other model"), model="demo:lenet300")]
    sweeps = [{"id": "sw1", "label": "sweep ab12 (ratio)", "members": [{"run": "d", "reused": False},
                                                                       {"run": "e", "reused": False},
                                                                       {"run": "a", "reused": True}]}]
    graph = experiment_graph(runs[::-1], sweeps)  # newest first, as list_runs gives them
    assert parents(graph) == {
        "a": ("original:demo:lenet5", "original"), "b": ("run:a", "rerun"), "c": ("run:b", "recipe"),
        "d": ("sweep:demo:lenet5:sw1", "sweep"), "e": ("sweep:demo:lenet5:sw1", "sweep"),
        "f": ("run:a", "same-recipe"), "l1": ("original:demo:lenet5", "lesson"), "l2": ("run:l1", "lesson"),
        "x": ("original:demo:lenet300", "original")}
    nodes = {n["id"]: n for n in graph.nodes}
    assert nodes["sweep:demo:lenet5:sw1"]["label"] == "sweep ab12 (ratio)"
    assert nodes["original:demo:lenet5"]["accuracy"] == 0.99 and nodes["original:demo:lenet5"]["bytes"] == 99_000
    # layout: x is the generation, every leaf its own row, a parent centred on its children, models apart
    assert [nodes[f"run:{r}"]["x"] for r in "abc"] == [1.0, 2.0, 3.0] and nodes["run:d"]["x"] == 2.0
    leaves = [n for n in graph.nodes if not any(e["source"] == n["id"] for e in graph.edges)]
    assert len({n["y"] for n in leaves}) == len(leaves)
    assert nodes["sweep:demo:lenet5:sw1"]["y"] == (nodes["run:d"]["y"] + nodes["run:e"]["y"]) / 2
    rows = {model: {n["y"] for n in graph.nodes if n["model"] == model} for model in ("demo:lenet5", "demo:lenet300")}
    assert min(rows["demo:lenet300"]) > max(rows["demo:lenet5"]) + 1 or \
        max(rows["demo:lenet300"]) < min(rows["demo:lenet5"]) - 1  # each model's tree in its own band, a row apart
    assert experiment_graph(runs, sweeps) == graph  # deterministic, whatever order the rows come in
    untold = parents(experiment_graph(runs, None))  # without the sweeps' listing: the jobs' own sweep tags
    assert untold["d"] == untold["e"] == ("sweep:demo:lenet5:sw1", "sweep")
    assert graph.parent_run("c") == "b" and graph.parent_run("e") == "d" and graph.parent_run("a") is None


def test_untrusted_origins_cannot_loop_reach_out_or_run_away():
    def own(run_id, created, origin, model="demo:lenet5"):  # each its own recipe: no "same recipe" link
        return row(run_id, created, named(TINY, run_id, created / 100), origin=origin, model=model)

    runs = [own("a", 1, {"kind": "rerun", "run": "b"}), own("b", 2, {"kind": "rerun", "run": "a"}),
            own("c", 3, {"kind": "recipe", "run": "c"}),  # itself
            own("d", 4, {"kind": "rerun", "run": "nosuchrun"}), own("e", 5, {"kind": "rerun", "run": "x" * 5000}),
            own("f", 6, ["rerun", "a"]), own("g", 7, {"kind": 3, "run": {"a": 1}}),
            own("h", 8, {"kind": "rerun", "run": "z"}), own("z", 9, None, model="demo:vgg_small"),  # later, elsewhere
            {"id": "../../etc", "job": {"origin": {"kind": "rerun", "run": "a"}}}, "not a row", None,
            {"id": "n", "created": float("nan"), "job": "x", "metrics": [1], "state": 5}]
    graph = experiment_graph(runs, [{"id": 5}, "x", {"id": "s", "members": "no"}])
    found = parents(graph)
    assert found["b"] == ("run:a", "rerun")  # the earlier of the two keeps no parent: the loop is broken
    assert found["a"][1] == found["c"][1] == found["d"][1] == found["e"][1] == "original"
    assert found["f"][1] == found["g"][1] == found["h"][1] == "original"
    assert "../../etc" not in found and found["n"][1] == "original"
    cycle = experiment_graph([own(f"c{i}", i + 1, {"kind": "rerun", "run": f"c{(i + 1) % 50}"}) for i in range(50)])
    assert [n["run"] for n in cycle.nodes if n["edge"] == "rerun"] == ["c49"]  # only the last names an earlier run
    cycle = experiment_graph([own(f"c{i}", i + 1, {"kind": "rerun", "run": f"c{(i - 1) % 50}"}) for i in range(50)])
    assert sum(1 for n in cycle.nodes if n["edge"] == "rerun") == 49  # the first names the last: that one is cut
    started = time.monotonic()
    chain = experiment_graph([row(f"r{i}", i, origin={"kind": "rerun", "run": f"r{i - 1}"}) for i in range(3000)])
    assert time.monotonic() - started < 10
    assert max(n["generation"] for n in chain.nodes) == MAX_DEPTH and len(chain.runs()) == 2000
    assert "2,000 newest of 3,000" in chain.note


# ---- recipe diff -------------------------------------------------------------------------------------------------

def test_recipe_diff_resolves_each_layer_on_real_recipes():
    records, quick = recipe("lenet5.json"), recipe("quick.json")
    rows = recipe_diff(records, quick, LENET5_LAYERS)
    said = {(r["step"], r["layer"], r["setting"]): (r["a"], r["b"]) for r in rows}
    # records: _default 0.994, conv1 0.5, conv2 0.95, fc2 0.85; quick: _default 0.9, re:fc3|classifier|fc2 0.5
    assert said[("prune", "conv1", "sparsity")] == (0.5, 0.9)
    assert said[("prune", "fc2", "sparsity")] == (0.85, 0.5) and said[("prune", "fc1", "sparsity")] == (0.994, 0.9)
    assert said[("prune", None, "iterations")] == (6, 1) and said[("cluster", None, "bias_clusters")] == (8, 0)
    assert said[("cluster", "conv1", "n_clusters")] == (4, 16)
    assert next(r["text"] for r in rows if r["layer"] == "conv1" and r["setting"] == "sparsity") == \
        "conv1: sparsity 0.5 -> 0.9"
    assert ("prune", "fc1", "sparsity") in said and len([r for r in rows if r["setting"] == "sparsity"]) == 4
    keyed = {(r["layer"], r["setting"]) for r in recipe_diff(records, quick)}  # no layers: keys as written
    assert ("re:fc3|classifier|fc2", "sparsity") in keyed and ("_default", "sparsity") in keyed
    steps = recipe_diff(quick, recipe("int8.json"), LENET5_LAYERS)
    assert [(r["step"], r["change"]) for r in steps] == [("prune", "removed"), ("cluster", "removed"),
                                                          ("int", "added")]
    assert recipe_diff(quick, named(quick, "renamed"), LENET5_LAYERS) == []  # a name is no setting
    with pytest.raises(CompressionLabError, match="second recipe"):
        recipe_diff(quick, {"schema_version": 1, "steps": [{"type": "prune", "sparsity": {"_default": 7}}]})
    with pytest.raises(CompressionLabError, match="first recipe"):
        recipe_diff("x", quick)
    assert layer_names({"layers": [{"name": "<header>"}, {"name": "conv1.bias"}, {"name": "conv1.weight"},
                                   {"name": 3}, "x", {"name": ".weight"}]}) == ["conv1"]
    assert layer_names({"layers": "x"}) is None


# ---- the engine and the pages --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real finished run (a quick prune of LeNet-5), and received copies of its folder: a re-run of it and a plan
    started from its recipe with other settings (a run folder is what the store lists, whatever made it)."""
    home = tmp_path_factory.mktemp("lineage")
    first = engine.submit({"kind": "compress", **BASE, "plan": TINY, "latency": False}, root=home)
    assert engine.wait(first, 300, root=home)["state"] == "succeeded"
    source = home / "runs" / first
    made = {}
    for offset, (name, sparsity, kind, parent) in enumerate((("tiny-prune", 0.5, "rerun", "first"),
                                                             ("edited", 0.7, "recipe", "rerun")), 1):
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() + 60 * offset)) + f"-ab12c{offset}"
        folder = home / "runs" / run_id
        shutil.copytree(source, folder)
        plan = named(TINY, name, sparsity)
        job = json.loads((folder / "job.json").read_text())
        job.update(plan=plan, origin={"kind": kind, "run": made.get(parent, first)})
        (folder / "job.json").write_text(json.dumps(job))
        (folder / "plan.json").write_text(json.dumps(plan))
        state = json.loads((folder / "state.json").read_text())
        state["created"] = state["created"] + 60 * offset
        (folder / "state.json").write_text(json.dumps(state))
        made[kind] = run_id
    return home, first, made["rerun"], made["recipe"]


def test_rerun_records_where_it_came_from(store, monkeypatch):
    home, first, _, _ = store
    new = engine.rerun(first, root=home)
    try:
        assert engine.status(new, root=home)["job"]["origin"] == {"kind": "rerun", "run": first}
    finally:
        engine.cancel(new, root=home)
    runs = engine.list_runs(root=home, kind="compress")
    graph = experiment_graph(runs, engine.list_sweeps(root=home, runs=runs))
    assert parents(graph)[new] == (f"run:{first}", "rerun")


def app_on(home: Path, monkeypatch, run_id: str) -> AppTest:
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.query_params["run"] = run_id
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_page_draws_the_map_and_the_recipe_diff(store, monkeypatch):
    home, first, rerun, edited = store
    at = app_on(home, monkeypatch, edited)
    assert any(h.value == "Map of the experiments" for h in at.subheader)
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    figure = next(c for c in charts if any(t.get("name") == "re-run" for t in c["data"]))
    names = {t.get("name") for t in figure["data"]}
    assert {"re-run", "plan started from its recipe", "run", "original model", "the run shown"} <= names
    points = next(t for t in figure["data"] if t.get("name") == "run")
    assert sorted(points["customdata"]) == sorted([first, rerun, edited])
    assert at.selectbox(key=f"lineage_other::{edited}").value == rerun  # its parent on the map
    diff = next(d.value for d in at.dataframe if "setting" in d.value.columns)
    assert diff.to_dict("records") == [{"step": "prune", "layer": layer, "setting": "sparsity", f"in {rerun}": "0.5",
                                        f"in {edited}": "0.7"} for layer in LENET5_LAYERS]


def test_a_click_on_the_map_selects_that_run():
    """The chart's callback (AppTest cannot click a plotly point): clicked_run reads the selection, pick_run moves
    the Compare page's run select to it before the select is drawn again."""
    from complab.ui.lineage import clicked_run

    known = {"r1", "r2"}
    assert clicked_run({"points": [{"customdata": ""}, {"customdata": ["r2"]}]}, known) == "r2"
    assert clicked_run({"points": [{"customdata": "../x"}]}, known) is None
    assert clicked_run({"points": "x"}, known) is None and clicked_run(None, known) is None

    def script():
        import streamlit as st
        from complab.ui.lineage import pick_run
        from complab.ui.present import chosen_run

        st.button("click r2", key="click", on_click=pick_run, args=("r2",))
        st.write(chosen_run(["r1", "r2", "r3"], key="compare_run"))

    at = AppTest.from_function(script, default_timeout=30).run()
    at.selectbox(key="compare_run").select("r3").run()
    assert at.selectbox(key="compare_run").value == "r3"
    at.button(key="click").click().run()
    assert not at.exception and at.selectbox(key="compare_run").value == "r2"
    assert at.query_params["run"] in ("r2", ["r2"])


def test_a_plan_started_from_a_runs_recipe_carries_its_origin_into_the_launched_run(store, monkeypatch):
    home, _, _, edited = store
    at = app_on(home, monkeypatch, edited)
    at.button(key="lineage_edit_in_plan").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"Loaded run {edited}'s recipe" in s.value for s in at.success)
    assert at.text_input(key="plan_name").value == "edited"
    assert {s.key.rsplit("::", 1)[1]: s.value for s in at.slider if "::sp::" in s.key} == \
        {layer: 0.7 for layer in LENET5_LAYERS}
    before = {run["id"] for run in engine.list_runs(root=home)}
    at.button(key="plan_launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    new = {run["id"] for run in engine.list_runs(root=home)} - before
    assert len(new) == 1
    run_id = new.pop()
    try:
        job = engine.status(run_id, root=home)["job"]
        assert job["origin"] == {"kind": "recipe", "run": edited}
        prune = next(step for step in job["plan"]["steps"] if step["type"] == "prune")
        assert {layer: prune["sparsity"].get(layer, prune["sparsity"].get("_default")) for layer in LENET5_LAYERS} \
            == {layer: 0.7 for layer in LENET5_LAYERS}  # the recipe's settings, as the Plan page built them
    finally:
        engine.cancel(run_id, root=home)
