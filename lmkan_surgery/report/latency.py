"""Measured latency: whole-model and per-layer (forward hooks) medians after warm-up.

The models being compared run alternately, one forward each per round, so a machine that gets busier or quieter
during the measurement affects both sides alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from .. import batches


def batch_of(example_inputs: tuple, batch_size: int, device: torch.device) -> tuple:
    """The example inputs resized along dim 0 to `batch_size` (cycling the given samples), on `device`."""
    def resize(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        reps = -(-batch_size // value.shape[0])
        return value.repeat(reps, *([1] * (value.dim() - 1)))[:batch_size].to(device).contiguous()

    return batches.map_tensors(example_inputs, resize)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rounds(runs: list[Callable[[], Any]], device: torch.device, warmup: int, repeats: int,
            budget_s: float) -> list[list[float]]:
    """Seconds of each run over up to `repeats` alternating rounds after `warmup`; >= 3 rounds, then `budget_s`."""
    for _ in range(warmup):
        for run in runs:
            run()
    _sync(device)
    times: list[list[float]] = [[] for _ in runs]
    start = time.perf_counter()
    while len(times[0]) < repeats and (len(times[0]) < 3 or time.perf_counter() - start < budget_s):
        for run, bucket in zip(runs, times):
            t0 = time.perf_counter()
            run()
            _sync(device)
            bucket.append(time.perf_counter() - t0)
    return times


def model_latency(models: list[nn.Module], inputs: tuple, device: torch.device, warmup: int = 2,
                  repeats: int = 10, budget_s: float = 5.0) -> list[float]:
    """Median seconds per forward of each model (on `device`, eval mode) on the same `inputs`."""
    runs = [lambda model=model: model(*inputs) for model in models]
    with torch.inference_mode():
        return [statistics.median(t) for t in _rounds(runs, device, warmup, repeats, budget_s)]


class _LayerTimer:
    """Forward pre/post hooks that add up the time spent inside each named module during one forward."""

    def __init__(self, model: nn.Module, names: list[str], device: torch.device) -> None:
        self.model, self.device = model, device
        modules = dict(model.named_modules())
        self.samples: dict[str, list[float]] = {name: [] for name in names if name in modules}
        self.starts: dict[str, float] = {}
        self.current: dict[str, float] = {}
        self.handles = []
        for name in self.samples:
            self.handles.append(modules[name].register_forward_pre_hook(self._enter(name)))
            self.handles.append(modules[name].register_forward_hook(self._exit(name)))

    def _enter(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any) -> None:
            _sync(self.device)
            self.starts[name] = time.perf_counter()
        return hook

    def _exit(self, name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, _out: Any) -> None:
            _sync(self.device)
            self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - self.starts[name]
        return hook

    def run(self, inputs: tuple) -> None:
        """One forward; records each layer's total time in it."""
        self.current.clear()
        self.model(*inputs)
        for name, values in self.samples.items():
            values.append(self.current.get(name, 0.0))

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self.handles:
            handle.remove()


def layer_latency(models: list[nn.Module], names: list[list[str]], inputs: tuple, device: torch.device,
                  warmup: int = 1, repeats: int = 5, budget_s: float = 5.0) -> list[dict[str, float]]:
    """Per model, median seconds spent inside each of its named modules per forward (summed over calls)."""
    timers = [_LayerTimer(model, layer_names, device) for model, layer_names in zip(models, names)]
    try:
        with torch.inference_mode():
            _rounds([lambda timer=timer: timer.run(inputs) for timer in timers], device, warmup, repeats, budget_s)
    finally:
        for timer in timers:
            timer.remove()
    return [{name: statistics.median(values[warmup:]) for name, values in timer.samples.items()} for timer in timers]
