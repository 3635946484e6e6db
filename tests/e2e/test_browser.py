"""The whole flow in a real browser: model -> sensitivity -> plan (slider moves the estimate) -> run ->
compare (the run on the Pareto plot) -> download the compact file and decode it."""

import re

import pytest
from complab.models.compact import load_compressed

from .conftest import shot

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def wait_idle(page) -> None:
    """Streamlit shows a 'running' widget while the script runs; wait until it is gone."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def goto(page, url: str, title: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title).first.wait_for()
    wait_idle(page)


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def test_full_flow(page, app_url, tmp_path):
    url = app_url["url"]
    goto(page, url, "Model")
    page.get_by_text("431,080").first.wait_for()  # LeNet-5's parameters, measured
    shot(page, "1-model")

    goto(page, f"{url}/sensitivity", "Sensitivity")
    page.get_by_role("button", name="Run sensitivity analysis").click()
    page.get_by_text("Accuracy drop, layer x sparsity").wait_for(timeout=240_000)
    wait_idle(page)
    shot(page, "2-sensitivity")

    goto(page, f"{url}/plan", "Plan")
    before = metric(page, "Estimated file")
    # the first layer's sparsity (the global target is a number box); Streamlit's slider is an <input type=range>
    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    wait_idle(page)
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some("
        "m => m.innerText.includes('Estimated file') && !m.innerText.includes(before))", arg=before)
    after = metric(page, "Estimated file")
    assert after != before
    shot(page, "3-plan")
    # no fine-tuning: the journey (launch -> runs -> compare -> download) is what is tested, not the epochs
    page.get_by_text("Fine-tuning and search settings").click()
    for label in ("epochs per round", "shared-value epochs"):
        box = page.locator(f'input[aria-label="{label}"]')
        box.fill("0")
        box.press("Enter")
        wait_idle(page)
        assert box.input_value() == "0"
    page.get_by_role("button", name="Launch run").click()
    page.get_by_text(re.compile(r"Run \d{8}-\d{6}-\w+ queued")).wait_for()
    run_id = re.search(r"Run (\S+) queued", page.get_by_text(re.compile("queued")).first.inner_text()).group(1)

    goto(page, f"{url}/runs", "Runs")
    page.get_by_text(run_id).first.wait_for()
    shot(page, "4-runs-progress")
    # the page polls the engine every second: wait until this run's row says succeeded
    page.wait_for_function(
        """(id) => [...document.querySelectorAll('[data-testid="stHorizontalBlock"]')].some(
               row => row.innerText.includes(id) && row.innerText.includes('succeeded'))""",
        arg=run_id, timeout=540_000)
    wait_idle(page)
    shot(page, "4-runs")

    goto(page, f"{url}/compare", "Compare")
    page.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()  # Plotly draws after the frame appears
    assert page.locator(".js-plotly-plot .scatterlayer .point").count() >= 1
    picker = page.locator('input[aria-label="Run"]')  # the run picker shows the best run (here the only one)
    picker.wait_for()
    assert run_id in picker.input_value()  # "plan: score, ratio (best on the front) · run id"
    shot(page, "5-compare")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Compact file (.clab)").click()
    path = tmp_path / "model.clab"
    download_info.value.save_as(path)
    decoded = load_compressed(path)
    assert decoded.num_classes == 10
    assert path.stat().st_size < 100_000


def test_first_visit_straight_to_a_page_runs_through_app_py(page, fresh_app_url):
    """A fresh server's first visitor opens /plan directly: the page still comes with app.py's navigation and
    sidebar (complab/ui/navigation.py's page_setup; without it Streamlit's old pages/ mode lists the files)."""
    goto(page, f"{fresh_app_url['url']}/plan", "Plan")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Active model").wait_for()
    links = sidebar.locator('[data-testid="stSidebarNav"] a')
    assert [line.splitlines()[-1] for line in links.all_inner_texts()] == [
        "Model", "Sensitivity", "Plan", "Runs", "Compare", "Detections", "Lesson"]


def test_sensitivity_estimate_mode_through_the_page(page, app_url):
    """Pick the estimate mode on the Sensitivity page: the run finishes, the page says which points were measured,
    and the curves draw measured points filled and estimated ones hollow (the legend says so). On the shared server:
    an exact report of the same model may be on the page already, so the estimate's own caption marks the end."""
    goto(page, f"{app_url['url']}/sensitivity", "Sensitivity")
    page.get_by_text("Default: estimate when parameters x input pixels is above").wait_for()
    page.locator('[data-testid="stRadio"]').get_by_text("estimate", exact=True).click()
    wait_idle(page)
    page.get_by_role("button", name="Run sensitivity analysis").click()
    page.get_by_text(re.compile(r"Estimate mode: \d+ exact points on \d+ validation images")).wait_for(
        timeout=240_000)
    page.get_by_text("Accuracy drop, layer x sparsity").wait_for()
    wait_idle(page)
    page.locator(".js-plotly-plot .legendtext", has_text="estimated (hollow)").first.wait_for()
    assert page.locator(".js-plotly-plot .legendtext", has_text="measured (filled)").count() >= 2
    shot(page, "2b-sensitivity-estimate")
