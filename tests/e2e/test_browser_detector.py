"""The detector in a real browser: pick the demo detector, a finished run, and the Detections page side by side."""

import pytest

from .conftest import shot
from .test_browser import goto, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

QUICK = {"schema_version": 1, "name": "det-browser", "seed": 0, "eval_split": "val", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 0},
    {"type": "cluster", "n_clusters": {"_default": 32}, "finetune_epochs": 0}]}


def test_detections_side_by_side(page, app_url):
    from complab import engine

    url = app_url["url"]
    job = {"kind": "compress", "model": "detector:demo", "weights": None, "data": "shapes", "input_size": None,
           "mean": None, "std": None, "plan": QUICK, "latency": False}
    run_id = engine.submit(job, root=app_url["home"])  # the same store the app reads

    goto(page, url, "Model")
    page.get_by_text("Demo detector (YOLO)").click()
    page.get_by_text("913,028").first.wait_for(timeout=180_000)  # the detector's parameters, measured
    page.get_by_text("mAP50-95").first.wait_for()
    wait_idle(page)
    shot(page, "6-detector-model")
    assert engine.wait(run_id, 600, root=app_url["home"])["state"] == "succeeded"

    page.get_by_role("link", name="Detections").click()  # in-app navigation keeps the active model
    page.get_by_role("heading", name="Detections").first.wait_for()
    page.get_by_text("Original:").first.wait_for(timeout=120_000)
    page.get_by_text("Compressed:").first.wait_for()
    wait_idle(page)
    assert page.locator('[data-testid="stImage"] img').count() == 2
    assert page.get_by_text("vanished").count() >= 1
    assert page.locator('[data-testid="stMetric"]', has_text="Compact file bytes").count() == 1
    shot(page, "7-detections")
