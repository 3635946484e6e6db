"""AppTest tests of every page (Streamlit's headless script runner; the engine runs real jobs in tmp dirs)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def page(name: str) -> AppTest:
    at = app()
    at.run()
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_model_page_shows_measured_baseline(home):
    at = app()
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Parameters"] == "431,080"  # demo:lenet5 by default
    assert "%" in labels["Test accuracy"]
    at.selectbox(key="demo_model").select("lenet300").run()
    labels = {m.label: m.value for m in at.metric}
    assert labels["Parameters"] == "266,610"
    assert at.dataframe[0].value["layer"].tolist() == ["fc1", "fc2", "fc3"]


def test_model_page_bad_folder_shows_error(home):
    at = app()
    at.run()
    at.radio(key="data_source").set_value("Local folder").run()
    at.text_input(key="data_folder").input("/no/such/folder").run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_plan_page_estimate_moves_with_slider(home):
    at = page("plan")
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    at.slider(key=next(s.key for s in at.slider if s.key.endswith("sp::fc1"))).set_value(0.95).run()
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert before != after
    assert int(after.replace(",", "").split()[0]) < int(before.replace(",", "").split()[0])


def test_sensitivity_and_runs_and_compare_pages_empty_state(home):
    for name in ("sensitivity", "runs", "compare"):
        at = page(name)
        assert at.info, name
