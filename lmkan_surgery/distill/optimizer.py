"""The training optimizer: AdamW with lmKAN tables in their own learning-rate group."""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig


def param_groups(params: list[torch.Tensor], tables: set[torch.Tensor], cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: lmKAN tables at cfg.lr * cfg.table_lr_scale, every other parameter at
    cfg.lr (TrainConfig.table_lr_scale says why); empty groups are left out."""
    ids = {id(t) for t in tables}
    groups = [{"params": [p for p in params if id(p) not in ids], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in ids], "lr": cfg.lr * cfg.table_lr_scale}]
    return [g for g in groups if g["params"]]


def make_optimizer(params: list[torch.Tensor], tables: set[torch.Tensor], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over param_groups with the config's weight decay, fused (one kernel over all parameters) where torch
    supports it: floating-point parameters on CPU or CUDA; per-tensor otherwise."""
    fused = all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(param_groups(params, tables, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                             fused=fused or None)
