"""Output validation of a conversion: the model-level error against the original outputs and, to name the
culprits, each converted layer's error against its source layer on the same inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .passes.probe import call, eval_mode, flat_tensors


def output_error(reference: Any, result: Any) -> dict[str, float]:
    """max |difference| over the finite reference entries, that divided by max |reference|, and the number of
    non-finite results where the reference is finite."""
    ref = [t for t in flat_tensors(reference) if t.is_floating_point()]
    res = [t for t in flat_tensors(result) if t.is_floating_point()]
    if not ref or len(ref) != len(res):
        return {}
    diff, scale, nonfinite = 0.0, 0.0, 0
    for a, b in zip(ref, res):
        a, b = a.detach().double(), b.detach().double()
        finite = torch.isfinite(a)
        nonfinite += int((finite & ~torch.isfinite(b)).sum())
        both = finite & torch.isfinite(b)
        if both.any():
            diff = max(diff, float((a[both] - b[both]).abs().max()))
            scale = max(scale, float(a[finite].abs().max()))
    out = {"max_abs_error": diff, "rel_error": diff / scale if scale else diff}
    if nonfinite:
        out["nonfinite"] = nonfinite
    return out


def layer_errors(student: nn.Module, sources: dict[str, nn.Module], inputs: Any) -> list[tuple[str, float]]:
    """(layer, relative error of its output against its source layer on the same input), worst first."""
    errors: dict[str, float] = {}

    def hook(name: str):
        def record(module, args, output):
            ref = sources[name](args[0])
            err = output_error(ref, output)
            value = float("inf") if err.get("nonfinite") else err.get("rel_error", 0.0)
            errors[name] = max(errors.get(name, 0.0), value)
        return record

    handles = [student.get_submodule(n).register_forward_hook(hook(n)) for n in sources
               if student.get_submodule(n) is not sources[n]]
    try:
        with eval_mode(student), torch.no_grad():
            call(student, inputs)
    except Exception:  # the model-level failure is reported by the caller; partial layer errors still help
        pass
    finally:
        for handle in handles:
            handle.remove()
    return sorted(errors.items(), key=lambda item: -item[1])
