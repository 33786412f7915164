"""Distillation losses: logits KD, layerwise matching through forward hooks, and non-finite output tracing."""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import batches
from ..errors import ShapeError


def check_same_outputs(student: Any, teacher: Any) -> None:
    """ShapeError unless the student's and the teacher's outputs are tensors of one shape."""
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise ShapeError(f"distill compares the student's and the teacher's outputs as tensors, got "
                         f"{type(student).__name__} and {type(teacher).__name__}: wrap models that return tuples or "
                         f"dicts so that they return the logits")
    if student.shape != teacher.shape:
        raise ShapeError(f"the student's output {tuple(student.shape)} and the teacher's {tuple(teacher.shape)} differ: "
                         f"the student must compute the teacher's outputs (same classes / output features); check "
                         f"num_classes and the head of both models")


def logits_kd(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (classification); MSE (regression)."""
    check_same_outputs(student, teacher)
    if task == "regression":
        return F.mse_loss(student.float(), teacher.float())
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=-1)
    log_q = F.log_softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def label_loss(output: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy against class labels (classification) or MSE against targets (regression)."""
    if task == "regression":
        return F.mse_loss(output.float(), target.float().view_as(output))
    return F.cross_entropy(output.float(), target)


def global_variance(t: torch.Tensor) -> torch.Tensor:
    """Variance of all elements of t across every rank's batch (so DDP matches a single process)."""
    t = t.detach().float()
    stats = torch.stack([t.sum(), t.square().sum(), torch.tensor(float(t.numel()), device=t.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    mean = stats[0] / stats[2]
    return (stats[1] / stats[2] - mean.square()).clamp_min(0.0)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def _accepts(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether an lmKAN-style module takes x as input (checked on in_features / in_channels)."""
    if hasattr(module, "in_features"):
        return x.dim() >= 1 and x.shape[-1] == module.in_features
    if hasattr(module, "in_channels"):
        return x.dim() == 4 and x.shape[1] == module.in_channels
    return True


class LayerMatcher:
    """Layerwise targets for each matched (student, teacher) module pair, captured with forward hooks.

    A pair whose student module takes the teacher module's input and gives its output shape is "teacher-forced":
    the student module runs on the teacher's own input and its output is matched to the teacher's output. A pair
    where only the output shapes agree (the boundary of a shrunk group) matches the student's own output.
    Each term is the MSE divided by the teacher output's variance; the loss is their mean.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, pairs: dict[str, str]) -> None:
        self.student_modules = dict(student.named_modules())
        teacher_modules = dict(teacher.named_modules())
        self.pairs = {s: t for s, t in pairs.items() if s in self.student_modules and t in teacher_modules}
        self.plan: dict[str, str | None] | None = None
        self._teacher: dict[str, tuple[tuple, torch.Tensor]] = {}
        self._student: dict[str, torch.Tensor] = {}
        self._handles = []
        for s_name, t_name in self.pairs.items():
            self._handles.append(teacher_modules[t_name].register_forward_hook(self._teacher_hook(s_name)))
            self._handles.append(self.student_modules[s_name].register_forward_hook(self._student_hook(s_name)))

    def _teacher_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            out = _first_tensor(output)
            if out is not None:
                self._teacher[name] = (args, out.detach())
        return hook

    def _student_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.plan is not None and self.plan.get(name) == "output":
                self._student[name] = _first_tensor(output)
        return hook

    def _decide(self) -> dict[str, str | None]:
        """Pick each pair's kind from the first captured batch."""
        plan: dict[str, str | None] = {}
        for name, (args, t_out) in self._teacher.items():
            module = self.student_modules[name]
            x = _first_tensor(args)
            kind = None
            if x is not None and _accepts(module, x):
                try:
                    with torch.no_grad():
                        out = _first_tensor(module(*args))
                    kind = "forced" if out is not None and out.shape == t_out.shape else None
                except (ShapeError, RuntimeError):
                    kind = None
            if kind is None and getattr(module, "out_features", getattr(module, "out_channels", None)) is not None:
                width = module.out_features if hasattr(module, "out_features") else module.out_channels
                channel = -1 if hasattr(module, "out_features") else 1
                kind = "output" if t_out.dim() > 0 and t_out.shape[channel] == width else None
            plan[name] = kind
        return plan

    def begin(self) -> None:
        """Clear captures before a step's teacher and student forwards."""
        self._teacher.clear()
        self._student.clear()

    def after_teacher(self) -> None:
        """Call after the teacher forward: fixes the plan on the first batch."""
        if self.plan is None:
            self.plan = self._decide()

    def loss(self) -> torch.Tensor | None:
        """Mean over matched pairs of variance-normalised MSE; None when nothing matched."""
        terms = []
        for name, (args, t_out) in self._teacher.items():
            kind = self.plan.get(name) if self.plan else None
            if kind == "forced":
                s_out = _first_tensor(self.student_modules[name](*args))
            elif kind == "output":
                s_out = self._student.get(name)
            else:
                continue
            if s_out is None or s_out.shape != t_out.shape:
                continue
            mse = F.mse_loss(s_out.float(), t_out.float())
            terms.append(mse / (global_variance(t_out) + 1e-8))
        return torch.stack(terms).mean() if terms else None

    def active(self) -> dict[str, str]:
        """Matched student module name -> 'forced' or 'output' (after the first batch)."""
        return {k: v for k, v in (self.plan or {}).items() if v is not None}

    def remove(self) -> None:
        """Detach every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def first_nonfinite_module(model: nn.Module, inputs: Any) -> str | None:
    """Name of the first module (in execution order) whose output holds NaN/Inf on these inputs, else None."""
    found: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not found and any(t.is_floating_point() and not torch.isfinite(t).all() for t in _tensors(output)):
            found.append(names[module] or "<root>")

    handles = [m.register_forward_hook(hook) for m in names]  # post-hooks fire innermost first
    try:
        with torch.no_grad():
            batches.call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
