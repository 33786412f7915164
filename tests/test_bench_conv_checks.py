"""tools/bench_conv.py flags rows whose nn.Conv2d forward timed slower than its own forward+backward (a transient of
the run that makes every ratio to the conv on that row suspect)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from bench_conv import inconsistent_conv_rows  # noqa: E402
from bench_layer import Method  # noqa: E402


def _row(label: str, fwd_s: list[float], fwd_bwd_s: list[float] | None) -> tuple:
    methods = {"conv fwd": Method("conv fwd", lambda: None, wall=fwd_s)}
    if fwd_bwd_s is not None:
        methods["conv fwd+bwd"] = Method("conv fwd+bwd", lambda: None, wall=fwd_bwd_s)
    return (label, 8, 960, 160, 1, 1, 1, 7), 23.7, methods


def test_rows_with_conv_forward_slower_than_its_backward_are_flagged():
    rows = [_row("1x1 7x7 960->160", [5.8e-3, 5.9e-3, 1.0e-3], [2.9e-3, 2.8e-3, 3.0e-3]),  # median 5.8 > 2.9 ms
            _row("3x3 56x56x64", [1.4e-3, 1.5e-3, 1.3e-3], [3.6e-3, 3.5e-3, 3.7e-3]),
            _row("forward only", [9e-3], None)]  # no forward+backward timed: nothing to compare
    assert inconsistent_conv_rows(rows) == ["1x1 7x7 960->160 batch 8"]
