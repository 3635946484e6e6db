"""Model files that hold code (TorchScript, Ultralytics pickles) load only with the person's trust, and never in the
Streamlit server (issue 24, items 1 and 12).

The reproduction: a scripted module whose `__setstate__` (run by torch.jit.load itself) and `forward` call
`torch.from_file(path, shared=True, size=n)` and copy bytes into it, which creates or overwrites any file the
process may write (the issue's version wrote a `.pth` file of Python into a site directory).
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from complab import engine, sources
from complab.cli import main
from complab.errors import CompressionLabError, ModelLoadError
from complab.models.handle import load_model
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "assets" / "recipes" / "quick.json"
PAYLOAD = b"import os  # would run at every Python start-up from a site directory\n"

WRITER_SOURCE = '''
import torch
from torch import nn


class Writer(nn.Module):
    """Writes its payload to `target + ".load"` when loaded and to `target` when called."""

    def __init__(self, target: str, payload: bytes):
        super().__init__()
        self.target = target
        self.payload = torch.tensor(list(payload), dtype=torch.uint8)

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.payload, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]):
        self.target = state[0]
        self.training = state[2]
        out = torch.from_file(self.target + ".load", shared=True, size=state[1].numel(), dtype=torch.uint8)
        self.payload = out.copy_(state[1])

    def forward(self, x):
        out = torch.from_file(self.target, shared=True, size=self.payload.numel(), dtype=torch.uint8)
        written = out.copy_(self.payload)
        return x + written[:1].float().sum() * 0


class Evil(nn.Module):
    """A digits classifier (1x28x28 -> 10 classes) that writes a file on load and on every call."""

    def __init__(self, target: str, payload: bytes):
        super().__init__()
        self.writer = Writer(target, payload)
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(self.writer(x).flatten(1))


class Spin(nn.Module):
    """Never returns."""

    def forward(self, x):
        total = x.sum()
        while bool(total > -1.0):
            total = total + 1.0
        return x.flatten(1)[:, :10]


class Hog(nn.Module):
    """Asks for 6 GiB of address space (torch.empty: nothing is touched, so without a cap it simply works)."""

    def forward(self, x):
        big = torch.empty(6 << 30, dtype=torch.uint8)
        return x.flatten(1)[:, :10] + big[:1].float() * 0
'''


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """(the malicious TorchScript file, the two files its code writes: on load and on call), none written yet."""
    source = tmp_path / "evil_module.py"
    source.write_text(WRITER_SOURCE)
    spec = importlib.util.spec_from_file_location("evil_module", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "evil_module", module)
    spec.loader.exec_module(module)
    for name in ("Spin", "Hog"):
        torch.jit.script(getattr(module, name)()).save(str(tmp_path / f"{name.lower()}.pt"))
    target = tmp_path / "site" / "evil.pth"
    target.parent.mkdir()
    path = tmp_path / "evil.pt"
    torch.jit.script(module.Evil(str(target), PAYLOAD)).save(str(path))
    markers = (Path(str(target) + ".load"), target)
    for marker in markers:
        marker.unlink(missing_ok=True)
    return path, markers


def written(markers) -> list[Path]:
    return [marker for marker in markers if marker.exists()]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_the_reproduction_does_write_files_when_loaded(evil):
    """The construction is real: torch.jit.load runs __setstate__, a call runs forward; both write."""
    path, markers = evil
    model = torch.jit.load(str(path))
    assert markers[0].read_bytes() == PAYLOAD
    model(torch.zeros(1, 1, 28, 28))
    assert markers[1].read_bytes() == PAYLOAD


@pytest.fixture
def ts_clab(tmp_path):
    """A compact file of a (benign) TorchScript model: eval and export rebuild it from --base."""
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    benign = tmp_path / "benign.pt"
    scripted.save(str(benign))
    handle = load_model(f"torchscript:{benign}", input_size=28, trust=True)
    path = tmp_path / "ts.clab"
    handle.save(path, {"data": "digits", "trust": True})  # a file's own "trust" grants nothing
    return path


def commands(evil_path: Path, clab: Path, tmp: Path) -> dict[str, list[str]]:
    model = ["--model", f"torchscript:{evil_path}", "--data", "digits", "--input-size", "28"]
    recipes = tmp / "recipes.json"
    recipes.write_text(json.dumps([json.loads(QUICK.read_text())]))
    return {
        "analyze": ["analyze", *model, "--out", str(tmp / "r.json")],
        "run": ["run", str(QUICK), *model, "--out", str(tmp / "out")],
        "submit": ["submit", str(QUICK), *model, "--home", str(tmp / "home")],
        "sweep-recipes": ["sweep", *model, "--recipes", str(recipes), "--home", str(tmp / "home")],
        "sweep-targets": ["sweep", *model, "--targets", "ratio:10", "--home", str(tmp / "home")],
        "sweep-search": ["sweep", *model, "--search", "4", "--home", str(tmp / "home")],
        "eval": ["eval", str(clab), "--base", str(evil_path)],
        "export": ["export", str(clab), str(tmp / "x.onnx"), "--base", str(evil_path)],
    }


@pytest.mark.parametrize("command", ["analyze", "run", "submit", "sweep-recipes", "sweep-targets", "sweep-search",
                                     "eval", "export"])
def test_every_command_refuses_untrusted_torchscript_in_one_line(command, evil, ts_clab, tmp_path, capsys,
                                                                   monkeypatch):
    path, markers = evil
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran without trust"))
    assert main(commands(path, ts_clab, tmp_path)[command]) == 2
    line = error_line(capsys)
    assert "evil.pt is a TorchScript file, a program that runs when loaded: pass --trust" in line
    assert written(markers) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.json").exists() and not (tmp_path / "x.onnx").exists()
    if (tmp_path / "home").exists():
        assert engine.list_runs(root=tmp_path / "home") == []  # nothing queued


def test_trusted_torchscript_is_for_evaluation_only(evil, tmp_path, capsys, monkeypatch):
    """Compression refuses TorchScript before anything loads (the steps cannot change a scripted module)."""
    path, markers = evil
    monkeypatch.chdir(tmp_path)
    source = ["--model", f"torchscript:{path}", "--data", "digits", "--input-size", "28", "--trust"]
    assert main(["run", str(QUICK), *source, "--out", str(tmp_path / "out")]) == 2
    assert "TorchScript is for evaluation only" in error_line(capsys)
    assert main(["submit", str(QUICK), *source, "--home", str(tmp_path / "home")]) == 2
    assert "TorchScript is for evaluation only" in error_line(capsys)
    assert written(markers) == [] and not (tmp_path / "out").exists()
    assert engine.list_runs(root=tmp_path / "home") == []
    with pytest.raises(CompressionLabError, match="evaluation only"):
        engine.submit({"kind": "compress", "model": f"torchscript:{path}", "data": "digits", "input_size": 28,
                       "trust": True, "plan": json.loads(QUICK.read_text())}, root=tmp_path / "home")


def test_the_library_refuses_to_compress_a_torchscript_handle(tmp_path):
    from complab.data import load_data
    from complab.pipeline import compress
    from complab.plan import Plan

    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    scripted.save(str(tmp_path / "m.pt"))
    handle = load_model(f"torchscript:{tmp_path / 'm.pt'}", input_size=28, trust=True)
    with pytest.raises(ModelLoadError, match="evaluation only"):
        compress(handle, Plan.from_file(QUICK), load_data("digits", input_size=28, in_channels=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_trust_comes_from_the_person_never_from_a_file(evil, ts_clab, tmp_path, capsys):
    """The spec's trust key is set by --trust alone: a compact file's meta saying trust grants nothing."""
    path, markers = evil
    with pytest.raises(ModelLoadError, match="pass --trust"):
        sources.check({"model": f"torchscript:{path}", "data": "digits"})
    with pytest.raises(ModelLoadError, match="pass --trust"):
        sources.load_file(ts_clab, path)
    with pytest.raises(ModelLoadError, match="pass --trust"):
        load_model(f"torchscript:{path}", input_size=28)  # the fuzz campaign's entry: trust=False by default
    assert written(markers) == []
    # with the person's --trust, eval rebuilds the model from the original file (its sha256 checked first)
    assert main(["eval", str(ts_clab), "--base", str(path), "--trust", "--data", "digits"]) == 2
    assert "is not the TorchScript file this model was compressed from" in error_line(capsys)
    assert written(markers) == []  # the checksum is checked before the file is loaded
    assert main(["eval", str(ts_clab), "--base", str(tmp_path / "benign.pt"), "--trust", "--data", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0


def test_trusted_torchscript_is_evaluated_by_eval(evil, tmp_path, capsys, monkeypatch):
    """With --trust the file's code runs, in the person's own command: eval rebuilds a compact file from it."""
    path, markers = evil
    handle = load_model(f"torchscript:{path}", input_size=28, trust=True)  # made by its owner, who trusts it
    handle.save(tmp_path / "evil.clab", {"data": "digits"})
    for marker in markers:
        marker.unlink()
    assert main(["eval", str(tmp_path / "evil.clab"), "--base", str(path), "--data", "digits"]) == 2
    assert "pass --trust" in error_line(capsys) and written(markers) == []
    assert main(["eval", str(tmp_path / "evil.clab"), "--base", str(path), "--trust", "--data", "digits"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    assert written(markers) == list(markers)  # it ran, as the person allowed


def test_trusted_torchscript_is_not_analysed(evil, tmp_path, capsys, monkeypatch):
    """A sensitivity analysis prunes and clusters the model's layers (with hooks): refused as compression is."""
    path, markers = evil
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "--model", f"torchscript:{path}", "--trust", "--data", "digits", "--input-size", "28",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "TorchScript is for evaluation only" in error_line(capsys)
    with pytest.raises(CompressionLabError, match="evaluation only"):
        engine.submit({"kind": "sensitivity", "model": f"torchscript:{path}", "data": "digits", "input_size": 28,
                       "trust": True, "config": {"val_size": 16}}, root=tmp_path / "home")
    assert written(markers) == [] and not (tmp_path / "r.json").exists()


