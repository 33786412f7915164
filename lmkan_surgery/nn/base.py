"""What every lmKAN layer shares: the table parameter, input normalisation, the lookup and the Hessian penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DTypeError, ShapeError
from ..grid import check_num_grids
from ..ops import lmkan_lookup
from ..ops.dispatch import huge_page_table, table_movable_to_huge_pages
from ..ops.lookup import InputMap
from .hessian import hessian_penalty
from .metadata import MetadataTensor
from .placement import identity_knots, place, placement_intervals, quantile_knots, with_tails
from .table_storage import half_table_name
from .tables import branch_table, safe_input_std

INPUT_NORMS = ("none", "affine", "batchnorm", "quantile")
PRECONDITIONING = ("linear", "relu_first", "relu_last")


class LMKANLayer(nn.Module):
    """Base of LMKANLinear and LMKANConv2d; `table` holds [*, P, G+1, G+1, N_out] in the canonical layout.

    Optional preconditioning (the paper's Eq. 12): y = gamma * lmKAN(u) + branch(u), with `branch` the layer's own
    linear map (nn.Linear / nn.Conv2d) applied as Linear(ReLU(u)) ("relu_first"), ReLU(Linear(u)) ("relu_last") or
    Linear(u) ("linear"), and gamma a buffer, 0 at init, ramped up by the training schedule.
    """

    table: nn.Parameter
    branch: nn.Module | None

    def __init__(self, num_grids: int, input_norm: str, norm_features: int, batchnorm: type[nn.Module],
                 factory: dict) -> None:
        super().__init__()
        self.num_grids = check_num_grids(num_grids)
        if input_norm not in INPUT_NORMS:
            raise ConfigError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = input_norm
        if input_norm == "affine":
            self.register_buffer("input_scale", torch.ones(norm_features, **factory))
            self.register_buffer("input_shift", torch.zeros(norm_features, **factory))
        elif input_norm == "batchnorm":
            self.norm = batchnorm(norm_features, affine=False, **factory)
        elif input_norm == "quantile":  # identity until calibrate_placement(); see placement.py
            self.register_buffer("input_knots", identity_knots(norm_features, self.num_grids, **factory))

    def _init_preconditioning(self, preconditioning: str | None, branch: nn.Module | None, factory: dict) -> None:
        if preconditioning is not None and preconditioning not in PRECONDITIONING:
            raise ConfigError(f"preconditioning must be None or one of {PRECONDITIONING}, got {preconditioning!r}")
        self.preconditioning = preconditioning
        self.branch = branch if preconditioning else None
        if preconditioning:
            self.register_buffer("gamma", torch.zeros((), **factory))

    def _add_branch(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """gamma * y + branch(u) in the configured form (y and the branch output share their layout)."""
        u = u.to(self.branch.weight.dtype)  # a float16/bfloat16 input meets float32 branch weights
        if self.preconditioning == "relu_first":
            out = self.branch(torch.relu(u))
        elif self.preconditioning == "relu_last":
            out = torch.relu(self.branch(u))
        else:
            out = self.branch(u)
        return self.gamma * y + out

    @property
    def foldable(self) -> bool:
        """Whether fold() can merge the preconditioning branch exactly into the table (always true without one)."""
        return self.preconditioning in (None, "linear") or (self.preconditioning == "relu_first"
                                                           and self.num_grids % 2 == 0)

    def _branch_matrix(self) -> torch.Tensor:
        """The branch weight as [*, N_out, N_in] in the table's pair order (per group for convolutions)."""
        raise NotImplementedError

    @torch.no_grad()
    def fold(self) -> "LMKANLayer":
        """Merge a "linear" or "relu_first" branch into the table (exact; ReLU-first needs even G) so that
        inference is one lookup."""
        if self.branch is None:
            return self
        if self.preconditioning == "relu_last":
            raise ConfigError("a relu_last branch, ReLU(Linear(u)), is not a sum of pairwise functions and cannot "
                              "be folded; keep it (inference then costs one extra Linear/Conv2d)")
        if not self.foldable:
            raise ConfigError(f"fold() of a relu_first branch is exact only for even num_grids (0 must be a node), "
                              f"got {self.num_grids}")
        folded = self.gamma.to(torch.float64) * self.table.to(torch.float64)
        folded = folded + branch_table(self._branch_matrix(), self.num_grids, self.preconditioning == "relu_first")
        self.table.copy_(folded.to(self.table.dtype))
        branch_bias = self.branch.bias.detach()
        if self.bias is None:
            self.bias = nn.Parameter(branch_bias.clone())
        else:
            self.bias.add_(branch_bias)
        self.branch = None
        self.preconditioning = None
        del self.gamma
        return self

    @property
    def weight(self) -> torch.Tensor:
        """A storage-less tensor with the replaced layer's weight shape, dtype and device: code written for
        nn.Linear/Conv (`layer.weight.dtype`, `.device`) keeps working; a data read raises (see MetadataTensor)."""
        return MetadataTensor(self._source_weight_shape(), self.table.dtype, self.table.device,
                              f"{type(self).__name__}({self.extra_repr()})")

    def _source_weight_shape(self) -> tuple[int, ...]:
        """The weight shape of the source layer (out, in) or (out, in/groups, *kernel)."""
        if hasattr(self, "kernel_size"):
            return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return (self.out_features, self.in_features)

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store a fixed affine normalisation u = (x - mean) / std (needs input_norm='affine')."""
        if self.input_norm != "affine":
            raise ConfigError("set_input_statistics needs input_norm='affine'")
        std = std.to(self.input_scale)
        if (std <= 0).any():
            raise ConfigError("input std must be positive")
        self.input_scale.copy_(1.0 / std)
        self.input_shift.copy_(-mean.to(self.input_scale) / std)

    @torch.no_grad()
    def calibrate_placement(self, x: torch.Tensor, mix: float = 0.25, channel_dim: int = -1) -> None:
        """Fit the quantile placement to sample inputs x (channel_dim: the feature axis; needs
        input_norm='quantile'). The table is not changed: call it before training, or use from_linear(input_knots=)."""
        if self.input_norm != "quantile":
            raise ConfigError("calibrate_placement needs input_norm='quantile'")
        rows = x.detach().movedim(channel_dim, -1).reshape(-1, x.shape[channel_dim])
        if rows.shape[1] != self.input_knots.shape[0]:
            raise ShapeError(f"calibration inputs have {rows.shape[1]} features, the layer {self.input_knots.shape[0]}")
        self.input_knots.copy_(with_tails(quantile_knots(rows, self.num_grids, mix)))

    @staticmethod
    def _exact_statistics(features: int, input_mean, input_std, device,
                          table_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 (mean, std) of the inputs: zero mean when not given, and a std made safe by
        safe_input_std (the data-free scale when not given, so the layer is exact at every input magnitude). A
        float16 table cannot hold values scaled by the data-free 2^-40 (its smallest is 6e-8): it keeps unit std."""
        mean = torch.zeros(features, dtype=torch.float64, device=device)
        if input_mean is not None:
            mean = input_mean.detach().to(mean)
        if input_std is None and table_dtype == torch.float16:
            input_std = torch.ones(features, dtype=torch.float64)
        std = safe_input_std(input_std, features).to(mean)
        return mean, std

    def _set_table(self, table: torch.Tensor) -> None:
        """Make `table` the table parameter; a large CPU table goes onto 2 MB pages (ops.dispatch.huge_page_table)."""
        self.table = nn.Parameter(huge_page_table(table))

    # Tables that torch allocates itself land on 4 KB pages; the four hooks below move each onto 2 MB pages as it
    # arrives (Round 14: the 14x14x256 / 7x7x512 3x3 forwards at batch 1 after torch.load or load_state_dict(assign=
    # True) took 0.91-0.97 of the time on them, 1 thread; the move costs one copy, ~0.3-0.5 s for 364.5 MiB).
    # The move swaps the storage under the same Parameter (optimizers hold it) and keeps values, dtype and
    # requires_grad; it happens only where nothing else holds the storage (ops.dispatch.table_movable_to_huge_pages).

    def _table_to_huge_pages(self, alias: torch.Tensor | None = None, unpickling: bool = False) -> None:
        """Move the table parameter onto 2 MB pages when table_movable_to_huge_pages allows it (one copy)."""
        table = self._parameters.get("table")
        if table is not None and table_movable_to_huge_pages(table, alias, unpickling):
            table.data = huge_page_table(table.detach())

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """`layer.table = nn.Parameter(t)` (the half-table widening of distill.master_tables, a user's assignment)."""
        super().register_parameter(name, param)
        if name == "table":
            self._table_to_huge_pages()

    def _apply(self, fn, recurse: bool = True):
        """.to(dtype / "cpu"), .float(), .half(), .cpu(): a converted table is a new tensor on torch's pages. to_empty
        from the meta device is left alone (no values yet: _set_table or load_state_dict fills it)."""
        table = self._parameters.get("table")
        from_meta = table is not None and table.is_meta
        super()._apply(fn, recurse)
        if not from_meta:
            self._table_to_huge_pages()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """load_state_dict: assign=True makes the state dict's tensor the table (it then stops sharing the table's
        storage once moved); an in-place copy into a table on 4 KB pages (after to_empty()) moves it too."""
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._table_to_huge_pages(alias=state_dict.get(prefix + "table"))

    def __setstate__(self, state: dict) -> None:
        """Unpickling: copy.deepcopy, pickle, torch.load of a whole model."""
        super().__setstate__(state)
        self._table_to_huge_pages(unpickling=True)

    def _install_exact(self, table: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Materialise a layer built on the meta device with a precomputed table, bias and input statistics."""
        self.to_empty(device=table.device)
        self.set_input_statistics(mean, std)
        self._set_table(table)
        self.bias = nn.Parameter(bias.to(self.bias.dtype))  # the layer's dtype (the table may be half)

    def _normalize(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        if self.input_norm == "affine" and channel_dim == x.dim() - 1:  # features last: broadcast without views
            return torch.addcmul(self.input_shift, x, self.input_scale)
        if self.input_norm == "affine":
            shape = [1] * x.dim()
            shape[channel_dim] = -1
            return torch.addcmul(self.input_shift.view(shape), x, self.input_scale.view(shape))  # one op, not two
        if self.input_norm == "quantile":
            return place(x, self.input_knots, self.num_grids, channel_dim)
        if self.input_norm == "batchnorm":
            return self.norm(x) if channel_dim == 1 else self.norm(x.reshape(-1, x.shape[-1])).view_as(x)
        return x

    def _input_map(self) -> InputMap | None:
        """The input map for the one-call inference kernel (ops.lookup.lookup_inference); None for batch norm and
        for maps whose buffers are not plain registered tensors (a parametrization: the steps then apply it)."""
        buffers = self._buffers  # not self.input_scale: nn.Module.__getattr__ costs ~1 us a buffer at batch 1
        if self.input_norm == "affine":
            scale, shift = buffers.get("input_scale"), buffers.get("input_shift")
            return InputMap(scale, shift) if scale is not None and shift is not None else None
        if self.input_norm == "quantile":
            knots = buffers.get("input_knots")
            return None if knots is None else InputMap(None, None, *placement_intervals(knots, self.num_grids))
        return InputMap() if self.input_norm == "none" else None

    def _table_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The table and the bias for the one-call inference kernel, read from the parameter dict where they are
        registered there (nn.Module.__getattr__ costs ~1 us a parameter at batch 1), else as attributes (a
        parametrization computes them)."""
        params = self._parameters
        table = params["table"] if "table" in params else self.table
        return table, params["bias"] if "bias" in params else self.bias

    @staticmethod
    def _check_floating(x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"{name} expects a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise DTypeError(f"{name} expects a floating-point input, got {x.dtype}")

    @staticmethod
    def _lookup(features: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """lmKAN lookup of features[..., K]; an odd K gets a constant-zero partner feature."""
        if features.shape[-1] % 2:
            features = F.pad(features, (0, 1))
        if features.shape[-1] != 2 * table.shape[-4]:
            raise ShapeError(f"features {features.shape[-1]} do not match the table's {table.shape[-4]} pairs")
        return lmkan_lookup(features, table)

    def hessian_penalty(self) -> torch.Tensor:
        """The paper's Hessian regularizer summed over this layer's 2-D functions."""
        return hessian_penalty(self.table)

    @property
    def table_dtype(self) -> str | None:
        """'float16' or 'bfloat16' when the table is stored in half precision, else None (the layer's dtype)."""
        return half_table_name(self.table)

    def table_bytes(self) -> int:
        """Bytes held by the lookup table."""
        return self.table.numel() * self.table.element_size()
