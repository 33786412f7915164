"""A tiny distillation problem shared by the distill tests; run as a script under torchrun it saves the result."""

from __future__ import annotations

import copy
import os
import sys

import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.distill import DistillConfig, distill


def tiny_problem(dtype: torch.dtype = torch.float32, n: int = 96) -> tuple[nn.Module, nn.Module, tuple]:
    """(student, teacher, (x, y)): an MLP teacher with a BatchNorm, its copy with the middle Linear as lmKAN."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=gen)
    torch.manual_seed(1234)
    teacher = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                            nn.Linear(8, 3)).to(dtype)
    with torch.no_grad():
        teacher[1].running_mean.uniform_(-0.2, 0.2)
        teacher[1].running_var.uniform_(0.5, 1.5)
    teacher.eval()
    student = copy.deepcopy(teacher)
    student[3] = LMKANLinear(8, 8, num_grids=4, preconditioning="relu_first", dtype=dtype)
    return student, teacher, (x, y)


def tiny_config(**overrides) -> DistillConfig:
    """A fast config for the tiny problem (global batch 16, no progress bar)."""
    base = dict(epochs=2, batch_size=16, lr=5e-3, label_weight=0.5, hessian_start=1e-2, progress=False, seed=3)
    base.update(overrides)
    return DistillConfig(**base)


def main(out_path: str) -> None:
    """Distill the float64 tiny problem (run under torchrun) and save the student's state dict from rank 0."""
    student, teacher, data = tiny_problem(torch.float64)
    distill(student, teacher, data, data, tiny_config())
    if os.environ.get("RANK", "0") == "0":
        torch.save(student.state_dict(), out_path)


if __name__ == "__main__":
    main(sys.argv[1])
