"""The arms every compression report sets side by side: the planner's lmKAN solution, the prune-only solution (the
same planner restricted to keep / plain narrowing) and int8 dynamic quantization of the original's Linear layers."""

from __future__ import annotations

import copy
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from lmkan_surgery.batches import InputFn
from lmkan_surgery.config import LMKANConfig
from lmkan_surgery.modelcopy import check_model

from .budget import Budget
from .planner import PlanResult, plan


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantized to int8 (torch.ao quantize_dynamic, CPU);
    the original is left untouched."""
    check_model(model)
    from torch.ao.quantization import quantize_dynamic

    copied = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # torch 2.14 announces the quantized-tensor API's future removal
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(copied, {nn.Linear}, dtype=torch.qint8)


def planned_arms(model: nn.Module, calibration: Iterable[Any], budget: Budget, example_inputs: Any = None,
                 input_fn: InputFn | None = None, config: LMKANConfig | None = None) -> dict[str, PlanResult]:
    """{'planner': keep / narrow / lmKAN plan, 'prune-only': keep / narrow plan} for the same budget and data."""
    batches = list(calibration)
    return {name: plan(model, batches, budget, example_inputs, input_fn, lmkan=lmkan, config=config)
            for name, lmkan in (("planner", True), ("prune-only", False))}
