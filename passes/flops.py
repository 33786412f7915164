"""Formula FLOPs, the one home of the lmKAN cost formula: multiply-adds per sample, N_in * N_out per output position
for a Linear/Conv2d (N_in = in_channels/groups * kh * kw), and 2 * N_in' * N_out for an lmKAN layer, where N_in'
is N_in rounded up to even (an odd layer pairs its last input with a constant zero and still does that lookup)."""

from __future__ import annotations

import math

from torch import nn

from .probe import Probe


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features or channels of a Linear/Conv2d or its lmKAN counterpart."""
    if hasattr(module, "in_channels"):
        return module.in_channels, module.out_channels
    return module.in_features, module.out_features


def lookup_width(in_features: int) -> int:
    """The lmKAN lookup's input width: in_features (or a conv group's patch size) rounded up to even."""
    return in_features + in_features % 2


def macs_per_position(module: nn.Module, lmkan: bool = False) -> int:
    """Multiply-adds per output position, summed over groups; `lmkan` charges the lmKAN formula for that shape."""
    n_in, n_out = features(module)
    if hasattr(module, "kernel_size"):
        n_in = n_in // module.groups * math.prod(module.kernel_size)
    return 2 * lookup_width(n_in) * n_out if lmkan else n_in * n_out


def positions(name: str, probe: Probe, conv: bool) -> int | None:
    """Output positions per sample times calls, from the probe's first-call shapes (None when it did not run)."""
    if name not in probe.calls:
        return None
    if conv:
        per_sample = math.prod(probe.out_shapes[name][2:])
    else:
        per_sample = max(1, round(math.prod(probe.in_shapes[name][:-1]) / max(1, probe.batch)))
    return per_sample * probe.calls[name]


def formula_flops(module: nn.Module, name: str, probe: Probe, lmkan: bool) -> int | None:
    """Formula multiply-adds per sample of `module` as recorded under `name` (x2 when it is or becomes lmKAN)."""
    count = positions(name, probe, hasattr(module, "kernel_size"))
    return None if count is None else count * macs_per_position(module, lmkan)
