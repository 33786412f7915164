"""Calibrate pass: per-feature (dense) / per-channel (conv) input mean and std of chosen layers, via hooks."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from lmkan_surgery.nn.tables import safe_input_std
from lmkan_surgery.rules import rule_for

from .probe import call, eval_mode

__all__ = ["RunningMoments", "feature_rows", "input_moments", "safe_input_std"]


class RunningMoments:
    """Count, sum and sum of squares per feature, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        """Accumulate rows [n, features]."""
        rows = rows.detach().to(torch.float64)
        if self.total is None:
            self.total, self.squares = rows.sum(0), (rows * rows).sum(0)
        else:
            self.total += rows.sum(0)
            self.squares += (rows * rows).sum(0)
        self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        """Per-feature mean (0 where the data held non-finite values)."""
        mean = self.total / self.count
        return torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))

    def second_moment(self) -> torch.Tensor:
        """Per-feature E[x^2]."""
        return self.squares / self.count

    def std(self) -> torch.Tensor:
        """Per-feature standard deviation, made safe for an exact table (see safe_input_std): a degenerate
        feature (constant, all-zero, denormal spread) gets |mean| or a floor relative to the layer's scale."""
        mean = self.mean()
        second = self.second_moment()
        std = (second - mean ** 2).clamp_min(0.0).sqrt()
        return safe_input_std(std, std.numel(), mean, second.sqrt())


def feature_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of a convertible layer as rows [n, C] of its features/channels (the rule knows the layout)."""
    return rule_for(module).feature_rows(x)


def _feed_inputs(model: nn.Module, names: list[str], batches: Iterable[Any], take) -> None:
    """Run the batches (eval mode, no grad), calling take(name, feature rows) with every input of the named modules."""
    def hook_for(name: str):
        def hook(mod, args):
            if args and isinstance(args[0], torch.Tensor):
                take(name, feature_rows(mod, args[0]))
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                call(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def input_moments(model: nn.Module, names: list[str], batches: Iterable[Any]) -> dict[str, RunningMoments]:
    """Run the batches (eval mode, no grad) and accumulate the input moments of the named modules."""
    moments = {name: RunningMoments() for name in names}
    _feed_inputs(model, names, batches, lambda name, rows: moments[name].add(rows))
    return {name: m for name, m in moments.items() if m.count}


def input_samples(model: nn.Module, names: list[str], batches: Iterable[Any],
                  max_rows: int = 65536) -> dict[str, torch.Tensor]:
    """Input feature rows [n <= max_rows, features] of the named modules (every k-th row past the cap), for
    quantile placement."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    _feed_inputs(model, names, batches, lambda name, rows: chunks[name].append(rows.detach().cpu()))
    samples = {}
    for name, parts in chunks.items():
        if parts:
            rows = torch.cat(parts)
            samples[name] = rows[::max(1, -(-rows.shape[0] // max_rows))]
    return samples
