"""The budget planner and its baseline arms on small models: budgets met and never exceeded (costs counted here by
hand from the layer shapes), deterministic plans, the keep / prune fallback where lmKAN cannot pay (a purely linear
teacher), int8 and prune-only arms against the original module, and the arms table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkan_surgery import ConfigError, LMKANLinear
from lmkan_surgery.planning import Budget, compare_arms, int8_dynamic

from plan_helpers import batches, hand_macs, plan


def mlp(act: type[nn.Module] | None, seed: int = 0, d_in: int = 8, width: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, width), *( [act()] if act else []), nn.Linear(width, width), *([act()] if act else []),
              nn.Linear(width, 3)]
    return nn.Sequential(*layers).eval()


def hand_bytes(model: nn.Module) -> int:
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_planner_meets_a_macs_budget_and_never_exceeds_it(fraction):
    teacher, data = mlp(nn.SiLU), batches()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = plan(teacher, data, Budget(macs=fraction))
    assert hand_macs(result.model) <= fraction * hand_macs(teacher)
    assert result.planned["macs"] == hand_macs(result.model)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is untouched
    assert len(result.decisions) == 2 and all(d.reason for d in result.decisions)
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert rel_error(result.model(x), teacher(x)) < 0.5  # a fitted student, not noise


def test_planner_meets_a_bytes_budget():
    teacher, data = mlp(nn.SiLU), batches()
    result = plan(teacher, data, Budget(macs=None, bytes=0.3))
    assert hand_bytes(result.model) <= 0.3 * hand_bytes(teacher)


def test_planner_is_deterministic():
    teacher, data = mlp(nn.Tanh, seed=3), batches()
    a, b = plan(teacher, data, Budget(macs=0.3)), plan(teacher, data, Budget(macs=0.3))
    assert [(d.consumer, d.choice, d.damage) for d in a.decisions] == [(d.consumer, d.choice, d.damage)
                                                                      for d in b.decisions]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_linear_teacher_falls_back_to_plain_narrowing():
    """A purely linear teacher of rank <= 8: plain narrowing + refit is exact, so lmKAN cannot pay anywhere."""
    teacher, data = mlp(None), batches()
    result = plan(teacher, data, Budget(macs=0.3))
    assert not any(isinstance(m, LMKANLinear) for m in result.model.modules())
    narrowed = [d for d in result.decisions if not d.choice.startswith("keep")]
    assert narrowed and any("lmKAN does not pay" in d.reason for d in result.decisions)
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert rel_error(result.model(x), teacher(x)) < 1e-2


def test_unreachable_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be met"):
        plan(mlp(nn.SiLU), batches(), Budget(macs=0.001))


def test_budget_values_are_checked():
    for bad in (dict(macs=0.0), dict(macs=1.5), dict(macs=float("nan")), dict(macs=None, bytes=None)):
        with pytest.raises(ConfigError):
            Budget(**bad)


def test_prune_only_arm_is_plain_and_exact_at_full_budget():
    teacher, data = mlp(nn.SiLU), batches()
    pruned = plan(teacher, data, Budget(macs=0.5), lmkan=False)
    assert all(type(m) is not LMKANLinear for m in pruned.model.modules())
    assert all(d.reason for d in pruned.decisions) and hand_macs(pruned.model) <= 0.5 * hand_macs(teacher)
    full = plan(teacher, data, Budget(macs=1.0), lmkan=False)
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(full.model(x), teacher(x))


def test_int8_arm_matches_the_original_and_counts_int8_bytes():
    teacher = mlp(nn.SiLU)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    quantized = int8_dynamic(teacher)
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert rel_error(quantized(x), teacher(x)) < 0.03
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    from lmkan_surgery.planning import model_bytes, model_macs

    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    assert model_bytes(quantized) == sum(m.in_features * m.out_features + 4 * m.out_features for m in linears)
    assert model_macs(quantized, x[:1]) == hand_macs(teacher)


def test_arms_table_measures_every_arm_and_names_winners():
    teacher, data = mlp(nn.SiLU), batches()
    x, y = batches(1, seed=9)[0], None
    with torch.no_grad():
        y = teacher(x)
    arms = {"original": teacher, "planner": plan(teacher, data, Budget(macs=0.5)).model,
            "prune-only": plan(teacher, data, Budget(macs=0.5), lmkan=False).model, "int8": int8_dynamic(teacher)}

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return rel_error(model(x), y)

    trained = []
    result = compare_arms(arms, (x[:1],), error, "rel. error", False, train=trained.append,
                          trainable=("planner", "prune-only"), throughput_batch=16, repeats=3, budget_s=0.2)
    assert [r.name for r in result.rows] == list(arms) and trained == [arms["planner"], arms["prune-only"]]
    rows = {r.name: r for r in result.rows}
    assert rows["original"].metric == 0.0 and rows["original"].macs == hand_macs(teacher)
    assert rows["planner"].distill_s is not None and rows["int8"].distill_s is None
    won = result.winners()
    assert won["rel. error"] == min(("planner", "prune-only", "int8"), key=lambda n: rows[n].metric)
    assert won["MACs"] in ("planner", "prune-only") and set(rows["int8"].latency) == {1, 16}
    assert "winners:" in str(result)


def test_lmkanify_budget_mode_dispatches_to_the_planner_and_saves(tmp_path):
    from lmkan_surgery import LMKANConfig, lmkanify, load, save

    teacher, data = mlp(nn.SiLU), batches()
    student, report = lmkanify(teacher, LMKANConfig(mode="budget", budget_macs=0.4), calibration=data)
    assert hand_macs(student) <= 0.4 * hand_macs(teacher) and report.mode == "budget"
    assert len(report.rows) == 2 and all(r.reason for r in report.rows)
    save(student, tmp_path / "s.pt")
    x = batches(1, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "s.pt", lambda: mlp(nn.SiLU, seed=5))(x), student(x))
    with pytest.raises(ConfigError):
        LMKANConfig(mode="budget", budget_macs=2.0)


def test_latency_budget_uses_the_cached_per_shape_table(tmp_path, monkeypatch):
    from lmkan_surgery.planning import latency_cache

    monkeypatch.setattr(latency_cache, "cache_path", lambda: tmp_path / "plan_latency.json")
    teacher, data = mlp(nn.SiLU, width=128), batches()
    result = plan(teacher, data, Budget(macs=None, latency=0.8, latency_batch=4096))
    assert result.planned["latency"] <= 0.8 * result.original["latency"]
    assert any(not d.choice.startswith("keep") for d in result.decisions)
    import json

    cached = json.loads((tmp_path / "plan_latency.json").read_text())
    assert cached and all(v > 0 for v in cached.values())
    assert any(":plain:8:128:" in k for k in cached)  # the producer's own shape, measured once
