"""Pick one option per hidden space meeting the budget: where the assignments are few (EXHAUSTIVE_LIMIT), the one of
least total damage, found by trying them all; else greedily by damage per unit of cost saved, then undoing damage
wherever the budget still holds. A space's damage is a relative L2 error of the model's output, and independent
errors add in quadrature, so the total damage is the sum of squared damages (a plain sum overrates one large error
against several small ones: on the Fashion CNN at 0.1x it chose an lmKAN plan of whole-model held-out error 0.147,
worse than the pruning plan's 0.133, over the head folded on 10 conv channels beside a 4-channel first conv, 0.108).
Only consistent assignments are tried (an lmKAN block's producer is never a layer another space makes lmKAN or
folds away; a block on an upstream-narrowed input needs exactly that narrowing, which a greedy one-space-at-a-time
move reaches only by chance). Deterministic: ties go to the earlier space and option."""

from __future__ import annotations

import itertools
import math

from .cost_model import CostModel
from .options import Option

EXHAUSTIVE_LIMIT = 200_000  # assignments (product of the option counts) searched exhaustively; more: greedy


def _squared(model: CostModel) -> list[dict[Option, float]]:
    """Per space, each option's squared damage (the additive part of the whole-model squared error)."""
    return [{o: d * d for o, d in s.damage.items()} for s in model.spaces]


def _fits(cost: dict[str, float], limits: dict[str, float]) -> bool:
    return all(cost[k] <= v for k, v in limits.items())


def _gain(before: dict[str, float], after: dict[str, float], limits: dict[str, float]) -> float:
    """Cost saved where a limit is still exceeded, each kind relative to its limit."""
    return sum((before[k] - after[k]) / v for k, v in limits.items() if before[k] > v)


def choose(model: CostModel, options: list[list[Option]], limits: dict[str, float]) -> list[Option] | None:
    """One option per space meeting every limit, or None when even the cheapest options do not: the least damaging
    consistent assignment where there are at most EXHAUSTIVE_LIMIT, else the greedy one."""
    if math.prod(len(opts) for opts in options) <= EXHAUSTIVE_LIMIT:
        return _exhaustive(model, options, limits)
    return _greedy(model, options, limits)


def _exhaustive(model: CostModel, options: list[list[Option]], limits: dict[str, float]) -> list[Option] | None:
    """The consistent assignment of least total squared damage within the limits (None if there is none); totals
    within 1e-12 are a tie, won by the assignment met first (earlier options of earlier spaces)."""
    damage = _squared(model)
    best, best_damage = None, math.inf
    for state in itertools.product(*options):
        total = sum(d[o] for d, o in zip(damage, state))
        if total < best_damage - 1e-12 and model.consistent(list(state)) and _fits(model.total(list(state)), limits):
            best, best_damage = list(state), total
    return best


def _greedy(model: CostModel, options: list[list[Option]], limits: dict[str, float]) -> list[Option] | None:
    """Greedy by squared damage per unit of cost saved, then _repair."""
    state = [opts[0] for opts in options]
    damage = _squared(model)
    seen = {tuple(state)}  # with several limits a move can undo an earlier one: never revisit an assignment
    while not _fits(model.total(state), limits):
        now = model.total(state)
        best, best_score = None, 0.0
        for i, opts in enumerate(options):
            for option in opts:
                trial = state[:i] + [option] + state[i + 1:]
                if tuple(trial) in seen or not model.consistent(trial):
                    continue
                gain = _gain(now, model.total(trial), limits)
                if gain <= 0:
                    continue
                extra = damage[i][option] - damage[i][state[i]]
                score = gain / max(extra, 1e-9)
                if score > best_score:
                    best, best_score = (i, option), score
        if best is None:
            return None
        state[best[0]] = best[1]
        seen.add(tuple(state))
    return _repair(model, options, state, limits)


def _repair(model: CostModel, options: list[list[Option]], state: list[Option],
            limits: dict[str, float]) -> list[Option]:
    """Swap in less damaging options while the budget still holds (largest squared-damage reduction first)."""
    damage = _squared(model)
    while True:
        best, best_drop = None, 0.0
        for i, opts in enumerate(options):
            for option in opts:
                drop = damage[i][state[i]] - damage[i][option]
                trial = state[:i] + [option] + state[i + 1:]
                if drop > best_drop and model.consistent(trial) and _fits(model.total(trial), limits):
                    best, best_drop = (i, option), drop
        if best is None:
            return state
        state[best[0]] = best[1]
