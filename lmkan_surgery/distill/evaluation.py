"""The metric of a model on a data source: accuracy or RMSE, in eval mode, summed across ranks under DDP."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import batches
from . import runtime as rt


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, task: str = "classification", batch_size: int = 512,
             device: torch.device | str | None = None) -> float:
    """Accuracy (classification) or RMSE (regression) of a model on a Dataset or tuple of tensors, in eval mode."""
    env = rt.DistEnv(dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else rt.DistEnv()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        for batch in rt.eval_batches(rt.as_dataset(data, "data"), batch_size, env):
            inputs, targets = rt.split_batch(batches.to_device(batch, device))
            out = batches.call(model, inputs).float()
            if task == "regression":
                totals[0] += (out - targets.float().view_as(out)).square().sum().double()
                totals[1] += out.numel()
            else:
                totals[0] += (out.argmax(-1) == targets).sum().double()
                totals[1] += targets.numel()
    finally:
        for m, flag in was_training.items():
            m.training = flag
    if env.world_size > 1:
        dist.all_reduce(totals)
    ratio = (totals[0] / totals[1].clamp_min(1)).item()
    return math.sqrt(ratio) if task == "regression" else ratio
