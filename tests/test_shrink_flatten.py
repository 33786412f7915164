"""Shrink chains that cross a flatten (conv -> ... -> pool -> Flatten -> Linear, a CNN's head): found with the right
feature block per channel, exact against the original module when every channel is kept, and a narrowed consumer
that equals the original with the removed channels' feature blocks cut out by hand; flattens that do not give one
block per channel (start_dim 2, a Linear producer, a per-feature BatchNorm after the flatten) are not crossed; the
planner then reaches budgets below the old floor, within budget and deterministically."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lmkan_surgery.passes.probe import run_probe
from lmkan_surgery.passes.shrink import find_hidden_spaces, narrow_modules
from lmkan_surgery.passes.trace import trace_model
from lmkan_surgery.planning import Budget, model_macs

from plan_helpers import plan


class FunctionalFlatten(nn.Module):
    """conv -> ReLU -> pool -> torch.flatten(h, 1) -> Linear (the functional form of the CNN head); with
    start_dim=2, torch.flatten(h, 2).flatten(1) (the same features, but the first flatten keeps channels apart)."""

    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.conv, self.pool, self.fc = nn.Conv2d(2, 6, 3, padding=1), nn.MaxPool2d(2), nn.Linear(6 * 4 * 4, 5)
        self.start_dim = start_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x)))
        flat = torch.flatten(h, 1) if self.start_dim == 1 else torch.flatten(h, 2).flatten(1)
        return self.fc(flat)


def cnn(seed: int = 0) -> nn.Sequential:
    """The Fashion-MNIST teacher's shape, small: conv -> BN -> ReLU -> pool twice, Flatten, Linear -> ReLU -> Linear."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_var.uniform_(0.5, 2.0)
            bn.running_mean.uniform_(-0.2, 0.2)
    return model


def spaces_of(model: nn.Module, example: torch.Tensor):
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    probe = run_probe(model, (example,), names)
    return find_hidden_spaces(model, trace_model(model), set(names), probe)


def test_flatten_is_crossed_with_one_feature_block_per_channel():
    found = {(s.producer, s.consumer): s for s in spaces_of(cnn(), torch.randn(2, 1, 12, 12))}
    assert set(found) == {("0", "4"), ("4", "9"), ("9", "11")}
    assert found[("4", "9")].span == 3 * 3 and found[("4", "9")].size == 8
    assert found[("0", "4")].span == 1 and found[("9", "11")].span == 1
    functional = spaces_of(FunctionalFlatten().eval(), torch.randn(2, 2, 8, 8))
    assert [(s.producer, s.consumer, s.span) for s in functional] == [("conv", "fc", 16)]


@pytest.mark.parametrize("model, example", [
    (FunctionalFlatten(start_dim=2).eval(), torch.randn(2, 2, 8, 8)),  # flattens H, W only: not one block per channel
    (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval(), torch.randn(2, 6)),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.BatchNorm1d(4 * 4 * 4), nn.Linear(64, 2)).eval(),
     torch.randn(2, 1, 6, 6)),  # a per-feature BatchNorm after the flatten is not per channel
])
def test_flattens_without_channel_blocks_are_not_crossed(model, example):
    assert spaces_of(model, example) == []


def test_narrowing_across_flatten_is_exact_when_nothing_is_removed():
    teacher = cnn()
    student = copy.deepcopy(teacher)
    [space] = [s for s in spaces_of(student, torch.randn(2, 1, 12, 12)) if s.span > 1]
    space.kept = torch.arange(space.size)
    narrow_modules(student, [space])
    x = torch.randn(16, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))


def test_narrowed_consumer_equals_the_original_with_removed_blocks_cut_by_hand():
    teacher = cnn(seed=1)
    student = copy.deepcopy(teacher)
    [space] = [s for s in spaces_of(student, torch.randn(2, 1, 12, 12)) if s.span > 1]
    space.kept = torch.tensor([1, 4, 6])
    narrow_modules(student, [space])
    fc = teacher[9]
    columns = [c * 9 + f for c in (1, 4, 6) for f in range(9)]  # channel c owns features 9c ... 9c + 8
    assert torch.equal(student[9].weight, fc.weight[:, columns]) and torch.equal(student[9].bias, fc.bias)
    assert student[4].out_channels == student[5].num_features == 3 and student[9].in_features == 27
    # independent reference: the original model with the removed channels' feature columns zeroed
    reference = copy.deepcopy(teacher)
    with torch.no_grad():
        removed = [c * 9 + f for c in range(8) if c not in (1, 4, 6) for f in range(9)]
        reference[9].weight[:, removed] = 0.0
    x = torch.randn(32, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(student(x), reference(x), atol=1e-5, rtol=1e-5)


def test_planner_reaches_below_the_old_floor_within_budget_and_deterministically():
    teacher = cnn(seed=2)
    gen = torch.Generator().manual_seed(3)
    data = [torch.randn(64, 1, 12, 12, generator=gen) for _ in range(4)]
    example = data[0][:1]
    # without the flatten crossing the second conv (8 -> out 8 channels) and the head's 72 inputs stay whole
    old_floor = (9 * 1 * 2 * 144 + 9 * 2 * 8 * 36 + 72 * 4 + 4 * 3) / model_macs(teacher, (example,))
    budget = Budget(macs=round(0.8 * old_floor, 3))
    a, b = plan(teacher, data, budget), plan(teacher, data, budget)
    assert model_macs(a.model, (example,)) <= budget.macs * model_macs(teacher, (example,))
    assert a.model[4].out_channels < 8 and a.model[9].in_features == 9 * a.model[4].out_channels
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        x = torch.randn(8, 1, 12, 12)
        assert a.model(x).shape == teacher(x).shape
