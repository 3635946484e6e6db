"""Integer quantization in a real browser (issue 27): the Plan page's int-bits selects move the live estimate; an
int8 (W8A8) run and a mixed-precision run launched from the page appear on Compare's fronts by their bits, with
their PyTorch and ONNX Runtime latencies."""

import re

import pytest

from .conftest import shot
from .test_browser import goto, metric, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def choose(page, select, value) -> None:
    """Pick `value` in a Streamlit selectbox (type it into the searchable input, then Enter)."""
    select.click()
    select.fill(str(value))
    select.press("Enter")
    wait_idle(page)


def number(page, label: str, value: int) -> None:
    box = page.locator(f'input[aria-label="{label}"]')
    if box.count() and not box.is_visible():  # the settings expander closed on a rerun
        page.get_by_text("Fine-tuning and search settings").click()
        wait_idle(page)
    if box.count():
        box.fill(str(value))
        box.press("Enter")
        wait_idle(page)
        assert box.input_value() == str(value)


def estimate_changes(page, before: str) -> str:
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some("
        "m => m.innerText.includes('Estimated file') && !m.innerText.includes(before))", arg=before)
    return metric(page, "Estimated file")


def launch(page, earlier: str | None = None) -> str:
    """Launch the plan; the id of the run it queued (not `earlier`'s, whose note may still be on the page)."""
    page.get_by_role("button", name="Launch run").click()
    notes = page.get_by_text(re.compile(r"Run \d{8}-\d{6}-\w+ queued"))
    notes.first.wait_for()
    page.wait_for_function(
        "(earlier) => [...document.querySelectorAll('[data-testid=\"stAlert\"], p')].some("
        "e => /Run \\d{8}-\\d{6}-\\w+ queued/.test(e.innerText) && (!earlier || !e.innerText.includes(earlier)))",
        arg=earlier)
    ids = {re.search(r"Run (\S+) queued", text).group(1) for text in notes.all_inner_texts()}
    ids.discard(earlier)
    assert len(ids) == 1, ids
    return ids.pop()


def test_bits_selects_launch_an_int8_and_a_mixed_run(page, app_url):
    url = app_url["url"]
    goto(page, f"{url}/plan", "Plan")
    page.get_by_text("Estimated file").first.wait_for(timeout=240_000)
    selects = page.locator('input[aria-label="int bits"]')  # the group setter first, then one per layer
    selects.nth(4).wait_for()
    wait_idle(page)
    layers = selects.count() - 1
    assert layers >= 4
    before = metric(page, "Estimated file")
    # every layer at 8 bits through the group setter, as a person sets a whole model
    choose(page, selects.first, 8)
    page.get_by_role("button", name="Set group").click()
    wait_idle(page)
    int8 = estimate_changes(page, before)
    for index in range(1, layers + 1):
        assert selects.nth(index).input_value() == "8"
    number(page, "epochs per round", 0)  # the journey is tested, not the epochs
    number(page, "activation bits (0 or 8)", 8)
    shot(page, "int-1-plan-int8")
    int8_run = launch(page)

    # mixed precision: the widest layer at 3 bits, the others kept wider; the estimate follows each select
    widths = [8, 4, 3, 4, 8][:layers]
    for index, width in enumerate(widths, 1):
        shown = metric(page, "Estimated file")
        choose(page, selects.nth(index), width)
        if width != 8:
            estimate_changes(page, shown)
    mixed = metric(page, "Estimated file")
    assert mixed != int8
    number(page, "activation bits (0 or 8)", 0)
    shot(page, "int-2-plan-mixed")
    mixed_run = launch(page, int8_run)
    assert mixed_run != int8_run

    goto(page, f"{url}/runs", "Runs")
    for run_id in (int8_run, mixed_run):
        page.wait_for_function(
            """(id) => [...document.querySelectorAll('[data-testid="stHorizontalBlock"]')].some(
                   row => row.innerText.includes(id) && row.innerText.includes('succeeded'))""",
            arg=run_id, timeout=540_000)
    wait_idle(page)
    shot(page, "int-3-runs")

    goto(page, f"{url}/compare", "Compare")
    page.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()
    page.get_by_role("tab", name=re.compile("ONNX Runtime latency")).click()
    wait_idle(page)
    page.get_by_text(re.compile(r"ONNX Runtime [\d.]+, \d+ threads?")).first.wait_for()
    body = page.locator("section.main, [data-testid='stMain']").first.inner_text()
    assert re.search(r"int8 \(W8A8\)", body), body[:2000]
    assert "mixed" in body
    assert "PyTorch latency" in body and "ONNX Runtime latency" in body
    shot(page, "int-4-compare")
