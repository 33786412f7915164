"""The half-table ratio of tools/bench_layer.py and tools/bench_conv.py (tools/bench_ratios.py): per-round ratios of
back-to-back calls, so that a machine whose speed drifts between rounds (these guests: up to 2x) does not move the
ratio the way a ratio of two medians moves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_layer  # noqa: E402
import bench_ratios  # noqa: E402


def test_paired_ratio_cancels_a_drifting_machine_speed():
    speed = [1.0, 1.9, 1.1, 2.0, 1.0, 1.8, 1.2]  # each round's slowdown, shared by the two calls of that round
    float32 = [10.0 * s for s in speed]
    half = [9.0 * s for s in speed]
    half[3] = 30.0  # one disturbed call
    median, low, high = bench_ratios.paired_ratio(half, float32)
    assert median == pytest.approx(0.9)
    assert low == pytest.approx(0.9) and high == pytest.approx(1.5)


def test_paired_ratio_of_no_rounds_is_nan():
    assert all(v != v for v in bench_ratios.paired_ratio([], []))


def test_half_table_forwards_run_right_after_the_float32_forward():
    methods, _ = bench_layer.build_methods((16, 8, 4, 3), torch.device("cpu"), "cpu", with_reference=False)
    names = [m.name for m in methods]
    halves = [f"cpu {h} fwd" for h in bench_layer.HALF_TABLES["cpu"]]
    at = names.index("cpu fwd")
    assert names[at + 1:at + 1 + len(halves)] == halves


def test_conv_half_table_layers_run_right_after_the_float32_layer_and_compute_its_function():
    import bench_conv

    methods, _ = bench_conv.build_methods(("3x3 6x6x4", 2, 4, 6, 3, 1, 1, 6), 5, backward=False,
                                          channels_last=False, half_tables=True)
    names = [m.name for m in methods]
    halves = [f"lmkan {h} fwd" for h in bench_layer.HALF_TABLES["cpu"]]
    at = names.index("lmkan direct fwd")
    assert names[at + 1:at + 1 + len(halves)] == halves
    by_name = {m.name: m for m in methods}
    float32 = by_name["lmkan direct fwd"].fn()
    for name in halves:  # the same exact conversion, its table rounded to half precision
        torch.testing.assert_close(by_name[name].fn(), float32, rtol=0.02, atol=0.02 * float32.abs().max().item())


def test_conv_half_report_gives_each_dtype_its_paired_ratio_to_the_float32_layer():
    import bench_conv

    def method(name, wall):
        return bench_layer.Method(name, lambda: None, wall=wall, cpu=wall)

    ms = {"conv fwd": method("conv fwd", [1e-3, 2e-3]), "lmkan direct fwd": method("lmkan direct fwd", [4e-3, 8e-3]),
          "lmkan float16 fwd": method("lmkan float16 fwd", [3e-3, 6e-3]),
          "lmkan bfloat16 fwd": method("lmkan bfloat16 fwd", [4e-3, 8e-3])}
    table = bench_conv.report_half([(("3x3 7x7x512", 1), 364.5, ms)])
    row = table.splitlines()[-1]
    assert row.startswith("| 3x3 7x7x512 | 1 | 364.5 |")
    assert "| 0.75 (0.75-0.75) | 0.75 |" in row and "| 1.00 (1.00-1.00) | 1.00 |" in row
