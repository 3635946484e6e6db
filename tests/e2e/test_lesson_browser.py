"""The lesson in a real browser, with fast settings: from the Model page's link through all five steps; every number
the page shows is the one the runs measured. (A second class finding the finished runs, every number the same, is
tests/test_lesson.py's AppTest walk: one browser walk per user journey.)

With LESSON_E2E_REAL=1 the same walk uses the real lesson's settings (whose runs ship in assets/lesson: the first
class gets them checked and imported, no engine run), walks a second class in the browser too, and prints how long a
class waits, cold and with every step cached (the README's measurement):
    LESSON_E2E_REAL=1 .venv/bin/python -m pytest tests/e2e/test_lesson_browser.py -s
"""

import os
import re
import time

import pytest
from complab import engine
from complab.analysis import lesson, report

from .conftest import SHOTS, started_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]
REAL = os.environ.get("LESSON_E2E_REAL") == "1"  # the real lesson's settings: a measurement, not a quick test


@pytest.fixture
def lesson_app(tmp_path, monkeypatch):
    """A server of its own whose lesson runs use the fast settings (its engine inherits the environment)."""
    if REAL:
        monkeypatch.delenv(lesson.FAST_ENV, raising=False)
    else:
        monkeypatch.setenv(lesson.FAST_ENV, "1")
    yield from started_app(tmp_path / "app-home")


def wait_idle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000)


def metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]', has_text=label).first
    box.wait_for(timeout=300_000)
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def delta(page, label: str) -> str:
    return page.locator('[data-testid="stMetric"]', has_text=label).first.locator(
        '[data-testid="stMetricDelta"]').inner_text()


def next_step(page, title: str) -> None:
    page.get_by_role("button", name=title).click()
    wait_idle(page)


def shot_step(page, number: int, name: str) -> None:
    """A screenshot of the viewport scrolled to step `number` (Streamlit scrolls inside its own container, so a
    full-page shot would show the top only)."""
    page.get_by_role("heading", name=re.compile(rf"^{number}\. ")).evaluate("el => el.scrollIntoView({block: 'start'})")
    charts = min(number, 4)  # one figure per step, none in step 5
    page.locator(".js-plotly-plot .main-svg").nth(charts - 1).wait_for()  # plotly draws after the frame appears
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def run_ids(home) -> list[str]:
    """The lesson's two runs (prune, then prune + share) from the engine's store: the page names its steps, never
    a run id, so the test finds them where the numbers came from."""
    runs = {(run.get("job") or {}).get("plan", {}).get("name", ""): run["id"]
            for run in engine.list_runs(root=home, kind="compress")}
    return [next(i for name, i in runs.items() if name.startswith(prefix) and "share" not in name[len(prefix):])
            for prefix in ("lesson: prune", "lesson: prune + share")]


def walk(page, url: str, home, tag: str) -> dict:
    """Open the lesson from the Model page and click through the five steps; returns what the page showed and
    ["seconds"], the time from the click to the step's numbers of each step (and of opening the page)."""
    seconds, clock = {}, time.time()

    def lap(name: str) -> None:
        seconds[name] = round(time.time() - clock, 1)

    def click_next(title: str) -> None:
        nonlocal clock
        clock = time.time()
        next_step(page, title)

    page.goto(url)
    page.get_by_role("heading", name="Model").first.wait_for()
    wait_idle(page)
    page.get_by_role("link", name=re.compile("Lesson page walks a class")).click()
    page.get_by_role("heading", name="Lesson: Deep Compression").wait_for()
    wait_idle(page)
    shown = {"original": metric(page, "Original accuracy"), "params": metric(page, "Parameters")}
    page.get_by_role("button", name="Next: 2. Prune").wait_for()
    lap("open")
    shot_step(page, 1, f"lesson-{tag}-1-weights")
    click_next("Next: 2. Prune")
    shown["pruned"] = metric(page, "Accuracy after pruning")  # waits while the step's run goes
    wait_idle(page)
    lap("prune")
    shown["sparsity"], shown["pruned_file"] = metric(page, "Weights pruned"), metric(page, "Pruned file")
    shown["pruned_ratio"] = delta(page, "Pruned file")
    shot_step(page, 2, f"lesson-{tag}-2-prune")
    click_next("Next: 3. Share weights")
    shown["shared"] = metric(page, "Accuracy after sharing")
    wait_idle(page)
    lap("share")
    shown["k"], shown["shared_file"] = metric(page, "Shared values per layer (k)"), metric(page, "Shared file")
    shot_step(page, 3, f"lesson-{tag}-3-share")
    click_next("Next: 4. Code the file")
    shown["fixed"] = metric(page, "Positions + indices, fixed width")
    shown["coded"], shown["file"] = metric(page, "Entropy coded (ANS)"), metric(page, "Whole file")
    page.locator(".js-plotly-plot .waterfalllayer").first.wait_for()
    lap("code")
    shot_step(page, 4, f"lesson-{tag}-4-code")
    click_next("Next: 5. Load it back")
    shown["decoded"] = metric(page, "Decoded accuracy")
    shown["right"] = metric(page, "Digits right below")
    page.get_by_text("That is Deep Compression").wait_for()
    lap("decode")
    # step 5's own container (the innermost block holding its heading): steps 2 and 3 draw flipped digits too
    step5 = page.locator('[data-testid="stVerticalBlock"]',
                         has=page.get_by_role("heading", name=re.compile(r"^5\. "))).last
    step5.locator('[data-testid="stImage"] img').nth(9).wait_for()  # one digit per class
    shown["images"] = step5.locator('[data-testid="stImage"] img').count()
    shown["flip_text"] = [text for text in page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts()
                          if text.startswith("Did its answers change?")]
    shown["runs"] = run_ids(home)
    assert not any(run_id in text for run_id in shown["runs"]  # students see step names, not run ids
                   for text in page.locator('[data-testid="stMain"]').all_inner_texts())
    shown["text"] = page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts()
    shot_step(page, 5, f"lesson-{tag}-5-decode")
    shown["seconds"] = seconds  # screenshots left out
    return shown


