"""compare(original, converted, example_inputs) -> SavingsReport: FLOPs, parameters, bytes and measured latency."""

from __future__ import annotations

import copy
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .. import batches
from ..errors import ConfigError
from ..modelcopy import check_model
from ..nn import LMKANLayer
from ..ops import dispatch
from . import flops as flop_count
from . import latency as timing

LAYER_TYPES = (nn.Linear, nn.modules.conv._ConvNd, LMKANLayer)
SLOWER, FASTER = 1.10, 0.90  # per-layer latency ratios beyond which a converted layer is flagged
OTHER = "(rest of the model)"


@dataclass
class ModelStats:
    """Whole-model totals of one side of the comparison."""

    flops: int
    params: int
    state_bytes: int
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    flops_by_module: dict[str, int] = field(default_factory=dict)  # fvcore's by_module(), every module


@dataclass
class LatencyRow:
    """Median forward latency of both models on one device and batch size."""

    device: str
    batch_size: int
    original_s: float
    converted_s: float

    @property
    def ratio(self) -> float:
        """converted / original."""
        return self.converted_s / self.original_s


@dataclass
class LayerRow:
    """One Linear/Conv/lmKAN layer (matched by qualified name) before and after conversion."""

    name: str
    type_before: str | None
    type_after: str | None
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    latency_before_s: float | None = None
    latency_after_s: float | None = None
    formula_flops: int | None = None  # the lmKAN formula, checked equal to fvcore's handle

    @property
    def converted(self) -> bool:
        """True when the layer's type changed."""
        return self.type_before != self.type_after

    @property
    def verdict(self) -> str:
        """'slower', 'faster' or 'same' for a converted layer (by measured latency); 'unchanged' otherwise."""
        if self.type_before is None:
            return "added"
        if self.type_after is None:
            return "removed"
        if not self.converted:
            return "unchanged"
        if not self.latency_before_s or self.latency_after_s is None:
            return "converted"
        ratio = self.latency_after_s / self.latency_before_s
        return "SLOWER" if ratio > SLOWER else "faster" if ratio < FASTER else "same"


@dataclass
class SavingsReport:
    """Before/after comparison of an original and a converted model; str() is a terminal table."""

    original: ModelStats
    converted: ModelStats
    latency: list[LatencyRow]
    layers: list[LayerRow]
    input_shapes: list[list[int]]
    layer_latency_setting: str
    backends: dict[str, str]
    environment: dict[str, str]
    convention: str = flop_count.CONVENTION

    @property
    def flop_ratio(self) -> float:
        """Converted FLOPs / original FLOPs."""
        return self.converted.flops / max(1, self.original.flops)

    @property
    def param_ratio(self) -> float:
        """Converted parameters / original parameters."""
        return self.converted.params / max(1, self.original.params)

    @property
    def slower_layers(self) -> list[str]:
        """Names of converted layers whose measured latency grew by more than 10%."""
        return [row.name for row in self.layers if row.verdict == "SLOWER"]

    def by_module(self) -> dict[str, tuple[int, int]]:
        """fvcore MACs of every module name of either model: (original, converted), 0 where a model lacks it."""
        before, after = self.original.flops_by_module, self.converted.flops_by_module
        return {name: (before.get(name, 0), after.get(name, 0)) for name in {**before, **after}}

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (ratios and verdicts included), as written to report.json."""
        data = asdict(self)
        data["flop_ratio"], data["param_ratio"] = self.flop_ratio, self.param_ratio
        for row, raw in zip(self.latency, data["latency"]):
            raw["ratio"] = row.ratio
        for row, raw in zip(self.layers, data["layers"]):
            raw["verdict"] = row.verdict
        data["slower_layers"] = self.slower_layers
        return data

    def to_json(self) -> str:
        """report.json's text."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """report.md's text."""
        from .render import render

        return render(self, markdown=True)

    def __str__(self) -> str:
        from .render import render

        return render(self, markdown=False)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and report.png into `directory`; returns their paths."""
        from .render import plot

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
        paths["json"].write_text(self.to_json() + "\n")
        paths["md"].write_text(self.to_markdown())
        plot(self, paths["png"])
        return paths


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv/lmKAN layers by qualified name, not descending into lmKAN layers."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and not any(name.startswith(p + ".") for p in found if p):
            found[name] = module
    return found


def _state_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _devices(device: str | torch.device | None) -> list[torch.device]:
    if device is not None:
        return [torch.device(device)]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def _model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@dataclass
class _Side:
    """One model being measured: its layers and fvcore counts."""

    model: nn.Module
    layers: dict[str, nn.Module]
    counts: flop_count.FlopCount


