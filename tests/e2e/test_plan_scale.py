"""A real model survives a reload: upload a torchvision state dict on the Model page (the grey digits refused for
it in one line, then an RGB image folder), then open the Plan page's
URL in a new browser context (a new session, as a reload, a new tab or a shared link gets): the same model is
active, its layers are on the page, and a slider still moves the estimate."""

import pytest
import torch

from .conftest import shot
from .test_browser import goto, metric, wait_idle
from .test_engineer_walk import upload

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


def test_uploaded_model_survives_a_reload(page, browser, app_url, tmp_path):
    import torchvision

    torch.manual_seed(0)
    file = tmp_path / "squeezenet.pt"
    torch.save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), file)  # 2.9 MB, 26 layers

    from PIL import Image

    rgb = app_url["home"] / "data" / "rgb"  # under the data folder: a link may name it
    for index in range(10):
        (rgb / f"c{index}").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.new("RGB", (64, 64), (20 * index, 100 * i, 50)).save(rgb / f"c{index}" / f"{i}.png")

    url = app_url["url"]
    goto(page, url, "Model")
    page.get_by_text("Upload a file").first.click()
    wait_idle(page)
    architecture = page.locator('input[aria-label="torchvision architecture"]')
    architecture.fill("squeezenet1_1")
    architecture.press("Enter")
    size = page.locator('input[aria-label="Input size (pixels)"]')
    size.fill("64")
    size.press("Enter")
    wait_idle(page)
    # an RGB model on the grey digits: one line saying so and what to do, the demo stays active
    upload(page, file, "expects 3-channel (RGB) images but the digits are 1-channel")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.get_by_text("Local folder").first.click()
    wait_idle(page)
    folder = page.locator('input[aria-label="Folder"]')
    folder.fill(str(rgb))
    folder.press("Enter")
    page.get_by_text("torchvision:squeezenet1_1").first.wait_for(timeout=120_000)
    wait_idle(page)
    assert "model=upload%3A" in page.url or "model=upload:" in page.url
    shot(page, "scale-1-uploaded")

    page.get_by_role("link", name="Plan").first.click()
    page.get_by_role("heading", name="Plan").first.wait_for()
    wait_idle(page)
    plan_url = page.url
    assert "/plan" in plan_url and "upload" in plan_url, plan_url

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    fresh = context.new_page()
    fresh.set_default_timeout(120_000)
    try:
        goto(fresh, plan_url, "Plan")
        assert "torchvision:squeezenet1_1" in sidebar_text(fresh)
        assert "demo:lenet5" not in sidebar_text(fresh)
        fresh.get_by_text("features.3.squeeze").first.wait_for()  # the uploaded model's layers
        assert metric(fresh, "Estimated file").endswith("B")
        before = fresh.locator(".st-key-plan_estimate").inner_text()  # its caption holds the exact bytes
        slider = fresh.locator('[data-testid="stSlider"] input[type="range"]').first
        slider.focus()
        for _ in range(5):
            fresh.keyboard.press("ArrowRight")
        fresh.wait_for_function(
            "(before) => document.querySelector('.st-key-plan_estimate').innerText !== before", arg=before)
        shot(fresh, "scale-2-reloaded-plan")
    finally:
        context.close()
