"""LMKANConfig: the dataclass that fully describes one conversion (saved with the converted model as JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import ConfigError
from .grid import check_num_grids

MODES = ("exact", "shrink", "budget")
WIDTH_MODES = ("flops", "channels")
INPUT_NORMS = ("affine", "none", "quantile")
GiB = 2**30
TABLE_DTYPE_NAMES = (None, "float32", "float64", "float16", "bfloat16")


def _pattern_to_json(pattern: Any) -> str:
    """A type becomes its dotted path; strings stay as they are."""
    if isinstance(pattern, type):
        return f"{pattern.__module__}.{pattern.__qualname__}"
    return pattern


@dataclass
class LMKANConfig:
    """How lmkanify converts a model; every field is plain data.

    - num_grids: G for every layer, or a mapping {pattern: G} (first match wins, key "default" for the rest).
    - mode: "exact" keeps every shape and reproduces the original function; "shrink" narrows hidden widths.
    - width, width_mode: with width_mode="flops" (default) `width` is the target formula-FLOP ratio of the whole
      model (lmKAN counted at 2x a same-shape Linear) and the kept hidden fraction is searched to reach it; with
      "channels" it is the kept fraction of every shrinkable hidden width.
    - include/exclude: module types (classes or names such as "Linear", "Bottleneck"), qualified module names
      (a name also selects everything under it) or regular expressions (full match on qualified names).
    - skip_defaults: skip the input stem conv, the classifier head and the children of nn.MultiheadAttention;
      user exclusions are added to these, never replace them.
    - min_features: layers whose lookup input (in_features, or in_channels/groups*kh*kw) is smaller are skipped.
    - input_norm: "affine" stores per-feature input mean/std in the layer, measured on the calibration batches
      (on example_inputs without calibration, unit statistics without either) so inputs land on the grid;
      "none" keeps raw inputs; "quantile" places each Linear input feature on the grid by a monotone map through
      its calibration quantiles (nn/placement.py; Conv2d layers fall back to "affine").
    - max_layer_table_bytes / max_total_table_bytes: memory guard, checked before any table is allocated.
    - holdout_fraction: share of calibration batches held out to measure shrink reconstruction error.
    - ridge: relative Tikhonov term of the least-squares reconstruction.
    - validate: compare student and original outputs on example_inputs after conversion.
    - strict: a shrink width/budget that cannot be met raises ConfigError (otherwise it is a report problem).
    - validation_tolerance: largest relative output error (of the output scale) an exact conversion may show (with
      half-precision tables at least 1e-2 for float16, 5e-2 for bfloat16: their rounding).
    - allow_failed_validation: a non-finite or (exact mode) out-of-tolerance validation is reported as a problem
      naming the layers and their errors instead of raising ValidationError.
    - quantile_mix: share of the value-uniform CDF blended into the rank CDF by input_norm="quantile".
    - shrink_fit: "lmkan" also fits each converted, narrowed consumer's tables by regularised least squares
      (passes/fit.py) and keeps them where the held-out block error beats the Linear refit; "linear" only refits.
    - table_dtype: storage dtype of the tables: None (the model's dtype), "float16" or "bfloat16" (half the table
      bytes; float32 arithmetic; the exact init is then exact only to the half dtype's precision).
    - budget_macs / budget_bytes / budget_latency (mode="budget"): the planner (lmkan_surgery.planning) narrows hidden
      widths as plain layers or with lmKAN consumers, whichever damages the held-out block outputs least, until the
      model costs at most these fractions of the original's formula MACs / bytes / CPU latency at batch 256
      (None: no limit on that cost).
    """

    num_grids: int | Mapping[str, int] = 8
    mode: str = "exact"
    width: float = 0.5
    width_mode: str = "flops"
    include: Sequence[Any] | None = None
    exclude: Sequence[Any] = ()
    skip_defaults: bool = True
    min_features: int = 2
    input_norm: str = "affine"
    max_layer_table_bytes: int = 2 * GiB
    max_total_table_bytes: int = 8 * GiB
    holdout_fraction: float = 0.25
    ridge: float = 1e-2
    validate: bool = True
    strict: bool = False
    validation_tolerance: float = 1e-4
    allow_failed_validation: bool = False
    quantile_mix: float = 0.25
    shrink_fit: str = "lmkan"
    table_dtype: str | None = None
    budget_macs: float | None = 0.5
    budget_bytes: float | None = None
    budget_latency: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ConfigError on an invalid value (patterns are resolved later, against the model)."""
        if self.mode not in MODES:
            raise ConfigError(f"LMKANConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.width_mode not in WIDTH_MODES:
            raise ConfigError(f"LMKANConfig.width_mode must be one of {WIDTH_MODES}, got {self.width_mode!r}")
        top = 2.0 if self.width_mode == "flops" else 1.0
        if not isinstance(self.width, (int, float)) or not 0.0 < self.width <= top:
            raise ConfigError(f"LMKANConfig.width must be in (0, {top}] for width_mode={self.width_mode!r}, "
                              f"got {self.width!r}")
        if self.input_norm not in INPUT_NORMS:
            raise ConfigError(f"LMKANConfig.input_norm must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        if isinstance(self.num_grids, Mapping):
            for key, value in self.num_grids.items():
                if not isinstance(key, str):
                    raise ConfigError(f"LMKANConfig.num_grids keys must be patterns (str), got {key!r}")
                check_num_grids(value)
        else:
            check_num_grids(self.num_grids)
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, type)) or not isinstance(value, Sequence):
                raise ConfigError(f"LMKANConfig.{name} must be a list of patterns, got {value!r}")
            for pattern in value:
                if not isinstance(pattern, (str, type)):
                    raise ConfigError(f"LMKANConfig.{name} entries must be str or a module class, got {pattern!r}")
        if not isinstance(self.min_features, int) or self.min_features < 1:
            raise ConfigError(f"LMKANConfig.min_features must be a positive int, got {self.min_features!r}")
        if self.max_layer_table_bytes <= 0 or self.max_total_table_bytes <= 0:
            raise ConfigError("LMKANConfig table byte budgets must be positive")
        if not isinstance(self.validation_tolerance, (int, float)) or not self.validation_tolerance > 0:
            raise ConfigError(f"LMKANConfig.validation_tolerance must be positive, got {self.validation_tolerance!r}")
        if not 0.0 <= self.quantile_mix <= 1.0 or self.shrink_fit not in ("lmkan", "linear"):
            raise ConfigError(f"LMKANConfig.quantile_mix must be in [0, 1] and shrink_fit 'lmkan' or 'linear', got "
                              f"{self.quantile_mix!r}, {self.shrink_fit!r}")
        if self.table_dtype not in TABLE_DTYPE_NAMES:
            raise ConfigError(f"LMKANConfig.table_dtype must be one of {TABLE_DTYPE_NAMES}, got {self.table_dtype!r}")
        if self.mode == "budget":
            from .planning.budget import Budget  # checks the limits (ConfigError)

            Budget(self.budget_macs, self.budget_bytes, self.budget_latency)
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"LMKANConfig.holdout_fraction must be in [0, 1), got {self.holdout_fraction!r}")

    def default_num_grids(self) -> int:
        """G for layers no num_grids pattern matches."""
        if isinstance(self.num_grids, Mapping):
            return int(self.num_grids.get("default", 8))
        return int(self.num_grids)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (module classes become dotted paths)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["include"] = None if self.include is None else [_pattern_to_json(p) for p in self.include]
        out["exclude"] = [_pattern_to_json(p) for p in self.exclude]
        if isinstance(self.num_grids, Mapping):
            out["num_grids"] = dict(self.num_grids)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LMKANConfig":
        """Inverse of to_dict; unknown keys raise ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown LMKANConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**data)
