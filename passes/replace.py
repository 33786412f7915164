"""Replace pass: swap nn.Linear -> LMKANLinear and nn.Conv2d -> LMKANConv2d in place, exactly (from_linear /
from_conv), one layer at a time so the peak memory is the model plus one table."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from lmkan_surgery.nn import LMKANConv2d, LMKANLayer, LMKANLinear

from .calibrate import RunningMoments


def convert_module(module: nn.Module, num_grids: int, moments: RunningMoments | None,
                   table_dtype: str | None = None) -> LMKANLayer:
    """The exact lmKAN counterpart of a Linear/Conv2d, normalised by the given input moments (if any), its table
    stored as `table_dtype` (None: the module's dtype)."""
    mean, std = (moments.mean(), moments.std()) if moments is not None else (None, None)
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            layer = LMKANConv2d.from_conv(module, num_grids, mean, std, table_dtype)
        else:
            layer = LMKANLinear.from_linear(module, num_grids, mean, std, table_dtype)
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
                   table_dtype: str | None = None) -> dict[str, LMKANLayer]:
    """Convert every chosen {name: G} (tables stored as `table_dtype`); returns the new layers by name."""
    new_layers = {}
    for name, num_grids in chosen.items():
        layer = convert_module(model.get_submodule(name), num_grids, moments.get(name), table_dtype)
        set_module(model, name, layer)
        new_layers[name] = layer
    return new_layers
