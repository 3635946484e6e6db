"""The HTML report in a real browser with the network cut: nothing is requested, the Plotly figures draw."""

import json
from pathlib import Path

import pytest
from complab.cli import main

from .conftest import SHOTS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
QUICK = Path(__file__).resolve().parents[2] / "assets" / "recipes" / "quick.json"


def test_report_opens_offline(browser, tmp_path):
    plan = json.loads(QUICK.read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0  # fast: no fine-tuning
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "plan.json"), "--model", "demo:lenet5", "--data", "digits", "--out",
                 str(run), "--no-latency"]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())

    context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
    requested = []

    def route(request_route):
        if request_route.request.url == out.as_uri():
            request_route.continue_()
        else:
            requested.append(request_route.request.url)
            request_route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("request", lambda request: request.url != out.as_uri() and requested.append(request.url))
    page.goto(out.as_uri())
    page.locator("svg.main-svg").first.wait_for(timeout=30_000)
    assert page.locator(".js-plotly-plot").count() >= 3  # Pareto plots and waterfalls
    assert f"{metrics['compression_ratio']:.1f}x smaller file" in page.locator("#headline").inner_text()
    sums = page.evaluate("""() => [...document.querySelectorAll('table.waterfall')].map(t =>
        [+t.dataset.start + [...t.querySelectorAll('td[data-bytes]')].reduce((s, c) => s + +c.dataset.bytes, 0),
         +t.dataset.end])""")
    assert sums and all(total == end for total, end in sums)
    assert sums[0][1] == (run / "model.clab").stat().st_size
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "report-offline.png"), full_page=False)
    assert not requested, requested
    context.close()


def test_report_prints_to_pdf(tmp_path):
    plan = json.loads(QUICK.read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "plan.json"), "--model", "demo:lenet300", "--data", "digits", "--out",
                 str(run), "--no-latency"]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report.html"), "--pdf"]) == 0
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert "&quot;name&quot;: &quot;quick-demo&quot;" in (tmp_path / "report.html").read_text()  # the file's own plan
