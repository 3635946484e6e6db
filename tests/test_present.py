"""Presentation mode (?present=1&run=ID): the Compare and Model pages drawn for a projector, from the URL alone."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A data folder with two finished quick runs on demo:lenet5 (the second one listed first: newest)."""
    from complab import engine

    home = tmp_path_factory.mktemp("present")
    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    base = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
    ids = []
    for name, epochs in (("first-plan", 1), ("second-plan", 0)):
        plan = {**quick, "name": name, "steps": [{**step, "finetune_epochs": epochs} for step in quick["steps"]]}
        ids.append(engine.submit({"kind": "compress", **base, "plan": plan, "latency": False}, root=home))
    for run_id in ids:
        assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    return home, ids


def open_page(name: str, query: dict) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"pages/{name}.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_in_presentation_mode_shows_the_linked_run_large(two_runs, monkeypatch):
    home, (first, _) = two_runs
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = open_page("compare", {"present": "1", "run": first})  # not the newest: the URL chooses
    assert "first-plan" in at.title[0].value
    labels = {m.label: m.value for m in at.main.metric}
    assert {"Smaller file", "Compact file", "top-1 after"} <= set(labels)
    size = (home / "runs" / first / "model.clab").stat().st_size
    assert float(labels["Smaller file"].rstrip("x")) == pytest.approx(1727501 / size, abs=0.051)
    # accuracy vs bytes, vs FLOPs, where the bytes went, and per-class accuracy against the original (the active
    # model is the run's: its behaviour diff is computed, tests/test_behaviour_ui.py checks its numbers)
    assert [chart.key for chart in at.get("plotly_chart")] == ["present_pareto_bytes", "present_pareto_flops",
                                                               "present_waterfall", "present_behaviour"]
    # nothing to set on a projector: no picker, slider or text field in the page; one button, the way out
    for kind in ("selectbox", "slider", "text_input", "number_input", "radio", "multiselect", "checkbox"):
        assert not getattr(at.main, kind), kind
    assert [b.key for b in at.main.button] == ["present_exit"]
    assert not at.main.dataframe and not at.main.caption
    assert any("display: none" in m.value for m in at.main.markdown)  # the projector CSS

    at.button(key="present_exit").click().run()
    assert not at.exception
    assert "present" not in at.query_params
    assert at.title[0].value == "Compare"
    from complab import engine
    from complab.analysis.pareto import best_run, runs_table

    best = best_run(runs_table(engine.list_runs(root=home, kind="compress")))["run"]
    assert at.selectbox(key="compare_run").value == best  # the normal page, on the best run of the front
    assert at.sidebar.toggle(key="present_toggle").value is False


def test_the_sidebar_toggle_puts_the_chosen_run_in_a_shareable_url(two_runs, monkeypatch):
    home, (first, _) = two_runs
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = open_page("compare", {"run": first})
    assert at.selectbox(key="compare_run").value == first  # the URL's run, in the normal page too
    at.sidebar.toggle(key="present_toggle").set_value(True).run()
    assert not at.exception
    assert at.query_params["present"] in ("1", ["1"]) and at.query_params["run"] in (first, [first])
    assert "first-plan" in at.title[0].value and not at.main.selectbox


def test_model_page_in_presentation_mode_shows_the_summary_numbers_only(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = open_page("model", {"present": "1"})
    labels = {m.label: m.value for m in at.main.metric}
    assert labels["Parameters"] == "431,080"
    assert not at.main.radio and not at.main.selectbox and not at.main.dataframe
