"""float32 master copies of half-precision tables while training: AdamW's second moment of a float16 table's
gradient underflows to zero (the first step then divides by zero) and bfloat16 rounds small updates away, so the
run trains float32 tables and rounds them to their storage dtype once, when it ends."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..nn.base import LMKANLayer
from ..nn.table_storage import HALF_DTYPES


def widen_half_tables(model: nn.Module) -> dict[LMKANLayer, torch.dtype]:
    """Give every lmKAN layer with a float16/bfloat16 table a float32 table of the same values (a new Parameter,
    same requires_grad); return layer -> storage dtype for narrow_tables."""
    widened = {}
    for module in model.modules():
        if isinstance(module, LMKANLayer) and module.table.dtype in HALF_DTYPES:
            widened[module] = module.table.dtype
            module.table = nn.Parameter(module.table.detach().float(), requires_grad=module.table.requires_grad)
    return widened


def narrow_tables(widened: dict[LMKANLayer, torch.dtype]) -> None:
    """Round the tables widen_half_tables widened back to their storage dtypes (new Parameters)."""
    for module, dtype in widened.items():
        module.table = nn.Parameter(module.table.detach().to(dtype), requires_grad=module.table.requires_grad)


@contextlib.contextmanager
def float32_master_tables(model: nn.Module) -> Iterator[dict[LMKANLayer, torch.dtype]]:
    """Train float32 tables inside the block, stored back as float16/bfloat16 when it exits (even by an error)."""
    widened = widen_half_tables(model)
    try:
        yield widened
    finally:
        narrow_tables(widened)
