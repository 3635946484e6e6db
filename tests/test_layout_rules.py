"""The house rules of issue 12 that a grep can check: nothing rides on the model, one place tells tasks apart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "compression" / "complab").rglob("*.py"))


def _offenders(pattern: str, allowed: set[str] = frozenset(), paths: list[Path] = SOURCES) -> list[str]:
    regex = re.compile(pattern)
    out = []
    for path in paths:
        relative = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
        if relative in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if regex.search(line):
                out.append(f"{relative}:{number}: {line.strip()}")
    return out


def test_nothing_rides_on_attributes_of_the_model():
    # codebooks, channel history and folded batch norm travel in StepResult.products, not as model.clab_*
    assert _offenders(r"clab_") == []


def test_only_the_source_loader_reads_a_detector_prefix():
    assert _offenders(r"""startswith\(\s*["']detector:""", {"compression/complab/sources.py"}) == []
    assert _offenders(r"""startswith\(\s*["']ultralytics""") == []


TYPE_NAMES = r"__name__\s*[!=]=|[!=]=\s*[\"'](DetectorHandle|DetectionModel|ModelHandle)[\"']"


def test_no_code_compares_type_names():
    # a handle says its task (handle.task); `if __name__ == "__main__"` is the only name comparison allowed
    assert [line for line in _offenders(TYPE_NAMES) if "__main__" not in line] == []


def test_checker_finds_planted_offenders(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('if type(handle).__name__ == "DetectorHandle":\n    model.clab_x = 1\n'
                       'if ref.startswith("detector:"):\n    pass\n')
    assert len(_offenders(r"clab_", paths=[planted])) == 1
    assert len(_offenders(TYPE_NAMES, paths=[planted])) == 1
    assert len(_offenders(r"""startswith\(\s*["']detector:""", paths=[planted])) == 1
