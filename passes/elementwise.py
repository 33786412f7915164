"""Which graph nodes map each unit (feature or channel) of their input to the same unit, so that narrowing a
hidden width passes through them: every torch.nn activation and dropout module except the ones that mix units
(softmax family, GLU, attention), per-channel modules (BatchNorm, PReLU, narrowed with the width), and the
elementwise torch / torch.nn.functional functions and Tensor methods; after a Conv2d, 2-D spatial pooling too (it maps
channel c of an NCHW tensor to channel c) and a flatten of every dimension after the batch (channel c of an NCHW tensor
becomes the contiguous block of H*W features c*H*W ... (c+1)*H*W - 1)."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

UNIT_MODULE_HOMES = ("torch.nn.modules.activation", "torch.nn.modules.dropout")
MIXING_MODULES = (nn.MultiheadAttention, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU)
ELEMENTWISE_NAMES = (
    "relu", "relu_", "relu6", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "logsigmoid", "softplus", "softsign",
    "tanhshrink", "softshrink", "hardshrink", "threshold", "threshold_", "rrelu", "rrelu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "dropout", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d",
    "abs", "neg", "exp", "square", "sqrt", "sin", "cos", "erf", "clamp", "clip", "clamp_min", "clamp_max",
)
ELEMENTWISE_FUNCTIONS = {fn for home in (F, torch) for name in ELEMENTWISE_NAMES
                         if callable(fn := getattr(home, name, None))}
CHANNEL_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
CHANNEL_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.lp_pool2d,
                          torch.max_pool2d}
ELEMENTWISE_METHODS = {name for name in ELEMENTWISE_NAMES if hasattr(torch.Tensor, name)} | {"contiguous"}


def is_per_channel(module: nn.Module | None) -> bool:
    """A module with one parameter (or statistic) per channel: narrowing the width narrows it too."""
    return isinstance(module, _BatchNorm) or (isinstance(module, nn.PReLU) and module.num_parameters > 1)


def is_unitwise_module(module: nn.Module | None) -> bool:
    """Whether a module maps unit i of its input to unit i of its output."""
    if module is None or isinstance(module, MIXING_MODULES):
        return False
    return (is_per_channel(module) or isinstance(module, nn.Identity)
            or type(module).__module__ in UNIT_MODULE_HOMES)


def is_unitwise_function(target: Any) -> bool:
    """Whether a call_function target is elementwise."""
    return target in ELEMENTWISE_FUNCTIONS


def is_channel_pool(target: Any) -> bool:
    """Whether a module or call_function target is 2-D spatial pooling (per channel of an NCHW conv output; over
    features it would mix units, so callers allow it only after a Conv2d)."""
    return isinstance(target, CHANNEL_POOL_MODULES) or target in CHANNEL_POOL_FUNCTIONS


def flattens_channels(op: str, target: Any, args: tuple, kwargs: dict) -> bool:
    """Whether a graph node (op, target or module, args after the input, kwargs) flattens every dimension after the
    batch one (nn.Flatten(), torch.flatten(x, 1), x.flatten(1)): channel c then owns one contiguous feature block."""
    if op == "call_module":
        return isinstance(target, nn.Flatten) and target.start_dim == 1 and target.end_dim == -1
    if (op, target) not in (("call_function", torch.flatten), ("call_method", "flatten")):
        return False
    start = kwargs.get("start_dim", args[0] if args else 0)
    end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    return start == 1 and end == -1


def is_unitwise_method(target: Any) -> bool:
    """Whether a call_method target (a Tensor method name) is elementwise."""
    return target in ELEMENTWISE_METHODS


def narrow_per_channel(module: nn.Module, kept: torch.Tensor) -> nn.Module:
    """A copy of a BatchNorm / per-channel PReLU keeping only the `kept` channels."""
    new = copy.deepcopy(module)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(module, attr, None)
            if value is not None:
                narrowed = value[kept].clone()
                setattr(new, attr, nn.Parameter(narrowed) if isinstance(value, nn.Parameter) else narrowed)
    if isinstance(new, nn.PReLU):
        new.num_parameters = len(kept)
    else:
        new.num_features = len(kept)
    return new
