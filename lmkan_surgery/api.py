"""lmkanify: convert the Linear/Conv2d layers of any model into lmKAN layers, exactly or narrower, with a report."""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn

from lmkan_surgery.passes.calibrate import input_moments
from lmkan_surgery.passes.probe import Probe, call, eval_mode, run_probe
from lmkan_surgery.passes.replace import replace_layers
from lmkan_surgery.passes.flops import features, formula_flops
from lmkan_surgery.passes.select import CONVERTIBLE, Candidate, select_layers
from lmkan_surgery.passes.shrink import ShrinkResult, shrink_model
from lmkan_surgery.passes.trace import TraceResult, apply_functional, find_functional, trace_model

from .config import LMKANConfig
from .conversion_report import ConversionReport, LayerRecord
from .errors import ConfigError, ModelError
from .serialization import SPEC_ATTR, build_spec

IN_PROJ_PARAMS = ("in_proj", "q_proj", "k_proj", "v_proj")


def lmkanify(model: nn.Module, config: LMKANConfig | None = None, example_inputs: Any = None,
             calibration: Iterable[Any] | None = None, inplace: bool = False) -> tuple[nn.Module, ConversionReport]:
    """Return (student, report): `model` with its selected Linear/Conv2d layers replaced by lmKAN layers.

    example_inputs (a tensor, a tuple of arguments or a dict of keyword arguments) drives shape recording, the
    stem/head defaults, FLOP counts and output validation; calibration (an iterable of such batches) gives the
    per-feature input statistics (example_inputs stand in when it is None, and its first batch stands in for
    missing example_inputs) and, in shrink mode, the data for the local reconstruction. The model is deep-copied
    unless inplace=True (then it is converted in place; a root whose functional calls were rewritten comes back
    as a new fx.GraphModule).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"lmkanify expects a torch.nn.Module, got {type(model).__name__}")
    config = LMKANConfig() if config is None else config
    if not isinstance(config, LMKANConfig):
        raise ConfigError(f"config must be an LMKANConfig, got {type(config).__name__}")
    config.check()
    batches = list(calibration) if calibration is not None else []
    if config.mode == "shrink" and not batches:
        raise ConfigError("mode='shrink' needs calibration batches (for channel scores and local reconstruction)")
    example_inputs = batches[0] if example_inputs is None and batches else example_inputs
    student = model if inplace else copy.deepcopy(model)
    report = ConversionReport(mode=config.mode)
    student, trace, rewrites = _trace_and_rewrite(student, report)
    watched = [n for n, m in student.named_modules() if isinstance(m, CONVERTIBLE)]
    probe = run_probe(student, example_inputs, watched) if example_inputs is not None else Probe()
    if example_inputs is None:
        report.warnings.append("no example_inputs: no shapes, FLOPs or validation; stem and head are found by "
                               "registration order")
    candidates, warnings = select_layers(student, config, probe.order)
    report.warnings += warnings
    before = {c.name: _layer_numbers(c.module, c.name, probe, False) for c in candidates}
    shrunk = ShrinkResult()
    if config.mode == "shrink":
        shrunk = shrink_model(student, trace, candidates, probe, config, batches)
        report.groups, report.width_factor = shrunk.groups, shrunk.factor
        report.warnings += shrunk.warnings
    chosen = {c.name: c.num_grids for c in candidates if c.convert}
    stat_batches = batches or ([example_inputs] if example_inputs is not None else [])
    moments = input_moments(student, list(chosen), stat_batches) if config.input_norm == "affine" else {}
    replace_layers(student, chosen, moments, config.table_dtype)
    report.rows = _rows(student, candidates, trace, probe, before, shrunk, rewrites)
    report.rows += _mha_rows(student, trace)
    if config.validate and example_inputs is not None and probe.output is not None:
        with eval_mode(student), torch.no_grad():
            report.validation = output_error(probe.output, call(student, example_inputs))
    report.validation.update({f"heldout_{k}": v for k, v in shrunk.heldout.items()})
    changed = list(chosen) + [n for n in shrunk.changed if n not in chosen]
    setattr(student, SPEC_ATTR, build_spec(config.to_dict(), rewrites, student, changed))
    return student, report


def _trace_and_rewrite(student: nn.Module, report: ConversionReport) -> tuple[nn.Module, TraceResult, list]:
    """Trace (with fallback) and turn functional F.linear/F.conv2d calls on parameters into modules."""
    trace = trace_model(student)
    report.warnings += trace.warnings
    rewrites = []
    for part in trace.parts:
        found, warnings = find_functional(student.get_submodule(part.prefix), part.graph, part.prefix)
        rewrites += found
        report.warnings += warnings
    if rewrites:
        student = apply_functional(student, rewrites)
        trace = trace_model(student)
    return student, trace, rewrites


def _layer_numbers(module: nn.Module, name: str, probe: Probe, lmkan: bool) -> tuple[int, int | None, tuple[int, int]]:
    """(parameters, formula FLOPs per sample, (in, out) features) of a Linear/Conv2d or its lmKAN replacement."""
    params = sum(p.numel() for p in module.parameters())
    return params, formula_flops(module, name, probe, lmkan), features(module)


def _rows(student: nn.Module, candidates: list[Candidate], trace: TraceResult, probe: Probe,
          before: dict, shrunk: ShrinkResult, rewrites: list) -> list[LayerRecord]:
    """One LayerRecord per candidate."""
    functional = {(f"{r.container}.{r.module}" if r.container else r.module): r for r in rewrites}
    rows = []
    for cand in candidates:
        module = student.get_submodule(cand.name)
        p0, f0, feat0 = before[cand.name]
        p1, f1, feat1 = _layer_numbers(module, cand.name, probe, cand.convert)
        narrowed = cand.name in shrunk.changed
        status = ("shrunk" if narrowed else "converted") if cand.convert else "skipped"
        reason = cand.reason + (f"; narrowed by shrink group {shrunk.group_of[cand.name]}" if narrowed else "")
        rw = functional.get(cand.name)
        kind = f"F.{rw.kind}" if rw is not None else type(cand.module).__name__
        if rw is not None:
            reason += f" (was a functional {rw.kind} call on parameter '{rw.weight}')"
        rows.append(LayerRecord(
            name=cand.name, kind=kind, status=status, reason=reason, path=trace.path_of(cand.name),
            in_shape=probe.in_shapes.get(cand.name), out_shape=probe.out_shapes.get(cand.name),
            features_before=feat0, features_after=feat1, params_before=p0, params_after=p1,
            flops_before=f0, flops_after=f1, num_grids=cand.num_grids if cand.convert else None,
            group=shrunk.group_of.get(cand.name)))
    return rows


def _mha_rows(student: nn.Module, trace: TraceResult) -> list[LayerRecord]:
    """A skipped row for the packed in-projection of every nn.MultiheadAttention."""
    rows = []
    for name, module in student.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            params = sum(p.numel() for n, p in module.named_parameters() if n.startswith(IN_PROJ_PARAMS))
            rows.append(LayerRecord(
                name=f"{name}.in_proj", kind="MultiheadAttention.in_proj", status="skipped",
                path=trace.path_of(name), params_before=params, params_after=params,
                reason="nn.MultiheadAttention's packed in_proj_weight is a raw parameter used inside its functional "
                       "forward; not convertible (replace the attention by explicit nn.Linear projections)"))
    return rows


def _flat_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) model output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for v in output.values() for t in _flat_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _flat_tensors(v)]
    return []


def output_error(reference: Any, result: Any) -> dict[str, float]:
    """max |difference| and that divided by max |reference| over all output tensors."""
    ref, res = _flat_tensors(reference), _flat_tensors(result)
    if not ref or len(ref) != len(res):
        return {}
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(ref, res))
    scale = max(float(a.double().abs().max()) for a in ref)
    return {"max_abs_error": diff, "rel_error": diff / scale if scale else diff}
