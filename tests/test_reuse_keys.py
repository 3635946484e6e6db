"""Issue 24, items 10, 11 and 14's last: reuse follows the data, eval follows the run's normalisation, and two
identical submissions at once become one run.

10. A sweep re-run after two class folders were swapped and 10 images deleted said `reused: true` with the old
    accuracy: the content key held the data's name, not its files, and was recomputed from today's files.
11. A run given --mean/--std recorded the model's default normalisation in its file, so `eval` without flags
    measured something else, silently.
14. Two identical sweeps started together both ran.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from complab import engine, sources
from complab.cli import main
from complab.engine import keys
from PIL import Image

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]
QUICK = {"schema_version": 1, "name": "quick", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.1}, "iterations": 1, "finetune_epochs": 0}]}


def write_digit_folders(folder: Path, per_class: int = 6) -> Path:
    """Ten class folders digit0..digit9 of real 28x28 digits (the demo models read them; a test split of 12)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        (folder / f"digit{label}").mkdir(parents=True)
        for i, j in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            pixels = (digits.images[j] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(folder / f"digit{label}" / f"{i}.png")
    return folder


@pytest.fixture
def test_jobs(monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")


def _job(folder: Path) -> dict:
    return {"kind": "compress", "model": "demo:lenet5", "data": f"imagefolder:{folder}", "plan": QUICK,
            "latency": False}


# ------------------------------------------------------------------------------------------------ item 10


@pytest.mark.slow  # two sweeps of runs (20 s at load 10)
def test_a_sweep_over_changed_data_runs_again(tmp_path):
    """The reproduction: the same sweep, then two class folders swapped and 10 images deleted: a new run, on the
    new data (its accuracy is the changed data's), where it used to say reused with the old accuracy."""
    images = write_digit_folders(tmp_path / "images")
    home = tmp_path / "home"
    first = engine.wait_sweep(engine.submit_sweep([_job(images)], root=home), 120, root=home)["members"][0]
    assert first["state"] == "succeeded" and not first["reused"]
    again = engine.wait_sweep(engine.submit_sweep([_job(images)], root=home), 60, root=home)["members"][0]
    assert (again["run"], again["reused"]) == (first["run"], True)  # nothing changed: reused

    os.rename(images / "digit0", images / "swap")
    os.rename(images / "digit1", images / "digit0")
    os.rename(images / "swap", images / "digit1")
    for label in range(10):
        (images / f"digit{label}" / "5.png").unlink()  # 10 images deleted
    changed = engine.submit_sweep([_job(images)], root=home)
    member = engine.sweep_status(changed, root=home)["members"][0]
    assert member["run"] != first["run"] and not member["reused"]
    # while it runs, asking for the same job again attaches to it (submit_or_reuse, the lesson page's way)
    assert engine.submit_or_reuse(_job(images), root=home) == (member["run"], True)
    member = engine.wait_sweep(changed, 120, root=home)["members"][0]
    assert member["state"] == "succeeded"
    old, new = first["metrics"]["before"]["accuracy"], member["metrics"]["before"]["accuracy"]
    assert new < old  # digits 0 and 1 now carry each other's labels: the old number would have been wrong
    stored = json.loads(engine.run_file(member["run"], "job.json", root=home).read_text())
    assert isinstance(stored["content_key"], str) and len(stored["content_key"]) == 64


def test_the_key_covers_weights_bytes_and_the_code_version(tmp_path, monkeypatch):
    import torch
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict(), weights)
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "a" / "x.png").write_bytes(b"x")
    job = engine.absolute_paths({"kind": "compress", "model": "torchvision:resnet18", "weights": str(weights),
                                 "data": f"imagefolder:{images}", "plan": QUICK, "input_size": 32})
    key = keys.content_key(job)
    assert keys.content_key(dict(job)) == key  # the same files: the same key
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict(), weights)
    assert keys.content_key(job) != key  # the weights file rewritten in place: its bytes differ
    key = keys.content_key(job)
    (images / "a" / "x.png").write_bytes(b"y")  # same size, same name: a small set is keyed by content
    assert keys.content_key(job) != key
    key = keys.content_key(job)
    monkeypatch.setattr(keys, "code_version", lambda: "0.0.9+an-older-release")
    assert keys.content_key(job) != key
    assert keys.content_key({**job, "data": "digits"}) != keys.content_key({**job, "data": "shapes"})
    walked, walk = [], keys.data_fingerprint
    monkeypatch.setattr(keys, "data_fingerprint", lambda ref: walked.append(ref) or walk(ref))
    memo: dict = {}
    assert len({keys.content_key({**job, "plan": {**QUICK, "seed": seed}}, memo) for seed in range(3)}) == 3
    assert len(walked) == 1  # a sweep's members on one dataset: walked once


