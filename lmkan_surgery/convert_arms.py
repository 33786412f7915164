"""The command line's budget mode: plan the model to the budget, build the prune-only and int8 arms of the same
budget, distill the trainable arms alike, and print them side by side (lmkan_surgery.planning.compare_arms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LMKANConfig
from .distill import DistillConfig, distill, evaluate
from .planning import ArmsTable, Budget, PlanResult, compare_arms, int8_dynamic, planned_arms

Pair = tuple[torch.Tensor, torch.Tensor]


def task_of(targets: torch.Tensor) -> str:
    """'classification' for integer labels, 'regression' otherwise."""
    return "regression" if torch.is_floating_point(targets) else "classification"


def run_arms(model: nn.Module, calibration: list[torch.Tensor], example: torch.Tensor, train: Pair, val: Pair,
             config: LMKANConfig, epochs: int, batch: int, throughput_batch: int, repeats: int,
             budget_s: float, out: Path) -> tuple[PlanResult, ArmsTable]:
    """Plan (lmKAN allowed and prune-only), int8, optional distillation, the arms table; writes plan.txt and
    arms.md into `out` and returns the planner's result and the table."""
    budget = Budget(config.budget_macs, config.budget_bytes, config.budget_latency)
    plans = planned_arms(model, calibration, budget, example_inputs=(example,), config=config)
    for result in plans.values():
        print(result)
    (out / "plan.txt").write_text("\n\n".join(str(r) for r in plans.values()) + "\n")
    task = task_of(train[1])
    arms = {"original": model, "planner": plans["planner"].model, "prune-only": plans["prune-only"].model,
            "int8": int8_dynamic(model)}
    notes = {"original": "reference", "planner": f"{len(plans['planner'].lmkan_layers())} lmKAN layer(s)",
             "prune-only": "plain narrowed layers", "int8": "quantize_dynamic (Linear); MACs unchanged"}

    def train_arm(student: nn.Module) -> Any:
        settings = DistillConfig(epochs=epochs, batch_size=batch, task=task, progress=False)
        return distill(student, model, train, None, config=settings)

    def metric(arm: nn.Module) -> float:
        return evaluate(arm, val, task=task, batch_size=256, device="cpu")

    name = "accuracy" if task == "classification" else "RMSE"
    table = compare_arms(arms, (example,), metric, name, task == "classification", train=train_arm,
                         trainable=("planner", "prune-only") if epochs else (), notes=notes,
                         throughput_batch=throughput_batch, repeats=repeats, budget_s=budget_s,
                         budget=f"{budget.describe()}, {epochs} distillation epoch(s) per trainable arm")
    print(table)
    (out / "arms.md").write_text(table.render(markdown=True) + "\n")
    return plans["planner"], table
