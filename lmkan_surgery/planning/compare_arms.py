"""Compare arms of one budget side by side: metric (accuracy or error), formula MACs, bytes, measured latency at
batch 1 and a throughput batch, distillation wall time; name the winner per metric and say where lmKAN does not pay.
Latencies are measured in one alternating run (report/latency.py), so machine load hits every arm alike."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from lmkan_surgery.nn import LMKANLayer
from lmkan_surgery.report.latency import batch_of, model_latency
from lmkan_surgery.report.render import table

from .costs import model_bytes, model_macs

Metric = Callable[[nn.Module], float]
Trainer = Callable[[nn.Module], Any]


@dataclass
class ArmRow:
    """One arm's measured numbers."""

    name: str
    metric: float
    macs: int
    bytes: int
    latency: dict[int, float] = field(default_factory=dict)  # batch size -> median seconds per forward
    distill_s: float | None = None  # None: not trainable (int8) or not trained (the original)
    note: str = ""
    lmkan_layers: int = 0


@dataclass
class ArmsTable:
    """All arms of one budget, the metric's name and direction, and the verdict lines."""

    rows: list[ArmRow]
    metric_name: str
    higher_is_better: bool
    budget: str = ""

    def winners(self) -> dict[str, str]:
        """Per metric, the best compressed arm (the original is the reference, never a winner)."""
        arms = [r for r in self.rows if r.name != "original"]
        if not arms:
            return {}
        sign = -1.0 if self.higher_is_better else 1.0
        out = {self.metric_name: min(arms, key=lambda r: sign * r.metric).name,
               "MACs": min(arms, key=lambda r: r.macs).name, "bytes": min(arms, key=lambda r: r.bytes).name}
        for batch in sorted(arms[0].latency):
            out[f"latency b{batch}"] = min(arms, key=lambda r: r.latency[batch]).name
        return out

    def verdict(self) -> list[str]:
        """Plain sentences: where the lmKAN arm wins, and where it does not pay."""
        rows = {r.name: r for r in self.rows}
        planner = rows.get("planner")
        if planner is None:
            return ["no planner arm at this budget: the winners above are among the arms that were built"]
        if not planner.lmkan_layers:
            return ["the planner chose no lmKAN layer: at this budget every lmKAN candidate lost to keep / plain "
                    "narrowing (lmKAN does not pay here); its arm is a pruned network"]
        lines = []
        won = self.winners()
        lost = [m for m, name in won.items() if name != "planner"]
        for metric in lost:
            lines.append(f"lmKAN does not pay on {metric}: {won[metric]} wins")
        prune = rows.get("prune-only")
        if prune is not None and (planner.metric - prune.metric) * (1 if self.higher_is_better else -1) <= 0:
            lines.append(f"the lmKAN arm is no better than plain narrowing at this budget ({self.metric_name} "
                         f"{planner.metric:.4g} vs prune-only {prune.metric:.4g})")
        if not lost:
            lines.append("the planner's lmKAN arm wins every metric")
        return lines

    def render(self, markdown: bool = False) -> str:
        """The side-by-side table, the winners and the verdict."""
        batches = sorted(self.rows[0].latency) if self.rows else []
        original = next((r for r in self.rows if r.name == "original"), self.rows[0])
        headers = ["arm", self.metric_name, "MACs", "bytes", *[f"ms b{b}" for b in batches], "distill s", "note"]
        body = [[r.name, f"{r.metric:.4g}", f"{r.macs:,} ({r.macs / max(1, original.macs):.3f}x)",
                 f"{r.bytes:,} ({r.bytes / max(1, original.bytes):.3f}x)",
                 *[f"{r.latency[b] * 1e3:.3f}" for b in batches],
                 "-" if r.distill_s is None else f"{r.distill_s:.1f}", r.note] for r in self.rows]
        won = ", ".join(f"{metric}: {name}" for metric, name in self.winners().items())
        title = f"arms at {self.budget}" if self.budget else "arms"
        gap = [""] if markdown else []  # Markdown needs blank lines around a table
        return "\n".join([title, *gap, table(headers, body, markdown), *gap, f"winners: {won}", *self.verdict()])

    def __str__(self) -> str:
        return self.render()


def compare_arms(arms: dict[str, nn.Module], example_inputs: tuple, metric: Metric, metric_name: str,
                 higher_is_better: bool, train: Trainer | None = None, trainable: tuple[str, ...] = (),
                 notes: dict[str, str] | None = None, throughput_batch: int = 256, repeats: int = 10,
                 budget_s: float = 3.0, budget: str = "") -> ArmsTable:
    """Train the `trainable` arms with the same `train` callable (timed), then measure every arm on CPU.

    arms: name -> model (put the original first, named 'original'); metric(model) -> accuracy or error;
    example_inputs: one sample's inputs as a tuple (resized to batch 1 and throughput_batch for latency).
    """
    seconds: dict[str, float] = {}
    for name in trainable:
        start = time.perf_counter()
        train(arms[name])
        seconds[name] = time.perf_counter() - start
    rows = []
    for name, model in arms.items():
        model.eval()
        rows.append(ArmRow(name, float(metric(model)), model_macs(model, example_inputs), model_bytes(model),
                           distill_s=seconds.get(name), note=(notes or {}).get(name, ""),
                           lmkan_layers=sum(isinstance(m, LMKANLayer) for m in model.modules())))
    models = list(arms.values())
    device = next(iter(models[0].parameters())).device
    for batch in (1, throughput_batch):
        inputs = batch_of(example_inputs, batch, device)
        for row, value in zip(rows, model_latency(models, inputs, device, repeats=repeats, budget_s=budget_s)):
            row.latency[batch] = value
    return ArmsTable(rows, metric_name, higher_is_better, budget)
