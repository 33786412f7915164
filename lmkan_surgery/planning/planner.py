"""plan(model, calibration, budget): per hidden space keep / narrow as plain layers / narrow with an lmKAN consumer /
replace producer and ops by an lmKAN block, chosen by measured damage against formula cost, built, fitted locally,
checked against the budget and against the planner's own pruning-only plan (whole-model held-out error), and
reported."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from lmkan_surgery.batches import InputFn, model_inputs
from lmkan_surgery.config import LMKANConfig
from lmkan_surgery.errors import ConfigError
from lmkan_surgery.modelcopy import check_model
from lmkan_surgery.nn import LMKANLayer
from lmkan_surgery.passes.escapes import escaped, graph_reads, tied_parameters
from lmkan_surgery.passes.fit import shrink_refit
from lmkan_surgery.passes.probe import eval_mode, run_probe
from lmkan_surgery.passes.replace import set_module
from lmkan_surgery.passes.select import select_layers
from lmkan_surgery.passes.shrink import (_capture, _choose_units, _target, find_hidden_spaces, model_error,
                                         narrow_modules, reconstruct, teacher_outputs)
from lmkan_surgery.passes.trace import trace_model
from lmkan_surgery.rules import is_convertible
from lmkan_surgery.serialization import SPEC_ATTR, build_spec

from .block import block_not_tried, fit_blocks, install_block, original_block
from .budget import Budget
from .choose import choose
from .cost_model import CostModel, drop_dominated, local_cost, table_latency
from .costs import model_bytes, model_macs
from .latency_cache import LatencyTable
from .options import (BLOCK_KINDS, Option, SpaceOptions, block_rows, describe_space, measure_damage,
                      options_for, upstream_counts)

PLAN_RIDGE = 1e-4  # relative ridge of the plain refit (the lmKAN table fit of passes/fit.py starts from that refit)
FRACTIONS = (0.5, 0.25, 0.125, 0.0625, 0.03125)
GRIDS = (4, 8)
PLAN_MARGIN = 0.9  # a plan with lmKAN layers must cut the pruning-only plan's whole-model held-out error by 10%


@dataclass
class Decision:
    """What the planner did with one hidden space, and why."""

    consumer: str
    producer: str
    choice: str
    damage: float
    reason: str


@dataclass
class PlanResult:
    """The planned model, every decision, the budget and the measured costs before and after."""

    model: nn.Module
    budget: Budget
    decisions: list[Decision] = field(default_factory=list)
    original: dict[str, float] = field(default_factory=dict)
    planned: dict[str, float] = field(default_factory=dict)
    heldout: dict[str, float] = field(default_factory=dict)
    lmkan: bool = True
    rival: dict[str, float] = field(default_factory=dict)  # held-out error of the other plan (lmKAN vs pruning-only)
    kept_plain: str = ""  # why the lmKAN plan was dropped for the pruning-only one ("" when it was not)

    def lmkan_layers(self) -> list[str]:
        """The planned model's lmKAN layers (consumers and block producers)."""
        return [name for name, m in self.model.named_modules() if isinstance(m, LMKANLayer)]

    def __str__(self) -> str:
        ratio = {k: self.planned[k] / max(1e-30, self.original[k]) for k in self.original}
        kinds = "keep / narrow / lmKAN" if self.lmkan else "keep / narrow only"
        head = (f"plan ({kinds}) for {self.budget.describe()}: "
                f"MACs {ratio['macs']:.3f}x, bytes {ratio['bytes']:.3f}x of the original; held-out output error "
                f"{self.heldout.get('rel_error', float('nan')):.3g}")
        if self.rival:
            which = "lmKAN" if self.kept_plain else "pruning-only"
            head += f" ({which} plan: {self.rival.get('rel_error', float('nan')):.3g})"
        return "\n".join([head] + [f"  {d.consumer:<24} {d.choice:<20} {d.reason}" for d in self.decisions])


