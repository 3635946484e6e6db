"""The command line end to end on the demo LeNet-300-100, and its exit codes for bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from complab.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "assets" / "recipes" / "quick.json"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", str(QUICK), "--model", "demo:lenet300", "--data", "digits", "--out", str(out),
                 "--no-latency"]) == 0
    return out


def test_run_writes_file_and_metrics(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    file_size = (run_dir / "model.clab").stat().st_size
    assert metrics["after"]["compressed_bytes"] == file_size
    assert metrics["compression_ratio"] == pytest.approx(metrics["before"]["fp32_bytes"] / file_size)
    assert metrics["compression_ratio"] > 15
    assert metrics["after"]["accuracy"] == metrics["after"]["in_memory_accuracy"]
    assert metrics["after"]["accuracy"] > 0.9
    # quick.json: 90% of fc1 (235,200 weights), 50% of fc2 (30,000) and fc3 (1,000) pruned
    assert metrics["weights_kept"] == pytest.approx((0.1 * 235200 + 0.5 * 31000) / 266200, abs=1e-4)


def test_eval_decodes_the_file(run_dir, capsys):
    assert main(["eval", str(run_dir / "model.clab")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert out["accuracy"] == metrics["after"]["accuracy"]
    assert out["nonzero_params"] == metrics["after"]["nonzero_params"]


def test_inspect_breaks_bits_down(run_dir, capsys):
    assert main(["inspect", str(run_dir / "model.clab"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    fc1 = next(r for r in rows if r["name"] == "fc1.weight")
    assert fc1["encoding"] == "shared" and fc1["n_clusters"] <= 16
    assert fc1["bytes_positions"] > 0 and fc1["bytes_indices"] > 0 and fc1["bytes_codebook"] > 0
    assert sum(r["bytes_total"] for r in rows) == (run_dir / "model.clab").stat().st_size
    assert main(["inspect", str(run_dir / "model.clab")]) == 0
    assert "fc1.weight" in capsys.readouterr().out


def test_torchvision_state_dict_and_safetensors(tmp_path, capsys):
    import torchvision
    from complab.models.handle import load_model
    from safetensors.torch import save_file

    model = torchvision.models.get_model("resnet18", weights=None, num_classes=7)
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    save_file(model.state_dict(), str(tmp_path / "r18.safetensors"))
    for name in ("r18.pth", "r18.safetensors"):
        handle = load_model("torchvision:resnet18", tmp_path / name, input_size=32)
        assert handle.num_classes == 7
        assert torch.equal(handle.model.fc.weight, model.fc.weight)


def test_torchscript_model_round_trip(tmp_path, lenet300):
    from complab.models.compact import load_compressed, save_compressed
    from complab.models.handle import load_model

    scripted = torch.jit.script(lenet300.model)
    scripted.save(str(tmp_path / "lenet.pt"))
    handle = load_model(f"torchscript:{tmp_path / 'lenet.pt'}", input_size=28, trust=True)  # code: needs trust
    assert handle.input_shape == (1, 28, 28)
    assert handle.num_classes == 10
    save_compressed(handle, tmp_path / "ts.clab")
    with pytest.raises(Exception, match="pass the original TorchScript file"):
        load_compressed(tmp_path / "ts.clab")
    with pytest.raises(Exception, match="pass --trust"):  # the original file is code: the file cannot grant trust
        load_compressed(tmp_path / "ts.clab", tmp_path / "lenet.pt")
    decoded = load_compressed(tmp_path / "ts.clab", tmp_path / "lenet.pt", trust=True)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(decoded.model(x), lenet300.model(x))


@pytest.mark.parametrize("args, message", [
    (["run", "missing.json", "--model", "demo:lenet300", "--data", "digits", "--out", "X"], "recipe missing.json"),
    (["run", str(QUICK), "--model", "demo:nope", "--data", "digits", "--out", "X"], "unknown demo model 'nope'"),
    (["run", str(QUICK), "--model", "torchvision:resnet999", "--weights", "w.pt", "--data", "digits", "--out", "X"],
     "does not exist"),
    (["run", str(QUICK), "--model", "demo:lenet300", "--data", "imagefolder:/no/such", "--out", "X"],
     "does not exist"),
    (["run", str(QUICK), "--model", "demo:lenet300", "--data", "mnist", "--out", "X"], "unknown dataset 'mnist'"),
    (["eval", "nothing.clab"], "does not exist"),
])
def test_bad_input_exit_code_2_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1


def test_corrupt_and_mismatched_files(tmp_path, capsys, run_dir):
    corrupt = tmp_path / "bad.clab"
    corrupt.write_bytes((run_dir / "model.clab").read_bytes()[:100])
    assert main(["eval", str(corrupt)]) == 2
    assert "error:" in capsys.readouterr().err
    weights = tmp_path / "bad.pt"
    weights.write_bytes(b"not a zip file at all")
    assert main(["run", str(QUICK), "--model", "torchvision:resnet18", "--weights", str(weights), "--data", "digits",
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot read weights file bad.pt" in capsys.readouterr().err
    import torchvision

    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=5).state_dict(), tmp_path / "r.pt")
    assert main(["run", str(QUICK), "--model", "torchvision:resnet34", "--weights", str(tmp_path / "r.pt"),
                 "--data", "digits", "--out", str(tmp_path / "o")]) == 2
    assert "does not match the architecture" in capsys.readouterr().err
    assert main(["run", str(QUICK), "--model", "torchvision:resnet18", "--weights", str(tmp_path / "r.pt"),
                 "--data", "digits", "--input-size", "32", "--out", str(tmp_path / "o")]) == 2
    assert "predicts 5 classes but the dataset has 10" in capsys.readouterr().err


def test_untrusted_pickle_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pt")
    assert main(["run", str(QUICK), "--model", "torchvision:resnet18", "--weights", str(tmp_path / "evil.pt"),
                 "--data", "digits", "--out", str(tmp_path / "o")]) == 2
    assert (tmp_path / "victim").exists()
    assert "cannot read weights file evil.pt" in capsys.readouterr().err


def test_console_script_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("complab")
    proc = subprocess.run([str(exe), "eval", str(tmp_path / "none.clab")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:")


def test_export_torchscript_and_onnx(run_dir, tmp_path, capsys):
    import onnx
    from complab.models.compact import load_compressed

    assert main(["export", str(run_dir / "model.clab"), str(tmp_path / "m.pt")]) == 0
    assert main(["export", str(run_dir / "model.clab"), str(tmp_path / "m.onnx")]) == 0
    decoded = load_compressed(run_dir / "model.clab")
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(scripted(x), decoded.model(x))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
