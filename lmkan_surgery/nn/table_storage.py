"""Storage dtype of an lmKAN table: the layer's own float dtype, or float16/bfloat16 (half the parameter bytes and
table traffic; the kernels read them into float32 arithmetic, and gradients are accumulated in float32)."""

from __future__ import annotations

import torch

from ..errors import DTypeError

TABLE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
HALF_DTYPES = (torch.float16, torch.bfloat16)
# relative output error an exact conversion reaches with half tables (measured, docs/benchmarks.md: float16 1.5e-3
# in distribution and 5.4e-3 at 30x the std; bfloat16 1.1e-2 and 4.1e-2), so validation does not call them failed
HALF_EXACTNESS = {"float16": 1e-2, "bfloat16": 5e-2}


def resolve_table_dtype(table_dtype: str | torch.dtype | None, layer_dtype: torch.dtype | None) -> torch.dtype | None:
    """The table's dtype: `table_dtype` (a name from TABLE_DTYPES or a torch dtype), or the layer's when None."""
    if table_dtype is None:
        return layer_dtype
    resolved = TABLE_DTYPES.get(table_dtype) if isinstance(table_dtype, str) else table_dtype
    if resolved not in TABLE_DTYPES.values():
        raise DTypeError(f"table_dtype must be one of {sorted(TABLE_DTYPES)} (or None for the layer's dtype), "
                         f"got {table_dtype!r}")
    return resolved


def half_table_name(table: torch.Tensor) -> str | None:
    """'float16' or 'bfloat16' for a half-precision table, None otherwise (the layer's dtype then describes it)."""
    return next((name for name, dt in TABLE_DTYPES.items() if dt == table.dtype), None) \
        if table.dtype in HALF_DTYPES else None


def exactness_floor(table_dtype: str | None) -> float:
    """The relative error below which an exact conversion with tables stored as `table_dtype` counts as exact."""
    return HALF_EXACTNESS.get(table_dtype, 0.0) if isinstance(table_dtype, str) else 0.0
