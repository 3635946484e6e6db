"""`complab analyze`: the Sensitivity page's JSON report from the command line, progress, bad input."""

import io
import json
from pathlib import Path

import pytest
import torch
from complab.analysis import sensitivity
from complab.analysis.sensitivity import SensitivityConfig
from complab.cli import _ProgressLine, main
from torch import nn

SMALL = ["--sparsities", "0,0.5,0.9", "--clusters", "2,16", "--bits", "4", "--val-size", "64"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_analyze_writes_the_report_the_page_reads(tmp_path, capsys):
    from complab.analysis.sensitivity import analyze
    from complab.data import load_data
    from complab.models.handle import load_model

    out = tmp_path / "report.json"
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", *SMALL, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    report = json.loads(out.read_text())
    assert summary["file"] == str(out) and summary["layers"] == 4 and summary["prefix_cache"] is True
    # the same report the engine's job writes: analyze(...).to_dict() with the same settings
    expected = analyze(load_model("demo:lenet5"), load_data("digits"),
                       SensitivityConfig(sparsities=(0.0, 0.5, 0.9), n_clusters=(2, 16), bits=(4,),
                                         val_size=64)).to_dict()
    assert report["layers"] == expected["layers"] and report["base_accuracy"] == expected["base_accuracy"]
    assert report["config"]["sparsities"] == [0.0, 0.5, 0.9] and report["config"]["n_clusters"] == [2, 16]
    # stderr is not a terminal here: a line every few seconds and the last one at 100%
    lines = [line for line in captured.err.splitlines() if line.startswith("sensitivity")]
    assert lines and "100.0% (24/24 points)" in lines[-1] and "ETA 0:00:00" in lines[-1]
    # an existing report is not replaced without --force
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", *SMALL, "--out", str(out)]) == 2
    assert "already exists" in error_line(capsys)


def test_progress_line_redraws_on_a_terminal_and_throttles_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    line = _ProgressLine(terminal)
    for done in (1, 2):
        line("sensitivity", done / 4, {"layer": "conv1", "point": "sparsity 0.5", "done": done, "total": 4,
                                       "eta_s": 3725.0})
    line.close()
    text = terminal.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "ETA 1:02:05" in text and "(2/4 points)" in text
    log = io.StringIO()
    line = _ProgressLine(log)
    for done in range(1, 5):
        line("sensitivity", done / 4, {"done": done, "total": 4, "eta_s": 1.0})
    assert log.getvalue().count("\n") == 2  # the first point, then nothing for PROGRESS_EVERY_S, then the last


@pytest.mark.parametrize(("flags", "message"), [
    (["--sparsities", "0,1.5"], "sparsities"),
    (["--clusters", "1,4"], "n_clusters"),
    (["--val-size", "0"], "val_size"),
    (["--bn-batches", "-1"], "bn_batches"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", *flags, "--out",
                 str(tmp_path / "r.json")]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "r.json").exists()


def test_estimate_mode_writes_measured_and_estimated_points(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", "--mode", "estimate", "--val-size", "64",
                 "--sparsities", "0,0.5,0.9", "--clusters", "4,16", "--calibration-seconds", "3",
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["mode"] == "estimate"
    report = json.loads(out.read_text())
    assert report["config"]["mode"] == "estimate"
    measured = sum(len(row["measured"][kind]) for row in report["layers"].values() for kind in ("sparsity", "clusters"))
    points = sum(len(row[kind]) for row in report["layers"].values() for kind in ("sparsity", "clusters"))
    assert 0 < measured < points  # a few points measured for the calibration, the rest estimated


def test_auto_mode_measures_a_small_model_exactly(tmp_path, capsys):
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", "--val-size", "32",
                 "--sparsities", "0,0.5", "--clusters", "4", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mode"] == "exact"


def test_model_without_layers_exits_2(tmp_path, capsys):
    """TorchScript, the one reference a layerless model can come from, is not analysed at all (it is code, for
    evaluation only: tests/test_trust_code.py); analyze() itself refuses a model without layers in one line."""
    from complab.data import load_data
    from complab.errors import CompressionLabError
    from complab.models.handle import load_model

    class Slice(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    path = tmp_path / "slice.pt"
    torch.jit.script(Slice()).save(str(path))
    assert main(["analyze", "--model", f"torchscript:{path}", "--trust", "--data", "digits", "--input-size", "28",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "TorchScript is for evaluation only" in error_line(capsys)
    handle = load_model(f"torchscript:{path}", input_size=28, trust=True)
    with pytest.raises(CompressionLabError, match="no convolution or linear layer"):
        sensitivity.analyze(handle, load_data("digits", input_size=28, in_channels=1), SensitivityConfig(val_size=32))


def test_interrupt_stops_cleanly_and_writes_nothing(tmp_path, capsys, monkeypatch):
    scored = []
    real = sensitivity.grid_weight

    def interrupted(*args, **kwargs):  # Ctrl-C arriving during the third point
        scored.append(args)
        if len(scored) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sensitivity, "grid_weight", interrupted)
    out = tmp_path / "r.json"
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", *SMALL, "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and not list(Path(tmp_path).iterdir())
