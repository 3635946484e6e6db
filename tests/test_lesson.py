"""The lesson: its step plans and what it says (unit tests), and the page through AppTest with fast settings."""

import base64
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from complab import engine
from complab.analysis import lesson, lesson_shipped
from complab.demo import lesson_assets
from complab.engine.jobs import validate
from complab.engine.sweeps import content_key
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


def test_step_plans_share_one_pruning_and_follow_the_settings(monkeypatch):
    monkeypatch.delenv(lesson.FAST_ENV, raising=False)
    assert lesson.settings() is lesson.LESSON
    assert lesson.step_plan("weights") is None and lesson.step_job("weights") is None
    prune, share = lesson.step_plan("prune"), lesson.step_plan("share")
    assert [s.type for s in prune.steps] == ["prune"] and [s.type for s in share.steps] == ["prune", "cluster"]
    assert share.steps[0] == prune.steps[0]  # step 3 repeats step 2's pruning exactly
    assert prune.steps[0].sparsity == dict(lesson.LESSON.sparsity)
    assert share.steps[1].n_clusters == {"_default": lesson.LESSON.n_clusters}
    # steps 3-5 show one run: the same job, so the same content key
    assert {content_key(validate(lesson.step_job(s))) for s in ("share", "code", "decode")} == {
        content_key(validate(lesson.step_job("share")))}
    monkeypatch.setenv(lesson.FAST_ENV, "1")
    assert lesson.settings() is lesson.FAST
    fast = lesson.step_plan("prune")
    assert fast.steps[0].finetune_epochs <= 1 and fast.steps[0].sparsity == prune.steps[0].sparsity
    assert content_key(validate(lesson.step_job("prune"))) != content_key(
        validate(lesson.step_job("prune", lesson.LESSON)))  # test runs are never taken for the real lesson's


def test_texts_say_the_measured_numbers():
    weights = {"fc1": np.array([0.0, 0.0, 0.5, -0.5, 0.0, 0.25]), "fc2": np.array([0.0, 1.0])}
    facts = lesson.weight_facts(weights)
    assert facts["zeros"] == 4 and facts["weights"] == 8 and facts["distinct"] == {"fc1": 3, "fc2": 1}
    assert facts["layer_sparsity"]["fc1"] == 0.5
    metrics = {"before": {"accuracy": 0.98611, "fp32_bytes": 1_066_000},
               "after": {"accuracy": 0.975, "compressed_bytes": 23_947}, "compression_ratio": 44.5146,
               "steps": {"cluster": {"n_clusters": {"fc1": 16, "fc2": 16}}}}
    plan = lesson.step_plan("share", lesson.LESSON).to_dict()
    text = lesson.prune_text(metrics, facts, plan)
    assert "98.61% -> 97.50% (-1.1 points)" in text and "23,947 bytes, 44.5x" in text
    assert "4 of the 8 weights (50.00%; fc1 50.00%, fc2 50.00%; the biases are kept)" in text
    measured = {"params": 10, "fp32_bytes": 40, "accuracy": 0.5}  # 8 weights (facts) and 2 biases
    said = lesson.weights_text(measured, facts, test_images=20)
    assert "10 parameters" in said and "8 weights" in said and "2 biases" in said
    assert f"{lesson.LESSON.prune_iterations} round(s)" in text
    text = lesson.share_text(metrics, facts, plan, pruned_accuracy=0.98)
    assert "k = 16" in text and "5-bit index" in text and "98.00% pruned" in text and "fc1 3, fc2 1" in text
    assert lesson.index_bits(16) == 5 and lesson.index_bits(15) == 4


def test_coding_and_decoding_read_the_file(tmp_path):
    """Step 4's numbers add up with the file's own sections; step 5 decodes the file and classifies digits."""
    from complab import sources
    from complab.analysis import report
    from complab.pipeline import compress

    handle, data = sources.load(lesson.LESSON_SPEC)
    result = compress(handle, lesson.step_plan("share", lesson.FAST), data, tmp_path, latency=False)
    rows = report.file_rows(tmp_path)
    coded = lesson.coding(rows, result.metrics)
    assert coded.file_bytes == result.metrics["after"]["compressed_bytes"] == (tmp_path / "model.clab").stat().st_size
    assert coded.coded_bytes < coded.fixed_bytes
    text = lesson.coding_text(coded)
    assert "ANS" in text and "Huffman" in text and f"{coded.coded_bytes:,}" in text
    # above the order-0 entropy by the tables, or below it where contexts pay: the text says which, with the figure
    side = "above" if coded.coded_bytes >= coded.entropy_bytes else "below"
    assert f"{side} their order-0 entropy of {coded.entropy_bytes:,.0f} bytes" in text
    check = lesson.decode_check(tmp_path / "model.clab", data)
    assert check["accuracy"] == pytest.approx(result.metrics["after"]["accuracy"], abs=1e-12)
    assert [s["label"] for s in check["samples"]] == list(range(10))
    assert all(s["image"].shape == (28, 28) and 0 <= s["image"].min() <= s["image"].max() <= 1
               for s in check["samples"])
    assert "the accuracy the run measured" in lesson.decode_text(check, result.metrics, coded.file_bytes)


