"""Budget planner: per hidden space keep / narrow as plain layers / lmKAN, by measured damage against cost, and the
baseline arms (prune-only, int8 dynamic quantization) every compression report sets beside it."""

from .baselines import int8_dynamic, planned_arms
from .budget import Budget
from .compare_arms import ArmRow, ArmsTable, compare_arms
from .costs import model_bytes, model_macs
from .planner import Decision, PlanResult, plan

__all__ = ["ArmRow", "ArmsTable", "Budget", "Decision", "PlanResult", "compare_arms", "int8_dynamic", "model_bytes",
           "model_macs", "plan", "planned_arms"]
