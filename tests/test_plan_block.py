"""The planner's lmKAN block candidate on tiny models: its built block reproduces the held-out damage it was chosen
by (checked here against the teacher's outputs), it is picked where the teacher's block is a sum of pairwise
functions of raw inputs and beats prune-only there, it is not picked on a linear teacher, the cost model prices it
as counted by hand from the layer shapes, inconsistent combinations are refused, and the plan saves and loads."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from lmkan_surgery import LMKANLinear
from lmkan_surgery.planning import Budget
from lmkan_surgery.planning.block import TAIL_SCALES, TAIL_SHARE, beyond_the_data, fit_blocks, original_block
from lmkan_surgery.passes.shrink import HiddenSpace
from lmkan_surgery.planning.cost_model import CostModel, consistent
from lmkan_surgery.planning.options import Option

from plan_helpers import batches, hand_macs, plan

HELD = 1  # calibration batches the planner holds out: int(4 batches x holdout_fraction 0.25)


def pairwise_teacher(d_in: int = 8, width: int = 32, out: int = 2, seed: int = 0) -> nn.Sequential:
    """Linear -> Tanh -> Linear whose hidden unit j reads only the input pair j mod (d_in / 2): the output is a sum
    of nonlinear functions of adjacent input pairs, which one lmKAN layer represents up to its grid error."""
    torch.manual_seed(seed)
    first = nn.Linear(d_in, width)
    mask = torch.zeros(width, d_in)
    for j in range(width):
        pair = j % (d_in // 2)
        mask[j, 2 * pair:2 * pair + 2] = 1.0
    with torch.no_grad():
        first.weight.mul_(3.0 * mask)
    return nn.Sequential(first, nn.Tanh(), nn.Linear(width, out)).eval()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_block_is_picked_on_a_pairwise_teacher_and_reproduces_its_damage():
    teacher, data = pairwise_teacher(), batches(rows=256)
    budget = Budget(macs=0.15)
    planned, pruned = plan(teacher, data, budget), plan(teacher, data, budget, lmkan=False)
    [decision] = planned.decisions
    assert decision.choice.startswith("lmKAN block") and "lmKAN pays here" in decision.reason
    assert any(isinstance(m, LMKANLinear) for m in planned.model.modules())
    assert hand_macs(planned.model) <= 0.15 * hand_macs(teacher)
    held = torch.cat(data[-HELD:])
    with torch.no_grad():
        built = rel_error(planned.model(held), teacher(held))
    assert built == pytest.approx(decision.damage, rel=1e-3)  # the damage it was chosen by is what it delivers
    fresh = batches(1, rows=1024, seed=9)[0]
    with torch.no_grad():
        lmkan_error, prune_error = rel_error(planned.model(fresh), teacher(fresh)), rel_error(pruned.model(fresh),
                                                                                             teacher(fresh))
    assert lmkan_error < 0.5 * prune_error


def test_block_fit_matches_its_reported_held_out_error():
    """fit_blocks' damage is the relative error of lmKAN -> B' on the held rows (recomputed here from the modules)."""
    teacher = pairwise_teacher(out=6)
    x = torch.cat(batches(rows=256))
    with torch.no_grad():
        y = teacher(x)
    fits = fit_blocks([x[:768]], [y[:768]], [x[768:]], [y[768:]], [2, 6], 4, 0.25)
    thin, folded = fits[2], fits[6]
    assert thin.linear is not None and thin.lmkan.out_features == 2 and folded.linear is None
    with torch.no_grad():
        assert rel_error(thin.linear(thin.lmkan(x[768:])), y[768:]) == pytest.approx(thin.damage, rel=1e-4)
        assert rel_error(folded.lmkan(x[768:]), y[768:]) == pytest.approx(folded.damage, rel=1e-4)
    assert folded.damage < thin.damage  # 6 outputs of rank 6: two components cannot carry them


def _heavy_tailed_block() -> tuple[nn.Sequential, torch.Tensor]:
    """A producer -> SiLU -> consumer block (planner space '0' -> '2') and Laplace-distributed calibration inputs."""
    torch.manual_seed(3)
    block = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 1)).eval()
    x = torch.distributions.Laplace(0.0, 1.0).sample((2048, 6))
    return block, x


def test_rows_beyond_the_data_are_the_extremes_pushed_out_and_labelled_by_the_block():
    block, x = _heavy_tailed_block()
    with torch.no_grad():
        y = block(x)
    fn = original_block(block, HiddenSpace("0", ["1"], "2", 32))
    xa, ya = beyond_the_data(x.double(), y.double(), fn)
    # naive: per row the largest |standardised feature|, the top TAIL_SHARE rows, each scale in turn
    mean, std = x.double().mean(0), x.double().std(0)
    score = [max(abs((float(v) - float(m)) / float(s)) for v, m, s in zip(row, mean, std)) for row in x.double()]
    tail = sorted(range(len(x)), key=lambda i: score[i])[len(x) - int(len(x) * TAIL_SHARE):]
    expected = torch.cat([mean + s * (x.double()[sorted(tail, key=lambda i: score[i])] - mean) for s in TAIL_SCALES])
    assert torch.equal(xa[:len(x)], x.double()) and torch.equal(ya[:len(x)], y.double())
    assert torch.allclose(xa[len(x):], expected, rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(ya[len(x):], block(expected.float()).double(), rtol=1e-6, atol=1e-6)


def test_original_block_restricts_to_the_kept_outputs():
    torch.manual_seed(4)
    block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5)).eval()
    keep = torch.tensor([0, 3])
    x = torch.randn(7, 4)
    with torch.no_grad():
        assert torch.equal(original_block(block, HiddenSpace("0", ["1"], "2", 8), keep)(x), block(x)[:, keep])


def test_fold_fitted_beyond_the_data_extrapolates_like_the_block():
    """On heavy-tailed inputs a fold fitted on the calibration rows only meets rows past their range with tables
    fitted on the bulk; fitted with the original block's labels beyond the data it follows the block out there."""
    block, x = _heavy_tailed_block()
    with torch.no_grad():
        y = block(x)
    fn = original_block(block, HiddenSpace("0", ["1"], "2", 32))
    plain = fit_blocks([x[:1536]], [y[:1536]], [x[1536:]], [y[1536:]], [1], 4, 0.25)[1]
    extended = fit_blocks([x[:1536]], [y[:1536]], [x[1536:]], [y[1536:]], [1], 4, 0.25, fn)[1]
    far = 3.0 * torch.distributions.Laplace(0.0, 1.0).sample((1024, 6))
    far = far[(far.abs() > x[:1536].abs().amax(0)).any(1)]  # rows outside the calibrated range
    assert len(far) > 50
    with torch.no_grad():
        target = block(far)
        err_plain, err_extended = rel_error(plain.lmkan(far), target), rel_error(extended.lmkan(far), target)
    assert err_extended < 0.7 * err_plain, (err_extended, err_plain)
    assert extended.damage < 1.5 * plain.damage  # the bulk still fits


