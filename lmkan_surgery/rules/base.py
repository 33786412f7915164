"""LayerRule: everything type-specific about one kind of source layer (and its lmKAN replacement), in one place.

The passes, the report, serialization and distillation ask the rule of a module instead of testing isinstance:
match, lookup geometry, the MAC formula, calibration rows, the exact lmKAN init and (for the kinds the shrink pass
narrows) narrowing and the least-squares design rows. Adding a layer type means adding one rule.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def narrowed_copy(module: nn.Module, out_idx, in_idx) -> nn.Module:
    """A copy of a weight/bias layer keeping output units out_idx and input units in_idx (None keeps all); the
    caller updates the size attributes."""
    new = copy.deepcopy(module)
    with torch.no_grad():
        weight, bias = module.weight, module.bias
        if out_idx is not None:
            weight, bias = weight[out_idx], (bias[out_idx] if bias is not None else None)
        if in_idx is not None:
            weight = weight[:, in_idx]
        new.weight = nn.Parameter(weight.clone())
        new.bias = nn.Parameter(bias.clone()) if bias is not None else None
    return new


def lookup_width(in_features: int) -> int:
    """The lmKAN lookup's input width: in_features (or a conv group's patch size) rounded up to even."""
    return in_features + in_features % 2


class LayerRule:
    """The rule of one source layer type; subclasses set `source` (the class(es) it converts) and `lmkan` (the
    lmKAN class(es) it describes) and implement the geometry and the exact init."""

    name = "layer"
    source: tuple[type, ...] = ()
    lmkan: tuple[type, ...] = ()
    narrowable = False  # whether the shrink pass may narrow its input/output units
    linear_like = False  # a dense map of the last dimension (classifier-head candidate)
    channel_dim = -1  # the feature/channel dimension of its input and output

    def matches(self, module: nn.Module) -> bool:
        """Whether `module` is a source layer of this rule (subclasses included)."""
        return isinstance(module, self.source)

    def describes(self, module: nn.Module) -> bool:
        """Whether `module` is a source layer or an lmKAN layer of this rule."""
        return self.matches(module) or type(module) in self.lmkan

    def stock_name(self, module: nn.Module) -> str:
        """The name of the stock class whose forward the module must run (for messages)."""
        return next(c.__name__ for c in self.source if isinstance(module, c)) if self.source else self.name

    def plain(self, module: nn.Module) -> bool:
        """Whether the module runs the stock forward of its source type (a subclass may compute something else)."""
        return any(type(module).forward is cls.forward for cls in self.source)

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The source layer's weight parameter (for dtype, device and element size)."""
        return module.weight

    def features(self, module: nn.Module) -> tuple[int, int]:
        """(in, out) features or channels."""
        raise NotImplementedError

    def geometry(self, module: nn.Module) -> tuple[int, int, int]:
        """(lookup inputs per group, outputs per group, groups)."""
        n_in, n_out = self.features(module)
        return n_in, n_out, 1

    def macs_per_position(self, module: nn.Module, lmkan: bool = False) -> int:
        """Multiply-adds per output position, summed over groups; `lmkan` charges 2 * even(N_in) * N_out."""
        k, out, groups = self.geometry(module)
        return groups * (2 * lookup_width(k) * out if lmkan else k * out)

    def positions(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], batch: int) -> int:
        """Output positions per sample of one call, from the recorded input/output shapes."""
        return max(1, round(math.prod(in_shape[:-1]) / max(1, batch)))

    def feature_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input as rows [n, features] (per-feature statistics)."""
        return x.reshape(-1, x.shape[-1])

    def table_bytes(self, module: nn.Module, num_grids: int) -> int:
        """Bytes of the lmKAN table replacing `module`: (G+1)^2 * ceil(K/2) * out * groups * itemsize."""
        k, out, groups = self.geometry(module)
        return (num_grids + 1) ** 2 * ((k + 1) // 2) * out * groups * self.weight(module).element_size()

    def to_lmkan(self, module: nn.Module, num_grids: int, mean: torch.Tensor | None, std: torch.Tensor | None,
                 table_dtype: str | torch.dtype | None = None) -> nn.Module:
        """The exact lmKAN counterpart (an LMKANLayer or a wrapper of one), inputs normalised by (mean, std), its
        table stored as table_dtype (None: the module's dtype)."""
        raise NotImplementedError

    # -- narrowing (shrink pass); only rules with narrowable = True implement these --------------------------------
    def narrow(self, module: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
        """A copy restricted to the given output and input units."""
        raise NotImplementedError

    def design_rows(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Rows [n, K] of what the weight multiplies (patches for a conv)."""
        raise NotImplementedError

    def output_rows(self, y: torch.Tensor) -> torch.Tensor:
        """The output as rows [n, out]."""
        return y.reshape(-1, y.shape[-1])

    def input_columns(self, module: nn.Module) -> torch.Tensor:
        """The weight as [in units, everything else] (the consumer-column norms score hidden units)."""
        weight = module.weight.detach()
        return weight.transpose(0, 1).reshape(weight.shape[1], -1)