# --- the app: no model file's code runs in the Streamlit server -----------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_code_in_server(monkeypatch):
    """AppTest runs the page in this process: any torch.jit.load or pickle load here fails the test."""
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "a pickle was unpickled in the server"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran in the server"))
    monkeypatch.setattr(torch, "load", weights_only_load)


def upload_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    return at


def test_model_page_refuses_untrusted_torchscript(home, evil, no_code_in_server):
    path, markers = evil
    at = upload_page()
    at.radio(key="model_source").set_value("Upload a file").run()
    at.selectbox(key="upload_kind").select("TorchScript").run()
    at.number_input(key="upload_size").set_value(28).run()
    at.file_uploader(key="upload_file").set_value(("evil.pt", path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Tick 'I trust this file'" in info.value for info in at.info)
    assert written(markers) == []
    assert at.session_state["active"]["model"] == "demo:lenet5"


def test_model_page_measures_trusted_torchscript_in_a_child_process(home, evil, no_code_in_server):
    path, markers = evil
    at = upload_page()
    at.radio(key="model_source").set_value("Upload a file").run()
    at.selectbox(key="upload_kind").select("TorchScript").run()
    at.number_input(key="upload_size").set_value(28).run()
    at.file_uploader(key="upload_file").set_value(("evil.pt", path.read_bytes(), "application/octet-stream")).run()
    at.checkbox(key="upload_ts_trust").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    labels = {m.label: m.value for m in at.metric}
    assert "%" in labels["Test accuracy"] and labels["Parameters"] == "7,850"
    assert any("evaluation only" in info.value for info in at.info)
    assert written(markers) == list(markers)  # the code ran, in the child process (torch.jit.load here fails)
    assert at.session_state["active"]["model"] == "demo:lenet5"  # never the active model


def test_model_page_opens_a_trusted_yolo_checkpoint_without_unpickling_in_the_server(home, no_code_in_server):
    at = upload_page()
    at.radio(key="model_source").set_value("Upload a YOLO detector").run()
    blob = (ROOT / "assets" / "detector.pt").read_bytes()
    at.file_uploader(key="upload_yolo").set_value(("mine.pt", blob, "application/octet-stream")).run()
    assert any("Tick 'I trust this file'" in info.value for info in at.info)
    at.checkbox(key="upload_yolo_trust").check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["active"]["model"].startswith("detector:") and at.session_state["active"]["trust"]
    assert "mAP50" in {m.label for m in at.metric}


def test_the_server_side_loader_never_runs_torchscript(evil, monkeypatch):
    """sources.load_model(isolated=True), what the app's cache calls: TorchScript refused even with trust."""
    path, markers = evil
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load ran in the server"))
    spec = {"model": f"torchscript:{path}", "data": "digits", "input_size": 28, "trust": True}
    with pytest.raises(CompressionLabError, match="never runs an uploaded model's code in its server"):
        sources.load_model(sources.check(spec), isolated=True)
    with pytest.raises(ModelLoadError, match="Ultralytics checkpoint, a pickle"):
        sources.load_model({"model": f"detector:{ROOT / 'assets' / 'detector.pt'}", "data": "shapes"}, isolated=True)
    assert written(markers) == []


@pytest.mark.slow  # 10 s: waits out the child's timeout
def test_the_child_process_is_stopped_after_its_timeout(evil, tmp_path):
    from complab.measure_child import measure_in_child

    spec = {"model": f"torchscript:{tmp_path / 'spin.pt'}", "data": "digits", "input_size": 28, "trust": True}
    with pytest.raises(ModelLoadError, match="took more than 10 s and was stopped"):
        measure_in_child(spec, timeout=10)  # the spin never ends: any limit past the child's start shows the stop


def test_the_child_process_has_a_memory_cap(evil, tmp_path, monkeypatch):
    from complab import codeload, measure_child

    monkeypatch.setattr(codeload, "MEMORY_LIMIT_BYTES", 5 << 30)
    spec = {"model": f"torchscript:{tmp_path / 'hog.pt'}", "data": "digits", "input_size": 28, "trust": True}
    with pytest.raises(ModelLoadError, match="can't allocate memory"):
        measure_child.measure_in_child(spec)


class _WritesPid:
    """A pickle whose loading writes the loading process's id to a file (an Ultralytics .pt is such a pickle)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"import os; open({self.marker!r}, 'w').write(str(os.getpid()))",))


def test_the_server_side_loader_unpickles_a_trusted_checkpoint_only_in_a_child(tmp_path):
    """sources.load_model(isolated=True): without trust nothing is read; with it the pickle runs in another process."""
    marker = tmp_path / "unpickled-by.txt"
    path = tmp_path / "crafted.pt"
    torch.save({"model": _WritesPid(marker)}, path)
    spec = {"model": f"detector:{path}", "data": "shapes"}
    with pytest.raises(ModelLoadError, match="pickle that can run code"):
        sources.load_model(spec, isolated=True)
    assert not marker.exists()
    with pytest.raises(ModelLoadError):  # not a detector: refused, after its code ran in the child
        sources.load_model({**spec, "trust": True}, isolated=True)
    assert marker.read_text().isdigit() and int(marker.read_text()) != os.getpid()
