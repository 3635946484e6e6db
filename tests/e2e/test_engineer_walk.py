"""The ML engineer's walk in a real browser, as issue 26 found it: their own RGB ResNet-18 (10 classes, 32 px,
safetensors) uploaded while the digits are still the data, then their small image folder (80 train / 40 validation /
40 test images); sensitivity; a plan with a typed target that survives a page change; a run; a sweep; Compare; the
HTML report. No page shows an exception element on the way; the mismatch is one line with its fix; the sensitivity
page says its 40 validation images cannot resolve small drops; Compare opens on the uploaded model, not a demo."""

import json
import re
import time

import numpy as np
import pytest
import torch
from complab import engine

from .conftest import shot
from .test_browser import goto, wait_idle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
EXCEPTION = '[data-testid="stException"]'


def no_exception(page, where: str) -> None:
    wait_idle(page)
    count = page.locator(EXCEPTION).count()
    assert count == 0, f"{where}: {page.locator(EXCEPTION).first.inner_text()[:600]}"


def image_folder(root) -> None:
    """10 classes of 32 px RGB images, each class its own colour under noise: 8 train, 4 val, 4 test per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(40, 215, (10, 3))
    for split, per_class in (("train", 8), ("val", 4), ("test", 4)):
        for label in range(10):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = np.clip(colours[label] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")


def go(page, title: str) -> None:
    """Open a page from the sidebar, as a person does (the URL keeps the active model's link)."""
    page.locator('[data-testid="stSidebar"]').get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title).first.wait_for()
    no_exception(page, title)


def upload(page, path, outcome: str, tries: int = 3, wait_ms: int = 40_000) -> None:
    """Give the uploader `path` until the page shows `outcome`. A rerun still redrawing the uploader (the input size's
    Enter, on a loaded machine) can drop a file given to it: give it again, a bounded number of times (the same
    bytes: the page keeps an upload by its content hash)."""
    for _ in range(tries):
        page.wait_for_timeout(500)
        wait_idle(page)
        page.locator('[data-testid="stFileUploaderDropzone"] input[type="file"]').set_input_files(str(path))
        try:
            page.get_by_text(outcome).first.wait_for(timeout=wait_ms)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: the file was dropped, give it again
            continue
    raise AssertionError(f"after {tries} uploads of {path.name} the page never said {outcome!r}")