def _reason(opts: SpaceOptions, chosen: Option, options: list[Option]) -> str:
    """Why this option: against the least damaging option of the other family (plain / lmKAN) at no more MACs,
    and why lmKAN options were not tried where they were not."""
    size = opts.space.size
    cost = local_cost(opts, chosen)[0]
    is_lmkan = chosen.kind != "plain"

    def best(lmkan: bool) -> Option | None:
        rivals = [o for o in options if (o.kind != "plain") == lmkan and not (o.kind == "plain" and o.kept == size)
                  and local_cost(opts, o)[0] <= cost]
        return min(rivals, key=lambda o: opts.damage[o], default=None)

    own = opts.damage[chosen]
    lm, pl = best(True), best(False)
    if chosen.kind == "plain" and chosen.kept == size:
        text = "kept: the budget is met without changing it"
    elif is_lmkan:
        vs = f"prune damage {opts.damage[pl]:.3g}" if pl else "no plain narrowing is as cheap"
        text = f"lmKAN pays here (damage {own:.3g} vs {vs} at no more MACs)"
    elif lm is not None:
        text = (f"kept plain: lmKAN does not pay here (best lmKAN option at no more MACs, {lm.label(size)}: damage "
                f"{opts.damage[lm]:.3g} vs prune {own:.3g})")
    else:
        text = f"narrowed as plain layers (damage {own:.3g}); no lmKAN option is as cheap"
    why_not = [f"lmKAN consumer not tried: {opts.lmkan_allowed}" if opts.lmkan_allowed else "",
               f"lmKAN block not tried: {opts.block_why}" if opts.block_why else ""]
    return "; ".join([text, *[w for w in why_not if w]])


def _jobs(spaces: list[SpaceOptions], state: list[Option], order: list[str]) -> list[tuple[SpaceOptions, Option]]:
    """The changed spaces in the order their fits run: a block at its producer, anything else at its consumer
    (a consumer that a later block replaces is not refitted)."""
    blocked = {s.space.producer for s, o in zip(spaces, state) if o.kind in BLOCK_KINDS}
    jobs = [(s, o) for s, o in zip(spaces, state) if o.kind in BLOCK_KINDS
            or (o.kept < s.space.size and s.space.consumer not in blocked)]
    return sorted(jobs, key=lambda j: order.index(j[0].space.producer if j[1].kind in BLOCK_KINDS
                                                  else j[0].space.consumer))


def _build(model: nn.Module, spaces: list[SpaceOptions], state: list[Option], order: list[str], train: list[Any],
           held: list[Any], ridge: float, input_norm: str, mix: float) -> tuple[nn.Module, list[str]]:
    """The planned model: chosen units kept, then in execution order consumers refitted (lmKAN consumers fitted)
    and lmKAN blocks fitted on the student's own inputs to the original's consumer outputs."""
    student = copy.deepcopy(model)
    narrowed = [(copy.copy(s.space), o) for s, o in zip(spaces, state)
                if o.kind not in BLOCK_KINDS and o.kept < s.space.size]
    jobs = _jobs(spaces, state, order)
    if not jobs:
        return student, []
    with eval_mode(student), torch.no_grad():
        for space, option in narrowed:
            _choose_units(student, [space], option.kept / space.size, train)
        changed = narrow_modules(student, [s for s, _ in narrowed]) if narrowed else []
        out_of = {s.producer: s.kept for s, _ in narrowed}
        targets = teacher_outputs(model, list({s.space.consumer for s, _ in jobs}), train + held)
        for index, (opts, option) in enumerate(jobs):
            name = opts.space.consumer
            if option.kind in BLOCK_KINDS:
                if index == 0 and name not in out_of and opts.space.producer not in {s.consumer for s, _ in narrowed}:
                    fit = copy.deepcopy(opts.fits[option])  # its rows are the original's: the measured fit holds
                else:
                    xs, ys = block_rows(student, opts.space, train + held, targets[name], out_of.get(name))
                    width = ys[0].shape[1] if option.kind == "fold" else option.kept
                    narrowed_input = opts.space.producer in {s.consumer for s, _ in narrowed}
                    block = None if narrowed_input else original_block(student, opts.space, out_of.get(name))
                    fit = fit_blocks(xs[:len(train)], ys[:len(train)], xs[len(train):], ys[len(train):], [width],
                                     option.num_grids, mix, block)[width]
                changed += install_block(student, opts.space, fit)
                continue
            pairs = list(zip(train + held, targets[name]))
            reconstruct(student, name, out_of.get(name), pairs[:len(train)], pairs[len(train):], ridge)
            if option.kind == "lmkan":
                rows = [(_capture(student, name, b), _target(student.get_submodule(name), y, out_of.get(name)))
                        for b, y in pairs]
                _, _, layer = shrink_refit(student, name, rows[:len(train)], rows[len(train):],
                                           option.num_grids, input_norm, mix)
                set_module(student, name, layer)
    return student, list(dict.fromkeys(changed))


