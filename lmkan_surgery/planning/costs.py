"""What a model or one planned layer costs: formula MACs (the layer rules' convention, lmKAN at 2 x even(in) x out)
and bytes (parameters and buffers at their stored dtypes, int8 packed weights counted as int8)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmkan_surgery import batches
from lmkan_surgery.rules import rule_for
from lmkan_surgery.rules.base import lookup_width


def _is_dynamic_quantized_linear(module: nn.Module) -> bool:
    """torch.ao's dynamically quantized Linear (int8 weights, float activations)."""
    cls = type(module)
    return cls.__name__ == "Linear" and ".quantized." in cls.__module__


def layer_macs(module: nn.Module, out: torch.Tensor, batch: int) -> int:
    """Formula multiply-adds per sample of one call of a rule layer, an lmKAN layer or an int8 dynamic Linear."""
    if _is_dynamic_quantized_linear(module):
        per_position, out_features = module.in_features * module.out_features, module.out_features
    else:
        rule = rule_for(module)
        lmkan = type(module) in rule.lmkan
        per_position, out_features = rule.macs_per_position(module, lmkan), rule.features(module)[1]
    channel_dim = -1 if out.dim() < 3 or out.shape[-1] == out_features else 1
    positions = out.numel() // max(1, out.shape[channel_dim] * batch)
    return per_position * max(1, positions)


def model_macs(model: nn.Module, example_inputs: Any) -> int:
    """Formula MACs per sample of a whole model: the sum over its rule, lmKAN and int8 Linear layers, positions taken
    from one forward on `example_inputs`. Layers without a rule (activations, pooling, norms) count zero."""
    total = [0]
    batch = max(1, batches.batch_size(example_inputs))

    def hook(module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += layer_macs(module, out, batch)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if rule_for(m) is not None or _is_dynamic_quantized_linear(m)]
    try:
        with torch.no_grad():
            batches.call(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _value_bytes(value: Any) -> int:
    """Bytes of a state-dict value: a tensor (quantized ones at their integer width), or a tuple/list of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_value_bytes(v) for v in value)
    return 0


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer at its dtype; int8 dynamic Linear layers count their packed int8
    weights (unpacked once for counting) and float bias."""
    total = 0
    counted: set[int] = set()
    for module in model.modules():
        if _is_dynamic_quantized_linear(module):
            weight, bias = module._packed_params._weight_bias()
            total += weight.numel() + (_value_bytes(bias) if bias is not None else 0)
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) not in counted:
                counted.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def plain_cost(macs: int, bytes_: int, in_scale: float, out_scale: float) -> tuple[float, float]:
    """(MACs, weight bytes) of a plain layer after keeping in_scale of its inputs and out_scale of its outputs."""
    return macs * in_scale * out_scale, bytes_ * in_scale * out_scale


def lmkan_cost(positions: int, n_in: int, n_out: int, num_grids: int, itemsize: int) -> tuple[float, float]:
    """(MACs, bytes) of an lmKAN Linear n_in -> n_out: 2 x even(n_in) x n_out per position; table
    (G+1)^2 x ceil(n_in/2) x n_out, bias and the per-input placement knots."""
    macs = positions * 2 * lookup_width(n_in) * n_out
    table = (num_grids + 1) ** 2 * ((n_in + 1) // 2) * n_out
    return float(macs), float((table + n_out + n_in * (num_grids + 1)) * itemsize)
