"""The planner's candidates: for every shrinkable hidden space (producer -> per-unit ops -> consumer), keep it, narrow
it as plain layers at a few kept fractions, narrow it and make the consumer an lmKAN Linear, or replace producer and
ops by an lmKAN block (plan/block.py) of a few widths, folding the consumer in when the width reaches its outputs.
Each option is fitted locally on calibration data (ridge refit for plain layers, closed-form fit_tables for lmKAN) with
only that space changed; its damage is the held-out relative error of the whole model's output (so the damages of an
early conv and of a classifier head compare on one scale), or of the consumer's output where the model's output is
not one tensor."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmkan_surgery.passes.fit import shrink_refit
from lmkan_surgery.passes.flops import formula_flops
from lmkan_surgery.passes.probe import Probe, eval_mode
from lmkan_surgery.passes.replace import set_module
from lmkan_surgery.passes.shrink import (MIN_KEPT, HiddenSpace, _capture, _choose_units, _kept_count, _target,
                                         model_error, narrow_modules, reconstruct, teacher_outputs)
from lmkan_surgery.rules import rule_for

from .block import MAX_BLOCK_UNKNOWNS, BlockFit, fit_blocks, install_block, original_block
from .latency_cache import LatencyTable

DAMAGE_TOLERANCE = 3e-3  # damages closer than this (0.3% output error) are a tie, and a tie goes to the plain layer
LMKAN_MARGIN = 0.9  # an lmKAN option must cut the damage of every plain option of no more cost by 10%
MAX_TABLE_UNKNOWNS = 6_000  # larger lmKAN fits (pairs x (G+1)^2) are not tried: too slow for calibration-time search
SMALL_WIDTH = 16  # spaces this narrow are tried at every unit count (plan/options.py kept_counts)
BLOCK_KINDS = ("block", "fold")  # lmKAN block producer -> h with a Linear consumer h -> out, or folded (no consumer)


@dataclass(frozen=True)
class Option:
    """One choice for a hidden space: kept fraction, kind and grid size. Kinds: 'plain' (narrowed to `kept` units),
    'lmkan' (narrowed, the consumer an lmKAN Linear), 'block' (producer and ops an lmKAN to `kept` outputs, the
    consumer a Linear from them) and 'fold' (producer, ops and consumer one lmKAN to the consumer's outputs)."""

    fraction: float
    kind: str = "plain"
    num_grids: int = 0
    kept: int = 0
    upstream: int = 0  # a block fitted on its producer's inputs narrowed by the upstream space to this many units


    def label(self, size: int) -> str:
        """E.g. 'plain 64/256', 'lmKAN G=8 64/256', 'lmKAN block G=8 h=16/256', 'lmKAN block G=8 folded'."""
        on = f" on {self.upstream} upstream" if self.upstream else ""
        if self.kind == "block":
            return f"lmKAN block G={self.num_grids} h={self.kept}/{size}{on}"
        if self.kind == "fold":
            return f"lmKAN block G={self.num_grids} folded{on}"
        what = "keep" if self.fraction >= 1.0 and self.kind == "plain" else (
            "plain" if self.kind == "plain" else f"lmKAN G={self.num_grids}")
        return f"{what} {self.kept}/{size}"


@dataclass
class SpaceOptions:
    """A hidden space, its layers' original costs and its options with their measured damage."""

    space: HiddenSpace
    producer_cost: tuple[float, float, float]  # (MACs per sample, weight bytes, seconds per batch) of the producer
    consumer_cost: tuple[float, float, float]
    producer_shape: tuple[int, int, int]  # (inputs per position, outputs, positions per sample)
    consumer_shape: tuple[int, int, int]
    itemsize: int
    lmkan_allowed: str  # "" when lmKAN consumer options were tried, else why not
    timer: LatencyTable | None = None
    batch: int = 1
    damage: dict[Option, float] = field(default_factory=dict)
    dropped: list[Option] = field(default_factory=list)  # lmKAN options a plain option dominates
    block_why: str = "not tried"  # "" when lmKAN block options were tried, else why not
    fits: dict[Option, BlockFit] = field(default_factory=dict)  # the block fits measured on the original's rows
    consumer_placement: str = "quantile"  # input placement of an lmKAN consumer (the planner's input_norm)
    upstream: HiddenSpace | None = None  # the space whose consumer is this space's producer, if any


def _weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _shape(module: nn.Module, macs: int) -> tuple[int, int, int]:
    """(inputs per output position, outputs, positions per sample) of a rule layer from its formula MACs."""
    rule = rule_for(module)
    per_position, out = rule.macs_per_position(module, False), rule.features(module)[1]
    return per_position // max(1, out), out, max(1, macs // max(1, per_position))


def seconds(opts: SpaceOptions, kind: str, n_in: float, n_out: float, positions: int, num_grids: int = 0,
            placement: str = "none") -> float:
    """Cached per-shape seconds of one forward of opts.batch samples (0 without a latency budget)."""
    if opts.timer is None:
        return 0.0
    return opts.timer.seconds(kind, round(n_in), round(n_out), positions * opts.batch, num_grids, placement)


def describe_space(model: nn.Module, space: HiddenSpace, probe: Probe, lmkan_layers: set[str],
                   timer: LatencyTable | None = None, batch: int = 1) -> SpaceOptions:
    """The costs of the space's producer and consumer and whether its consumer may become lmKAN."""
    producer, consumer = model.get_submodule(space.producer), model.get_submodule(space.consumer)
    p_macs = formula_flops(producer, space.producer, probe, False) or 0
    c_macs = formula_flops(consumer, space.consumer, probe, False) or 0
    why = ""
    if type(consumer) is not nn.Linear:
        why = f"its consumer is a {type(consumer).__name__} (lmKAN candidates are fitted for Linear consumers)"
    elif space.consumer not in lmkan_layers:
        why = "its consumer is excluded from conversion"
    opts = SpaceOptions(space, (p_macs, _weight_bytes(producer), 0.0), (c_macs, _weight_bytes(consumer), 0.0),
                        _shape(producer, p_macs), _shape(consumer, c_macs), consumer.weight.element_size(), why,
                        timer, batch)
    opts.producer_cost = (*opts.producer_cost[:2], seconds(opts, "plain", *opts.producer_shape))
    opts.consumer_cost = (*opts.consumer_cost[:2], seconds(opts, "plain", *opts.consumer_shape))
    return opts


def block_fits(n_in: int, num_grids: int) -> bool:
    """Whether a block's table fit on n_in inputs stays small enough for calibration time (MAX_BLOCK_UNKNOWNS)."""
    return (n_in + 1) // 2 * (num_grids + 1) ** 2 <= MAX_BLOCK_UNKNOWNS


def _block_options(opts: SpaceOptions, kept_counts: list[int], upstream_counts: list[int],
                   grids: tuple[int, ...]) -> list[Option]:
    """lmKAN blocks of every kept count below the consumer's outputs (and the folded block) whose formula MACs,
    2 x even(in) x h + h x out, stay below the producer's and consumer's together, at each grid size whose table
    fit stays small (MAX_BLOCK_UNKNOWNS); where the producer's full input is too wide for every grid size, on the
    inputs the upstream space narrows it to (each of upstream_counts units)."""
    full, n_out = opts.producer_shape[0], opts.consumer_shape[1]
    original = opts.producer_cost[0] + opts.consumer_cost[0]
    positions = opts.producer_shape[2]
    span = opts.upstream.span if opts.upstream else 1
    narrowed = upstream_counts if not any(block_fits(full, g) for g in grids) else []
    out = []
    for g in grids:
        inputs = [(0, full)] if block_fits(full, g) else [(k, k * span) for k in narrowed if block_fits(k * span, g)]
        for upstream, n_in in inputs:
            if positions * 2 * (n_in + n_in % 2) * n_out < original:
                out.append(Option(1.0, "fold", g, n_out, upstream))
            out += [Option(k / opts.space.size, "block", g, k, upstream) for k in kept_counts
                    if k < n_out and positions * (2 * (n_in + n_in % 2) * k + k * n_out) < original]
    return out


def kept_counts(size: int, fractions: tuple[float, ...]) -> list[int]:
    """The narrowed unit counts a space of `size` units is tried at, widest first: every count from MIN_KEPT up for
    narrow spaces (SMALL_WIDTH units or fewer: a CNN's few channels, where halvings skip most of the trade-off),
    else the given fractions of its size."""
    counts = range(MIN_KEPT, size) if size <= SMALL_WIDTH else {_kept_count(size, f) for f in fractions}
    return sorted(set(counts) - {size}, reverse=True)


def upstream_counts(opts: SpaceOptions, fractions: tuple[float, ...]) -> list[int]:
    """The unit counts the upstream space's plain options narrow this space's producer input to (none without
    one)."""
    return kept_counts(opts.upstream.size, fractions) if opts.upstream else []


def options_for(opts: SpaceOptions, fractions: tuple[float, ...], grids: tuple[int, ...]) -> list[Option]:
    """Keep, plain narrowing at each kept count, (where allowed) lmKAN consumers at each (G, count) whose lmKAN MACs
    do not exceed the consumer's original MACs and whose table fit stays small, and lmKAN blocks (allowed ones)."""
    size = opts.space.size
    out = [Option(1.0, "plain", 0, size)]
    counts = kept_counts(size, fractions)
    for kept in counts:
        out.append(Option(kept / size, "plain", 0, kept))
        inputs = kept * opts.space.span  # the lmKAN consumer's inputs (a unit's whole block after a flatten)
        for g in grids if not opts.lmkan_allowed else ():
            cheaper = 2 * (inputs + inputs % 2) <= size * opts.space.span
            if cheaper and ((inputs + 1) // 2) * (g + 1) ** 2 <= MAX_TABLE_UNKNOWNS:
                out.append(Option(kept / size, "lmkan", g, kept))
    if not opts.block_why:
        out += _block_options(opts, counts, upstream_counts(opts, fractions), grids)
    return list(dict.fromkeys(out))


def output_damage(trial: nn.Module, model: nn.Module, held: list[Any], local: float) -> float:
    """Held-out relative error of `trial`'s output against `model`'s (`local`, the consumer's, when the output is
    not one tensor)."""
    with eval_mode(trial):
        return model_error(trial, model, held).get("rel_error", local)


def measure_damage(model: nn.Module, opts: SpaceOptions, options: list[Option], train: list[Any], held: list[Any],
                   ridge: float, input_norm: str, mix: float) -> None:
    """Fill opts.damage: for each kept count, narrow only this space in a copy, refit the consumer (plain) and fit
    lmKAN tables beside it; lmKAN blocks fitted from the producer's inputs to the consumer's outputs; damage =
    held-out relative error of the model's output against the original's (output_damage)."""
    name = opts.space.consumer
    with eval_mode(model), torch.no_grad():
        targets = teacher_outputs(model, [name], train + held)[name]
        narrowing = [o for o in options if o.kind not in BLOCK_KINDS]
        for kept in sorted({o.kept for o in narrowing}, reverse=True):
            same = [o for o in narrowing if o.kept == kept]
            if kept == opts.space.size:
                for o in same:
                    opts.damage[o] = 0.0
                continue
            trial, space = copy.deepcopy(model), copy.copy(opts.space)
            _choose_units(trial, [space], kept / space.size, train)
            narrow_modules(trial, [space])
            pairs = list(zip(train + held, targets))
            _, err = reconstruct(trial, name, None, pairs[:len(train)], pairs[len(train):], ridge)
            lmkan = [o for o in same if o.kind == "lmkan"]
            rows = [(_capture(trial, name, b), _target(trial.get_submodule(name), y, None)) for b, y in pairs] \
                if lmkan else []
            for o in same:
                if o.kind == "plain":
                    opts.damage[o] = output_damage(trial, model, held, float(err))
                    continue
                _, lmkan_err, layer = shrink_refit(trial, name, rows[:len(train)], rows[len(train):], o.num_grids,
                                                   input_norm, mix)
                with_lmkan = copy.deepcopy(trial)
                set_module(with_lmkan, name, layer)
                opts.damage[o] = output_damage(with_lmkan, model, held, float(lmkan_err))
        blocks = [o for o in options if o.kind in BLOCK_KINDS]
        if blocks:
            measure_blocks(model, opts, blocks, train, held, targets, mix, ridge)


def block_rows(model: nn.Module, space: HiddenSpace, batches: list[Any], outputs: list[torch.Tensor],
               out_idx: torch.Tensor | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(producer inputs, consumer output rows) per batch: the block's fitting data in `model`, the consumer's
    `outputs` (the original's) restricted to out_idx."""
    consumer = model.get_submodule(space.consumer)
    xs = [_capture(model, space.producer, b) for b in batches]
    return [x.reshape(-1, x.shape[-1]) for x in xs], [_target(consumer, y, out_idx).float() for y in outputs]


def measure_blocks(model: nn.Module, opts: SpaceOptions, blocks: list[Option], train: list[Any], held: list[Any],
                   targets: list[torch.Tensor], mix: float, ridge: float) -> None:
    """Damage of every lmKAN block option: one fit per grid size and input serves all its widths (plan/block.py).
    A block on an upstream-narrowed input is fitted in a copy with that narrowing; its damage is what it adds to
    the upstream narrowing alone (the producer then refitted as a plain layer), so damages still add up."""
    n = len(train)
    for upstream in sorted({o.upstream for o in blocks}):
        base, floor = model, 0.0
        if upstream:
            base, up = copy.deepcopy(model), copy.copy(opts.upstream)
            _choose_units(base, [up], upstream / up.size, train)
            narrow_modules(base, [up])
            refit = copy.deepcopy(base)
            pairs = list(zip(train + held, teacher_outputs(model, [up.consumer], train + held)[up.consumer]))
            reconstruct(refit, up.consumer, None, pairs[:n], pairs[n:], ridge)
            floor = output_damage(refit, model, held, 0.0)
        xs, ys = block_rows(base, opts.space, train + held, targets)
        for g in sorted({o.num_grids for o in blocks if o.upstream == upstream}):
            same = [o for o in blocks if o.num_grids == g and o.upstream == upstream]
            fits = fit_blocks(xs[:n], ys[:n], xs[n:], ys[n:], [o.kept for o in same], g, mix,
                              None if upstream else original_block(model, opts.space))
            for o in same:
                opts.fits[o] = fits[o.kept]
                trial = copy.deepcopy(base)
                install_block(trial, opts.space, copy.deepcopy(fits[o.kept]))
                opts.damage[o] = max(0.0, output_damage(trial, model, held, fits[o.kept].damage) - floor)
