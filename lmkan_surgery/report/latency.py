"""Measured latency: whole-model medians after warm-up, and per-layer times from forward hooks."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn


def batch_of(example_inputs: tuple, batch_size: int, device: torch.device) -> tuple:
    """The example inputs resized along dim 0 to `batch_size` (cycling the given samples), on `device`."""
    def resize(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        reps = -(-batch_size // value.shape[0])
        return value.repeat(reps, *([1] * (value.dim() - 1)))[:batch_size].to(device).contiguous()

    return tuple(resize(v) for v in example_inputs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_runs(run: Callable[[], Any], device: torch.device, warmup: int, repeats: int,
                budget_s: float) -> list[float]:
    """Wall-clock seconds of `repeats` runs after `warmup`; stops early (>= 3 runs) once `budget_s` is spent."""
    for _ in range(warmup):
        run()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def model_latency(model: nn.Module, inputs: tuple, device: torch.device, warmup: int = 2, repeats: int = 10,
                  budget_s: float = 5.0) -> float:
    """Median seconds per forward of `model` (already on `device`, eval mode) on `inputs`."""
    with torch.inference_mode():
        return statistics.median(_timed_runs(lambda: model(*inputs), device, warmup, repeats, budget_s))


def layer_latency(model: nn.Module, inputs: tuple, device: torch.device, names: list[str], warmup: int = 1,
                  repeats: int = 5, budget_s: float = 5.0) -> dict[str, float]:
    """Median seconds spent inside each named module per forward (summed over its calls), via forward hooks."""
    modules = dict(model.named_modules())
    starts: dict[str, float] = {}
    current: dict[str, float] = {}
    samples: dict[str, list[float]] = {name: [] for name in names if name in modules}

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any) -> None:
            _sync(device)
            starts[name] = time.perf_counter()
        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, _out: Any) -> None:
            _sync(device)
            current[name] = current.get(name, 0.0) + time.perf_counter() - starts[name]
        return hook

    def run() -> None:
        current.clear()
        model(*inputs)
        for name in samples:
            samples[name].append(current.get(name, 0.0))

    handles = []
    for name in samples:
        handles.append(modules[name].register_forward_pre_hook(pre_hook(name)))
        handles.append(modules[name].register_forward_hook(post_hook(name)))
    try:
        with torch.inference_mode():
            _timed_runs(run, device, warmup, repeats, budget_s)
    finally:
        for handle in handles:
            handle.remove()
    return {name: statistics.median(values[warmup:]) for name, values in samples.items()}