def _costs(model: nn.Module, example: Any) -> dict[str, float]:
    """Formula MACs and bytes of a model."""
    return {"macs": float(model_macs(model, example)), "bytes": float(model_bytes(model))}


@dataclass
class _Built:
    """One built plan: its options, model, changed modules, planned costs and whole-model held-out error."""

    state: list[Option]
    model: nn.Module
    changed: list[str]
    planned: dict[str, float]
    heldout: dict[str, float]


def _fit_plan(student: nn.Module, described: list[SpaceOptions], options: list[list[Option]], cost_model: CostModel,
              budget: Budget, example: Any, order: list[str], train: list[Any], held: list[Any],
              config: LMKANConfig) -> _Built:
    """Choose one option per space within the budget and build it. The formula model is exact for MACs; a measured
    overshoot tightens the limits and re-plans. Raises ConfigError when even the cheapest options miss the budget."""
    original = cost_model.original
    limits = budget.limits(original)
    for _ in range(6):
        state = choose(cost_model, options, limits)
        if state is None:
            floor = cost_model.total([min((o for o in opts if o.kind == "plain"), key=lambda o: o.kept)
                                      for opts in options])
            reached = ", ".join(f"{floor[k] / original[k]:.3f}x {k}" for k in original if original[k] > 0)
            raise ConfigError(f"budget {budget.describe()} cannot be met: narrowing every shrinkable hidden width "
                              f"({len(described)} found) reaches {reached}; raise the budget or make more "
                              f"widths shrinkable (Linear->act->Linear, Conv->BN->act->Conv chains)")
        built, changed = _build(student, described, state, order, train, held, PLAN_RIDGE, config.input_norm,
                                config.quantile_mix)
        planned = {**_costs(built, example), "latency": cost_model.total(state)["latency"]}
        over = {k: planned[k] / v for k, v in budget.limits(original).items() if planned[k] > v}
        if not over:
            with eval_mode(built), eval_mode(student), torch.no_grad():
                return _Built(state, built, changed, planned, model_error(built, student, held))
        limits = {k: v / over.get(k, 1.0) * 0.999 for k, v in limits.items()}
    raise ConfigError(f"plan: the built model exceeds the budget {budget.describe()} ({planned}); report this")


def lmkan_plan_pays(lmkan_error: float | None, pruning_error: float | None) -> bool:
    """Whether a plan with lmKAN layers is clearly better than the pruning-only plan of the same budget on the
    whole model's held-out error (PLAN_MARGIN; when either error cannot be measured, the per-space choice stands)."""
    if lmkan_error is None or pruning_error is None:
        return True
    return lmkan_error <= PLAN_MARGIN * pruning_error


