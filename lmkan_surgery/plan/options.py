"""The planner's candidates: for every shrinkable hidden space (producer -> per-unit ops -> consumer), keep it, narrow
it as plain layers at a few kept fractions, or narrow it and make the consumer an lmKAN Linear at a few grid sizes.
Each option's damage is the held-out relative error of the consumer's output after local fitting on calibration
data (ridge refit for plain layers, closed-form fit_tables for lmKAN), with only that space changed."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmkan_surgery.passes.fit import shrink_refit
from lmkan_surgery.passes.flops import formula_flops
from lmkan_surgery.passes.probe import Probe, eval_mode
from lmkan_surgery.passes.shrink import (HiddenSpace, _capture, _choose_units, _kept_count, _target,
                                         narrow_modules, reconstruct, teacher_outputs)
from lmkan_surgery.rules import rule_for

from .costs import lmkan_cost, plain_cost
from .latency_cache import LatencyTable

DAMAGE_TOLERANCE = 1e-4  # damages closer than this are a tie, and a tie goes to the plain layer
LMKAN_MARGIN = 0.9  # an lmKAN option must cut the damage of every plain option of no more cost by 10%
MAX_TABLE_UNKNOWNS = 6_000  # larger lmKAN fits (pairs x (G+1)^2) are not tried: too slow for calibration-time search


@dataclass(frozen=True)
class Option:
    """One choice for a hidden space: kept fraction, consumer kind ('plain' or 'lmkan') and grid size."""

    fraction: float
    kind: str = "plain"
    num_grids: int = 0
    kept: int = 0

    def label(self, size: int) -> str:
        """E.g. 'plain 64/256' or 'lmKAN G=8 64/256'."""
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
    lmkan_allowed: str  # "" when lmKAN options were tried, else why not
    timer: LatencyTable | None = None
    batch: int = 1
    damage: dict[Option, float] = field(default_factory=dict)
    dropped: list[Option] = field(default_factory=list)  # lmKAN options a plain option dominates


def _weight_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _shape(module: nn.Module, macs: int) -> tuple[int, int, int]:
    """(inputs per output position, outputs, positions per sample) of a rule layer from its formula MACs."""
    rule = rule_for(module)
    per_position, out = rule.macs_per_position(module, False), rule.features(module)[1]
    return per_position // max(1, out), out, max(1, macs // max(1, per_position))


def seconds(opts: SpaceOptions, kind: str, n_in: float, n_out: float, positions: int, num_grids: int = 0) -> float:
    """Cached per-shape seconds of one forward of opts.batch samples (0 without a latency budget)."""
    if opts.timer is None:
        return 0.0
    return opts.timer.seconds(kind, round(n_in), round(n_out), positions * opts.batch, num_grids)


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


def option_cost(opts: SpaceOptions, option: Option, out_scale: float) -> tuple[float, float, float]:
    """(MACs, bytes, seconds) of the space's consumer under `option`, its outputs kept at out_scale (a later
    space)."""
    size = opts.space.size
    k, out, positions = opts.consumer_shape
    if option.kind == "plain":
        macs, bytes_ = plain_cost(*opts.consumer_cost[:2], option.kept / size, out_scale)
        return macs, bytes_, seconds(opts, "plain", k * option.kept / size, out * out_scale, positions)
    n_out = max(1, round(out * out_scale))
    macs, bytes_ = lmkan_cost(positions, option.kept, n_out, option.num_grids, opts.itemsize)
    return macs, bytes_, seconds(opts, "lmkan", option.kept, n_out, positions, option.num_grids)


def producer_cost(opts: SpaceOptions, out_scale: float) -> tuple[float, float, float]:
    """(MACs, bytes, seconds) of the space's producer with out_scale of its outputs kept."""
    k, out, positions = opts.producer_shape
    macs, bytes_ = plain_cost(*opts.producer_cost[:2], 1.0, out_scale)
    return macs, bytes_, seconds(opts, "plain", k, out * out_scale, positions)


def options_for(opts: SpaceOptions, fractions: tuple[float, ...], grids: tuple[int, ...]) -> list[Option]:
    """Keep, plain narrowing at each fraction and (where allowed) lmKAN at each (G, fraction) whose lmKAN MACs do
    not exceed the consumer's original MACs and whose table fit stays small."""
    size = opts.space.size
    out = [Option(1.0, "plain", 0, size)]
    for fraction in sorted(set(fractions), reverse=True):
        kept = _kept_count(size, fraction)
        if kept < size:
            out.append(Option(fraction, "plain", 0, kept))
        for g in grids if not opts.lmkan_allowed else ():
            cheaper = 2 * (kept + kept % 2) <= size
            if cheaper and ((kept + 1) // 2) * (g + 1) ** 2 <= MAX_TABLE_UNKNOWNS:
                out.append(Option(fraction, "lmkan", g, kept))
    return list(dict.fromkeys(out))


def measure_damage(model: nn.Module, opts: SpaceOptions, options: list[Option], train: list[Any], held: list[Any],
                   ridge: float, input_norm: str, mix: float) -> None:
    """Fill opts.damage: for each kept count, narrow only this space in a copy, refit the consumer (plain) and fit
    lmKAN tables beside it; damage = held-out relative error of the consumer's output against the original's."""
    name = opts.space.consumer
    with eval_mode(model), torch.no_grad():
        targets = teacher_outputs(model, [name], train + held)[name]
        for kept in sorted({o.kept for o in options}, reverse=True):
            same = [o for o in options if o.kept == kept]
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
                    opts.damage[o] = float(err)
                    continue
                _, lmkan_err, _ = shrink_refit(trial, name, rows[:len(train)], rows[len(train):], o.num_grids,
                                               input_norm, mix)
                opts.damage[o] = float(lmkan_err)


def drop_dominated(opts: SpaceOptions, options: list[Option]) -> list[Option]:
    """Without the lmKAN options some plain option beats at no more MACs and bytes (lmKAN does not pay there)."""
    def dominated(o: Option) -> bool:
        cost = option_cost(opts, o, 1.0)
        return any(p.kind == "plain" and LMKAN_MARGIN * opts.damage[p] <= opts.damage[o] + DAMAGE_TOLERANCE
                   and all(a <= b for a, b in zip(option_cost(opts, p, 1.0), cost)) for p in options)

    kept = [o for o in options if o.kind == "plain" or not dominated(o)]
    opts.dropped = [o for o in options if o not in kept]
    return kept
