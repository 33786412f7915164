"""lmkanify: convert the linear-like layers of any model (every type with a layer rule) into lmKAN layers, exactly
or narrower, with a report."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from lmkan_surgery.passes.calibrate import input_moments, input_samples
from lmkan_surgery.passes.escapes import escaped, graph_reads, tied_parameters, watch_parameter_reads
from lmkan_surgery.passes.probe import Probe, call, eval_mode, run_probe
from lmkan_surgery.passes.replace import replace_layers, set_module
from lmkan_surgery.passes.flops import features, formula_flops
from lmkan_surgery.passes.select import Candidate, select_layers
from lmkan_surgery.rules import is_convertible
from lmkan_surgery.passes.shrink import ShrinkResult, shrink_model
from lmkan_surgery.passes.trace import TraceResult, apply_functional, find_functional, trace_model

from .batches import InputFn, model_inputs
from .config import LMKANConfig
from .conversion_report import ConversionReport, LayerRecord
from .errors import ConfigError, ShapeError, ValidationError
from .modelcopy import check_model, copy_for_surgery
from .nn.table_storage import exactness_floor
from .validation import layer_errors, output_error
from .serialization import SPEC_ATTR, build_spec

IN_PROJ_PARAMS = ("in_proj", "q_proj", "k_proj", "v_proj")


def lmkanify(model: nn.Module, config: LMKANConfig | None = None, example_inputs: Any = None,
             calibration: Iterable[Any] | None = None, inplace: bool = False,
             input_fn: InputFn | None = None) -> tuple[nn.Module, ConversionReport]:
    """Return (student, report): `model` with its selected convertible layers replaced by lmKAN layers.

    example_inputs (a tensor, a tuple of arguments or a dict of keyword arguments) drives shape recording, the
    stem/head defaults, FLOP counts and output validation; calibration (an iterable of such batches) gives the
    per-feature input statistics (example_inputs stand in when it is None, and its first batch stands in for
    missing example_inputs) and, in shrink mode, the data for the local reconstruction. The model is deep-copied
    unless inplace=True (then it is converted in place; a root whose functional calls were rewritten comes back
    as a new fx.GraphModule). input_fn maps each calibration item to model inputs (lambda batch: batch[0] for a
    DataLoader of (x, y) pairs); without it, pairs fed to a one-argument model raise BatchError.
    """
    check_model(model)
    config = LMKANConfig() if config is None else config
    if not isinstance(config, LMKANConfig):
        raise ConfigError(f"config must be an LMKANConfig, got {type(config).__name__}")
    config.check()
    items = calibration if calibration is not None else []
    batches = [model_inputs(model, b, input_fn, "calibration batch") for b in items]
    if example_inputs is not None:
        example_inputs = model_inputs(model, example_inputs, what="example_inputs")
    if config.mode == "budget":
        return _planned(model, config, example_inputs, batches)
    if config.mode == "shrink" and not batches:
        raise ConfigError("mode='shrink' needs calibration batches (for channel scores and local reconstruction)")
    example_inputs = batches[0] if example_inputs is None and batches else example_inputs
    student, copy_warnings = copy_for_surgery(model, inplace)
    report = ConversionReport(mode=config.mode)
    report.warnings += copy_warnings
    student, trace, rewrites = _trace_and_rewrite(student, report)
    watched = [n for n, m in student.named_modules() if is_convertible(m)]
    blocked = escaped(tied_parameters(student, watched), graph_reads(trace, watched))
    probe = Probe()
    if example_inputs is not None:
        try:
            with watch_parameter_reads(student, watched) as reads:
                probe = run_probe(student, example_inputs, watched)
            blocked = escaped(blocked, reads)
        except ShapeError:  # the model itself fails (raised again below), or it rejects the watched layers
            probe = run_probe(student, example_inputs, watched)
            report.warnings.append("the parameter-read watch broke the probing forward; reads of layer weights "
                                   "by untraceable code are not detected (a student that fails is reverted)")
    else:
        report.warnings.append("no example_inputs: no shapes, FLOPs or validation; stem and head are found by "
                               "registration order")
    candidates, warnings = select_layers(student, config, probe.order, probe.raw_fed, blocked, probe.feeds_output)
    report.warnings += warnings
    before = {c.name: _layer_numbers(c.module, c.name, probe, False) for c in candidates}
    shrunk = ShrinkResult()
    if config.mode == "shrink":
        shrunk = shrink_model(student, trace, candidates, probe, config, batches)
        report.groups, report.width_factor = shrunk.groups, shrunk.factor
        report.warnings += shrunk.warnings
        report.problems += [shrunk.unmet] if shrunk.unmet else []
    chosen = {c.name: c.num_grids for c in candidates if c.convert}
    stat_batches = batches or ([example_inputs] if example_inputs is not None else [])
    moments = input_moments(student, list(chosen), stat_batches) if config.input_norm != "none" else {}
    linears = [n for n in chosen if type(student.get_submodule(n)) is nn.Linear]
    samples = input_samples(student, linears, stat_batches) if config.input_norm == "quantile" else {}
    sources = {name: student.get_submodule(name) for name in chosen}
    replace_layers(student, chosen, moments, samples, config.quantile_mix, config.table_dtype)
    reverted = set(chosen) if _validate(student, config, example_inputs, probe, sources, report) else set()
    for cand in candidates:
        if cand.name in reverted:
            cand.convert, cand.reason = False, f"reverted: {report.problems[-1]}"
    chosen = {name: g for name, g in chosen.items() if name not in reverted}
    report.rows = _rows(student, candidates, trace, probe, before, shrunk, rewrites)
    report.rows += _mha_rows(student, trace)
    report.validation.update({f"heldout_{k}": v for k, v in shrunk.heldout.items()})
    changed = list(chosen) + [n for n in shrunk.changed if n not in chosen]
    setattr(student, SPEC_ATTR, build_spec(config.to_dict(), rewrites, student, changed))
    return student, report


def _planned(model: nn.Module, config: LMKANConfig, example_inputs: Any,
             batches: list[Any]) -> tuple[nn.Module, ConversionReport]:
    """mode='budget': the planner's model and a report row per planned hidden space (lmkan_surgery.planning)."""
    from .planning import Budget, plan

    result = plan(model, batches, Budget(config.budget_macs, config.budget_bytes, config.budget_latency), example_inputs, config=config)
    report = ConversionReport(mode="budget", validated="validated", validation=dict(result.heldout))
    for d in result.decisions:
        layer = result.model.get_submodule(d.consumer)
        status = "converted" if d.choice.startswith("lmKAN") else ("skipped" if d.choice.startswith("keep")
                                                                   else "shrunk-plain")
        report.rows.append(LayerRecord(name=d.consumer, kind=type(model.get_submodule(d.consumer)).__name__,
                                       status=status, reason=f"{d.choice}: {d.reason}", path="",
                                       params_after=sum(p.numel() for p in layer.parameters())))
    report.warnings.append(str(result).splitlines()[0])
    return result.model, report