def plan(model: nn.Module, calibration: Iterable[Any], budget: Budget | None = None, example_inputs: Any = None,
         input_fn: InputFn | None = None, lmkan: bool = True, config: LMKANConfig | None = None,
         fractions: tuple[float, ...] = FRACTIONS, grids: tuple[int, ...] = GRIDS) -> PlanResult:
    """A compressed copy of `model` meeting `budget` (default 0.5x MACs) and the reason for every decision.

    calibration: batches (at least 2; config.holdout_fraction of them held out to measure damage). lmkan=False
    restricts the planner to keep / plain narrowing (the prune-only baseline). config supplies the selection
    patterns, ridge, input placement and skip defaults of lmkanify. A plan holding lmKAN layers is delivered only
    when its whole-model held-out error is PLAN_MARGIN x its own pruning-only plan's or less (else that pruning plan
    is, and result.kept_plain says why). Raises ConfigError when the budget cannot be met by narrowing the
    shrinkable hidden widths.
    """
    check_model(model)
    budget = Budget() if budget is None else budget
    config = config if config is not None else LMKANConfig(mode="shrink", input_norm="quantile")
    batches = [model_inputs(model, b, input_fn, "calibration batch") for b in calibration]
    n_held = max(1, int(len(batches) * config.holdout_fraction))
    if len(batches) < 2:
        raise ConfigError(f"plan needs at least 2 calibration batches (one held out to measure damage), got "
                          f"{len(batches)}")
    example = batches[0] if example_inputs is None else model_inputs(model, example_inputs, what="example_inputs")
    train, held = batches[:-n_held], batches[-n_held:]
    student = copy.deepcopy(model).eval()
    trace = trace_model(student)
    watched = [n for n, m in student.named_modules() if is_convertible(m)]
    probe = run_probe(student, example, watched)
    blocked = escaped(tied_parameters(student, watched), graph_reads(trace, watched))
    candidates, _ = select_layers(student, config, probe.order, probe.raw_fed, blocked, probe.feeds_output)
    spaces = find_hidden_spaces(student, trace, {c.name for c in candidates if c.shrinkable}, probe)
    # lmKAN consumers are fitted, not exact conversions: the stem/head defaults do not apply, user exclusions do
    lmkan_layers = {c.name for c in candidates if c.shrinkable} if lmkan else set()
    timer = LatencyTable() if budget.latency is not None else None
    described = [describe_space(student, s, probe, lmkan_layers, timer, budget.latency_batch) for s in spaces]
    for opts in described:
        opts.upstream = next((u.space for u in described if u.space.consumer == opts.space.producer), None)
        if not lmkan:
            opts.lmkan_allowed = opts.block_why = "prune-only plan"
        else:
            span = opts.upstream.span if opts.upstream else 1
            narrowest = min(upstream_counts(opts, fractions), default=0) * span
            opts.block_why = block_not_tried(student, trace, opts.space, lmkan_layers, grids, narrowest or None)
        opts.consumer_placement = config.input_norm
    options = [options_for(o, fractions, grids) for o in described]
    for opts, opts_list in zip(described, options):
        measure_damage(student, opts, opts_list, train, held, PLAN_RIDGE, config.input_norm, config.quantile_mix)
    everything = options
    options = [drop_dominated(o, opts_list) for o, opts_list in zip(described, options)]
    original = {**_costs(student, example), "latency": table_latency(described)}
    cost_model = CostModel(described, original)

    def fit(opts: list[list[Option]]) -> _Built:
        return _fit_plan(student, described, opts, cost_model, budget, example, probe.order, train, held, config)

    chosen, pruning, kept_plain = fit(options), None, ""
    if any(o.kind != "plain" for o in chosen.state):  # the whole-model check: lmKAN must beat its own pruning plan
        pruning = fit([[o for o in opts if o.kind == "plain"] for opts in options])
        ours, theirs = chosen.heldout.get("rel_error"), pruning.heldout.get("rel_error")
        if not lmkan_plan_pays(ours, theirs):
            kept_plain = (f"kept plain: the lmKAN plan's whole-model held-out error {ours:.4g} is not "
                          f"{1 - PLAN_MARGIN:.0%} below the pruning plan's {theirs:.4g}")
            chosen, pruning = pruning, chosen
    if timer is not None:
        timer.save()
    setattr(chosen.model, SPEC_ATTR, build_spec(config.to_dict(), [], chosen.model, chosen.changed))
    decisions = [Decision(s.space.consumer, s.space.producer, o.label(s.space.size), s.damage[o],
                          "; ".join(filter(None, [_reason(s, o, opts), kept_plain if rival.kind != "plain" else ""])))
                 for s, o, opts, rival in zip(described, chosen.state, everything,
                                              (pruning or chosen).state)]
    return PlanResult(chosen.model, budget, decisions, original, chosen.planned, chosen.heldout, lmkan,
                      pruning.heldout if pruning else {}, kept_plain)