def test_linear_teacher_never_gets_a_block():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.Identity(), nn.Linear(32, 32), nn.Linear(32, 3)).eval()
    result = plan(teacher, batches(rows=256), Budget(macs=0.3))
    assert not any(isinstance(m, LMKANLinear) for m in result.model.modules())
    assert all("lmKAN pays" not in d.reason and "lmKAN block not tried: the chain is affine" in d.reason
               for d in result.decisions)


def test_functional_chain_is_reported_and_not_tried():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    result = plan(Functional().eval(), batches(rows=256), Budget(macs=0.3))
    [decision] = result.decisions
    assert "lmKAN block not tried: the chain holds functional ops" in decision.reason
    assert not decision.choice.startswith("lmKAN block")


def test_blocks_are_deterministic_and_save_and_load(tmp_path):
    from lmkan_surgery import LMKANConfig, lmkanify, load, save

    teacher, data = pairwise_teacher(), batches(rows=256)
    a, b = plan(teacher, data, Budget(macs=0.15)), plan(teacher, data, Budget(macs=0.15))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert [d.choice for d in a.decisions] == [d.choice for d in b.decisions]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    student, _ = lmkanify(teacher, LMKANConfig(mode="budget", budget_macs=0.15), calibration=data)
    assert any(isinstance(m, nn.Identity) for m in student.modules())
    save(student, tmp_path / "s.pt")
    x = batches(1, rows=256, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "s.pt", lambda: pairwise_teacher(seed=5))(x), student(x))


class _Space:
    """The fields of a hidden space the cost model reads."""

    def __init__(self, producer: str, consumer: str, size: int) -> None:
        self.producer, self.consumer, self.size = producer, consumer, size


def _spaces(d_in: int, width: int, out: int) -> list:
    """The two spaces of d_in -> width -> width -> out Linear layers, priced like describe_space does."""
    from lmkan_surgery.planning.options import SpaceOptions

    shapes = {"l0": (d_in, width), "l1": (width, width), "l2": (width, out)}

    def opts(producer: str, consumer: str) -> SpaceOptions:
        (pi, po), (ci, co) = shapes[producer], shapes[consumer]
        return SpaceOptions(_Space(producer, consumer, width), (pi * po, 4 * pi * po, 0.0),
                            (ci * co, 4 * ci * co, 0.0), (pi, po, 1), (ci, co, 1), 4, "")

    return [opts("l0", "l1"), opts("l1", "l2")]


