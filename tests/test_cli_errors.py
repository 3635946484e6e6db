"""Bad input on the command line: one line naming the problem and the fix (exit 2), never a traceback,
and nothing the user made is replaced without --force (issue 11's list, one test per row)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from complab.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "assets" / "recipes" / "quick.json"
FAST = '{"schema_version": 1, "name": "t", "steps": [{"type": "prune", "sparsity": {"_default": 0.5}, ' \
       '"iterations": 1, "finetune_epochs": 0}]}'


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "fast.json"
    path.write_text(FAST)
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory, recipe):
    out = tmp_path_factory.mktemp("made")
    assert main(["run", str(recipe), "--model", "demo:lenet300", "--data", "digits", "--out", str(out),
                 "--no-latency"]) == 0
    return out


def run_args(recipe, out, *extra):
    return ["run", str(recipe), "--model", "demo:lenet300", "--data", "digits", "--out", str(out), "--no-latency",
            *extra]


@pytest.mark.parametrize("extra,expected", [
    (["--std", "0"], "must be positive"),
    (["--std", "0.5,nan,0.5"], "per-channel numbers"),
    (["--mean", "0.5,0.5,0.5"], "digits are normalised with their own"),
    (["--input-size", "4096"], "reads 28x28 images"),
])
def test_bad_numbers_are_refused_before_loading(tmp_path, recipe, capsys, extra, expected):
    assert main(run_args(recipe, tmp_path / "out", *extra)) == 2
    assert expected in error_line(capsys)


def test_recipe_files(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe\x00{")
    assert main(run_args(bad, tmp_path / "o")) == 2
    assert "not UTF-8" in error_line(capsys)
    assert main(run_args(tmp_path, tmp_path / "o")) == 2
    assert "is not a file" in error_line(capsys)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (2 << 20))
    assert main(run_args(huge, tmp_path / "o")) == 2
    assert "a recipe is a few" in error_line(capsys)


def test_zero_byte_weights(tmp_path, recipe, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["run", str(recipe), "--model", "torchvision:resnet18", "--weights", str(empty), "--data", "digits",
                 "--out", str(tmp_path / "o")]) == 2
    assert "cannot read weights file empty.pt" in error_line(capsys)


def test_out_is_a_file_or_holds_earlier_results(tmp_path, recipe, made, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(run_args(recipe, afile)) == 2
    assert "is a file, not a folder" in error_line(capsys) and afile.read_text() == "mine"
    before = (made / "model.clab").read_bytes()
    assert main(run_args(recipe, made)) == 2
    assert "--force" in error_line(capsys)
    assert (made / "model.clab").read_bytes() == before


def test_data_path_that_is_a_file(tmp_path, recipe, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", str(recipe), "--model", "demo:lenet300", "--data", f"imagefolder:{afile}",
                 "--out", str(tmp_path / "o")]) == 2
    assert "is a file, not a folder" in error_line(capsys)


def test_eval_on_a_dataset_with_other_classes(tmp_path, made, capsys):
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / "two" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (28, 28), 40 * i).save(tmp_path / "two" / name / f"{i}.png")
    assert main(["eval", str(made / "model.clab"), "--data", f"imagefolder:{tmp_path / 'two'}"]) == 2
    assert "predicts 10 classes but the dataset has 2" in error_line(capsys)


def test_corrupt_image_is_named(tmp_path):
    from complab.data import load_data
    from complab.errors import DataLoadError
    from PIL import Image

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataLoadError, match=r"b/1\.png is not a readable image"):
        load_data(f"imagefolder:{tmp_path}", input_size=16)


@pytest.mark.parametrize("target,expected", [
    ("missing/x.onnx", "does not exist"), (".", "is a folder"), ("x.txt", "unknown extension")])
def test_export_targets(tmp_path, made, capsys, monkeypatch, target, expected):
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(made / "model.clab"), target]) == 2
    assert expected in error_line(capsys)


def test_export_does_not_overwrite_and_full_disk_leaves_nothing(tmp_path, made, capsys, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_text("mine")
    assert main(["export", str(made / "model.clab"), str(target)]) == 2
    assert "already exists" in error_line(capsys) and target.read_text() == "mine"

    import errno
    import os

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["export", str(made / "model.clab"), str(tmp_path / "new.pt")]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "is full" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_broken_pipe_is_quiet(tmp_path):
    home = tmp_path / "home"
    script = ("import sys; from complab.cli import main; sys.argv=['x']; "
              f"[main(['runs', '--home', {str(home)!r}]) for _ in range(200)]")
    proc = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1", shell=True, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_unexpected_errors_are_one_line(monkeypatch, capsys, tmp_path):
    import complab.cli as cli

    def boom(args):
        raise torch.cuda.OutOfMemoryError("")

    monkeypatch.setattr(cli, "cmd_inspect", boom)
    monkeypatch.delenv("COMPRESSION_LAB_DEBUG", raising=False)
    assert main(["inspect", str(tmp_path / "x.clab")]) == 1
    assert "COMPRESSION_LAB_DEBUG=1" in error_line(capsys)


def test_model_file_mistakes_are_named(tmp_path):
    from complab.errors import ModelLoadError
    from complab.models.handle import load_model

    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model("torchvision:resnet18", weights=tmp_path)
    with pytest.raises(ModelLoadError, match="from 8 to 2048"):
        load_model("demo:lenet5", input_size=0)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="pickled Python objects, not only tensors"):
        load_model("torchvision:resnet18", weights=tmp_path / "evil.pt")
    import torchvision

    state = {k: v.to(torch.int64) if v.is_floating_point() else v
             for k, v in torchvision.models.resnet18(num_classes=3).state_dict().items()}
    torch.save(state, tmp_path / "ints.pt")
    with pytest.raises(ModelLoadError, match="torch.int64 values where the architecture has torch.float32"):
        load_model("torchvision:resnet18", weights=tmp_path / "ints.pt")


def test_data_path_that_is_a_file_in_the_library(tmp_path):
    from complab.data import load_data
    from complab.errors import DataLoadError

    (tmp_path / "f").write_text("x")
    with pytest.raises(DataLoadError, match="is a file, not a folder"):
        load_data(f"imagefolder:{tmp_path / 'f'}")
