"""Decoding a compact detector file never runs code: the recorded Ultralytics architecture is allow-listed.

Ultralytics' parse_model eval()s the yaml's activation and calls whatever its globals hold under a
module's name; `complab.models.yolo_arch` stands between a file and it. These tests use the
crafted file from issue 11, every global name of ultralytics.nn.tasks, and seeded random mutations of
the demo detector's architecture, each carrying a payload that would create a marker file.
"""

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from complab.errors import ModelLoadError
from complab.models.detector import build_detector, load_detector
from complab.models.yolo_arch import MODULES, canonical_activation, check_yaml
from complab.storage import write_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_architecture():
    return copy.deepcopy(load_detector().architecture)


def payload(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}') or __import__('torch').nn.SiLU()"


def test_crafted_file_does_not_run_code_in_cli_eval(tmp_path, demo_architecture):
    marker = tmp_path / "X"
    arch = copy.deepcopy(demo_architecture)
    arch["yaml"]["activation"] = payload(marker)
    write_file(tmp_path / "evil.clab", {}, {"task": "detect", "architecture": arch, "imgsz": 160}, {})
    proc = subprocess.run([sys.executable, "-m", "complab.cli", "eval", str(tmp_path / "evil.clab")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "compression")})
    assert not marker.exists(), "decoding the file ran its code"
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "activation" in lines[0] and "Traceback" not in proc.stderr


def test_every_ultralytics_global_but_the_layers_is_refused(tmp_path, demo_architecture):
    from complab.models.yolo_env import offline_ultralytics

    offline_ultralytics()
    import ultralytics.nn.tasks as tasks

    names = sorted(set(vars(tasks)) - MODULES)
    assert "load_checkpoint" in names and "torch_load" in names and "TorchVision" in names
    for name in names:
        arch = copy.deepcopy(demo_architecture)
        arch["yaml"]["backbone"][0] = [-1, 1, name, [str(tmp_path / "weights.pt")]]
        with pytest.raises(ModelLoadError, match="not a known YOLO layer"):
            build_detector(arch)


@pytest.mark.parametrize("text,expected", [
    ("nn.SiLU()", "torch.nn.SiLU()"), ("torch.nn.ReLU()", "torch.nn.ReLU()"),
    ("nn.LeakyReLU(0.1)", "torch.nn.LeakyReLU(0.1)"), ("nn.ReLU(inplace=True)", "torch.nn.ReLU()")])
def test_known_activations_are_rewritten_canonically(text, expected):
    assert canonical_activation(text) == expected


@pytest.mark.parametrize("text", [
    "nn.SiLU() or 1", "nn.Module()", "nn.LeakyReLU(__import__('os'))", "nn.SiLU(1)", "lambda: 0", "nn.ReLU();1",
    "nn.LeakyReLU(1e400)", 3, None.__class__.__name__])
def test_other_activations_are_refused(text):
    with pytest.raises(ModelLoadError, match="activation"):
        canonical_activation(text)


def test_activation_is_applied(demo_architecture):
    """The canonical string still reaches Ultralytics: a ReLU layout builds ReLU layers."""
    from torch import nn

    arch = copy.deepcopy(demo_architecture)
    arch["yaml"]["activation"] = "nn.ReLU()"
    model = build_detector(arch)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())


def test_layout_larger_than_the_file_is_refused_before_allocating(demo_architecture):
    arch = copy.deepcopy(demo_architecture)
    arch["yaml"]["scales"] = {"n": [1.0, 4.0, 65536]}
    arch["yaml"]["backbone"][7] = [-1, 1, "Conv", [65536, 31, 2]]  # ~10^11 weights if it were built
    with pytest.raises(ModelLoadError,
                       match="needs .* values but the file holds|feature maps (and attention matrices )?after layer"):
        build_detector(arch, max_elements=2_000_000)


def _mutate(arch: dict, rng: random.Random, marker: Path) -> dict:
    arch = copy.deepcopy(arch)
    yaml = arch["yaml"]
    rows = yaml["backbone"] + yaml["head"]
    evil = payload(marker)
    values = [evil, "nc", "None", -1, 0, 2**40, 1e308, float("nan"), [evil], {"a": 1}, None, True, "x" * 5000, 3.5,
              [[1, 2]], "d", "ch", "__import__"]
    choice = rng.randrange(9)
    row = rng.choice(rows)
    if choice == 0:
        yaml["activation"] = rng.choice([evil, "nn.SiLU()", "eval('1')", "nn." + rng.choice(sorted(MODULES)) + "()"])
    elif choice == 1:
        row[2] = rng.choice(["eval", "exec", "__import__", "torch_safe_load", "nn.Module", "nn.functional",
                             "torchvision.ops.nms", "TorchVision", "Conv", "Index", "WorldDetect"])
    elif choice == 2 and row[3]:
        row[3][rng.randrange(len(row[3]))] = rng.choice(values)
    elif choice == 3:
        row[rng.randrange(4)] = rng.choice(values)
    elif choice == 4:
        key = rng.choice(["nc", "scales", "scale", "channels", "reg_max", "depth_multiple", "backbone", "__class__"])
        yaml[key] = rng.choice(values)
    elif choice == 5:
        arch["names"] = rng.choice([{0: evil}, {"x": "a"}, [1, 2], {str(i): "c" for i in range(3)}, None])
    elif choice == 6:
        row[0] = rng.choice([-100, 10**6, [-1, 99], "-1", [], [-1] * 40])
    elif choice == 7:
        yaml["head"] = yaml["head"] * rng.choice([0, 2, 60])
    else:
        row[1] = rng.choice([0, 10**6, -3, 1.5, "3"])
    return arch


@pytest.mark.slow  # a fuzz loop (72 s at load 10)
def test_fuzzed_architectures_build_or_refuse_never_run_code(tmp_path, demo_architecture):
    rng = random.Random(11)
    marker = tmp_path / "ran"
    built = refused = 0
    for _ in range(200):
        arch = _mutate(demo_architecture, rng, marker)
        try:
            build_detector(arch, max_elements=4_000_000)
            built += 1
        except ModelLoadError as exc:
            assert "\n" not in str(exc)
            refused += 1
        assert not marker.exists(), f"code ran for {arch}"
    assert refused > 100 and built > 0  # the mutations reach both outcomes


def test_checked_yaml_keeps_the_demo_layout(demo_architecture):
    checked = check_yaml(demo_architecture["yaml"])
    assert checked["backbone"] == demo_architecture["yaml"]["backbone"]


def test_layout_with_huge_feature_maps_is_refused_before_the_stride_pass(demo_architecture):
    arch = copy.deepcopy(demo_architecture)
    arch["yaml"]["head"][0] = [-1, 1, "nn.Upsample", ["None", 256, "nearest"]]  # 2 GiB of one feature map
    with pytest.raises(ModelLoadError, match="feature maps and attention matrices after layer 10 exceed"):
        build_detector(arch, max_elements=4_000_000)