def _validate(student: nn.Module, config: LMKANConfig, example_inputs: Any, probe: Probe,
              sources: dict[str, nn.Module], report: ConversionReport) -> bool:
    """Compare the student with the original on example_inputs and set report.validated; True when the student did
    not run and its layers were reverted (a loud problem); a non-finite or, in exact mode, out-of-tolerance one raises
    ValidationError naming the worst layers, unless config.allow_failed_validation (then a loud problem)."""
    if not config.validate or example_inputs is None or probe.output is None:
        why = "config.validate=False" if not config.validate else "no example_inputs"
        report.validated = f"not validated ({why})"
        return False
    try:
        with eval_mode(student), torch.no_grad():
            report.validation = output_error(probe.output, call(student, example_inputs))
    except Exception as err:  # any failure of user code on the converted layers: undo the conversion
        for name, source in sources.items():
            set_module(student, name, source)
        report.validated = "not validated (conversion reverted)"
        report.problems.append(f"the converted model failed on example_inputs ({type(err).__name__}: "
                               f"{str(err)[:200]}); every conversion was reverted")
        return True
    nonfinite = report.validation.get("nonfinite", 0)
    error = report.validation.get("rel_error", 0.0)
    tolerance = max(config.validation_tolerance, exactness_floor(config.table_dtype))
    inexact = config.mode == "exact" and error > tolerance
    if not nonfinite and not inexact:
        report.validated = "exact" if config.mode == "exact" else "validated"
        return False
    worst = layer_errors(student, sources, example_inputs)[:5]
    detail = ", ".join(f"{name} {err:.3g}" for name, err in worst) or "no single layer stands out"
    message = (f"validation failed: {nonfinite} non-finite outputs where the original is finite, relative error "
               f"{error:.3g} (tolerance {tolerance:g}); worst layers (relative error of their own "
               f"output): {detail}")
    report.validated = "FAILED"
    if not config.allow_failed_validation:
        raise ValidationError(message + "; set LMKANConfig(allow_failed_validation=True) to get the student anyway")
    report.problems.append(message)
    return False


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