@pytest.mark.slow  # 8 s: two real runs
def test_a_run_of_another_code_version_is_not_reused(tmp_path, monkeypatch, test_jobs):
    job = {"kind": "test-sleep", "seconds": 0.1}
    monkeypatch.setattr(keys, "code_version", lambda: "0.0.9+an-older-release")
    old, _ = engine.submit_or_reuse(job, root=tmp_path)
    assert engine.wait(old, 60, root=tmp_path)["state"] == "succeeded"
    assert engine.submit_or_reuse(job, root=tmp_path) == (old, True)
    monkeypatch.undo()
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    new, reused = engine.submit_or_reuse(job, root=tmp_path)  # upgraded: computed afresh
    assert new != old and not reused
    engine.wait(new, 60, root=tmp_path)
    # a run recorded without a key (an older release's job.json) is never reused either
    folder = engine.run_dir(new, root=tmp_path)
    stored = json.loads((folder / "job.json").read_text())
    assert stored.pop("content_key") == keys.content_key(stored)
    rows = [{"id": "r1", "kind": "test-sleep", "state": "succeeded", "job": stored}]
    assert engine.sweeps.reusable_by_key(rows, "test-sleep") == {}


def test_yolo_yaml_key_covers_the_yaml_and_every_split_with_its_labels(tmp_path):
    root = tmp_path / "set"
    for split in ("train", "val", "val2"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        (root / "images" / split / "a.png").write_bytes(b"png")
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    yaml = root / "data.yaml"
    yaml.write_text("path: .\ntrain: images/train\nval: [images/val, images/val2]\nnames: [thing]\n")
    ref = f"yolo:{yaml}"
    key = keys.data_fingerprint(ref)
    assert key is not None and keys.data_fingerprint(ref) == key
    (root / "labels" / "val2" / "a.txt").write_text("0 0.4 0.5 0.1 0.1\n")  # a label in the second val entry
    assert keys.data_fingerprint(ref) != key
    key = keys.data_fingerprint(ref)
    yaml.write_text("path: .\ntrain: images/train\nval: [images/val, images/val2]\nnames: [other]\n")
    assert keys.data_fingerprint(ref) != key
    key = keys.data_fingerprint(ref)
    (root / "images" / "train" / "b.png").write_bytes(b"png")
    assert keys.data_fingerprint(ref) != key
    assert keys.data_fingerprint("digits") == keys.data_fingerprint("digits")  # built in: its name (+ the code)
    # an image-list split: the files it names and their labels count
    (root / "val.txt").write_text("images/val/a.png\n")
    yaml.write_text("path: .\ntrain: images/train\nval: val.txt\nnames: [thing]\n")
    key = keys.data_fingerprint(ref)
    (root / "labels" / "val" / "a.txt").write_text("0 0.1 0.5 0.1 0.1\n")
    assert keys.data_fingerprint(ref) != key
    # a yaml of nested aliases (a billion laughs) or odd values: keyed by its bytes, quickly, nothing expanded
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    yaml.write_text(laughs + "train: *i\nval: {x: 1}\ntest: \"a\\0b\"\nnames: [thing]\n")
    started = time.monotonic()
    assert keys.data_fingerprint(ref) is not None and time.monotonic() - started < 2


def test_the_walk_is_bounded_and_stays_in_the_folder(tmp_path, monkeypatch):
    images = tmp_path / "images"
    (images / "cls0").mkdir(parents=True)
    (images / "cls0" / "x.png").write_bytes(b"x")
    (images / "cls0" / "a").symlink_to("..")  # a cycle: the loader used to walk it forever
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"1")
    (images / "cls0" / "out").symlink_to(outside)  # a link out of the folder: named, never walked
    started = time.monotonic()
    key = keys.data_fingerprint(f"imagefolder:{images}")
    assert key is not None and time.monotonic() - started < 5
    (outside / "secret").write_bytes(b"22")
    (outside / "more").write_bytes(b"3")
    assert keys.data_fingerprint(f"imagefolder:{images}") == key  # nothing outside was read
    (images / "cls0" / "y.png").write_bytes(b"y")
    assert keys.data_fingerprint(f"imagefolder:{images}") != key
    # past the entry bound the data gets no key: its runs always run afresh, never wrongly reused
    monkeypatch.setattr(keys, "MAX_ENTRIES", 2)
    assert keys.data_fingerprint(f"imagefolder:{images}") is None
    assert keys.content_key(engine.absolute_paths(_job(images))) is None
    home = tmp_path / "home"
    one, two = engine.submit_or_reuse(_job(images), root=home), engine.submit_or_reuse(_job(images), root=home)
    assert one[0] != two[0] and not one[1] and not two[1]
    for run_id in (one[0], two[0]):
        engine.cancel(run_id, root=home)
        engine.wait(run_id, 60, root=home)


# ------------------------------------------------------------------------------------------------ item 11


