"""The file names a Ray node sends back are untrusted: the driver writes none outside the run's folder or its cache."""

import pytest

pytest.importorskip("ray")

from complab.engine.ray_dispatch import _CACHE_NAME, checked_files  # noqa: E402
from complab.errors import CompressionLabError  # noqa: E402


def test_plain_result_names_pass():
    files = {"model.clab": b"x", "metrics.json": b"{}", "events.jsonl": b"", "log.txt": bytearray(b"1")}
    assert checked_files(files) == {name: bytes(blob) for name, blob in files.items()}


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "..", ".", "a/b", ".bashrc", "", "x" * 300, 5,
                                  "a\\..\\b", "model.clab\x00"])
def test_a_path_as_a_result_name_is_refused(name):
    with pytest.raises(CompressionLabError) as error:
        checked_files({name: b"payload"})
    assert "\n" not in str(error.value)


def test_cache_names_are_sensitivity_reports_only():
    assert checked_files({"sensitivity-0123456789abcdef0123.json": b"{}"}, _CACHE_NAME, "cache")
    for name in ("../../x.json", "metrics.json", "sensitivity-../a.json"):
        with pytest.raises(CompressionLabError):
            checked_files({name: b"{}"}, _CACHE_NAME, "cache")


def test_values_must_be_bytes_and_bounded():
    with pytest.raises(CompressionLabError, match="not bytes"):
        checked_files({"model.clab": "text"})
    with pytest.raises(CompressionLabError, match="malformed"):
        checked_files(["model.clab"])
    with pytest.raises(CompressionLabError, match="malformed"):
        checked_files({f"f{i}": b"" for i in range(100)})