def test_cost_model_prices_blocks_as_counted_by_hand():
    d_in, w, out = 10, 64, 3
    spaces = _spaces(d_in, w, out)
    original = d_in * w + w * w + w * out
    model = CostModel(spaces, {"macs": float(original), "bytes": 0.0, "latency": 0.0})
    keep = Option(1.0, "plain", 0, w)
    cases = {  # state -> MACs counted from the resulting layers
        (Option(0.25, "block", 8, 16), keep): 2 * d_in * 16 + 16 * w + w * out,  # lmKAN d_in->16, Linear 16->w
        (keep, Option(1.0, "fold", 8, out)): d_in * w + 2 * w * out,  # l1 + l2 folded into lmKAN w->out
        (Option(0.25, "block", 8, 16), Option(1.0, "fold", 8, out)): 2 * d_in * 16 + 2 * 16 * out,
        (Option(0.25, "plain", 0, 16), Option(0.5, "block", 4, 32)): d_in * 16 + 2 * 16 * 32 + 32 * out,
        (Option(0.25, "block", 8, 16), Option(0.5, "plain", 0, 32)): 2 * d_in * 16 + 16 * 32 + 32 * out,
    }
    for state, macs in cases.items():
        assert consistent(spaces, list(state))
        assert model.total(list(state))["macs"] == pytest.approx(macs)


def test_inconsistent_combinations_are_refused():
    spaces = _spaces(10, 64, 3)
    fold, block = Option(1.0, "fold", 8, 64), Option(0.5, "block", 8, 32)
    assert not consistent(spaces, [fold, block])  # l1 folded away, yet the producer of the next block
    assert not consistent(spaces, [Option(0.5, "lmkan", 8, 32), block])  # l1 an lmKAN consumer and a block producer
    assert consistent(spaces, [block, block])  # the second block reads the first block's outputs


def test_macs_and_latency_limits_together_terminate_and_hold(tmp_path, monkeypatch):
    """Two limits at once (a move may lower one cost and raise the other): the choice ends and meets both. The
    per-shape times are a fixed model (1 us a call + 1 ns a multiply-add, lmKAN 2 per pair input and output, plus
    its placement), not this machine's: measured ones make the reachable floor depend on the load."""
    from lmkan_surgery.planning import latency_cache

    def modelled_seconds(self, kind, n_in, n_out, rows, num_grids=0, placement="none"):
        per_row = n_in * n_out * (2 if kind == "lmkan" else 1) + (4 * n_in if placement == "quantile" else 0)
        return 1e-6 + 1e-9 * rows * per_row

    monkeypatch.setattr(latency_cache, "cache_path", lambda: tmp_path / "plan_latency.json")
    monkeypatch.setattr(latency_cache.LatencyTable, "seconds", modelled_seconds)
    teacher = pairwise_teacher(width=64)
    result = plan(teacher, batches(rows=256), Budget(macs=0.3, latency=0.9, latency_batch=256))
    assert hand_macs(result.model) <= 0.3 * hand_macs(teacher)
    assert result.planned["latency"] <= 0.9 * result.original["latency"]


def test_lmkan_plan_falls_back_to_its_pruning_plan_unless_clearly_better(monkeypatch):
    """The whole-model check: the lmKAN plan is kept only when its held-out error is PLAN_MARGIN x its own pruning
    plan's or less; otherwise the planner returns exactly the pruning-only plan and says why."""
    from lmkan_surgery.planning import planner
    teacher, data = pairwise_teacher(), batches(rows=256)
    budget = Budget(macs=0.15)
    kept = plan(teacher, data, budget)
    assert kept.lmkan_layers() and not kept.kept_plain
    assert kept.heldout["rel_error"] <= planner.PLAN_MARGIN * kept.rival["rel_error"]
    monkeypatch.setattr(planner, "PLAN_MARGIN", 1e-6)  # no lmKAN plan can be that much better
    fallback, pruned = plan(teacher, data, budget), plan(teacher, data, budget, lmkan=False)
    assert not fallback.lmkan_layers() and "kept plain: the lmKAN plan" in fallback.kept_plain
    assert any(fallback.kept_plain in d.reason for d in fallback.decisions)
    assert fallback.rival["rel_error"] == pytest.approx(kept.heldout["rel_error"])
    x = batches(1, rows=64, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(fallback.model(x), pruned.model(x))
    assert hand_macs(fallback.model) <= 0.15 * hand_macs(teacher)