def test_eval_measures_with_the_runs_normalisation(tmp_path, capsys):
    """A run given --mean/--std records them in its file; `eval` without flags measures as the run did, and a
    flag that overrides them is said in one line (on stderr: stdout stays one JSON line)."""
    images = write_digit_folders(tmp_path / "images")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(QUICK))
    out = tmp_path / "out"
    assert main(["run", str(recipe), "--model", "demo:lenet5", "--data", f"imagefolder:{images}", "--mean", "0.9",
                 "--std", "0.1", "--out", str(out), "--no-latency"]) == 0
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    handle = sources.load_file(out / "model.clab")
    assert (handle.mean, handle.std) == ((0.9,), (0.1,))  # recorded (it used to be the digits' own)
    assert handle.input_shape == (1, 28, 28)
    assert main(["eval", str(out / "model.clab")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] == run["accuracy_after"] == 0.75
    assert "note" not in captured.err
    from complab.data.digits import DIGITS_MEAN, DIGITS_STD

    assert main(["eval", str(out / "model.clab"), "--mean", str(DIGITS_MEAN[0]), "--std", str(DIGITS_STD[0])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy"] == 1.0  # what eval used to say, silently, without the flags
    note = captured.err.strip()
    assert note.count("\n") == 0 and "--mean 0.3053 overrides the file's 0.9" in note \
        and "--std 0.376 overrides the file's 0.1" in note


def test_a_file_without_recorded_normalisation_still_evaluates_with_a_note(tmp_path, capsys):
    import dataclasses

    from complab.models.handle import load_model

    images = write_digit_folders(tmp_path / "images", per_class=2)
    old = dataclasses.replace(load_model("demo:lenet5"), mean=None, std=None)  # as an older release wrote it
    old.save(tmp_path / "old.clab", {"data": f"imagefolder:{images}"})
    assert main(["eval", str(tmp_path / "old.clab")]) == 0
    captured = capsys.readouterr()
    assert 0 <= json.loads(captured.out)["accuracy"] <= 1
    assert captured.err.strip().startswith("note: the file records no mean/std")
    assert sources.override_note(sources.load_file(tmp_path / "old.clab"), mean=[0.5], std=[0.5]) is not None


# ------------------------------------------------------------------------------------------------ item 14


CONCURRENT = """
import json, sys, time
from complab import engine
start, home, how = float(sys.argv[1]), sys.argv[2], sys.argv[3]
jobs = [{"kind": "test-sleep", "seconds": 0.2 + i / 10} for i in range(3)]
while time.time() < start:
    pass
if how == "sweep":
    sweep = engine.submit_sweep(jobs, root=home)
    print(json.dumps(engine.sweep_status(sweep, root=home)["members"]))
else:
    print(json.dumps([engine.submit_or_reuse(jobs[0], root=home)]))
"""


@pytest.mark.slow  # 9 s a case: concurrent submitters
@pytest.mark.parametrize("how", ["sweep", "one"])
def test_identical_submissions_at_once_become_one_run(tmp_path, test_jobs, how):
    """Four processes submit the same sweep (or the same job) at the same instant: one set of runs; the others
    attach to it, marked reused."""
    home = tmp_path / "home"
    engine.settings(root=home, max_workers=3)
    start = time.time() + 3  # every process imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(REPO / "compression"), "COMPRESSION_LAB_TEST_JOBS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(start), str(home), how], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        answers.append(json.loads(out.strip().splitlines()[-1]))
    runs = engine.list_runs(root=home)
    if how == "sweep":
        assert len(runs) == 3  # not 12
        assert [sum(m["reused"] for m in members) for members in sorted(answers, key=lambda a: a[0]["reused"])] \
            == [0, 3, 3, 3]
        assert len({tuple(m["run"] for m in members) for members in answers}) == 1
    else:
        assert len(runs) == 1
        assert sorted(reused for _, reused in (a[0] for a in answers)) == [False, True, True, True]
        assert len({run_id for run_id, _ in (a[0] for a in answers)}) == 1
    for run in runs:
        assert engine.wait(run["id"], 60, root=home)["state"] == "succeeded"
    shutil.rmtree(home, ignore_errors=True)


def test_data_fingerprint_never_raises_blocks_or_reads_endless_files(tmp_path):
    """The fuzz campaign's keys family: a yaml that is a FIFO hung the key (open blocked), yolo:/dev/zero read
    until memory ran out, `~nosuchuser` raised RuntimeError, a reference nested past JSON's depth raised
    RecursionError. Each now gets a key or None (never reused), at once."""
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "list.yaml").write_text(f"train: {tmp_path / 'fifo.yaml'}\nval: /dev/zero\n")
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    started = time.monotonic()
    for ref in (f"yolo:{tmp_path / 'fifo.yaml'}", "yolo:/dev/zero", "imagefolder:~nosuchuser-x/a",
                "yolo:~nosuchuser-x/d.yaml", "imagefolder:a\x00b", f"yolo:{tmp_path / 'list.yaml'}", nested):
        key = keys.data_fingerprint(ref)
        assert key is None or (isinstance(key, str) and len(key) == 64), ref
    assert time.monotonic() - started < 5
    assert keys.file_digest(tmp_path / "fifo.yaml") == keys.file_digest("/dev/zero") == "missing"
