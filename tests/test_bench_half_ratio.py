"""tools/bench_layer.py's half-table ratio: per-round ratios of back-to-back calls, so that a machine whose speed
drifts between rounds (these guests: up to 2x) does not move the ratio the way a ratio of two medians moves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_layer  # noqa: E402


def test_paired_ratio_cancels_a_drifting_machine_speed():
    speed = [1.0, 1.9, 1.1, 2.0, 1.0, 1.8, 1.2]  # each round's slowdown, shared by the two calls of that round
    float32 = [10.0 * s for s in speed]
    half = [9.0 * s for s in speed]
    half[3] = 30.0  # one disturbed call
    median, low, high = bench_layer.paired_ratio(half, float32)
    assert median == pytest.approx(0.9)
    assert low == pytest.approx(0.9) and high == pytest.approx(1.5)


def test_paired_ratio_of_no_rounds_is_nan():
    assert all(v != v for v in bench_layer.paired_ratio([], []))


def test_half_table_forwards_run_right_after_the_float32_forward():
    methods, _ = bench_layer.build_methods((16, 8, 4, 3), torch.device("cpu"), "cpu", with_reference=False)
    names = [m.name for m in methods]
    halves = [f"cpu {h} fwd" for h in bench_layer.HALF_TABLES["cpu"]]
    at = names.index("cpu fwd")
    assert names[at + 1:at + 1 + len(halves)] == halves