def test_engineer_walk(page, app_url, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "resnet18-pets.safetensors"
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(weights))
    data = app_url["home"] / "data" / "pets"  # under the data folder, as a shared link would need it
    image_folder(data)
    url = app_url["url"]

    # 1. the upload while the digits are still selected: one line naming the problem and the fix, no traceback
    goto(page, url, "Model")
    page.get_by_text("Upload a file").first.click()
    wait_idle(page)
    architecture = page.locator('input[aria-label="torchvision architecture"]')
    architecture.fill("resnet18")
    architecture.press("Enter")
    size = page.locator('input[aria-label="Input size (pixels)"]')
    size.fill("32")
    size.press("Enter")
    wait_idle(page)
    upload(page, weights, "expects 3-channel (RGB) images but the digits are 1-channel")
    no_exception(page, "Model, RGB upload on the digits")
    shot(page, "engineer-1-mismatch")
    page.get_by_text("Local folder").first.click()
    wait_idle(page)
    folder = page.locator('input[aria-label="Folder"]')
    folder.fill(str(data))
    folder.press("Enter")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("torchvision:resnet18").first.wait_for(timeout=120_000)
    page.get_by_text("40 test images").first.wait_for()
    no_exception(page, "Model, the folder")
    shot(page, "engineer-2-model")

    # 2. sensitivity on 40 validation images: the page says what they cannot resolve
    go(page, "Sensitivity")
    page.get_by_role("button", name="Run sensitivity analysis").click()
    page.get_by_text("Accuracy drop, layer x sparsity").wait_for(timeout=300_000)
    page.get_by_text(re.compile(r"40 validation images")).first.wait_for()
    no_exception(page, "Sensitivity")
    shot(page, "engineer-3-sensitivity")

    # 3. the plan: a typed target that a page change keeps; no fine-tuning (the journey is tested, not the epochs)
    go(page, "Plan")
    target = page.locator('input[aria-label^="Target value"]')
    target.fill("20")
    target.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Apply").click()
    wait_idle(page)
    page.get_by_text("Fine-tuning and search settings").click()
    epochs = ("epochs per round", "shared-value epochs")
    for label in epochs:
        box = page.locator(f'input[aria-label="{label}"]')
        box.fill("0")
        box.press("Enter")
        wait_idle(page)
        assert box.input_value() == "0"
    # the server has the edits once the page's draft has them (a click elsewhere before the rerun they started
    # reaches the server supersedes it: Streamlit merges the two requests and the old page's widgets are dropped)
    drafts = app_url["home"] / "drafts"
    deadline = time.time() + 60
    def saved() -> bool:  # this model's draft (the shared server holds other walks' drafts too)
        for path in drafts.glob("*.json"):
            draft = json.loads(path.read_text())
            if "resnet18" in draft.get("spec", "") and [draft["options"].get(key) for key in (
                    "plan_prune_epochs", "plan_cluster_epochs")] == [0, 0]:
                return True
        return False

    while time.time() < deadline and not saved():
        time.sleep(0.5)
    go(page, "Runs")
    go(page, "Plan")
    assert float(page.locator('input[aria-label^="Target value"]').input_value()) == 20.0
    page.get_by_text("Fine-tuning and search settings").click()
    wait_idle(page)
    assert [page.locator(f'input[aria-label="{label}"]').input_value() for label in epochs] == ["0", "0"]
    no_exception(page, "Plan, after a page change")
    shot(page, "engineer-4-plan")
    page.get_by_role("button", name="Launch run").click()
    page.get_by_text(re.compile(r"Run \d{8}-\d{6}-\w+ queued")).first.wait_for()
    no_exception(page, "Plan, launched")

    # 4. a sweep of two ratio targets
    page.get_by_role("button", name="Sweep").click()
    targets = page.locator('input[aria-label="Targets"]')
    targets.fill("10,40")
    targets.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Submit sweep").click()
    page.get_by_text(re.compile(r"queued: 2 runs")).first.wait_for(timeout=120_000)
    no_exception(page, "Plan, sweep")
    shot(page, "engineer-5-sweep")

    # 5. the runs finish
    go(page, "Runs")
    deadline = time.time() + 600
    while time.time() < deadline:  # the engine's store, read as the page reads it
        runs = [run for run in engine.list_runs(root=app_url["home"], kind="compress")  # the server is shared
                if (run.get("job") or {}).get("model") == "torchvision:resnet18"]
        if len(runs) >= 3 and all(run["state"] in ("succeeded", "failed", "cancelled") for run in runs):
            break
        time.sleep(2)
    assert [run["state"] for run in runs] == ["succeeded"] * 3, [(r["id"], r["state"], r.get("error")) for r in runs]
    page.reload()
    page.get_by_role("heading", name="Runs").first.wait_for()
    page.get_by_text(re.compile(r"pts|no change")).first.wait_for()  # the drop from the original
    no_exception(page, "Runs")
    shot(page, "engineer-6-runs")

    # 6. Compare opens on the uploaded model (not a demo) and names the run it chose
    go(page, "Compare")
    picker = page.locator('input[aria-label="Model"]')  # shown when the data folder holds runs of other models
    if picker.count():  # (the shared server's other walks): it opens on the active model
        assert "resnet18" in picker.input_value() and "active model" in picker.input_value()
    assert "resnet18" in page.locator('input[aria-label="Run"]').input_value() or "my-plan" in page.locator(
        'input[aria-label="Run"]').input_value()
    page.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()
    assert "demo:lenet" not in page.locator('[data-testid="stMain"]').inner_text()
    no_exception(page, "Compare")
    shot(page, "engineer-7-compare")

    # 7. the report names the model and gives before -> after on the 40 test images
    with page.expect_download() as download_info:
        page.get_by_role("button", name=re.compile("report", re.I)).first.click()
    html = tmp_path / "report.html"
    download_info.value.save_as(html)
    text = html.read_text()
    title = re.search(r"<h1[^>]*>(.*?)</h1>", text, re.S).group(1)
    assert "resnet18" in title and "/" not in title and not re.search(r"[0-9a-f]{16}", title), title
    assert "40 test images" in text
    no_exception(page, "Compare, report")
