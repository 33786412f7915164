"""Pick one option per hidden space: the cheapest set meeting the budget, greedily by damage per unit of cost saved,
then undo damage wherever the budget still holds. Deterministic: ties go to the earlier space and option."""

from __future__ import annotations

from dataclasses import dataclass

from .options import Option, SpaceOptions, option_cost
from .costs import plain_cost


@dataclass
class CostModel:
    """The whole model's (MACs, bytes) for any assignment of options to hidden spaces."""

    spaces: list[SpaceOptions]
    original: dict[str, float]  # {"macs": ..., "bytes": ...} of the whole original model

    def total(self, state: list[Option]) -> dict[str, float]:
        """Whole-model costs: the original's, with every producer and consumer of a space re-priced."""
        out_scale = {s.space.producer: o.kept / s.space.size for s, o in zip(self.spaces, state)}
        macs, bytes_ = self.original["macs"], self.original["bytes"]
        priced: set[str] = set()
        for opts, option in zip(self.spaces, state):
            consumer = opts.space.consumer
            new = option_cost(opts, option, out_scale.get(consumer, 1.0))
            macs += new[0] - opts.consumer_cost[0]
            bytes_ += new[1] - opts.consumer_cost[1]
            priced.add(consumer)
        for opts in self.spaces:
            producer = opts.space.producer
            if producer not in priced:
                new = plain_cost(*opts.producer_cost, 1.0, out_scale[producer])
                macs += new[0] - opts.producer_cost[0]
                bytes_ += new[1] - opts.producer_cost[1]
                priced.add(producer)
        return {"macs": macs, "bytes": bytes_}


def _fits(cost: dict[str, float], limits: dict[str, float]) -> bool:
    return all(cost[k] <= v for k, v in limits.items())


def _gain(before: dict[str, float], after: dict[str, float], limits: dict[str, float]) -> float:
    """Cost saved where a limit is still exceeded, each kind relative to its limit."""
    return sum((before[k] - after[k]) / v for k, v in limits.items() if before[k] > v)


def choose(model: CostModel, options: list[list[Option]], limits: dict[str, float]) -> list[Option] | None:
    """One option per space meeting every limit, or None when even the cheapest options do not."""
    state = [opts[0] for opts in options]
    damage = [s.damage for s in model.spaces]
    while not _fits(model.total(state), limits):
        now = model.total(state)
        best, best_score = None, 0.0
        for i, opts in enumerate(options):
            for option in opts:
                trial = state[:i] + [option] + state[i + 1:]
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
    return _repair(model, options, state, limits)


def _repair(model: CostModel, options: list[list[Option]], state: list[Option],
            limits: dict[str, float]) -> list[Option]:
    """Swap in less damaging options while the budget still holds (largest damage reduction first)."""
    damage = [s.damage for s in model.spaces]
    while True:
        best, best_drop = None, 0.0
        for i, opts in enumerate(options):
            for option in opts:
                drop = damage[i][state[i]] - damage[i][option]
                trial = state[:i] + [option] + state[i + 1:]
                if drop > best_drop and _fits(model.total(trial), limits):
                    best, best_drop = (i, option), drop
        if best is None:
            return state
        state[best[0]] = best[1]