def _run_until(at: AppTest, done, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not done():
        assert time.time() < deadline, [m.value for m in at.markdown][-3:]
        time.sleep(1.0)
        at.run()
        assert not at.exception, [e.value for e in at.exception]


@pytest.mark.slow  # 20 s: three engine runs; the quick loop keeps the lesson's step and failure tests
def test_lesson_page_walks_the_five_steps_and_reuses_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(lesson.FAST_ENV, "1")

    def open_lesson() -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("pages/lesson.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    def metric(at: AppTest, label: str) -> str:
        return next(m.value for m in at.metric if m.label == label)

    at = open_lesson()
    assert "Original accuracy" in [m.label for m in at.metric]
    at.button(key="lesson_next_prune").click().run()
    _run_until(at, lambda: any(m.label == "Accuracy after pruning" for m in at.metric))
    runs = at.session_state["lesson"]["runs"]
    assert set(runs) == {"prune", "share"}  # step 3's run was queued with step 2's, to compute while the class reads
    prune_metrics = json.loads(engine.run_file(runs["prune"], "metrics.json", root=tmp_path / "home").read_text())
    assert metric(at, "Accuracy after pruning") == lesson.percent(prune_metrics["after"]["accuracy"])
    at.button(key="lesson_next_share").click().run()
    _run_until(at, lambda: any(m.label == "Accuracy after sharing" for m in at.metric))
    at.button(key="lesson_next_code").click().run()
    at.button(key="lesson_next_decode").click().run()
    assert metric(at, "Decoded accuracy") == metric(at, "Accuracy after sharing")
    assert len(engine.list_runs(root=tmp_path / "home")) == 2
    # a second class: the same steps are found in the store and shown at once (no waiting between the clicks),
    # nothing is recomputed, and every number on the page is the first class's
    again = open_lesson()
    for step in ("prune", "share", "code", "decode"):
        again.button(key=f"lesson_next_{step}").click().run()
        assert not again.exception, [e.value for e in again.exception]
    assert metric(again, "Decoded accuracy") == metric(at, "Decoded accuracy")

    def numbers(page: AppTest) -> dict:
        return {m.label: (m.value, m.delta) for m in page.metric if m.label != "Decode time"}  # a clock, not a result

    assert len(numbers(at)) == 14 and numbers(again) == numbers(at)
    assert again.session_state["lesson"]["runs"] == runs
    assert any("computed earlier" in c.value for c in again.caption)
    assert len(engine.list_runs(root=tmp_path / "home")) == 2


def test_a_failed_step_says_so_and_runs_again_when_asked(tmp_path, monkeypatch):
    """A step whose run fails shows the run's error and a button that starts it afresh (failures are never reused)."""
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")  # the engine's test-crash job stands in for the step's run
    monkeypatch.setattr(lesson, "step_job", lambda step, chosen=None: {"kind": "test-crash"})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/lesson.py").run()
    at.button(key="lesson_next_prune").click().run()
    _run_until(at, lambda: len(at.error) > 0, timeout=120)
    assert "deliberate failure" in at.error[0].value and "Runs page" in at.error[0].value
    failed = at.session_state["lesson"]["runs"]["prune"]
    at.button(key="lesson_retry_prune").click().run()
    assert at.session_state["lesson"]["runs"]["prune"] != failed


# --- the shipped runs (assets/lesson): checked here, imported as finished runs, refused when tampered --------------


def _shipped_copy(tmp_path: Path) -> Path:
    """A copy of assets/lesson (prune/ and share/) to tamper with."""
    copy = tmp_path / "shipped"
    shutil.copytree(lesson_shipped.SHIPPED, copy)
    return copy


def test_shipped_plans_are_the_lessons_plans_byte_for_byte():
    """The generator writes plan.json as the run store does; the shipped files are those of the LESSON settings."""
    for run in lesson_shipped.RUNS:
        shipped = (lesson_shipped.SHIPPED / run / "plan.json").read_bytes()
        assert shipped == lesson_shipped.plan_text(run, lesson.LESSON).encode()
        assert json.loads(shipped) == lesson.step_plan(run, lesson.LESSON).to_dict()
        assert shipped != lesson_shipped.plan_text(run, lesson.FAST).encode()  # the tests' runs never match them
        sizes = {name: (lesson_shipped.SHIPPED / run / name).stat().st_size for name in lesson_shipped.FILES}
        assert sum(sizes.values()) < 128_000, sizes  # tens of KB: the repository stays small


def test_generator_reproduces_the_shipped_share_run(tmp_path):
    """`python -m complab.demo.lesson_assets` recomputes the shipped share run: the same plan, accuracy and bytes.
    (When the pipeline or the format changes on purpose, run that command and commit assets/lesson.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the generator runs
    try:
        lesson_assets.generate("share", tmp_path / "share")
    finally:
        torch.set_num_threads(threads)
    assert lesson_assets.compare(lesson_shipped.SHIPPED / "share", tmp_path / "share") == []


def test_a_shipped_run_is_checked_and_a_tampered_one_refused(tmp_path, digits28):
    good = lesson_shipped.check_shipped("prune", digits28, chosen=lesson.LESSON)
    shipped_metrics = json.loads((lesson_shipped.SHIPPED / "prune" / "metrics.json").read_text())
    assert good.ok and abs(good.accuracy - shipped_metrics["after"]["accuracy"]) <= 1e-9
    assert good.files["model.clab"] == (lesson_shipped.SHIPPED / "prune" / "model.clab").read_bytes()
    assert not lesson_shipped.check_shipped("prune", digits28, chosen=lesson.FAST).ok  # other settings, other plan
    assert "original model scored" in lesson_shipped.check_shipped("prune", digits28, original_accuracy=0.5,
                                                                   chosen=lesson.LESSON).problem
    copy = _shipped_copy(tmp_path)
    metrics_path = copy / "share" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["after"]["accuracy"] = 0.999  # a better number than the file earns
    metrics_path.write_text(json.dumps(metrics))
    refused = lesson_shipped.check_shipped("share", digits28, folder=copy / "share", chosen=lesson.LESSON)
    assert not refused.ok and "scores 0.975000" in refused.problem and "says 0.999000" in refused.problem
    model = bytearray((copy / "prune" / "model.clab").read_bytes())
    model[len(model) // 2] ^= 0xFF  # one flipped byte: the CRC refuses the file
    (copy / "prune" / "model.clab").write_bytes(bytes(model))
    refused = lesson_shipped.check_shipped("prune", digits28, folder=copy / "prune", chosen=lesson.LESSON)
    assert not refused.ok and "does not decode" in refused.problem and not refused.files
    (copy / "prune" / "plan.json").write_text((copy / "prune" / "plan.json").read_text().replace("0.92", "0.5"))
    assert "not the plan this lesson runs" in lesson_shipped.check_shipped(
        "prune", digits28, folder=copy / "prune", chosen=lesson.LESSON).problem
    (copy / "share" / "model.clab").unlink()
    assert "missing" in lesson_shipped.check_shipped("share", digits28, folder=copy / "share",
                                                     chosen=lesson.LESSON).problem


def _open_lesson() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/lesson.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_real_lesson_imports_its_shipped_runs_without_running_them(tmp_path, monkeypatch):
    """With the LESSON settings a fresh store gets both runs at once: imported (checked, marked precomputed),
    never queued; a later lookup by content key and a second class find them; a re-run runs for real."""
    home = tmp_path / "home"
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    monkeypatch.delenv(lesson.FAST_ENV, raising=False)
    at = _open_lesson()
    started = time.perf_counter()
    at.button(key="lesson_next_prune").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert time.perf_counter() - started < 15  # no run: a decode and 360 test digits per run
    runs = at.session_state["lesson"]["runs"]
    assert set(runs) == {"prune", "share"}
    rows = {row["id"]: row for row in engine.list_runs(root=home)}
    assert set(rows) == set(runs.values())
    for run, run_id in runs.items():
        row = rows[run_id]
        assert row["state"] == "succeeded" and row["job"]["precomputed"] is True and not row.get("damaged")
        assert row["started"] == row["finished"] and not row.get("pid")  # no worker ran it
        metrics = json.loads(engine.run_file(run_id, "metrics.json", root=home).read_text())
        shipped = json.loads((lesson_shipped.SHIPPED / run / "metrics.json").read_text())
        assert metrics["precomputed"] is True and metrics["after"] == shipped["after"]
        assert engine.run_file(run_id, "model.clab", root=home).read_bytes() == (
            lesson_shipped.SHIPPED / run / "model.clab").read_bytes()
        assert engine.find_reusable(lesson.step_job(run), root=home) == run_id  # found again by content key
    caption = next(c.value for c in at.caption if c.value.startswith("Step 2"))
    assert "precomputed with this recipe and checked on this machine" in caption
    assert lesson.percent(rows[runs["prune"]]["metrics"]["after"]["accuracy"]) in caption
    assert at.button(key="lesson_recompute_prune") is not None
    said = next(m.value for m in at.markdown if m.value.startswith("Did its answers change?"))
    assert "the pruned model gives the original's answer on" in said
    assert len(at.get("image")) > 0  # the flipped digits drawn
    at.button(key="lesson_next_share").click().run()
    assert any(m.label == "Accuracy after sharing" for m in at.metric)
    again = _open_lesson()  # a second class: found by key, nothing imported twice
    again.button(key="lesson_next_prune").click().run()
    assert again.session_state["lesson"]["runs"] == runs and len(engine.list_runs(root=home)) == 2
    again.button(key="lesson_recompute_prune").click().run()  # "Recompute here": a re-run, a real one, not marked
    rerun = again.session_state["lesson"]["runs"]["prune"]
    try:
        assert rerun != runs["prune"]
        job = engine.status(rerun, root=home)["job"]
        assert "precomputed" not in job and job["plan"] == lesson.step_plan("prune", lesson.LESSON).to_dict()
        assert job["origin"] == {"kind": "rerun", "run": runs["prune"]}
    finally:
        engine.cancel(rerun, root=home)


def test_a_tampered_shipped_run_is_not_imported_and_the_step_runs(tmp_path, monkeypatch):
    """The page says why the shipped result was refused and queues the step's real run (cancelled here: the test
    checks that it was queued instead of imported, not the run itself)."""
    home = tmp_path / "home"
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    monkeypatch.delenv(lesson.FAST_ENV, raising=False)
    copy = _shipped_copy(tmp_path)
    model = bytearray((copy / "prune" / "model.clab").read_bytes())
    model[-100] ^= 0x01
    (copy / "prune" / "model.clab").write_bytes(bytes(model))
    monkeypatch.setattr(lesson_shipped, "SHIPPED", copy)
    at = _open_lesson()
    at.button(key="lesson_next_prune").click().run()
    runs = at.session_state["lesson"]["runs"]
    try:
        assert not at.exception, [e.value for e in at.exception]
        assert "does not decode" in at.session_state["lesson"]["not_shipped"]["prune"]
        rows = {row["id"]: row for row in engine.list_runs(root=home)}
        assert "precomputed" not in rows[runs["prune"]]["job"]  # queued to run here, not imported
        assert rows[runs["prune"]]["job"]["plan"] == lesson.step_plan("prune", lesson.LESSON).to_dict()
        assert rows[runs["share"]]["job"]["precomputed"] is True  # the sound one is still imported
        if rows[runs["prune"]]["state"] in ("queued", "running"):
            warning = at.warning[-1].value
            assert "shipped result was not used" in warning and "does not decode" in warning
    finally:
        engine.cancel(runs["prune"], root=home)


def test_only_the_real_lessons_jobs_stand_for_shipped_runs():
    for run in lesson_shipped.RUNS:
        assert lesson_shipped.is_lesson_job(lesson.step_job(run, lesson.LESSON), run)
        assert not lesson_shipped.is_lesson_job(lesson.step_job(run, lesson.FAST), run)
        assert not lesson_shipped.is_lesson_job({**lesson.step_job(run, lesson.LESSON), "model": "demo:lenet5"}, run)
    assert not lesson_shipped.is_lesson_job(lesson.step_job("share", lesson.LESSON), "prune")
    assert not lesson_shipped.is_lesson_job({"kind": "test-crash"}, "prune")


def test_step_one_measures_what_handle_measure_does(lenet300, digits28):
    """The lesson's own measurement of the original (no FLOP count or latency: a faster first render) gives
    handle.measure's numbers."""
    full = lenet300.measure(digits28, latency=False)
    assert lesson.original_measured(lenet300, digits28) == {key: full[key] for key in ("accuracy", "params",
                                                                                         "fp32_bytes")}


def test_the_flips_text_says_what_the_pruned_and_shared_models_answer_differently(lenet300, digits28):
    """On the real lesson runs (the shipped files, decoded): the counts the text says are the answers of the
    original and of the decoded model compared image by image here, independently of the diff."""
    from complab.analysis.behaviour import diff_files
    from complab.sources import load_file

    images, labels = digits28.test.tensors
    with torch.no_grad():
        original = lenet300.model.eval()(images).argmax(1)
    for run, model in (("prune", "pruned"), ("share", "pruned and shared")):
        path = lesson_shipped.SHIPPED / run / "model.clab"
        diff = diff_files(path, None, original=lenet300, data=digits28)
        with torch.no_grad():
            compressed = load_file(path).model.eval()(images).argmax(1)
        worse = int(((original == labels) & (compressed != labels)).sum())
        better = int(((original != labels) & (compressed == labels)).sum())
        changed = int((original != compressed).sum())
        assert (diff["flips"]["right_to_wrong"], diff["flips"]["wrong_to_right"]) == (worse, better)
        text = lesson.flips_text(diff, model)
        assert f"a different one on {changed:,}:" in text and f"the {model} model" in text
        assert f"{worse} digits the original got right are now wrong" in text or worse == 1
        assert f"{len(labels) - changed:,} ({lesson.percent((len(labels) - changed) / len(labels))})" in text
        low, high = diff["flips"]["net_ci"]
        assert ("within noise" in text) == (low <= 0 <= high)
        examples = lesson.flip_examples(diff, limit=6)
        assert 0 < len(examples) <= 6 and all(e["png"].startswith(b"\x89PNG") for e in examples)
        for example in examples:  # each drawn digit is one whose answer changed, with both models' answers
            index = next(item["index"] for item in diff["gallery"] if item["image_png_b64"]
                         and example["png"] == base64.b64decode(item["image_png_b64"]))
            assert (int(original[index]), int(compressed[index]), int(labels[index])) == (
                example["original"], example["compressed"], example["label"])
            assert example["original"] != example["compressed"]
        kinds = [e["kind"] for e in examples]
        assert kinds == sorted(kinds, key=["right_to_wrong", "wrong_to_right", "wrong_to_other_wrong"].index)


def test_the_flips_text_of_identical_answers_and_of_one_flip():
    diff = {"n": 360, "accuracy_a": 0.9, "accuracy_b": 0.9, "trace": {"method": None, "layers": []},
            "flips": {"right_to_wrong": 0, "wrong_to_right": 0, "wrong_to_other_wrong": 0, "net_ci": [-0.01, 0.01]}}
    assert "all 360 of them" in lesson.flips_text(diff, "pruned")
    diff["flips"].update(right_to_wrong=1, net_ci=[-0.016, 0.008])
    diff["accuracy_b"] = 0.9 - 1 / 360
    text = lesson.flips_text(diff, "pruned")
    assert "1 digit the original got right is now wrong" in text and "cannot be seen" not in text
    assert "-0.3 points" in text and "within noise" in text and "0.28 points" in text


def test_an_imported_run_is_a_sound_finished_run_even_after_the_index_is_lost(tmp_path, digits28):
    """engine.import_or_reuse: a succeeded run whose folder reads as the engine writes one (runfolder finds nothing
    damaged), found instead of importing twice, and still marked precomputed when the index is rebuilt from the
    folders."""
    from complab import runfolder

    home = tmp_path / "home"
    shipped = lesson_shipped.check_shipped("share", digits28, chosen=lesson.LESSON)
    job = lesson.step_job("share", lesson.LESSON)
    run_id, reused = engine.import_or_reuse(job, shipped.files, shipped.metrics, "checked", root=home)
    assert not reused and engine.import_or_reuse(job, shipped.files, shipped.metrics, "checked", root=home) == (
        run_id, True)
    folder = runfolder.read_run_folder(engine.run_dir(run_id, root=home))
    assert folder["damaged"] == {} and folder["state"]["state"] == "succeeded"
    assert folder["job"]["precomputed"] is True and folder["metrics"]["precomputed"] is True
    assert engine.log_tail(run_id, root=home).strip() == "checked"
    (home / "index.sqlite").unlink()  # the folders are the truth: the index is rebuilt from them
    row = engine.status(run_id, root=home)
    assert row["state"] == "succeeded" and row["job"]["precomputed"] is True and not row.get("damaged")