class _OnDevice:
    """Context: the model in eval mode on `device` (a deep copy when it lives elsewhere); restores every module's
    train/eval flag afterwards."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        self.modes = {module: module.training for module in model.modules()}

    def __enter__(self) -> nn.Module:
        same = _model_device(self.model) == self.device or (
            self.device.index is None and _model_device(self.model).type == self.device.type)
        self.moved = self.model if same else copy.deepcopy(self.model).to(self.device)
        return self.moved.eval()

    def __exit__(self, *exc: object) -> None:
        for module, training in self.modes.items():
            module.training = training


def _backend_names(devices: Iterable[torch.device]) -> dict[str, str]:
    """Which implementation of the lmKAN op runs float32 work on each device."""
    names = {}
    for device in devices:
        x, table = torch.zeros(1, 2, device=device), torch.zeros(1, 4, 4, 1, device=device)
        names[str(device)] = dispatch.backend_for(x, table).name
    return names


def _measure(sides: tuple[_Side, _Side], inputs: tuple, devices: list[torch.device],
             batch_sizes: Iterable[int], opts: dict[str, Any]) -> Iterator[LatencyRow]:
    for device in devices:
        with _OnDevice(sides[0].model, device) as first, _OnDevice(sides[1].model, device) as second:
            for batch in batch_sizes:
                before, after = timing.model_latency([first, second], timing.batch_of(inputs, batch, device),
                                                     device, **opts)
                yield LatencyRow(str(device), batch, before, after)


def compare(original: nn.Module, converted: nn.Module, example_inputs: Any, device: str | torch.device | None = None,
            batch_sizes: Iterable[int] = (1, 32), repeats: int = 10, warmup: int = 2, budget_s: float = 5.0,
            per_layer: bool = True) -> SavingsReport:
    """Compare FLOPs (fvcore + lmKAN handle, cross-checked), parameters, bytes and measured latency.

    example_inputs is a tensor, a tuple of positional arguments or a dict of keyword arguments (as for lmkanify);
    FLOPs are counted on it as given. Latency is the median of up to `repeats` timed forwards after
    `warmup` (fewer once `budget_s` is spent, never under 3) for each device (CPU, plus CUDA when available, unless
    `device` names one) and batch size; per-layer latency uses forward hooks on the first device and batch size.
    """
    check_model(original, "compare() (original)")
    check_model(converted, "compare() (converted)")
    inputs = batches.positional(original, example_inputs, "compare()")
    devices = _devices(device)
    batch_sizes = tuple(batch_sizes)
    if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    sides = []
    for model in (original, converted):
        with _OnDevice(model, _model_device(model)) as ready:
            on_model = batches.to_device(inputs, _model_device(model))
            counts = flop_count.count_flops(ready, on_model)
            formula = flop_count.cross_check(ready, on_model, counts)
        sides.append((_Side(model, _layers(model), counts), formula))
    (before, _), (after, formula) = sides
    opts = {"warmup": warmup, "repeats": repeats, "budget_s": budget_s}
    latency_rows = list(_measure((before, after), inputs, devices, batch_sizes, opts))
    names = list(before.layers) + [n for n in after.layers if n not in before.layers]
    layer_times: list[dict[str, float]] = [{}, {}]
    first_batch = batch_sizes[0]
    if per_layer:
        batch_inputs = timing.batch_of(inputs, first_batch, devices[0])
        with _OnDevice(before.model, devices[0]) as first, _OnDevice(after.model, devices[0]) as second:
            layer_times = timing.layer_latency([first, second], [list(before.layers), list(after.layers)],
                                               batch_inputs, devices[0], **opts)
    rows = [_layer_row(name, before, after, formula.get(name), layer_times) for name in names]
    rows.append(_other_row(rows, before, after))
    return SavingsReport(
        original=_stats(before), converted=_stats(after), latency=latency_rows, layers=rows,
        input_shapes=[list(t.shape) for t in batches.tensors(inputs)],
        layer_latency_setting=f"{devices[0]}, batch {first_batch}" if per_layer else "not measured",
        backends=_backend_names(devices),
        environment={"torch": torch.__version__, "python": platform.python_version(),
                     "cpu_threads": str(torch.get_num_threads()),
                     "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"},
    )


def _stats(side: _Side) -> ModelStats:
    return ModelStats(side.counts.total, _params(side.model), _state_bytes(side.model), side.counts.uncounted_ops,
                      side.counts.by_module)


def _layer_row(name: str, before: _Side, after: _Side, formula: int | None,
               layer_times: list[dict[str, float]]) -> LayerRow:
    old, new = before.layers.get(name), after.layers.get(name)
    return LayerRow(
        name=name,
        type_before=type(old).__name__ if old is not None else None,
        type_after=type(new).__name__ if new is not None else None,
        flops_before=before.counts.by_module.get(name, 0) if old is not None else 0,
        flops_after=after.counts.by_module.get(name, 0) if new is not None else 0,
        params_before=_params(old) if old is not None else 0,
        params_after=_params(new) if new is not None else 0,
        latency_before_s=layer_times[0].get(name),
        latency_after_s=layer_times[1].get(name),
        formula_flops=formula,
    )


def _other_row(rows: list[LayerRow], before: _Side, after: _Side) -> LayerRow:
    """Everything outside the listed layers: totals minus the rows (no latency: hooks only time layers)."""
    return LayerRow(
        name=OTHER, type_before="", type_after="",
        flops_before=before.counts.total - sum(r.flops_before for r in rows),
        flops_after=after.counts.total - sum(r.flops_after for r in rows),
        params_before=_params(before.model) - sum(r.params_before for r in rows),
        params_after=_params(after.model) - sum(r.params_after for r in rows),
    )
