"""How quick is the Plan page on a real-sized model (a torchvision ResNet-50, 54 layers) in a real browser?

Starts the app with the README's command (server part: 127.0.0.1, a free port, a private data folder), keeps a
random-init ResNet-50 state dict (10 classes, 94 MB) in that folder's uploads as the Model page's upload would,
writes a tiny generated ImageFolder (224 px) for its data, and opens the Plan page's link to that model
(?model=upload:<hash>&arch=resnet50&size=224&data=imagefolder:DIR) in headless Chromium:

- `plan_first_render_s`: from opening the URL on the fresh server (nothing cached: the model is loaded and its
  layer statistics are computed) to the live estimate on screen with the page idle. Target: <= 10.
- `slider_to_estimate_ms`: median over 10 one-step slider changes (keyboard, as a user does) of the time until
  the estimate's text changes. Target: <= 500.
- `sliders_on_page`: the sliders drawn (the compact, grouped page draws the open group's rows only).
Prints one JSON object as its last line (under 10 minutes).

    .venv/bin/python benchmarks/plan_page_speed.py
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CLASSES, IMAGES_PER_CLASS, SIDE = 10, 5, 224


def readme_app_command() -> str:
    for line in (ROOT / "README.md").read_text().splitlines():
        if "streamlit run app.py" in line:
            command = line.strip()
            return command[command.index(".venv/bin/python -m streamlit"):]  # the server part (no setup step)
    raise SystemExit("README has no app command")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_inputs(work: Path) -> tuple[Path, Path]:
    """(the state dict kept in the uploads folder as save_upload names it, a generated ImageFolder)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    torch.manual_seed(0)
    blob_path = work / "resnet50.pt"
    torch.save(torchvision.models.resnet50(num_classes=CLASSES).state_dict(), blob_path)
    blob = blob_path.read_bytes()
    uploads = work / "home" / "uploads"
    uploads.mkdir(parents=True)
    kept = uploads / f"{hashlib.sha256(blob).hexdigest()[:12]}-resnet50.pt"
    blob_path.rename(kept)
    rng = np.random.default_rng(0)
    folder = work / "images"
    for label in range(CLASSES):
        (folder / f"class{label}").mkdir(parents=True)
        for index in range(IMAGES_PER_CLASS):
            pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{index}.png")
    return kept, folder


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "COMPRESSION_LAB_HOME": str(home)}
    command = f"{readme_app_command()} --server.port {port} --server.address 127.0.0.1 --server.headless true"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit((home / "server.log").read_text())
    raise SystemExit("the app did not start in 180 s")


def wait_idle(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_timeout(200)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kept, images = make_inputs(work)
        proc, url = start_app(work / "home")
        try:
            query = urllib.parse.urlencode({"model": f"upload:{kept.name[:12]}", "arch": "resnet50", "size": SIDE,
                                            "data": f"imagefolder:{images}"})
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(300_000)
                start = time.perf_counter()
                page.goto(f"{url}/plan?{query}")
                page.locator(".st-key-plan_estimate").wait_for()
                wait_idle(page)
                first_render = time.perf_counter() - start
                sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
                if "torchvision:resnet50" not in sidebar:
                    raise SystemExit(f"the link did not open the ResNet-50: {sidebar!r}")
                sliders = page.locator('[data-testid="stSlider"] input[type="range"]')
                sliders.first.wait_for()
                n_sliders = sliders.count()
                slider = sliders.first
                slider.focus()
                times = []
                for step in range(10):
                    before = page.locator(".st-key-plan_estimate").inner_text()
                    start = time.perf_counter()
                    page.keyboard.press("ArrowRight" if step % 2 == 0 else "ArrowLeft")
                    page.wait_for_function(
                        "(before) => document.querySelector('.st-key-plan_estimate').innerText !== before",
                        arg=before, polling="raf", timeout=60_000)
                    times.append(1000 * (time.perf_counter() - start))
                    wait_idle(page)
                    slider.focus()
                browser.close()
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    print(f"first render {first_render:.1f} s; slider -> estimate {', '.join(f'{t:.0f}' for t in times)} ms",
          file=sys.stderr)
    print(json.dumps({"plan_first_render_s": round(first_render, 2),
                      "slider_to_estimate_ms": round(statistics.median(times), 1),
                      "slider_to_estimate_ms_all": [round(t, 1) for t in times],
                      "sliders_on_page": n_sliders, "model": "resnet50 (random init, 10 classes, 224 px)"}))


if __name__ == "__main__":
    main()
