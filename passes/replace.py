"""Replace pass: swap every chosen layer for its exact lmKAN counterpart (the layer rule's to_lmkan) in place, one
layer at a time so the peak memory is the model plus one table."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from lmkan_surgery.nn import LMKANLayer, LMKANLinear
from lmkan_surgery.nn.placement import quantile_knots
from lmkan_surgery.rules import rule_for

from .calibrate import RunningMoments, safe_input_std


def convert_module(module: nn.Module, num_grids: int, moments: RunningMoments | None,
                   samples: torch.Tensor | None = None, mix: float = 0.25,
                   table_dtype: str | None = None) -> LMKANLayer:
    """The exact lmKAN counterpart of a convertible layer, its table stored as `table_dtype` (None: the module's
    dtype): an nn.Linear with sample input rows is placed on the grid by their quantiles; otherwise inputs are
    normalised by the given input moments (or, without any, by the data-free default scale that keeps the layer
    exact at every input magnitude). An lmKAN layer (already fitted by the shrink pass) is kept as it is."""
    if isinstance(module, LMKANLayer):
        return module
    if samples is not None and type(module) is nn.Linear:
        with torch.no_grad():
            layer = LMKANLinear.from_linear(module, num_grids, input_knots=quantile_knots(samples, num_grids, mix),
                                            table_dtype=table_dtype)
        layer.train(module.training)
        return layer
    rule = rule_for(module)
    features = rule.features(module)[0]
    if moments is not None:
        mean, std = moments.mean(), moments.std()
    else:
        mean, std = torch.zeros(features, dtype=torch.float64), None
    with torch.no_grad():
        layer = rule.to_lmkan(module, num_grids, mean, safe_input_std(std, features), table_dtype)
    layer.train(module.training)
    return layer


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at the qualified name `name` (every alias of the old module is replaced too)."""
    old = model.get_submodule(name)
    for alias, module in model.named_modules(remove_duplicate=False):
        if module is old and alias:
            parent, _, child = alias.rpartition(".")
            setattr(model.get_submodule(parent), child, new)


def replace_layers(model: nn.Module, chosen: Mapping[str, int], moments: Mapping[str, RunningMoments],
                   samples: Mapping[str, torch.Tensor] | None = None, mix: float = 0.25,
                   table_dtype: str | None = None) -> dict[str, LMKANLayer]:
    """Convert every chosen {name: G} (tables stored as `table_dtype`); returns the new layers by name."""
    new_layers = {}
    samples = samples or {}
    for name, num_grids in chosen.items():
        layer = convert_module(model.get_submodule(name), num_grids, moments.get(name), samples.get(name), mix,
                               table_dtype)
        set_module(model, name, layer)
        new_layers[name] = layer
    return new_layers
