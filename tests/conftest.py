"""Shared fixtures: the demo models and data load from assets/ (never retrained); torch is seeded."""

import os
import tempfile
from pathlib import Path

import pytest
import torch

# generated datasets (the detector's synthetic shapes, ~1,000 images) are made once and shared by every test
os.environ.setdefault("COMPRESSION_LAB_DATA",
                      str(Path(tempfile.gettempdir()) / f"complab-test-data-{os.getuid()}"))
# the suite runs on two xdist workers (pyproject's addopts): one torch thread each keeps them off each other's core
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def lenet300():
    from complab.models.handle import load_model

    return load_model("demo:lenet300")


@pytest.fixture(scope="session")
def lenet5():
    from complab.models.handle import load_model

    return load_model("demo:lenet5")


@pytest.fixture(scope="session")
def digits28():
    from complab.data import load_data

    return load_data("digits", input_size=28)


def pytest_collection_modifyitems(config, items):
    """Browser walks and the Ray cluster are slow by nature: `pytest -m "not slow"` (the quick loop) leaves them
    out; the whole suite (CI, the README's command) runs them. The suite runs on two xdist workers, a file's
    tests on one (`--dist loadfile`), so a file's module and session fixtures (the Ray cluster) start once."""
    for item in items:
        if item.get_closest_marker("e2e") or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)
