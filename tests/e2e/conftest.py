"""Start the app with the README's command on a free port and drive it in headless Debian Chromium."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "screenshots"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_app_command() -> str:
    """The README's app command, exactly as a user would type it."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if "streamlit run app.py" in line:
            return line.strip()
    raise AssertionError("README has no app command")


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    yield from started_app(tmp_path_factory.mktemp("app-home"))


@pytest.fixture
def fresh_app_url(tmp_path):
    """A server of its own whose first visitor has not been served yet (for first-visit behaviour)."""
    yield from started_app(tmp_path / "app-home")


def started_app(home: Path):
    """Start the README's app command on a free port with `home` as its data folder; yield its url; stop it."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (bash .ci/setup test installs it)")
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COMPRESSION_LAB_HOME": str(home)}
    command = f"{readme_app_command()} --server.port {port} --server.address 127.0.0.1"
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise AssertionError((home / "server.log").read_text())
    else:
        raise AssertionError("the app did not start in 180 s")
    yield {"url": url, "home": home}
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:  # a script run still computing (a diff, a report) holds the server: kill it
        os.killpg(proc.pid, 9)
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    shot(page, "last-state")  # what the page showed when the test ended (kept for a failing run)
    context.close()


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
