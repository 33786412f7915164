"""FLOP counting with fvcore: the handle for the lmKAN op, the lmKAN layer formula and their cross-check.

fvcore counts one fused multiply-add as one "flop" (a MAC); so does the lmKAN paper, which charges an lmKAN layer
2 * N_in * N_out multiply-adds per output position (a same-shape Linear costs N_in * N_out). N_in is the width the
lookup really processes: in_features (or a conv group's patch size) rounded up to even, because an odd layer pairs
its last feature with a constant zero and still performs that lookup.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import LMKANError
from ..nn import LMKANLayer
from ..passes.flops import macs_per_position
from ..rules import rule_for

LOOKUP_OP = "lmkan::lookup2d"
LOOKUP_KEY = "lookup2d"  # fvcore's name for the op in by_operator()/by_module_and_operator()
CONVENTION = (
    "FLOPs are fvcore counts of multiply-adds (1 MAC = 1 flop); an lmKAN layer costs 2*N_in*N_out MACs per output "
    "position (the lmKAN paper's convention), N_in rounded up to even"
)


class FlopCrossCheckError(LMKANError):
    """The fvcore handle and the lmKAN layer formula disagree on a layer."""


def _shape(value: Any) -> list[int]:
    """Concrete sizes of a traced TorchScript value."""
    sizes = value.type().sizes()
    if sizes is None:
        raise LMKANError("fvcore handed the lmKAN handle a value without a static shape")
    return [int(s) for s in sizes]


def lookup_flop_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for lmkan::lookup2d(x[B, 2P], table[P, G+1, G+1, N_out]): 2 * 2P * N_out MACs per row."""
    rows, width = _shape(inputs[0])
    out_features = _shape(inputs[1])[3]
    return 2 * rows * width * out_features


def lmkan_layer_macs(layer: LMKANLayer, output_shape: torch.Size | tuple[int, ...]) -> int:
    """The lmKAN formula for one call of `layer` that produced `output_shape`: 2 * N_in * N_out per position (the
    layer's rule gives the per-position cost; positions are the output elements per output feature)."""
    rule = rule_for(layer)
    if rule is None:
        raise LMKANError(f"no FLOP formula for lmKAN layer type {type(layer).__name__}")
    return math.prod(output_shape) // rule.features(layer)[1] * macs_per_position(layer, lmkan=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence fvcore/TorchScript deprecation and tracer warnings and fvcore's log lines."""
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@dataclass
class FlopCount:
    """fvcore's count of one model: total, per module, per operator, and what fvcore could not count."""

    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    lookup_by_module: dict[str, int]
    uncounted_ops: dict[str, int] = field(default_factory=dict)


def count_flops(model: nn.Module, example_inputs: tuple) -> FlopCount:
    """Run fvcore's FlopCountAnalysis on `model` (CPU tensors, eval mode) with the lmKAN handle registered."""
    with quiet():
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, example_inputs).set_op_handle(LOOKUP_OP, lookup_flop_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        total = int(analysis.total())
        by_module = {name: int(n) for name, n in analysis.by_module().items()}
        by_operator = {name: int(n) for name, n in analysis.by_operator().items()}
        lookups = {name: int(ops.get(LOOKUP_KEY, 0)) for name, ops in analysis.by_module_and_operator().items()}
        uncounted = dict(Counter(analysis.unsupported_ops()))
    return FlopCount(total, by_module, by_operator, lookups, uncounted)


def layer_output_shapes(model: nn.Module, example_inputs: tuple) -> dict[str, list[torch.Size]]:
    """Output shape of every call of every lmKAN layer during one forward (a layer called twice has two)."""
    shapes: dict[str, list[torch.Size]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, LMKANLayer):
            def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor, name: str = name) -> None:
                shapes.setdefault(name, []).append(out.shape)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def cross_check(model: nn.Module, example_inputs: tuple, counts: FlopCount) -> dict[str, int]:
    """Formula MACs per lmKAN layer; raise FlopCrossCheckError where fvcore's handle counted something else."""
    formula = {}
    modules = dict(model.named_modules())
    for name, shapes in layer_output_shapes(model, example_inputs).items():
        expected = sum(lmkan_layer_macs(modules[name], shape) for shape in shapes)
        counted = counts.lookup_by_module.get(name, 0)
        if counted != expected:
            raise FlopCrossCheckError(
                f"lmKAN layer {name!r}: fvcore's handle counted {counted} MACs, the layer formula gives {expected}"
            )
        formula[name] = expected
    return formula
