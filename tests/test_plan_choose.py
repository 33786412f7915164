"""The planner's choice of one option per hidden space: where the assignments are few, the least total damage within
the budget among consistent assignments, damages adding in quadrature (checked against a naive loop over every
assignment), including a block
on an upstream-narrowed input (two spaces changed together); deterministic; greedy above EXHAUSTIVE_LIMIT."""

from __future__ import annotations

import itertools

import pytest

from lmkan_surgery.planning import choose as choose_mod
from lmkan_surgery.planning.cost_model import CostModel, consistent
from lmkan_surgery.planning.options import Option, SpaceOptions
from lmkan_surgery.passes.shrink import HiddenSpace


def _chain(up_size: int = 8, span: int = 4, hidden: int = 64, out: int = 3) -> list[SpaceOptions]:
    """An upstream space (conv-like producer of up_size units, each feeding `span` head inputs) and a head space
    Linear(up_size * span -> hidden) -> Linear(hidden -> out), costed per sample like nn.Linear."""
    n_in = up_size * span
    up = SpaceOptions(HiddenSpace("p", [], "h1", up_size, span=span), (float(16 * up_size), 0.0, 0.0),
                      (float(n_in * hidden), 0.0, 0.0), (16, up_size, 1), (n_in, hidden, 1), 4, "")
    head = SpaceOptions(HiddenSpace("h1", [], "h2", hidden), (float(n_in * hidden), 0.0, 0.0),
                        (float(hidden * out), 0.0, 0.0), (n_in, hidden, 1), (hidden, out, 1), 4, "")
    head.upstream = up.space
    return [up, head]


def _options(spaces: list[SpaceOptions]) -> list[list[Option]]:
    """Plain counts for both spaces, folds of the head on 2 or 4 upstream units; damages made up so that the best
    assignment is a fold on 4 upstream units, reachable only by changing both spaces at once."""
    up, head = spaces
    up_opts = [Option(1.0, "plain", 0, 8)] + [Option(k / 8, "plain", 0, k) for k in (6, 4, 2)]
    head_opts = [Option(1.0, "plain", 0, 64)] + [Option(k / 64, "plain", 0, k) for k in (32, 8, 2)]
    head_opts += [Option(1.0, "fold", 4, 3, upstream=k) for k in (4, 2)]
    up.damage = {o: {8: 0.0, 6: 0.05, 4: 0.10, 2: 0.40}[o.kept] for o in up_opts}
    head.damage = {o: {64: 0.0, 32: 0.02, 8: 0.30, 2: 0.90}[o.kept] for o in head_opts if o.kind == "plain"}
    head.damage.update({o: 0.01 for o in head_opts if o.kind == "fold"})
    return [up_opts, head_opts]


def _naive_best(model: CostModel, options: list[list[Option]], limits: dict[str, float]) -> float:
    """The least sum of squared damages of any consistent assignment within the limits, by a plain loop."""
    best = float("inf")
    for state in itertools.product(*options):
        state = list(state)
        total = model.total(state)
        if consistent(model.spaces, state) and all(total[k] <= v for k, v in limits.items()):
            best = min(best, sum(s.damage[o] ** 2 for s, o in zip(model.spaces, state)))
    return best


@pytest.mark.parametrize("fraction", [0.6, 0.3, 0.12, 0.05])
def test_choice_is_the_least_damaging_consistent_assignment_within_the_budget(fraction):
    spaces = _chain()
    options = _options(spaces)
    original = 16 * 8 + 32 * 64 + 64 * 3
    model = CostModel(spaces, {"macs": float(original), "bytes": 0.0, "latency": 0.0})
    limits = {"macs": fraction * original}
    state = choose_mod.choose(model, options, limits)
    assert state is not None and consistent(spaces, state)
    assert model.total(state)["macs"] <= limits["macs"]
    assert sum(s.damage[o] ** 2 for s, o in zip(spaces, state)) == pytest.approx(_naive_best(model, options, limits))
    assert choose_mod.choose(model, options, limits) == state  # deterministic


def test_upstream_fold_is_found_with_its_upstream_count():
    spaces = _chain()
    options = _options(spaces)
    original = 16 * 8 + 32 * 64 + 64 * 3
    model = CostModel(spaces, {"macs": float(original), "bytes": 0.0, "latency": 0.0})
    limits = {"macs": 0.12 * original}  # the head must shrink to 8 units or fold; a fold needs its upstream count
    state = choose_mod.choose(model, options, limits)
    assert [o.kept for o in state] == [4, 3] and state[1].kind == "fold" and state[1].upstream == 4


def test_unreachable_budget_gives_none_and_large_option_sets_stay_greedy(monkeypatch):
    spaces = _chain()
    options = _options(spaces)
    model = CostModel(spaces, {"macs": 1e6, "bytes": 0.0, "latency": 0.0})
    assert choose_mod.choose(model, options, {"macs": 1.0}) is None
    calls = []
    monkeypatch.setattr(choose_mod, "EXHAUSTIVE_LIMIT", 3)
    monkeypatch.setattr(choose_mod, "_greedy", lambda *a: calls.append(a) or [])
    choose_mod.choose(model, options, {"macs": 1e6})
    assert len(calls) == 1
