"""Formula FLOPs: multiply-adds per sample, N_in * N_out per output position for a source layer (N_in =
in_channels/groups * prod(kernel) for a conv) and 2 * N_in' * N_out for an lmKAN layer, where N_in' is N_in rounded
up to even (an odd layer pairs its last input with a constant zero and still does that lookup). The per-type
geometry and formula live in the layer rules (lmkan_surgery.rules); this module applies them to probed shapes."""

from __future__ import annotations

from torch import nn

from lmkan_surgery.rules import lookup_width, rule_for

from .probe import Probe

__all__ = ["features", "formula_flops", "lookup_width", "macs_per_position", "positions"]


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features or channels of a convertible layer or its lmKAN counterpart."""
    return rule_for(module).features(module)


def macs_per_position(module: nn.Module, lmkan: bool = False) -> int:
    """Multiply-adds per output position, summed over groups; `lmkan` charges the lmKAN formula for that shape."""
    return rule_for(module).macs_per_position(module, lmkan)


def positions(name: str, probe: Probe, module: nn.Module) -> int | None:
    """Output positions per sample times calls, from the probe's first-call shapes (None when it did not run)."""
    if name not in probe.calls:
        return None
    per_sample = rule_for(module).positions(probe.in_shapes[name], probe.out_shapes[name], probe.batch)
    return per_sample * probe.calls[name]


def formula_flops(module: nn.Module, name: str, probe: Probe, lmkan: bool) -> int | None:
    """Formula multiply-adds per sample of `module` as recorded under `name` (x2 when it is or becomes lmKAN)."""
    count = positions(name, probe, module)
    return None if count is None else count * macs_per_position(module, lmkan)
