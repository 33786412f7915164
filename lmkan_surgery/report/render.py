"""Rendering of a SavingsReport: terminal table, Markdown, and the PNG bar chart (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .savings import SavingsReport


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (decimal prefixes)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{prefix}{unit}"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(after: float | None, before: float | None) -> str:
    return "-" if not before or after is None else f"{after / before:.2f}x"


def table(headers: list[str], rows: list[list[str]], markdown: bool, left: int = 1) -> str:
    """Column-aligned text table, or a Markdown pipe table; the first `left` columns left-aligned, the rest right."""
    if markdown:
        align = [":---"] * left + ["---:"] * (len(headers) - left)
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _summary_rows(report: "SavingsReport") -> list[list[str]]:
    a, b = report.original, report.converted
    rows = [
        ["FLOPs (MACs)", human(a.flops), human(b.flops), _ratio(b.flops, a.flops)],
        ["parameters", human(a.params), human(b.params), _ratio(b.params, a.params)],
        ["state bytes", human(a.state_bytes, "B"), human(b.state_bytes, "B"), _ratio(b.state_bytes, a.state_bytes)],
    ]
    for row in report.latency:
        rows.append([f"latency ms ({row.device}, batch {row.batch_size})", _ms(row.original_s), _ms(row.converted_s),
                     f"{row.ratio:.2f}x"])
    return rows


def _layer_rows(report: "SavingsReport") -> list[list[str]]:
    rows = []
    for row in report.layers:
        kind = (row.type_before or "-") if not row.converted else f"{row.type_before or '-'} -> {row.type_after or '-'}"
        rows.append([row.name or "(model)", kind, human(row.flops_before), human(row.flops_after),
                     human(row.params_before), human(row.params_after), _ms(row.latency_before_s),
                     _ms(row.latency_after_s), _ratio(row.latency_after_s, row.latency_before_s),
                     row.verdict if row.type_before != "" else ""])
    return rows


def _notes(report: "SavingsReport") -> list[str]:
    notes = [report.convention + "; the handle's count was checked equal to the formula on every lmKAN layer."]
    notes.append("lmKAN op backend: " + ", ".join(f"{dev}: {name}" for dev, name in report.backends.items())
                 + " (float32)")
    for label, stats in (("original", report.original), ("converted", report.converted)):
        if stats.uncounted_ops:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(stats.uncounted_ops.items()))
            notes.append(f"not counted by fvcore in the {label} model (elementwise/data movement): {ops}")
    notes.append("latency: median over rounds that run both models alternately, after warm-up; per-layer times "
                 "come from forward hooks and include their overhead")
    slower = report.slower_layers
    notes.append(f"converted layers that got slower (>10%): {', '.join(slower)}" if slower
                 else "no converted layer got slower by more than 10%")
    return notes


def render(report: "SavingsReport", markdown: bool) -> str:
    """The whole report as text (terminal) or Markdown."""
    shapes = ", ".join("x".join(map(str, s)) for s in report.input_shapes)
    title = f"Savings report (FLOPs for input {shapes}; per-layer latency: {report.layer_latency_setting})"
    summary = table(["", "original", "converted", "ratio"], _summary_rows(report), markdown)
    layers = table(["layer", "type", "MACs before", "MACs after", "params before", "params after", "ms before",
                    "ms after", "ms ratio", "verdict"], _layer_rows(report), markdown, left=2)
    notes = _notes(report)
    if markdown:
        return "\n\n".join([f"# {title}", summary, "## Per layer", layers, "## Notes",
                            "\n".join(f"- {n}" for n in notes)]) + "\n"
    return "\n\n".join([title, summary, layers, "\n".join(f"* {n}" for n in notes)])


def plot(report: "SavingsReport", path: Path) -> None:
    """Horizontal bar charts of per-layer MACs and latency, before and after, saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report.layers
    names = [row.name or "(model)" for row in rows]
    positions = list(range(len(rows)))
    figure = Figure(figsize=(13, max(3.0, 0.28 * len(rows) + 1.5)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharey=True)
    panels = (
        ("MACs per forward (fvcore)", [r.flops_before for r in rows], [r.flops_after for r in rows]),
        (f"latency ms ({report.layer_latency_setting})", [(r.latency_before_s or 0) * 1e3 for r in rows],
         [(r.latency_after_s or 0) * 1e3 for r in rows]),
    )
    for ax, (label, before, after) in zip(axes, panels):
        ax.barh([p - 0.2 for p in positions], before, height=0.4, label="original", color="#4c72b0")
        ax.barh([p + 0.2 for p in positions], after, height=0.4, label="converted", color="#dd8452")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right")
    axes[0].set_yticks(positions, names, fontsize=7)
    axes[0].invert_yaxis()
    figure.suptitle(f"FLOPs {report.flop_ratio:.2f}x, parameters {report.param_ratio:.2f}x (converted / original)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
