"""Presentation mode in a real browser: a prepared link (/compare?present=1&run=ID) opens the projector view (no
sidebar, the headline numbers large), its exit button brings the normal page back and the sidebar toggle turns it on
again with the run in the URL. Screenshots land in test-output/screenshots/present-*.png."""

import json
import re
from pathlib import Path

import pytest

from .conftest import ROOT, shot, started_app
from .test_browser import wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def seeded_app(tmp_path_factory):
    """The app on a data folder holding one finished quick run on demo:lenet5 (no fine-tuning: the view shows what
    the run measured, whatever it is). A server of its own: after the exit button the run picker shows this run,
    the only one (on the shared server, holding other runs, it showed another one)."""
    from complab import engine

    home = tmp_path_factory.mktemp("present-home")
    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    for step in quick["steps"]:
        step["finetune_epochs"] = 0
    run_id = engine.submit({"kind": "compress", "model": "demo:lenet5", "weights": None, "data": "digits",
                            "input_size": None, "mean": None, "std": None, "plan": quick, "latency": False}, root=home)
    assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    for app in started_app(Path(home)):
        yield {**app, "run": run_id}


@pytest.fixture
def projector_page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})  # a projector's 16:10
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def test_a_prepared_link_opens_the_projector_view_and_the_toggle_leaves_and_reenters_it(projector_page, seeded_app):
    page, url, run_id = projector_page, seeded_app["url"], seeded_app["run"]
    page.goto(f"{url}/compare?present=1&run={run_id}")
    headline = page.locator('[data-testid="stMetric"]', has_text="Smaller file").first
    headline.wait_for()
    wait_idle(page)
    # Plotly draws after the frame appears: two fronts and the waterfall
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3")
    assert headline.locator('[data-testid="stMetricValue"]').inner_text().endswith("x")
    size = float(headline.locator('[data-testid="stMetricValue"]').evaluate("e => getComputedStyle(e).fontSize")
                 .rstrip("px"))
    assert size >= 48  # projector-sized (Streamlit's own: 36 px)
    assert not page.locator('[data-testid="stSidebar"]').is_visible()
    assert not page.locator('[data-testid="stHeader"]').is_visible()
    assert page.locator('[data-testid="stSelectbox"]:visible').count() == 0
    shot(page, "present-compare")
    page.locator(".js-plotly-plot").nth(2).scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot(page, "present-compare-waterfall")))  # the viewport, scrolled to the waterfall

    page.get_by_role("button", name="Exit presentation").click()
    page.locator('[data-testid="stSidebar"]').get_by_text("Active model").wait_for()
    wait_idle(page)
    assert "present=1" not in page.url
    assert run_id in page.locator('input[aria-label="Run"]').input_value()
    shot(page, "present-off-compare")

    page.locator('[data-testid="stSidebar"] [data-testid="stCheckbox"]', has_text="Presentation mode").click()
    page.wait_for_function("() => location.search.includes('present=1')")
    page.locator('[data-testid="stSidebar"]').wait_for(state="hidden")
    wait_idle(page)
    assert f"run={run_id}" in page.url  # the link to share

    page.goto(f"{url}/?present=1")  # the Model page's summary numbers
    page.locator('[data-testid="stMetric"]', has_text="Parameters").first.wait_for()
    wait_idle(page)
    assert not page.locator('[data-testid="stSidebar"]').is_visible()
    shot(page, "present-model")


def test_the_plan_page_draws_the_estimated_waterfall_to_the_estimated_total(projector_page, seeded_app):
    page = projector_page
    page.goto(f"{seeded_app['url']}/plan")
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some("
                           "t => t.textContent.startsWith('Estimated'))")
    wait_idle(page)
    shown = page.get_by_text(re.compile(r"^Estimated file [\d,]+ B of")).first.inner_text()
    total = re.search(r"Estimated file ([\d,]+) B", shown).group(1)
    chart = page.locator(".js-plotly-plot").filter(has=page.locator(".gtitle")).first
    title = chart.locator(".gtitle").text_content()
    assert title.startswith("Estimated") and f"~{total} B" in title  # the bars end at the total shown
    ticks = [t.replace("-", "") for t in chart.locator(".xtick text").all_text_contents()]  # wrapped: no spaces
    assert ticks[-1] == "estimatedfile", ticks
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shot(page, "plan-estimated-waterfall")))
