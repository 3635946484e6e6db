"""benchmarks/nnc_compare.py's equal-accuracy bookkeeping: which point counts as "equal accuracy", where NNCodec's
QP grid is refined, the ratio's nulls, and the level mapping both coders are handed in the same-levels mode."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import nnc_compare as nc  # noqa: E402


def _points(pairs):
    return [{"qp": qp, "bytes": size, "accuracy": accuracy} for qp, size, accuracy in pairs]


def test_fewest_bytes_within_the_tolerance_and_none_when_never_within():
    points = _points([(-40, 900, 0.980), (-30, 500, 0.9775), (-20, 300, 0.970), (-10, 100, 0.50)])
    assert nc.fewest_at(points, 0.980)["bytes"] == 500  # 0.25 points below: counts; 1.0 below: does not
    assert nc.fewest_at(points, 0.9806)["bytes"] == 900  # 0.9775 is 0.31 points below: out
    assert nc.fewest_at(points, 0.99) is None
    assert nc.ratio(None, points[0]) is None and nc.ratio(points[1], None) is None
    assert nc.ratio(points[3], points[1]) == 0.2
    assert nc.worst([None, 0.7, 1.2]) == 1.2 and nc.worst([None]) is None


def test_refine_fills_the_grid_between_the_coarsest_qp_within_and_the_next():
    points = _points([(-40, 900, 0.98), (-36, 700, 0.98), (-32, 500, 0.95), (-28, 300, 0.60)])
    assert nc.refine(points, 0.98) == [-35, -34, -33]
    assert nc.refine(points, 0.999) == []  # never within: nothing to refine
    assert nc.refine(_points([(-40, 900, 0.98), (-36, 700, 0.98)]), 0.98) == []  # the coarsest swept is within


def test_levels_map_back_to_the_weights_bit_for_bit():
    weight = torch.tensor([[0.0, -0.5, 0.25], [0.25, 0.0, -0.125]])
    levels, values = nc.levels_of(weight)
    assert levels.flatten().tolist() == [0, -2, 1, 1, 0, -1]
    assert np.array_equal(values[levels.astype(np.int64) + 2], weight.numpy())


def test_bad_sweep_lists_name_the_problem():
    assert nc.int_list("4, 8,16", (2,)) == [4, 8, 16]
    assert nc.int_list(None, (2, 3)) == [2, 3]
    with pytest.raises(nc.BenchmarkError, match="comma-separated"):
        nc.int_list("4,eight", (2,))