def test_lesson_end_to_end(browser, lesson_app):
    url, home = lesson_app["url"], lesson_app["home"]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    started = time.time()
    first = walk(page, url, home, "cold")
    cold = time.time() - started
    context.close()

    prune_id, share_id = first["runs"]
    assert len(engine.list_runs(root=home)) == 2  # step 3-5 show one run: two in all
    prune = _metrics(prune_id, home)
    share = _metrics(share_id, home)
    assert prune["plan_name"].startswith("lesson: prune") and ("fast" in prune["plan_name"]) != REAL
    assert first["original"] == lesson.percent(prune["before"]["accuracy"])  # measured now = the run's "before"
    assert first["params"] == f"{prune['before']['params']:,}"
    assert first["pruned"] == lesson.percent(prune["after"]["accuracy"])
    assert first["sparsity"] == lesson.percent(1 - prune["weights_kept"])
    assert first["pruned_file"] == f"{prune['after']['compressed_bytes']:,} B"
    assert first["pruned_ratio"].startswith(f"{prune['compression_ratio']:.1f}x")
    assert first["shared"] == lesson.percent(share["after"]["accuracy"])
    assert first["k"] == str(lesson.LESSON.n_clusters if REAL else lesson.FAST.n_clusters)
    assert first["shared_file"] == first["file"] == f"{share['after']['compressed_bytes']:,} B"
    rows = report.file_rows(engine.run_dir(share_id, root=home))
    coded = sum(row["bytes_positions"] + row["bytes_indices"] for row in rows)
    assert first["coded"] == f"{coded:,} B"
    assert first["decoded"] == lesson.percent(share["after"]["accuracy"])  # decoded again here: the same
    assert first["images"] == 10 and first["right"].endswith("of 10")
    assert len(first["flip_text"]) == 2  # steps 2 and 3: the pruned and the shared model against the original
    text = "\n".join(first["text"])
    for number in (lesson.percent(prune["after"]["accuracy"]), f"{prune['after']['compressed_bytes']:,} bytes",
                   f"{share['after']['compressed_bytes']:,} bytes", "ANS", "Huffman"):
        assert number in text, number

    if not REAL:
        print(f"\nlesson in the browser (fast settings): {cold:.1f} s {first['seconds']}")
        return
    # the measurement: a second class, every step computed before, goes through without a new run
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    started = time.time()
    second = walk(page, url, home, "cached")
    cached = time.time() - started
    context.close()
    assert second["runs"] == first["runs"] and len(engine.list_runs(root=home)) == 2
    same = {k: v for k, v in first.items() if k not in ("text", "seconds")}
    assert {k: v for k, v in second.items() if k in same} == same
    print(f"\nlesson in the browser (real settings): cold {cold:.1f} s {first['seconds']}, cached {cached:.1f} s "
          f"{second['seconds']} (screenshots included in the totals)")
    # the real settings' runs are the shipped ones, checked here and imported (assets/lesson): no engine run
    assert prune.get("precomputed") is True and share.get("precomputed") is True


def _metrics(run_id: str, home) -> dict:
    import json

    return json.loads(engine.run_file(run_id, "metrics.json", root=home).read_text())
