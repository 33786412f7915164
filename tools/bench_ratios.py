"""The ratios and number format the benchmark tables share: per-round paired ratios (two calls timed back to back in
each round, so that a machine whose speed drifts between rounds does not move their ratio) and the half-table cells
of bench_layer and bench_conv."""

from __future__ import annotations

import statistics
from typing import Protocol


class Timed(Protocol):
    """A timed method: per-round wall-clock and CPU seconds, and its median wall time in ms."""

    wall: list[float]
    cpu: list[float]

    def median_ms(self) -> float: ...


def fmt_ms(value: float) -> str:
    """A time in ms or a ratio, to 3 significant figures or so."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest of the per-round ratios numerator[r] / denominator[r]: two methods timed back to
    back in each round share that round's machine speed, which a ratio of the two medians does not cancel."""
    ratios = sorted(a / b for a, b in zip(numerator, denominator))
    return (statistics.median(ratios), ratios[0], ratios[-1]) if ratios else (float("nan"),) * 3


def half_table_head(halves: tuple[str, ...], dense: str) -> str:
    """The column heads of `half_table_cells` for each half dtype; `dense` names the op the lmKAN layer replaces."""
    return " | ".join(f"{h} fwd ms | {h} x {dense} | {h} / float32 table, wall (range) | CPU time" for h in halves)


def half_table_cells(half: Timed, float32: Timed, dense: Timed) -> list[str]:
    """One half-table forward's cells: its time, its ratio to the dense op, and its ratio to the float32-table forward
    as the median (range) of per-round ratios by wall clock and the median by process CPU time."""
    wall, low, high = paired_ratio(half.wall, float32.wall)
    return [fmt_ms(half.median_ms()), fmt_ms(half.median_ms() / dense.median_ms()), f"{wall:.2f} ({low:.2f}-{high:.2f})",
            f"{paired_ratio(half.cpu, float32.cpu)[0]:.2f}"]
