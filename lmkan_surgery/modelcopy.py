"""The model surgery works on: a checked deep copy of the user's model (or the model itself with inplace=True).
ScriptModules are refused with what to pass instead; legacy torch.nn.utils.weight_norm layers (whose computed
`weight` attribute cannot be deep-copied) become the torch.nn.utils.parametrizations form, same function."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrizations, remove_weight_norm
from torch.nn.utils.weight_norm import WeightNorm

from .errors import ModelError


def check_model(model: object, who: str = "lmkanify") -> None:
    """ModelError unless `model` is a plain (eager) nn.Module."""
    if isinstance(model, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        raise ModelError(f"{who} does not support torch.jit scripted/traced modules ({type(model).__name__}): pass "
                         f"the original Python nn.Module (build the model class and load_state_dict() into it)")
    if not isinstance(model, nn.Module):
        raise ModelError(f"{who} expects a torch.nn.Module, got {type(model).__name__}")


def legacy_weight_norms(model: nn.Module) -> list[tuple[str, nn.Module, WeightNorm]]:
    """(module name, module, hook) of every legacy weight_norm reparametrisation in `model`."""
    return [(name, module, hook) for name, module in model.named_modules()
            for hook in module._forward_pre_hooks.values() if isinstance(hook, WeightNorm)]


def _to_parametrization(model: nn.Module) -> list[str]:
    """Replace each legacy weight_norm of `model` by parametrizations.weight_norm; one warning line each."""
    warnings = []
    for name, module, hook in legacy_weight_norms(model):
        remove_weight_norm(module, hook.name)  # weight = g * v / ||v|| as a plain parameter
        parametrizations.weight_norm(module, hook.name, dim=hook.dim)
        warnings.append(f"module '{name}': legacy torch.nn.utils.weight_norm of '{hook.name}' replaced by "
                        f"torch.nn.utils.parametrizations.weight_norm (same function) in the converted model")
    return warnings


def copy_for_surgery(model: nn.Module, inplace: bool) -> tuple[nn.Module, list[str]]:
    """(the model to convert, warnings): a deep copy (the model itself when inplace) with legacy weight_norm
    converted; the user's model is untouched unless inplace."""
    legacy = legacy_weight_norms(model)
    if inplace:
        return model, _to_parametrization(model)
    memo: dict[int, object] = {}
    for _, module, hook in legacy:  # the computed weight is a non-leaf tensor: deepcopy refuses it, so seed a copy
        computed = getattr(module, hook.name)
        memo[id(computed)] = computed.detach().clone()
    student = copy.deepcopy(model, memo)
    return student, _to_parametrization(student)
